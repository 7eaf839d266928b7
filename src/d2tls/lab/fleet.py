"""``d2tls demo --fleet N``: a fleet of servers sharing a Redis session store.

Everything runs on 127.0.0.1 as real processes, like ``d2tls demo``:

* a real ``redis-server`` (temporary directory, no persistence, a free port);
* N ``d2tls server`` processes (instances A, B, C, …) with
  ``--session-store redis://127.0.0.1:PORT/0 --store-key-file KEY``, requiring client
  certificates;
* a UDP load balancer (:mod:`d2tls.net.loadbalancer`, in this process) in front of them: each
  new client address goes to the next instance;
* a security agent and a device (``d2tls agent`` / ``d2tls device`` processes).

The device delegates: the agent's full handshake lands on instance A, which stores the session
in Redis (sealed with the key); the device then resumes it end to end through the balancer and
lands on instance B, which finds the session in Redis. A second connection of the device
resumes again, from its cached context, at instance C. Each server prints one line per
handshake (``resumed=True/False``); the demo reads those lines to show which instance handled
which handshake, and exits non-zero if the story did not happen exactly so.
"""

from __future__ import annotations

import json
import re
import string
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d2tls.core.errors import D2TLSError
from d2tls.core.pki.generate import init_pki
from d2tls.core.pki.verify import load_psk_file
from d2tls.core.store import open_store, write_key_file
from d2tls.core.store.codec import key_id
from d2tls.lab.demo import ECHO_TEXT, DemoError, Process, _cli, _run_device
from d2tls.lab.peers import free_udp_port
from d2tls.lab.redis_server import RedisServer
from d2tls.net.loadbalancer import BackgroundLoadBalancer

HANDSHAKE_LINE = re.compile(
    r"^handshake \('(?P<host>[^']*)', (?P<port>\d+)\): (?P<suite>\S+) "
    r"resumed=(?P<resumed>True|False) ems=(?P<ems>True|False) client=(?P<client>.*)$"
)
MAX_INSTANCES = 26


def instance_name(index: int) -> str:
    return string.ascii_uppercase[index]


@dataclass(frozen=True)
class Handshake:
    """One ``handshake …`` line of a server's log."""

    peer: tuple[str, int]
    suite: str
    resumed: bool
    client: str


def parse_handshakes(log: str) -> list[Handshake]:
    """The handshake lines ``d2tls server`` printed (see run_server's report)."""
    out = []
    for line in log.splitlines():
        match = HANDSHAKE_LINE.match(line.strip())
        if match:
            out.append(
                Handshake(
                    peer=(match["host"], int(match["port"])),
                    suite=match["suite"],
                    resumed=match["resumed"] == "True",
                    client=match["client"],
                )
            )
    return out


