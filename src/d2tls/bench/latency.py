"""``d2tls bench latency``: device-perceived session setup time under real network delay.

Topology (everything on 127.0.0.1, each party in its own process or thread)::

    device ──(local link)── agent
      │                       │
      └──────── impairment relay (delay/jitter/loss per direction) ──────── server

The agent and the device reach the server through one :class:`~d2tls.net.relay.Relay`
(the paper's "agent/device network to cloud" path: LAN 1.366 ms RTT, WAN 167.888 ms RTT);
the local device-agent link can get its own delay (``--local-rtt``, default 0).

**Slower-device emulation** (``--device-sign-ms``, e.g. the paper's 414 ms CC3200 signature):
a *calibrated model*, not a measurement. Our device's public-key operations are counted per
session and timed on this machine in the same run; the model scales every public-key operation
by ``k = target_sign / local_sign`` and adds ``count x local_time x (k - 1)`` to the measured
wall time, because the device does them on the critical path (the agent and the server wait).
Symmetric crypto, Python overhead and the network are left as measured, so the model shows the
shape of Tables 3-4 (public-key work dominates on a microcontroller), not its absolute values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from d2tls.bench.common import (
    Materials,
    Progress,
    environment,
    ratio,
    summary,
    table,
)
from d2tls.bench.device import LABELS, VARIANTS, DeviceSide, Sample
from d2tls.bench.floor import public_key_op_times
from d2tls.bench.infra import LoopThread, Peers, PeersSpec, RelayProcess, RelaySpec

#: The paper's measured RTTs between the agent/device network and the server (§6.1), in ms.
PROFILES = {"lan": 1.366, "wan": 167.888}
#: The paper's Tables 3 and 4 (TI CC3200), ms: full handshake DTLS / D2TLS, resumption.
PAPER = {
    "lan": {"standalone": 2920.0, "d2tls": 851.0, "resumption": 57.0, "sign": 414.0},
    "wan": {"standalone": 3581.0, "d2tls": 1840.0, "resumption": 537.0, "sign": 415.0},
}


@dataclass
class Profile:
    """One network condition between the agent/device network and the server."""

    name: str
    rtt_ms: float
    jitter_ms: float = 0.0
    loss: float = 0.0
    local_rtt_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _modelled(sample: Sample, pk_ms: dict[str, float], scale: float) -> float:
    ops = sample.report.key_operations
    extra = sum(ops.get(kind, 0) * pk_ms[kind] * (scale - 1.0) for kind in pk_ms)
    return sample.wall_ms + extra


def run_profile(
    materials: Materials,
    peers: Peers,
    thread: LoopThread,
    profile: Profile,
    runs: int,
    warmup: int,
    seed: int,
    bar: Progress,
) -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    assert peers.agent is not None
    half = profile.rtt_ms / 2000
    specs = [
        RelaySpec(peers.server, half, half, profile.jitter_ms / 1000, profile.loss, seed),
        RelaySpec(
            peers.agent,
            profile.local_rtt_ms / 2000,
            profile.local_rtt_ms / 2000,
            0.0,
            0.0,
            seed + 1,
        ),
    ]
    samples: dict[str, list[Sample]] = {v: [] for v in VARIANTS}
    with RelayProcess(specs) as relays:
        server_relay, agent_relay = relays.addresses
        agent = agent_relay if profile.local_rtt_ms > 0 else peers.agent
        side = DeviceSide(materials, agent, server_relay)
        bar.describe(f"bench latency ({profile.name})")
        for i in range(warmup + runs):
            order = VARIANTS[i % 4 :] + VARIANTS[: i % 4]
            for variant in order:
                sample = thread.run(side.measure(variant), timeout=600)
                if i >= warmup:
                    samples[variant].append(sample)
                bar.update()
        relay_stats = relays.stats()[0]
    return samples, relay_stats


def run(
    profiles: list[Profile],
    runs: int = 50,
    warmup: int = 2,
    seed: int = 0,
    device_sign_ms: float | None = None,
    progress: bool = True,
    materials: Materials | None = None,
) -> dict[str, Any]:
    materials = materials or Materials.create()
    result: dict[str, Any] = {
        "benchmark": "latency",
        "runs": runs,
        "seed": seed,
        "environment": environment(),
        "profiles": {},
    }
    with Peers(PeersSpec(materials.paths.directory)) as peers, LoopThread() as thread:
        total = len(profiles) * (warmup + runs) * len(VARIANTS)
        with Progress(total, "bench latency", progress) as bar:
            for profile in profiles:
                samples, relay_stats = run_profile(
                    materials, peers, thread, profile, runs, warmup, seed, bar
                )

                async def op_times() -> dict[str, float]:
                    return public_key_op_times(materials)

                pk_ms = {k: v * 1000 for k, v in thread.run(op_times()).items()}
                entry: dict[str, Any] = {
                    "profile": profile.to_dict(),
                    "relay": {
                        "up": {
                            k: relay_stats["up"][k]
                            for k in (
                                "forwarded",
                                "dropped",
                                "delay_median_ms",
                                "lateness_median_ms",
                            )
                        },
                        "down": {
                            k: relay_stats["down"][k]
                            for k in (
                                "forwarded",
                                "dropped",
                                "delay_median_ms",
                                "lateness_median_ms",
                            )
                        },
                    },
                    "public_key_op_ms": pk_ms,
                    "variants": {},
                }
                for variant in VARIANTS:
                    rows = samples[variant]
                    entry["variants"][variant] = {
                        "wall_ms": summary([s.wall_ms for s in rows]),
                        "cpu_ms": summary([s.cpu_ms for s in rows]),
                        "key_operations": dict(rows[0].report.key_operations) if rows else {},
                    }
                if device_sign_ms:
                    scale = device_sign_ms / pk_ms["sign"]
                    entry["emulation"] = {
                        "label": "calibrated model, not a measurement",
                        "device_sign_ms": device_sign_ms,
                        "scale": scale,
                        "modelled_op_ms": {k: v * scale for k, v in pk_ms.items()},
                        "variants": {
                            v: summary([_modelled(s, pk_ms, scale) for s in samples[v]], 2)
                            for v in VARIANTS
                        },
                    }
                entry["ratios"] = _ratios(entry)
                paper = PAPER.get(profile.name)
                if paper:
                    entry["paper"] = paper
                    entry["paper_reduction"] = round(1 - paper["d2tls"] / paper["standalone"], 4)
                result["profiles"][profile.name] = entry
    return result


def _ratios(entry: dict[str, Any]) -> dict[str, float | None]:
    v = entry["variants"]
    out: dict[str, float | None] = {}
    for mode in ("bound", "blind", "reuse"):
        out[f"wall:{mode}/standalone"] = ratio(
            v[mode]["wall_ms"]["median"], v["standalone"]["wall_ms"]["median"]
        )
        emulation = entry.get("emulation")
        if emulation:
            out[f"modelled:{mode}/standalone"] = ratio(
                emulation["variants"][mode]["median"],
                emulation["variants"]["standalone"]["median"],
            )
    return out


def render(result: dict[str, Any]) -> str:
    out = []
    for name, entry in result["profiles"].items():
        profile = entry["profile"]
        rows = []
        emulation = entry.get("emulation")
        paper = entry.get("paper", {})
        paper_for = {
            "bound": paper.get("d2tls"),
            "blind": paper.get("d2tls"),
            "standalone": paper.get("standalone"),
            "reuse": paper.get("resumption"),
        }
        for variant in VARIANTS:
            data = entry["variants"][variant]
            wall = data["wall_ms"]
            rows.append(
                [
                    LABELS[variant],
                    wall["median"],
                    f"{wall['q1']:.1f}-{wall['q3']:.1f}",
                    data["cpu_ms"]["median"],
                    emulation["variants"][variant]["median"] if emulation else None,
                    paper_for[variant],
                ]
            )
        title = (
            f"Setup time seen by the device, {name}: +{profile['rtt_ms']} ms RTT to the server"
            f" (jitter {profile['jitter_ms']} ms, loss {profile['loss']}, local RTT "
            f"{profile['local_rtt_ms']} ms), median of {result['runs']} runs"
        )
        model_header = (
            f"model ms (sign={emulation['device_sign_ms']:g})" if emulation else "model ms"
        )
        out.append(
            table(
                ["", "wall ms", "wall IQR", "device CPU ms", model_header, "paper ms"],
                rows,
                title=title,
            )
        )
        r = entry["ratios"]
        out.append(
            f"D2TLS/standalone wall: bound {r['wall:bound/standalone']}, blind "
            f"{r['wall:blind/standalone']}"
            + (
                f"; modelled: bound {r['modelled:bound/standalone']}, blind "
                f"{r['modelled:blind/standalone']}"
                if emulation
                else ""
            )
            + (f"; paper: {paper['d2tls'] / paper['standalone']:.3f}" if paper else "")
        )
        relay = entry["relay"]
        out.append(
            f"relay: up median delay {relay['up']['delay_median_ms']} ms, down "
            f"{relay['down']['delay_median_ms']} ms, dropped {relay['up']['dropped']}+"
            f"{relay['down']['dropped']} datagrams\n"
        )
    if any("emulation" in e for e in result["profiles"].values()):
        out.append(
            "model = measured wall + every device public-key operation scaled to the target "
            "signature time (calibrated emulation, not a measurement)"
        )
    return "\n".join(out)
