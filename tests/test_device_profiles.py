"""Device profiles of ``d2tls bench device --profile``: the files, the model, the command."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tomllib
from importlib.resources import files
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from d2tls.bench import device_profiles as dp
from d2tls.bench.device_profiles import Counts, Profile, ProfileError


def _raw(name: str) -> dict[str, Any]:
    text = files("d2tls.bench").joinpath("profiles", f"{name}.toml").read_text("utf-8")
    return tomllib.loads(text)


@pytest.mark.parametrize("name", dp.PROFILES)
def test_profile_loads_and_every_parameter_has_a_source(name: str) -> None:
    profile = dp.load(name)
    assert set(profile.parameters) == set(dp.PARAMETERS)
    for key in dp.PARAMETERS:
        assert profile.parameters[key] >= 0
        assert len(profile.sources[key]) > 20, key
        assert profile.kinds[key] in dp.KINDS
        # Anything not read off the paper says so, and anything from the paper names a table
        # or section of it.
        if profile.kinds[key] == "paper":
            assert "Table" in profile.sources[key] or "Section" in profile.sources[key]
    for key, source in profile.paper_sources.items():
        assert "Table" in source or "Section" in source, key
    assert "IoTDI 2019" in profile.citation
    assert {"dtls", "d2tls", "resumption"} <= set(profile.paper_counts)


def test_a_parameter_without_source_is_refused() -> None:
    data = _raw("cc3200")
    del data["parameters"]["sign_ms"]["source"]
    with pytest.raises(ProfileError, match="sign_ms has no source"):
        dp.parse(data, "broken")
    data = _raw("cc3200")
    del data["parameters"]["verify_ms"]
    with pytest.raises(ProfileError, match="verify_ms has no numeric value"):
        dp.parse(data, "broken")
    with pytest.raises(ProfileError, match="unknown device profile"):
        dp.load("esp32")


def test_cc3200_derived_parameters_follow_from_the_paper_numbers() -> None:
    """Re-solve every derived cc3200 parameter from the paper values, as its source says."""
    p = dp.load("cc3200")
    paper, par = p.paper, p.parameters
    delta = paper["rtt_wan_ms"] - paper["rtt_lan_ms"]
    n_res = round((paper["wan_resumption_ms"] - paper["lan_resumption_ms"]) / delta)
    n_dtls = round((paper["wan_dtls_ms"] - paper["lan_dtls_ms"]) / delta)
    n_agent = round(
        (
            (paper["wan_d2tls_ms"] - paper["lan_d2tls_ms"])
            - (paper["wan_resumption_ms"] - paper["lan_resumption_ms"])
        )
        / delta
    )
    assert (n_res, n_dtls, n_agent) == (3, 4, 3)
    assert p.paper_counts["resumption"].server_round_trips == n_res
    assert p.paper_counts["dtls"].server_round_trips == n_dtls
    assert p.paper_counts["d2tls"].agent_server_round_trips == n_agent
    assert par["sign_ms"] == paper["lan_signature_ms"]
    rt = paper["lan_resumption_ms"] / n_res - paper["rtt_lan_ms"]
    assert par["round_trip_ms"] == pytest.approx(rt, abs=1e-3)
    crypto = paper["lan_dtls_ms"] - n_dtls * (rt + paper["rtt_lan_ms"])
    verify = (crypto - 2 * par["sign_ms"]) / 2.5
    assert par["verify_ms"] == pytest.approx(verify, abs=1e-3)
    assert par["ecdh_ms"] == pytest.approx(verify / 2)
    residual = (
        paper["lan_d2tls_ms"]
        - paper["lan_signature_ms"]
        - paper["lan_resumption_ms"]
        - n_agent * paper["rtt_lan_ms"]
        - 2 * rt
    )
    assert par["delegation_ms"] == pytest.approx(residual, abs=1e-3)
    wait_lan = paper["lan_resumption_ms"] - n_res * rt
    wait_wan = paper["wan_resumption_ms"] - n_res * rt
    idle = (paper["wan_resumption_mj"] - paper["lan_resumption_mj"]) / (wait_wan - wait_lan)
    assert par["idle_power_mw"] / 1000 == pytest.approx(idle, rel=1e-4)
    radio = (paper["lan_resumption_mj"] - idle * wait_lan) / (n_res * rt)
    assert par["radio_power_mw"] / 1000 == pytest.approx(radio, rel=1e-4)


@pytest.mark.parametrize("network", dp.NETWORKS)
def test_cc3200_model_at_the_papers_counts_reproduces_its_lan_rows(network: str) -> None:
    """Calibration check (LAN, exact) and prediction (WAN, within 10 % of Tables 4 and 6)."""
    p = dp.load("cc3200")
    tolerance = 1e-3 if network == "lan" else 0.12
    for row in ("dtls", "d2tls", "resumption"):
        estimate = p.estimate(p.paper_counts[row], network)
        assert estimate.delay_ms == pytest.approx(p.paper[f"{network}_{row}_ms"], rel=tolerance)
        assert estimate.energy_mj == pytest.approx(p.paper[f"{network}_{row}_mj"], rel=tolerance)


counts_strategy = st.builds(
    Counts,
    sign=st.integers(0, 5),
    verify=st.integers(0, 5),
    ecdh=st.integers(0, 3),
    keygen=st.integers(0, 3),
    agent_bytes=st.floats(0, 1e5),
    server_bytes=st.floats(0, 1e5),
    agent_round_trips=st.integers(0, 10).map(float),
    server_round_trips=st.integers(0, 10).map(float),
    delegations=st.integers(0, 3),
    agent_server_round_trips=st.integers(0, 10).map(float),
)


@given(counts_strategy, st.sampled_from(dp.PROFILES), st.sampled_from(dp.NETWORKS))
def test_the_model_scales_with_the_counted_inputs(counts: Counts, name: str, network: str) -> None:
    p = dp.load(name)
    par = p.parameters
    base = p.estimate(counts, network)
    doubled = p.estimate(dp.scaled(counts, sign=2 * counts.sign), network)
    assert doubled.delay_ms - base.delay_ms == pytest.approx(counts.sign * par["sign_ms"])
    assert doubled.energy_mj - base.energy_mj == pytest.approx(
        counts.sign * par["sign_ms"] * par["cpu_power_mw"] / 1000
    )
    more_verify = p.estimate(dp.scaled(counts, verify=counts.verify + 1), network)
    assert more_verify.delay_ms - base.delay_ms == pytest.approx(par["verify_ms"])
    more_bytes = p.estimate(dp.scaled(counts, agent_bytes=counts.agent_bytes + 1000), network)
    assert more_bytes.delay_ms - base.delay_ms == pytest.approx(par["byte_us"])
    more_rt = p.estimate(
        dp.scaled(counts, server_round_trips=counts.server_round_trips + 1), network
    )
    assert more_rt.delay_ms - base.delay_ms == pytest.approx(
        par["round_trip_ms"] + par[f"rtt_{network}_ms"]
    )
    assert p.estimate(Counts(), network).delay_ms == 0.0


def _variants() -> dict[str, Any]:
    """Counted inputs shaped like ``bench device``'s aggregated variants."""

    def variant(
        ops: dict[str, int], agent: float, server: float, art: float, srt: float, delegations: int
    ) -> dict[str, Any]:
        return {
            "key_operations": ops,
            "agent_bytes": agent,
            "server_bytes": server,
            "agent_round_trips": art,
            "server_round_trips": srt,
            "delegations": delegations,
        }

    d2 = {"sign": 1, "verify": 0, "ecdh": 0, "keygen": 0}
    return {
        "bound": variant(d2, 3600, 640, 5, 2, 1),
        "blind": variant(d2, 2000, 640, 5, 2, 1),
        "standalone": variant({"sign": 1, "verify": 2, "ecdh": 1, "keygen": 1}, 0, 2050, 0, 3, 0),
        "reuse": variant({"sign": 0, "verify": 0, "ecdh": 0, "keygen": 0}, 0, 640, 0, 2, 0),
    }