def _start_all(specs: list[tuple[str, list[str], str]], directory: Path) -> list[Process]:
    """Start processes in parallel; wait until each printed its ``ready`` text."""
    started: list[tuple[Process, str]] = []
    try:
        for name, argv, ready in specs:
            log = directory / f"{name}.log"
            with log.open("wb") as handle:
                popen = subprocess.Popen(
                    argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            started.append((Process(name, popen, log), ready))
        deadline = time.monotonic() + 30
        waiting = list(started)
        while waiting and time.monotonic() < deadline:
            for process, ready in list(waiting):
                if ready.encode() in process.log.read_bytes():
                    waiting.remove((process, ready))
                elif process.popen.poll() is not None:
                    raise DemoError(
                        f"{process.name} did not start: "
                        f"{process.log.read_text(errors='replace')[-2000:]}"
                    )
            time.sleep(0.05)
        if waiting:
            names = ", ".join(p.name for p, _ in waiting)
            raise DemoError(f"{names} did not start in time")
    except BaseException:  # a failed start, Ctrl-C or SIGTERM: stop what was started
        for process, _ in started:
            process.stop()
        raise
    return [p for p, _ in started]


def run_fleet(n: int, keep: Path | None = None) -> dict[str, Any]:
    """Run the fleet demo with ``n`` instances; returns the result (DemoError on failure)."""
    if not 2 <= n <= MAX_INSTANCES:
        raise DemoError(f"--fleet needs 2 to {MAX_INSTANCES} instances (got {n})")
    with ExitStack() as stack:
        directory = keep or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="d2tls-fleet-"))
        )
        directory.mkdir(parents=True, exist_ok=True)
        pki = init_pki(directory / "pki", server_name="localhost", devices=1)
        device = pki.devices[0]
        identity, psk = next(iter(load_psk_file(pki.psk_file).items()))
        key_file = directory / "store.key"
        keys = write_key_file(key_file)
        (directory / "redis").mkdir(exist_ok=True)
        redis_server = stack.enter_context(RedisServer(directory=directory / "redis"))
        store_url = redis_server.url(0)

        ports = [free_udp_port() for _ in range(n)]
        agent_port = free_udp_port()
        specs = [
            (
                f"server-{instance_name(i)}",
                _cli(
                    "server",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--cert",
                    str(pki.server_cert),
                    "--key",
                    str(pki.server_key),
                    "--ca",
                    str(pki.ca_cert),
                    "--require-client-cert",
                    "--echo",
                    "--session-store",
                    store_url,
                    "--store-key-file",
                    str(key_file),
                ),
                "listening on",
            )
            for i, port in enumerate(ports)
        ]
        specs.append(
            (
                "agent",
                _cli(
                    "agent",
                    "--listen",
                    f"127.0.0.1:{agent_port}",
                    "--psk-file",
                    str(pki.agent_psk_file),
                    "--allow-server",
                    "127.0.0.1",  # the balancer's port is chosen after the agent starts
                    "--ca",
                    str(pki.ca_cert),
                ),
                "agent listening",
            )
        )
        processes = _start_all(specs, directory)

        def stop_all() -> None:
            for process in reversed(processes):
                process.stop()

        stack.callback(stop_all)
        balancer = BackgroundLoadBalancer([("127.0.0.1", p) for p in ports])
        lb_host, lb_port = balancer.start()
        stack.callback(balancer.close)
        # New flows: the agent's full handshake, the device's resumption, its second one.
        balancer.force(0, 1, 2 % n)

        result = _run_device(
            [
                "--agent",
                f"127.0.0.1:{agent_port}",
                "--psk",
                f"{identity.decode()}:{psk.hex()}",
                "--server",
                f"{lb_host}:{lb_port}",
                "--server-name",
                "localhost",
                "--cert",
                str(device.cert),
                "--key",
                str(device.key),
                "--send",
                ECHO_TEXT,
                "--connections",
                "2",
            ],
            [],
        )
        connections = result["connections"]
        flows = balancer.history()
        upstream_of = {record.upstream: record for record in flows}
        #: The balancer saw the flows in time order: a handshake's flow index is its time.
        flow_index = {record.upstream: index for index, record in enumerate(flows)}
        instances: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while True:  # the servers print their lines asynchronously: wait for all three
            logs = [p.log.read_text(errors="replace") for p in processes[:n]]
            seen = sum(len(parse_handshakes(text)) for text in logs)
            if seen >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for index, (port, text) in enumerate(zip(ports, logs, strict=True)):
            rows = []
            for handshake in parse_handshakes(text):
                record = upstream_of.get(handshake.peer)
                rows.append(
                    {
                        "flow": flow_index.get(handshake.peer),
                        "resumed": handshake.resumed,
                        "cipher": handshake.suite,
                        "client_certificate": handshake.client,
                        "via_balancer_from": (
                            f"{record.client[0]}:{record.client[1]}" if record else None
                        ),
                    }
                )
            instances.append(
                {"name": instance_name(index), "address": f"127.0.0.1:{port}", "handshakes": rows}
            )
        store = open_store(store_url, None, keys=keys)
        stored_sessions = store.count()

        # In time order (the balancer's flow order), not instance order: with 2 instances the
        # device's second resumption lands on A again, after its first one on B.
        in_time = sorted(
            ((i["name"], h) for i in instances for h in i["handshakes"]),
            key=lambda pair: (pair[1]["flow"] is None, pair[1]["flow"] or 0),
        )
        full = [(name, h) for name, h in in_time if not h["resumed"]]
        resumed = [(name, h) for name, h in in_time if h["resumed"]]
        summary = {
            "ok": False,
            "fleet": n,
            "redis": store_url,
            "store_key_id": key_id(keys.keys[0]).hex(),
            "load_balancer": f"{lb_host}:{lb_port}",
            "instances": instances,
            "agent_instance": full[0][0] if len(full) == 1 else None,
            "device_instances": [name for name, _ in resumed],
            "device": connections,
            "sessions_in_redis": stored_sessions,
        }
        problems = []
        if len(full) != 1:
            problems.append(f"expected one full handshake (the agent's), saw {len(full)}")
        if len(resumed) != 2:
            problems.append(f"expected two resumptions (the device's), saw {len(resumed)}")
        if full and resumed and full[0][0] == resumed[0][0]:
            problems.append("the device resumed at the same instance as the agent")
        if [c["delegations"] for c in connections] != [1, 0]:
            problems.append(
                f"device delegations {[c['delegations'] for c in connections]}, expected [1, 0]"
            )
        if any(c.get("received") != ECHO_TEXT for c in connections):
            problems.append("no echo from the instance the device resumed at")
        if stored_sessions != 1:
            problems.append(f"{stored_sessions} sessions in Redis, expected 1")
        if problems:
            summary["error"] = "; ".join(problems)
            raise DemoError(json.dumps(summary, sort_keys=True))
        summary["ok"] = True
        return summary


