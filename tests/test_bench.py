"""The benchmarks run end to end on loopback with small N and report what they must.

These are not timing tests: they check that each command measures the right things (key
operations, ratios from one run, the relay's delay on the handshake, floors below our cost).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from d2tls.bench import floor, latency, record, server
from d2tls.bench.common import Materials, summary, table


@pytest.fixture(scope="module")
def materials(tmp_path_factory: pytest.TempPathFactory) -> Materials:
    return Materials.create(tmp_path_factory.mktemp("bench-pki"))


def _cli_json(*argv: str, timeout: float = 240) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def test_bench_device_reports_key_operations_and_ratios() -> None:
    result = _cli_json("bench", "device", "--runs", "3")
    variants = result["variants"]
    for mode in ("bound", "blind"):
        assert variants[mode]["key_operations"] == {"sign": 1, "verify": 0, "ecdh": 0, "keygen": 0}
        assert variants[mode]["delegations"] == 1
        assert variants[mode]["agent_bytes"] > 0 and variants[mode]["server_bytes"] > 0
    standalone = variants["standalone"]
    assert standalone["public_key_operations"] >= 4
    assert standalone["key_operations"]["sign"] == 1 and standalone["agent_bytes"] == 0
    assert variants["reuse"]["public_key_operations"] == 0
    assert variants["reuse"]["delegations"] == 0
    for variant in variants.values():
        assert variant["cpu_ms"]["n"] == 3 and variant["cpu_ms"]["median"] > 0
        assert variant["key_operations_constant"]
    ratios = result["ratios"]
    assert ratios["public_key_ops_d2tls_vs_standalone:blind"] <= 0.25
    expected = variants["blind"]["cpu_ms"]["median"] / standalone["cpu_ms"]["median"]
    assert ratios["cpu_d2tls_vs_standalone:blind"] == pytest.approx(expected, rel=1e-3)
    assert 0 < result["floor"]["sign_ms"] < result["floor"]["total_ms"]
    # strict mode (issue 24): the device's own ServerKeyExchange verify (+ the chain's)
    for strict, verifies in (("bound-strict", 1), ("bound-strict-chain", 2)):
        ops = {"sign": 1, "verify": verifies, "ecdh": 0, "keygen": 0}
        assert variants[strict]["key_operations"] == ops and variants[strict]["delegations"] == 1
        assert ratios[f"cpu_strict_vs_bound:{strict}"] == pytest.approx(
            variants[strict]["cpu_ms"]["median"] / variants["bound"]["cpu_ms"]["median"], rel=1e-3
        )
    # Our D2TLS device does more than the floor (1 signature + symmetric work).
    assert ratios["cpu_d2tls_vs_floor:blind"] > 1
    assert set(result["targets"]) == {
        "cpu_new_vs_standalone",
        "cpu_reuse_vs_standalone",
        "bytes_bound_vs_standalone",
        "bytes_blind_vs_standalone",
    }
    # the same targets against a server that resumes without a cookie (RFC 6347 §4.2.1):
    # one round trip less for a resumption, the same full handshake for the standalone device
    assert set(result["targets_resume_without_cookie"]) == set(result["targets"])
    assert variants["reuse-nc"]["server_round_trips"] < variants["reuse"]["server_round_trips"]
    assert variants["standalone-nc"]["server_datagrams"] == standalone["server_datagrams"]
    expected = (
        variants["blind-nc"]["cpu_ms"]["median"] / variants["standalone-nc"]["cpu_ms"]["median"]
    )
    assert ratios["cpu_d2tls_vs_standalone:blind-nc"] == pytest.approx(expected, rel=1e-3)
    # the standing channel (issue 23 item 1): a later delegation carries no channel handshake,
    # so it moves fewer bytes on the agent link than a device's first delegation
    for mode in ("bound", "blind"):
        for channel in ("", "-ecdhe"):
            later, first = variants[mode + channel], variants[f"{mode}{channel}-first"]
            assert later["agent_bytes"] < first["agent_bytes"], (mode, channel)
            assert later["delegations"] == first["delegations"] == 1
    breakdown = result["breakdown"]
    assert breakdown["blind"]["device-agent"]["application_data"] > 0  # delegation messages
    assert "application_data" not in breakdown["standalone"]["device-server"]


def test_bench_latency_sees_the_relay_delay(materials: Materials) -> None:
    """+20 ms RTT: standalone needs 3 round trips to the server (cookie, hello, finished)."""
    result = latency.run(
        [latency.Profile("test", 20.0)],
        runs=2,
        warmup=1,
        device_sign_ms=414.0,
        progress=False,
        materials=materials,
    )
    entry = result["profiles"]["test"]
    walls = {v: entry["variants"][v]["wall_ms"]["median"] for v in entry["variants"]}
    assert walls["standalone"] >= 3 * 20 * 0.95
    assert walls["reuse"] >= 2 * 20 * 0.95  # cookie + abbreviated handshake
    assert walls["blind"] >= walls["reuse"] + 3 * 20 * 0.95  # agent's handshake + resumption
    assert 9.5 <= entry["relay"]["up"]["delay_median_ms"] <= 13
    emulation = entry["emulation"]
    assert emulation["modelled_op_ms"]["sign"] == pytest.approx(414.0)
    # The model adds the scaled signature to D2TLS, and 5 scaled operations to standalone.
    assert emulation["variants"]["blind"]["median"] >= walls["blind"] + 400
    assert entry["ratios"]["modelled:blind/standalone"] < entry["ratios"]["wall:blind/standalone"]


def test_bench_record_costs_at_least_the_raw_aead(materials: Materials) -> None:
    result = record.run(runs=5, sizes=(64, 1024), progress=False, materials=materials)
    for suite in ("ccm8", "gcm"):
        rows = result["suites"][suite]["sizes"]
        assert [r["size"] for r in rows] == [64, 1024]
        for row in rows:
            assert row["vs_aead"] >= 1.0
            assert row["records_per_s"] > 0


def test_bench_server_counts_handshakes_at_the_server(materials: Materials) -> None:
    result = server.run(
        concurrency=[2],
        duration=0.6,
        cache_sizes=[3000],  # more than the load phase can create, so the fill is measured
        cache_duration=0.5,
        store_urls=[],
        progress=False,
        materials=materials,
        engine_handshakes=5,
    )
    kinds = {row["kind"]: row for row in result["levels"]}
    assert kinds["full"]["completed"] > 0 and kinds["resumption"]["completed"] > 0
    pair = result["verdict_cache"]  # resumptions with the client-chain verdict cache off / on
    assert pair["off"]["completed"] > 0 and pair["on"]["completed"] > 0
    assert kinds["full"]["server_cpu_ms"] > result["floor"]["full_ms"] > 0
    assert result["floor"]["resumption_ms"] < result["floor"]["full_ms"]
    assert result["cache"][0]["cached_sessions"] >= 3000
    assert result["cache"][0]["fill_added"] > 0
    assert result["cache"][0]["bytes_per_session"] > 100  # a session holds a certificate
    assert result["targets"]["full_vs_floor"]["value"] > 1
    assert result["targets"]["full_vs_floor"]["limit"] == 4.0  # issue 23
    assert result["targets"]["resumption_vs_floor"]["limit"] == 10.0
    assert result["floor"]["key_operations_agree"]["agree"]
    for kind in ("full", "resumption"):
        split = result["split"][kind]
        assert split["engine_ms"] > split["floor_ms"] > 0
    assert "as the floor charges" in server.render(result)


def test_floors_are_the_sum_of_their_operations(materials: Materials) -> None:
    device = floor.device_floor(materials, repeat=3)
    total = sum(op["seconds"] * op["count"] for op in device["ops"].values())
    assert device["total_s"] == pytest.approx(total)
    assert device["ops"]["ecdsa_sign"]["count"] == 1
    full = floor.server_full_floor(materials, repeat=3)
    links = len(materials.device_chain)
    assert full["ops"]["ecdsa_verify_client_chain"]["count"] == links
    assert full["ops"]["decode_client_certificates"]["count"] == links
    assert set(full["ops"]) == set(floor.SERVER_FULL_OPERATIONS)
    total = sum(op["seconds"] * op["count"] for op in full["ops"].values())
    assert full["total_s"] == pytest.approx(total)
    resumption = floor.server_resumption_floor(materials, repeat=3)
    assert set(resumption["ops"]) == set(floor.SERVER_RESUMPTION_OPERATIONS)
    assert full["total_s"] > resumption["total_s"]


def test_engine_pass_counts_the_public_key_operations_the_floor_charges(
    materials: Materials,
) -> None:
    """The full-handshake floor charges the public-key operations the server engine counts:
    1 signature, 1 key generation and ECDH, one verification per client certificate plus
    CertificateVerify; a resumption does none (the verdict cache holds the chain's)."""
    full = server.engine_pass(materials, "full", 3)
    resumed = server.engine_pass(materials, "resumption", 3)
    links = len(materials.device_chain)
    assert full["key_operations"] == {"sign": 1, "verify": links + 1, "ecdh": 1, "keygen": 1}
    assert resumed["key_operations"] == dict.fromkeys(server.KEY_OPERATIONS, 0)
    assert full["server_engine_cpu_ms"] > resumed["server_engine_cpu_ms"] > 0


def test_summary_and_table_helpers() -> None:
    stats = summary([1.0, 2.0, 3.0, 4.0, 100.0])
    assert stats["median"] == 3.0 and stats["q1"] == 2.0 and stats["q3"] == 4.0
    assert summary([])["median"] is None
    text = table(["name", "value"], [["a", 1.5], ["bb", None]], title="t")
    assert text.splitlines()[0] == "t" and "-" in text.splitlines()[-1]