def test_evaluate_has_no_hard_coded_totals() -> None:
    """Change what the device counted: every modelled total and ratio moves with it."""
    p = dp.load("cc3200")
    variants = _variants()
    before = dp.evaluate(p, variants)
    changed = copy.deepcopy(variants)
    changed["bound"]["key_operations"]["verify"] = 2
    changed["standalone"]["server_round_trips"] = 6
    after = dp.evaluate(p, changed)
    assert after["model"]["bound"]["lan"]["delay_ms"] - before["model"]["bound"]["lan"][
        "delay_ms"
    ] == pytest.approx(
        2 * p.parameters["verify_ms"] + 3 * p.parameters["rtt_lan_ms"]
    )  # + the agent's handshake, which has the standalone's round trips
    assert after["ratios"]["delay_lan:bound"] != before["ratios"]["delay_lan:bound"]
    assert after["ratios"]["energy_lan:bound"] != before["ratios"]["energy_lan:bound"]
    assert after["model"]["blind"] != before["model"]["blind"]
    # Enough extra work on the device turns a met target into a missed one.
    assert before["targets"]["delay_ratio_lan"]["met"]
    worse = copy.deepcopy(variants)
    worse["blind"]["key_operations"]["verify"] = 2
    assert not dp.evaluate(p, worse)["targets"]["delay_ratio_lan"]["met"]
    # The paper's values are printed, never used for our rows.
    assert before["paper"]["lan_d2tls_ms"] == 851.0
    assert before["model"]["bound"]["lan"]["delay_ms"] != 851.0


