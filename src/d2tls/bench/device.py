"""``d2tls bench device``: what one new session costs the device, D2TLS vs standalone DTLS.

The server and agent run in a child process (:class:`~d2tls.bench.infra.Peers`); the device
runs in a dedicated thread with its own asyncio loop, and its CPU is that thread's
``time.thread_time()`` (user + system time of the device thread only: its Python work, its
socket calls, its event loop; not the server's or the agent's processes) around
``Device.connect()`` (or ``run_standalone``), from the call until the end-to-end session is
established (its last flight handed to the socket). Every run measures all variants back to
back, in a rotating order, so drift hits them alike:

* ``bound`` – D2TLS, bound mode (the device checks the transcript it signs), new session
  over the standing plain-PSK channel (spec/delegation.md §3.1: no channel handshake);
* ``blind`` – D2TLS, blind mode (the paper's behaviour), new session, standing PSK channel;
* ``standalone`` – the device runs the full mutual-auth ECDHE_ECDSA handshake itself;
* ``reuse`` – D2TLS with a cached context: the resumption alone (no delegation);
* ``<mode>-first`` – the first delegation of a device: a full channel handshake included;
* ``<mode>-ecdhe`` / ``<mode>-ecdhe-first`` – the same over an ECDHE-PSK channel (forward
  secrecy of handed-over contexts per channel key, docs/security.md);
* ``bound-strict`` / ``bound-strict-chain`` – ``bound`` by a strict device, which also verifies
  the ServerKeyExchange signature under the pinned server key, or under the server chain it
  verifies against the CA (:func:`measure_strict`, docs/device-modes.md).
* ``<variant>-nc`` – ``bound``, ``blind``, ``standalone`` and ``reuse`` against a second
  server (and agent) started with ``resume_without_cookie`` (``d2tls server
  --resume-without-cookie``, RFC 6347 §4.2.1): it resumes a session without the cookie round
  trip, and still runs the cookie exchange before every full handshake, so standalone-nc is
  the same handshake as standalone; D2TLS ratios of this server are taken against it.

Issue 23's targets are printed for both servers, from the ratios of this run.

The floor (one ECDSA P-256 signature + one resumption's symmetric work) is timed in the same
thread in the same run. A last pass sends each variant once through zero-delay relays to split
the device's link bytes by DTLS record type (handshake vs application data = delegation
messages).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from d2tls.bench import device_profiles
from d2tls.bench.common import (
    SERVER_NAME,
    Materials,
    Progress,
    environment,
    gc_paused,
    ratio,
    summary,
    table,
    target_line,
)
from d2tls.bench.floor import device_floor, public_key_op_times
from d2tls.bench.infra import LoopThread, Peers, PeersSpec, RelayProcess, RelaySpec
from d2tls.core.delegation.chain_cache import DeviceChainMemo
from d2tls.core.delegation.channel_security import Channel
from d2tls.core.delegation.messages import DelegationMode
from d2tls.core.dtls.config import ClientConfig
from d2tls.core.pki.names import spki_sha256
from d2tls.core.roles.device import DeviceConfig
from d2tls.core.roles.signer import DeviceSigner
from d2tls.net.device_host import Device, DeviceReport, run_standalone

Address = tuple[str, int]
VARIANTS = ("bound", "blind", "standalone", "reuse")
#: The channel variants (issue 23 item 1): first delegation vs later ones, PSK vs ECDHE-PSK.
CHANNEL_VARIANTS = (
    "bound-first",
    "blind-first",
    "bound-ecdhe",
    "blind-ecdhe",
    "bound-ecdhe-first",
    "blind-ecdhe-first",
)
#: Strict device mode (issue 24 item 3): pinned server key, or the chain against the CA.
STRICT_VARIANTS = ("bound-strict", "bound-strict-chain")
#: The same against a server that resumes without a cookie exchange (RFC 6347 §4.2.1).
NO_COOKIE_VARIANTS = ("bound-nc", "blind-nc", "standalone-nc", "reuse-nc")
ALL_VARIANTS = VARIANTS + CHANNEL_VARIANTS + NO_COOKIE_VARIANTS + STRICT_VARIANTS
D2TLS_VARIANTS = tuple(v for v in ALL_VARIANTS if not v.startswith("standalone"))
LABELS = {
    "bound": "D2TLS bound (new, PSK ch. standing)",
    "blind": "D2TLS blind (new, PSK ch. standing)",
    "standalone": "standalone DTLS (new)",
    "reuse": "D2TLS reuse (cached ctx)",
    "bound-first": "D2TLS bound (first, PSK ch. hs)",
    "blind-first": "D2TLS blind (first, PSK ch. hs)",
    "bound-ecdhe": "D2TLS bound (new, ECDHE-PSK standing)",
    "blind-ecdhe": "D2TLS blind (new, ECDHE-PSK standing)",
    "bound-ecdhe-first": "D2TLS bound (first, ECDHE-PSK hs)",
    "blind-ecdhe-first": "D2TLS blind (first, ECDHE-PSK hs)",
    "bound-strict": "D2TLS strict, pinned key (new, PSK st.)",
    "bound-strict-chain": "D2TLS strict, CA chain (new, PSK st.)",
    "bound-nc": "D2TLS bound (new), server: no resum. cookie",
    "blind-nc": "D2TLS blind (new), server: no resum. cookie",
    "standalone-nc": "standalone DTLS (new), same server",
    "reuse-nc": "D2TLS reuse (cached ctx), same server",
}
#: Issue 23 targets: (ratio key prefix, variants it applies to, limit).
TARGETS: dict[str, tuple[str, tuple[str, ...], float]] = {
    "cpu_new_vs_standalone": ("cpu_d2tls_vs_standalone", ("bound", "blind"), 1.0),
    "cpu_reuse_vs_standalone": ("cpu_d2tls_vs_standalone", ("reuse",), 0.5),
    "bytes_bound_vs_standalone": ("bytes_d2tls_vs_standalone", ("bound",), 1.2),
    "bytes_blind_vs_standalone": ("bytes_d2tls_vs_standalone", ("blind",), 0.9),
}
#: The same targets against the server that resumes without a cookie exchange.
TARGETS_NO_COOKIE: dict[str, tuple[str, tuple[str, ...], float]] = {
    name: (key, tuple(f"{v}-nc" for v in modes), limit)
    for name, (key, modes, limit) in TARGETS.items()
}


def _standalone(variant: str) -> bool:
    return variant.split("-")[0] == "standalone"


def _reuse(variant: str) -> bool:
    return variant.split("-")[0] == "reuse"


def _parse(variant: str) -> tuple[DelegationMode, Channel, bool]:
    """``bound-ecdhe-first`` -> (BOUND, ecdhe-psk, first delegation); ``-nc`` names the
    server, not the device."""
    parts = variant.split("-")
    channel: Channel = "ecdhe-psk" if "ecdhe" in parts else "psk"
    return DelegationMode[parts[0].upper()], channel, "first" in parts


@dataclass
class Sample:
    """One measured session setup."""

    cpu_ms: float
    wall_ms: float
    report: DeviceReport
    #: The device's own address on its connection to the server.
    local: Address | None = None

    def row(self) -> dict[str, Any]:
        links = self.report.to_dict()["links"]
        agent, server = links["device-agent"], links["device-server"]
        return {
            "cpu_ms": self.cpu_ms,
            "wall_ms": self.wall_ms,
            "report_cpu_ms": self.report.cpu_ms,
            "key_operations": dict(self.report.key_operations),
            "agent_bytes": agent["bytes_sent"] + agent["bytes_received"],
            "server_bytes": server["bytes_sent"] + server["bytes_received"],
            "agent_datagrams": agent["datagrams_sent"] + agent["datagrams_received"],
            "server_datagrams": server["datagrams_sent"] + server["datagrams_received"],
            "agent_round_trips": agent["round_trips"],
            "server_round_trips": server["round_trips"],
            "delegations": self.report.delegations,
        }


class DeviceSide:
    """Creates and measures device connections; every coroutine runs in the device thread."""

    def __init__(self, materials: Materials, agent: Address, server: Address) -> None:
        self.materials = materials
        self.agent = agent
        self.server = server
        self._reuser: Device | None = None
        #: Devices whose channel to the agent stands, by (mode, channel).
        self._standing: dict[tuple[DelegationMode, Channel], Device] = {}
        #: One device: the agent holds its chain after the first session (chain_cache).
        self.chain_memo = DeviceChainMemo()
        #: Strict devices with a standing channel, by variant (:func:`measure_strict`).
        self.strict: dict[str, Device] = {}

    def close(self) -> None:
        """Close the standing channels (in the device thread)."""
        for device in (*self._standing.values(), *self.strict.values(), self._reuser):
            if device is not None:
                device.close()
        self._standing.clear()
        self._reuser = None

    async def prepare(self, variant: str) -> None:
        """Make sure a later-delegation variant has its standing channel (not measured)."""
        if _standalone(variant) or _reuse(variant):
            return
        mode, channel, first = _parse(variant)
        if first or (mode, channel) in self._standing:
            return
        device = self.device(mode, channel=channel)
        warm = await device.connect()
        await warm.close()
        self._standing[(mode, channel)] = device

    def device(
        self, mode: DelegationMode, server: Address | None = None, channel: Channel = "psk"
    ) -> Device:
        m = self.materials
        return Device(
            DeviceConfig(
                agent=self.agent,
                psk_identity=m.psk_identity,
                psk=m.psk,
                server=server or self.server,
                server_name=SERVER_NAME,
                certificate_chain=m.device_chain,
                signer=DeviceSigner(m.device_key),
                mode=mode,
                timeout=30.0,
                channel=channel,
                chain_memo=self.chain_memo,
            )
        )

    def standalone_config(self) -> ClientConfig:
        m = self.materials
        return ClientConfig(
            trust_store=m.store,
            server_name=SERVER_NAME,
            certificate_chain=m.device_chain,
            private_key=m.device_key,
        )

    async def measure(self, variant: str) -> Sample:
        if variant in STRICT_VARIANTS:
            return await measure_strict(self, variant)
        if _standalone(variant):
            config = self.standalone_config()
            with gc_paused():
                cpu, wall = time.thread_time(), time.perf_counter()
                connection, report = await run_standalone(config, self.server)
                cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            local = connection.local_address
            await connection.close()
            return Sample(cpu * 1000, wall * 1000, report, local)
        if _reuse(variant):
            if self._reuser is None:
                self._reuser = self.device(DelegationMode.BOUND)
                warm = await self._reuser.connect()
                await warm.close()
            device = self._reuser
        else:
            mode, channel, first_delegation = _parse(variant)
            if first_delegation:
                device = self.device(mode, channel=channel)
            else:
                await self.prepare(variant)
                device = self._standing[(mode, channel)]
                device.context = None  # a new session: delegate over the standing channel
        with gc_paused():
            cpu, wall = time.thread_time(), time.perf_counter()
            delegated = await device.connect()
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        local = delegated.local_address
        await delegated.close()
        if not _reuse(variant) and _parse(variant)[2]:
            device.close()  # a first delegation's device goes away with its channel
        return Sample(cpu * 1000, wall * 1000, delegated.report, local)


async def measure_strict(side: DeviceSide, variant: str) -> Sample:
    """A new session of a strict device over its standing PSK channel (the ``bound`` variant
    plus the device's own ServerKeyExchange verify, RFC 8422 §5.4): ``bound-strict`` under
    the pinned server key (RFC 7469 §2.4, 1 ECDSA verify), ``bound-strict-chain`` under the
    server chain it verifies against the CA (1 verify per certificate below the anchor + 1)."""
    device = side.strict.get(variant)
    if device is None:
        device = side.device(DelegationMode.BOUND)
        device.config.strict = True
        if variant == "bound-strict":
            device.config.server_pin = spki_sha256(side.materials.server_chain[0])
        else:
            device.config.server_trust_store = side.materials.store
        warm = await device.connect()  # the channel handshake and first delegation: unmeasured
        await warm.close()
        side.strict[variant] = device
    device.context = None  # a new session: delegate over the standing channel
    with gc_paused():
        cpu, wall = time.thread_time(), time.perf_counter()
        delegated = await device.connect()
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    local = delegated.local_address
    await delegated.close()
    return Sample(cpu * 1000, wall * 1000, delegated.report, local)


def strict_ratios(variants: dict[str, Any], verify_ms: float) -> dict[str, float | None]:
    """Strict vs bound device CPU in the same run, and the extra CPU in units of one ECDSA
    P-256 verify timed in the same thread (``public_key_op_ms``)."""
    bound = variants["bound"]["cpu_ms"]["median"]
    out: dict[str, float | None] = {}
    for variant in STRICT_VARIANTS:
        strict = variants[variant]["cpu_ms"]["median"]
        out[f"cpu_strict_vs_bound:{variant}"] = ratio(strict, bound)
        out[f"extra_cpu_in_verifies:{variant}"] = ratio(strict - bound, verify_ms)
    return out


def _aggregate(samples: list[Sample]) -> dict[str, Any]:
    rows = [s.row() for s in samples]
    out: dict[str, Any] = {
        "cpu_ms": summary([r["cpu_ms"] for r in rows]),
        "wall_ms": summary([r["wall_ms"] for r in rows]),
        "report_cpu_ms": summary([r["report_cpu_ms"] for r in rows]),
        "key_operations": rows[0]["key_operations"] if rows else {},
        "delegations": rows[0]["delegations"] if rows else 0,
    }
    for key in (
        "agent_bytes",
        "server_bytes",
        "agent_datagrams",
        "server_datagrams",
        "agent_round_trips",
        "server_round_trips",
    ):
        out[key] = summary([float(r[key]) for r in rows], 1)["median"]
    out["link_bytes"] = out["agent_bytes"] + out["server_bytes"]
    out["datagrams"] = out["agent_datagrams"] + out["server_datagrams"]
    out["round_trips"] = out["agent_round_trips"] + out["server_round_trips"]
    out["public_key_operations"] = sum(out["key_operations"].values())
    # Key operations must be identical in every run; say so if not.
    out["key_operations_constant"] = all(
        r["key_operations"] == rows[0]["key_operations"] for r in rows
    )
    return out


async def _profile(side: DeviceSide, runs: int) -> str:
    try:
        from pyinstrument import Profiler
    except ImportError:
        return "pyinstrument is not installed (pip install 'd2tls[profile]')"
    profiler = Profiler(interval=0.0002, async_mode="disabled")
    profiler.start()
    for _ in range(runs):
        await side.measure("blind")
    profiler.stop()
    text: str = profiler.output_text(unicode=False, color=False, show_all=False)
    return text


def run(
    runs: int = 50,
    warmup: int = 3,
    progress: bool = True,
    breakdown: bool = True,
    profile_runs: int = 0,
    materials: Materials | None = None,
    device_profile: str | None = None,
    memory_runs: int = 3,
) -> dict[str, Any]:
    """Run the device benchmark; returns the JSON-able result.

    ``device_profile`` (``cc3200``/``cc2538``) adds the paper-device model of
    :mod:`d2tls.bench.device_profiles`, fed with this run's counted operations, and a
    tracemalloc pass for the device's peak memory per variant.
    """
    profile = device_profiles.load(device_profile) if device_profile else None
    materials = materials or Materials.create()
    memory: dict[str, int] | None = None
    memory_buffered: dict[str, int] | None = None
    samples: dict[str, list[Sample]] = {v: [] for v in ALL_VARIANTS}
    result: dict[str, Any] = {"benchmark": "device", "runs": runs, "environment": environment()}
    no_cookie = PeersSpec(materials.paths.directory, resume_without_cookie=True)
    with (
        Peers(PeersSpec(materials.paths.directory)) as peers,
        Peers(no_cookie) as peers_nc,
        LoopThread() as thread,
    ):
        assert peers.agent is not None and peers_nc.agent is not None
        side = DeviceSide(materials, peers.agent, peers.server)
        side_nc = DeviceSide(materials, peers_nc.agent, peers_nc.server)
        result["servers"] = {
            "default": "cookie exchange before every handshake, resumption included",
            "nc": "resume_without_cookie (RFC 6347 §4.2.1): cookie exchange before full "
            "handshakes only",
        }
        total = (warmup + runs) * len(ALL_VARIANTS) + 1
        with Progress(total, "bench device", progress) as bar:
            for i in range(warmup + runs):
                turn = i % len(ALL_VARIANTS)
                order = ALL_VARIANTS[turn:] + ALL_VARIANTS[:turn]
                for variant in order:
                    on = side_nc if variant.endswith("-nc") else side
                    sample = thread.run(on.measure(variant), timeout=120)
                    if i >= warmup:
                        samples[variant].append(sample)
                    bar.update()
            bar.describe("bench device: floor")

            async def floors() -> tuple[dict[str, Any], dict[str, float]]:
                return device_floor(materials), public_key_op_times(materials)

            floor, pk_times = thread.run(floors())
            bar.update()
        if profile_runs:
            result["profile"] = thread.run(_profile(side, profile_runs))
        if breakdown:
            result["breakdown"] = _breakdown(materials, peers, thread, side.chain_memo)
        if profile is not None:
            peaks = device_profiles.peak_memory(
                lambda v: thread.run(side.measure(v), timeout=120), VARIANTS, memory_runs
            )
            memory = peaks["peak_bytes"]
            memory_buffered = peaks["peak_with_default_buffer_bytes"]

        async def close_side() -> None:
            side.close()
            side_nc.close()

        thread.run(close_side())
    variants = {v: _aggregate(samples[v]) for v in ALL_VARIANTS}
    result["variants"] = variants
    result["floor"] = {
        "total_ms": floor["total_s"] * 1000,
        "sign_ms": floor["sign_s"] * 1000,
        "symmetric_ms": floor["symmetric_s"] * 1000,
        "ops": {
            k: {"count": v["count"], "ms": v["seconds"] * 1000} for k, v in floor["ops"].items()
        },
    }
    result["public_key_op_ms"] = {k: v * 1000 for k, v in pk_times.items()}
    result["ratios"] = _ratios(variants, result["floor"]["total_ms"])
    result["ratios"].update(strict_ratios(variants, result["public_key_op_ms"]["verify"]))
    result["targets"] = _targets(result["ratios"], TARGETS)
    result["targets_resume_without_cookie"] = _targets(result["ratios"], TARGETS_NO_COOKIE)
    if profile is not None:
        base = {v: variants[v] for v in VARIANTS}
        result["device_profile"] = device_profiles.evaluate(profile, base, memory, memory_buffered)
    return result


def _targets(
    ratios: dict[str, float | None], targets: dict[str, tuple[str, tuple[str, ...], float]]
) -> dict[str, Any]:
    """Issue 23's targets: the worst ratio of the variants each applies to, met or missed."""
    out: dict[str, Any] = {}
    for name, (key, modes, limit) in targets.items():
        values = {m: ratios[f"{key}:{m}"] for m in modes}
        known = [v for v in values.values() if v is not None]
        out[name] = {
            "limit": limit,
            **values,
            "worst": max(known) if known else None,
            "met": len(known) == len(values) and all(v <= limit for v in known),
        }
    return out


def _ratios(variants: dict[str, Any], floor_ms: float) -> dict[str, float | None]:
    """Each D2TLS variant against the standalone device of the same server."""
    out: dict[str, float | None] = {}
    for mode in D2TLS_VARIANTS:
        v = variants[mode]
        standalone = variants["standalone-nc" if mode.endswith("-nc") else "standalone"]
        out[f"cpu_d2tls_vs_standalone:{mode}"] = ratio(
            v["cpu_ms"]["median"], standalone["cpu_ms"]["median"]
        )
        out[f"cpu_d2tls_vs_floor:{mode}"] = ratio(v["cpu_ms"]["median"], floor_ms)
        out[f"bytes_d2tls_vs_standalone:{mode}"] = ratio(v["link_bytes"], standalone["link_bytes"])
        out[f"datagrams_d2tls_vs_standalone:{mode}"] = ratio(
            v["datagrams"], standalone["datagrams"]
        )
        out[f"wall_d2tls_vs_standalone:{mode}"] = ratio(
            v["wall_ms"]["median"], standalone["wall_ms"]["median"]
        )
        out[f"public_key_ops_d2tls_vs_standalone:{mode}"] = ratio(
            v["public_key_operations"], standalone["public_key_operations"]
        )
    out["cpu_standalone_vs_floor"] = ratio(variants["standalone"]["cpu_ms"]["median"], floor_ms)
    return out


def _breakdown(
    materials: Materials, peers: Peers, thread: LoopThread, chain_memo: DeviceChainMemo
) -> dict[str, Any]:
    """Device link bytes by DTLS content type, one session per variant, via zero-delay relays
    (the same device as the measured runs: its agent already holds its chain)."""
    assert peers.agent is not None
    specs = [RelaySpec(peers.agent), RelaySpec(peers.server)]
    out: dict[str, Any] = {}
    with RelayProcess(specs) as relays:
        agent_relay, server_relay = relays.addresses
        side = DeviceSide(materials, agent_relay, server_relay)
        side.chain_memo = chain_memo
        for variant in ("bound", "blind", "standalone"):
            thread.run(side.prepare(variant), timeout=120)
            time.sleep(0.05)
            relays.reset()
            sample = thread.run(side.measure(variant), timeout=120)
            time.sleep(0.05)  # let close_notify pass the relays
            agent_stats, server_stats = relays.stats()
            local = f"{sample.local[0]}:{sample.local[1]}" if sample.local else ""
            out[variant] = {
                # Only the device talks to the agent relay; the agent also uses the server's.
                "device-agent": _merge(agent_stats),
                "device-server": dict(server_stats["clients"].get(local, {})),
            }

        async def close_side() -> None:
            side.close()

        thread.run(close_side())
    return out


def _merge(stats: dict[str, Any]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for direction in ("up", "down"):
        for kind, count in stats[direction]["bytes_by_content"].items():
            merged[kind] = merged.get(kind, 0) + int(count)
    return merged


def render(result: dict[str, Any]) -> str:
    """The human-readable report."""
    variants = result["variants"]
    rows = []
    for v in [v for v in ALL_VARIANTS if v in variants]:
        d = variants[v]
        ops = d["key_operations"]
        rows.append(
            [
                LABELS[v],
                d["cpu_ms"]["median"],
                f"{d['cpu_ms']['q1']:.2f}-{d['cpu_ms']['q3']:.2f}",
                d["wall_ms"]["median"],
                ops.get("sign", 0),
                ops.get("verify", 0),
                ops.get("ecdh", 0),
                ops.get("keygen", 0),
                int(d["agent_bytes"]),
                int(d["server_bytes"]),
                int(d["datagrams"]),
                int(d["round_trips"]),
            ]
        )
    out = [
        table(
            [
                "per new session",
                "CPU ms",
                "CPU IQR",
                "wall ms",
                "sign",
                "verify",
                "ecdh",
                "keygen",
                "dev-agent B",
                "dev-server B",
                "datagrams",
                "RTTs",
            ],
            rows,
            title=f"Device cost, median of {result['runs']} runs (CPU: user + system time of "
            "the device thread alone, from connect() to the session established)",
        )
    ]
    floor = result["floor"]
    out.append(
        f"\nFloor (same run, same thread): {floor['total_ms']:.4f} ms = ECDSA P-256 sign "
        f"{floor['sign_ms']:.4f} ms + resumption symmetric work {floor['symmetric_ms']:.4f} ms"
    )
    r = result["ratios"]
    shown = [v for v in D2TLS_VARIANTS if f"cpu_d2tls_vs_standalone:{v}" in r]
    out.append(
        "\n"
        + table(
            ["ratio", *shown],
            [
                [name, *(r[f"{key}:{v}"] for v in shown)]
                for name, key in (
                    ("device CPU / standalone", "cpu_d2tls_vs_standalone"),
                    ("device CPU / floor", "cpu_d2tls_vs_floor"),
                    ("link bytes / standalone", "bytes_d2tls_vs_standalone"),
                    ("datagrams / standalone", "datagrams_d2tls_vs_standalone"),
                    ("public-key ops / standalone", "public_key_ops_d2tls_vs_standalone"),
                    ("wall / standalone", "wall_d2tls_vs_standalone"),
                )
            ],
        )
    )
    out.append(f"standalone CPU / floor: {r['cpu_standalone_vs_floor']}")
    if "cpu_strict_vs_bound:bound-strict" in r:
        verify_ms = result["public_key_op_ms"]["verify"]
        out.append(
            "strict CPU / bound CPU: "
            + ", ".join(f"{v} {r[f'cpu_strict_vs_bound:{v}']}" for v in STRICT_VARIANTS)
            + f"; extra CPU in ECDSA verifies ({verify_ms:.3f} ms each, same thread): "
            + ", ".join(f"{v} {r[f'extra_cpu_in_verifies:{v}']}" for v in STRICT_VARIANTS)
        )
    out.append(
        "\nTargets (issue 23; a new D2TLS session = a delegation over the standing PSK channel; "
        "ratios of this run)"
    )
    servers = result.get("servers", {})
    for key, server in (("targets", "default"), ("targets_resume_without_cookie", "nc")):
        if key not in result:
            continue
        out.append(f" server {servers.get(server, server)}:")
        for name, entry in result[key].items():
            modes = "/".join(k for k in entry if k not in ("limit", "worst", "met"))
            out.append(target_line(f"{name} (worst of {modes})", entry["worst"], entry["limit"]))
    if "breakdown" in result:
        rows = []
        for variant, links in result["breakdown"].items():
            for link, kinds in links.items():
                if not kinds:
                    continue
                rows.append(
                    [
                        LABELS[variant],
                        link,
                        kinds.get("handshake", 0),
                        kinds.get("change_cipher_spec", 0),
                        kinds.get("application_data", 0),
                        kinds.get("alert", 0),
                        sum(kinds.values()),
                    ]
                )
        out.append(
            "\n"
            + table(
                ["variant", "link", "handshake", "CCS", "app data", "alert", "total"],
                rows,
                title="Device link bytes by record type (one session; app data on the agent "
                "link = delegation messages)",
            )
        )
    if "device_profile" in result:
        out.append("\n" + render_profile(result["device_profile"]))
    if "profile" in result:
        out.append("\nProfile of the device thread (D2TLS blind, pyinstrument):\n")
        out.append(result["profile"])
    return "\n".join(out)


def render_profile(model: dict[str, Any]) -> str:
    """The paper-device model of one run next to the paper's Tables 3-7."""
    paper = model["paper"]
    rows = []
    for variant in VARIANTS:
        row = device_profiles.ROWS[variant]
        ours = model["model"][variant]
        at_paper = model["model_at_paper_counts"].get(row, {})
        rows.append(
            [
                LABELS[variant],
                ours["lan"]["delay_ms"],
                paper.get(f"lan_{row}_ms"),
                ours["wan"]["delay_ms"],
                paper.get(f"wan_{row}_ms"),
                ours["lan"]["energy_mj"],
                paper.get(f"lan_{row}_mj"),
                ours["wan"]["energy_mj"],
                paper.get(f"wan_{row}_mj"),
                at_paper.get("lan", {}).get("delay_ms"),
            ]
        )
    out = [
        table(
            [
                "modelled per new session",
                "LAN ms",
                "paper T3",
                "WAN ms",
                "paper T4",
                "LAN mJ",
                "paper T5",
                "WAN mJ",
                "paper T6",
                "LAN ms at paper's counts",
            ],
            rows,
            title=f"Device profile {model['profile']}: {model['device']}\n"
            f"(parameters from {model['citation']}; inputs: this run's counted operations)",
        )
    ]
    split = [
        [
            LABELS[v],
            *(model["model"][v]["lan"][k] for k in ("cpu_ms", "radio_ms", "wait_ms")),
            model["model"][v]["lan"]["delegation_ms"],
            *(model["counts"][v][k] for k in ("agent_round_trips", "server_round_trips")),
            int(model["counts"][v]["agent_bytes"] + model["counts"][v]["server_bytes"]),
        ]
        for v in VARIANTS
    ]
    out.append(
        "\n"
        + table(
            [
                "LAN delay split",
                "public-key ms",
                "radio ms",
                "wait ms",
                "delegation ms",
                "agent RTs",
                "server RTs",
                "bytes",
            ],
            split,
        )
    )
    if model["targets"]:
        out.append("\nTargets (issue 23, cc3200 profile):")
        for name, entry in model["targets"].items():
            verdict = "met" if entry["met"] else "missed"
            if "checks" in entry:
                failed = [k for k, ok in entry["checks"].items() if not ok]
                detail = "all checks hold" if not failed else "failed: " + ", ".join(failed)
                out.append(f"  {name} ({entry['source']}): {detail} -> {verdict}")
            else:
                out.append(
                    f"  {name}: bound {entry['bound']}, blind {entry['blind']} vs paper "
                    f"{entry['paper']} ({entry['source']}, ±{entry['tolerance']:.0%}) -> {verdict}"
                )
    if "memory" in model:
        out.append(device_profiles.render_memory(model["memory"], VARIANTS))
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(render(run(runs=5)))
    asyncio.run(asyncio.sleep(0))
