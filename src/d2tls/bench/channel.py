"""The device's cost of one delegation-channel handshake: ``psk`` against ``ecdhe-psk``.

Run: ``d2tls bench channel [--runs N] [--json]`` (or ``python -m d2tls.bench.channel``). The
device's channel engine (the DTLSClient the device opens to the agent, same config as in
d2tls.core.roles.device) meets the
agent's engine (DTLSServer, cookie exchange on) in memory, datagrams passed by hand; only the
calls into the device's engine are timed (CPU time of this thread), alternating the two
channels so that load on the machine hits both alike. Bytes are the device's datagrams both
ways, key operations its engine's counters. Ratios are ecdhe-psk / psk from the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from d2tls.core.delegation.channel_security import (
    CHANNELS,
    Channel,
    agent_channel_suites,
    device_channel_suites,
)
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientConfig, ServerConfig
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.roles.device import CHANNEL_MTU

DEVICE = ("127.0.0.1", 40001)
AGENT = ("127.0.0.1", 40002)
IDENTITY = b"device-1"
KEY = bytes(range(32))
T = TypeVar("T")


@dataclass
class ChannelCost:
    """One channel handshake as the device sees it."""

    cpu_ms: float
    bytes_sent: int
    bytes_received: int
    datagrams: int
    key_operations: dict[str, int]


def handshake(channel: Channel) -> ChannelCost:
    """One complete channel handshake; the device's CPU, bytes and key operations."""
    agent = DTLSServer(
        ServerConfig(
            cipher_suites=agent_channel_suites("psk"),
            psk_keys={IDENTITY: KEY},
            mtu=CHANNEL_MTU,
        )
    )
    cpu = 0.0

    def device_call(call: Callable[[], T]) -> T:
        nonlocal cpu
        started = time.thread_time()
        result = call()
        cpu += time.thread_time() - started
        return result

    device = device_call(
        lambda: DTLSClient(
            ClientConfig(
                cipher_suites=device_channel_suites(channel),
                psk_identity=IDENTITY,
                psk=KEY,
                mtu=CHANNEL_MTU,
            ),
            remote=AGENT,
        )
    )
    now = 0.0
    device_call(lambda: device.connect(now))
    for _ in range(20):
        outgoing = device_call(lambda: device.datagrams_to_send(now))
        for datagram, _ in outgoing:
            agent.receive_datagram(datagram, DEVICE, now)
        replies = [d for d, _ in agent.datagrams_to_send(now)]
        for datagram in replies:
            device_call(lambda d=datagram: device.receive_datagram(d, AGENT, now))  # type: ignore[misc]
        if device.is_established and not replies:
            break
    if not device.is_established:
        raise RuntimeError(f"{channel} channel handshake did not complete")
    stats = device.stats
    return ChannelCost(
        cpu_ms=cpu * 1000,
        bytes_sent=stats["bytes_sent"],
        bytes_received=stats["bytes_received"],
        datagrams=stats["datagrams_sent"] + stats["datagrams_received"],
        key_operations={k: stats[k] for k in ("keygen", "ecdh", "sign", "verify")},
    )


def measure(runs: int) -> dict[str, Any]:
    """``runs`` handshakes per channel, interleaved; medians and ecdhe-psk/psk ratios."""
    costs: dict[Channel, list[ChannelCost]] = {c: [] for c in CHANNELS}
    for channel in CHANNELS:  # warm-up: imports, machine construction
        handshake(channel)
    for _ in range(runs):
        for channel in CHANNELS:
            costs[channel].append(handshake(channel))
    out: dict[str, Any] = {"runs": runs, "channels": {}}
    for channel, samples in costs.items():
        last = samples[-1]
        out["channels"][channel] = {
            "suite": device_channel_suites(channel)[0].name,
            "cpu_ms_median": round(statistics.median(s.cpu_ms for s in samples), 3),
            "bytes": last.bytes_sent + last.bytes_received,
            "bytes_sent": last.bytes_sent,
            "bytes_received": last.bytes_received,
            "datagrams": last.datagrams,
            "key_operations": last.key_operations,
        }
    psk, ecdhe = out["channels"]["psk"], out["channels"]["ecdhe-psk"]
    out["ratio_ecdhe_psk_over_psk"] = {
        "cpu": round(ecdhe["cpu_ms_median"] / psk["cpu_ms_median"], 2),
        "bytes": round(ecdhe["bytes"] / psk["bytes"], 2),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m d2tls.bench.channel",
        description="device cost of one delegation-channel handshake, psk vs ecdhe-psk",
    )
    parser.add_argument("--runs", type=int, default=200, help="handshakes per channel")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    result = measure(args.runs)
    print(json.dumps(result, sort_keys=True) if args.json else render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    """The human-readable table of :func:`measure`'s result."""
    lines = [f"device, one channel handshake ({result['runs']} runs each, medians):"]
    for channel, row in result["channels"].items():
        ops = ", ".join(f"{k} {v}" for k, v in row["key_operations"].items() if v)
        lines.append(
            f"  {channel:10} {row['suite']:45} CPU {row['cpu_ms_median']:7.3f} ms  "
            f"{row['bytes']:4} bytes ({row['datagrams']} datagrams)  {ops or 'no key operations'}"
        )
    ratio = result["ratio_ecdhe_psk_over_psk"]
    lines.append(f"  ecdhe-psk / psk: CPU {ratio['cpu']}x, bytes {ratio['bytes']}x")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