def test_memory_ordering_follows_the_measured_peaks() -> None:
    p = dp.load("cc3200")
    low = dp.evaluate(p, _variants(), {"bound": 10, "blind": 9, "standalone": 20, "reuse": 5})
    assert low["memory"]["ordering_met"] and low["memory"]["paper_d2tls_below_dtls"]
    high = dp.evaluate(p, _variants(), {"bound": 30, "blind": 9, "standalone": 20, "reuse": 5})
    assert not high["memory"]["ordering_met"]


def test_cc2538_has_no_targets_but_models_every_variant() -> None:
    result = dp.evaluate(dp.load("cc2538"), _variants())
    assert result["targets"] == {}
    assert (
        result["model"]["standalone"]["lan"]["delay_ms"]
        > result["model"]["blind"]["lan"]["delay_ms"]
    )


def test_bench_device_profile_cc3200_json_on_loopback() -> None:
    """The command end to end: one real run, ratios with met/missed, memory per variant."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "d2tls.cli",
            "bench",
            "device",
            "--profile",
            "cc3200",
            "--json",
            "--runs",
            "2",
            "--warmup",
            "1",
            "--no-breakdown",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        stdin=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    model = result["device_profile"]
    assert model["profile"] == "cc3200"
    for name in ("delay_ratio_lan", "energy_ratio_lan", "lan_wan_ordering"):
        assert isinstance(model["targets"][name]["met"], bool)
    for mode in ("bound", "blind"):
        assert model["targets"]["delay_ratio_lan"][mode] == model["ratios"][f"delay_lan:{mode}"]
    assert model["ratios"]["paper_delay_lan"] == pytest.approx(851 / 2920, abs=1e-4)
    # The modelled rows are the profile applied to this run's counted operations.
    profile: Profile = dp.load("cc3200")
    variants = result["variants"]
    rts = variants["standalone"]["server_round_trips"]
    for variant in ("bound", "blind", "standalone", "reuse"):
        counts = Counts.from_variant(variants[variant], rts)
        assert model["counts"][variant] == counts.to_dict()
        expected = profile.estimate(counts, "lan").delay_ms
        assert model["model"][variant]["lan"]["delay_ms"] == pytest.approx(expected, abs=1e-3)
    memory = model["memory"]
    assert all(memory["peak_bytes"][v] > 0 for v in ("bound", "blind", "standalone", "reuse"))
    assert isinstance(memory["ordering_met"], bool)


def test_peak_memory_measures_what_a_session_allocates_and_restores_the_pump() -> None:
    """The memory pass sees a variant's transient allocations (ordering follows them), runs
    the first pass with the small receive buffer and puts the pump's default back afterwards."""
    from d2tls.net.pump import Pump

    default = Pump.read_buffer_size
    seen: list[int] = []
    sizes = {"bound": 30_000, "blind": 20_000, "standalone": 50_000, "reuse": 10_000}

    def measure(variant: str) -> None:
        seen.append(Pump.read_buffer_size)
        block = bytearray(sizes[variant])  # freed at return: only the peak keeps it
        assert len(block) == sizes[variant]

    peaks = dp.peak_memory(measure, tuple(sizes), runs=1)
    for label in ("peak_bytes", "peak_with_default_buffer_bytes"):
        for variant, size in sizes.items():
            assert size <= peaks[label][variant] < size + 4096
    assert seen == [dp.RECEIVE_BUFFER] * 4 + [default] * 4
    assert Pump.read_buffer_size == default
    result = dp.evaluate(
        dp.load("cc3200"),
        _variants(),
        peaks["peak_bytes"],
        peaks["peak_with_default_buffer_bytes"],
    )
    assert result["memory"]["ordering_met"]
    text = dp.render_memory(result["memory"], tuple(sizes))
    assert "with the pump's default 64 KiB read buffer" in text and text.endswith("-> met")