def _print_text(result: dict[str, Any]) -> None:
    n = result["fleet"]
    print(
        f"D2TLS fleet demo on 127.0.0.1 — {n} server instances sharing the session store "
        f"{result['redis']}\nbehind the UDP load balancer {result['load_balancer']} "
        f"(entries sealed with AES-256-GCM, key id {result['store_key_id']})\n"
    )
    print("Handshakes per instance (from each server's log):")
    for instance in result["instances"]:
        rows = instance["handshakes"] or [None]
        for row in rows:
            if row is None:
                what = "-"
            elif row["resumed"]:
                what = "resumed=True   device's resumption (abbreviated, session from Redis)"
            else:
                what = "resumed=False  agent's full handshake with the device's certificate"
            client = f"  client={row['client_certificate']}" if row else ""
            print(f"  instance {instance['name']} {instance['address']:<16} {what}{client}")
    print("\nDevice:")
    for index, connection in enumerate(result["device"], 1):
        ops = connection["key_operations"]
        print(
            f"  connection {index}: delegations={connection['delegations']} sign={ops['sign']} "
            f"wall={connection['wall_ms']:.1f} ms received={connection['received']!r}"
        )
    print(
        f"\nagent's handshake on instance {result['agent_instance']}, device resumed on "
        f"{' then '.join(result['device_instances'])}; "
        f"sessions in Redis: {result['sessions_in_redis']}"
    )
    print("\nresult: OK")


def run_fleet_demo(n: int, as_json: bool = False, keep: str | None = None) -> int:
    """Entry point of ``d2tls demo --fleet N``; returns the exit status."""
    try:
        result = run_fleet(n, Path(keep) if keep else None)
    except (DemoError, D2TLSError, OSError, subprocess.SubprocessError) as exc:
        message = str(exc)
        if as_json:
            try:
                payload = json.loads(message)
            except ValueError:
                payload = {"ok": False, "error": message}
            print(json.dumps(payload, sort_keys=True))
        else:
            print(f"fleet demo failed: {message}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(result, sort_keys=True))
    else:
        _print_text(result)
    return 0
