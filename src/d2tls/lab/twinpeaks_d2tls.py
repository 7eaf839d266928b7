"""``d2tls demo --keys twinpeaks``: D2TLS with a device whose identity is a TwinPeaks key.

The device holds no X.509 certificate: its identity is its TwinPeaks member key (registered
with the demo hierarchy of :mod:`d2tls.lab.twinpeaks`, spec/twinpeaks.md §2, with Knot DNS for
the DNS half). It delegates as usual; the agent runs the full handshake with the key as the
device's RFC 7250 raw public key (client_certificate_type RawPublicKey) and the device still
signs the CertificateVerify itself, in bound and blind mode. The d2tls server accepts the raw
key only if it is the key TwinPeaks serves for ``device.example.test`` (``d2tls server
--twinpeaks-client``, :mod:`d2tls.lab.twinpeaks_keys`), instead of checking a chain. The
server itself still authenticates with its X.509 certificate (checked by the agent with
OCSP, as in ``d2tls demo``). Then the device resumes end to end.

Steps: bound mode (a new session, then one resumed from the cached context), blind mode, the
device standalone with its raw key, and an impostor: a device whose PSK the agent knows and
whose key the agent's policy binds, but whose key is not the one TwinPeaks serves for the
name: the server refuses it (alert certificate_unknown), so it gets no session.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from d2tls.core.dtls.rawpk import fingerprint, spki_of
from d2tls.core.pki.generate import init_pki
from d2tls.core.pki.verify import load_psk_file
from d2tls.core.twinpeaks.resolver import dump_anchors
from d2tls.lab import dns as dnslab
from d2tls.lab.demo import (
    ECHO_TEXT,
    DemoError,
    Process,
    _cli,
    _start,
    _table,
    build_timeline,
    device_result,
    succeeded,
)
from d2tls.lab.peers import free_udp_port
from d2tls.lab.twinpeaks_live import LiveHierarchy
from d2tls.trace import read_trace

DEVICE = "device"
DEVICE_NAME = f"{DEVICE}.example.test"
SERVER = "server"
SERVER_NAME = f"{SERVER}.example.test"
IMPOSTOR_IDENTITY = "impostor"
READY_TIMEOUT = 60.0


def demo_zones() -> list[dnslab.Zone]:
    """``test.`` delegating ``example.test.``, where ``device`` and ``server`` have a
    loopback address."""
    v4 = ipaddress.IPv4Address("127.0.0.1")
    return [
        dnslab.Zone("test", delegations={"example": v4}),
        dnslab.Zone("example.test", hosts={DEVICE: [v4], SERVER: [v4]}),
    ]


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """A private key as PKCS#8 PEM, readable by its owner only."""
    data = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _run_processes(
    directory: Path,
    keys: dict[str, Path],
    root: Path,
    dns_port: int,
) -> dict[str, Any]:
    """Server, OCSP responder, agent and the device runs (blocking); every process is
    stopped on the way out, Ctrl-C included."""
    device_key, impostor_key = keys[DEVICE], keys["impostor"]
    pki = init_pki(directory / "pki", server_name=SERVER_NAME, devices=1)
    identity, psk = next(iter(load_psk_file(pki.psk_file).items()))
    impostor_psk = hashlib.sha256(b"impostor|" + os.urandom(16)).digest()

    def rpk_sha256(path: Path) -> str:
        from d2tls.core.pki.verify import load_private_key

        return hashlib.sha256(spki_of(load_private_key(path))).hexdigest()

    agent_psk_file = directory / "agent-psk.txt"
    agent_psk_file.write_text(
        f"{identity.decode()}:{psk.hex()} rpk-sha256={rpk_sha256(device_key)}\n"
        f"{IMPOSTOR_IDENTITY}:{impostor_psk.hex()} rpk-sha256={rpk_sha256(impostor_key)}\n"
    )
    agent_psk_file.chmod(0o600)
    processes: list[Process] = []
    try:
        ocsp_port, agent_port, server_port = free_udp_port(), free_udp_port(), free_udp_port()
        processes.append(
            _start(
                "ocsp",
                _cli(
                    "pki", "ocsp", "--listen", f"127.0.0.1:{ocsp_port}", "--pki", str(pki.directory)
                ),
                directory,
                "listening",
                [],
            )
        )
        server_trace = directory / "server.trace"
        server = _start(
            "server",
            _cli(
                "server",
                "--listen",
                f"127.0.0.1:{server_port}",
                "--cert",
                str(pki.server_cert),
                "--key",
                str(pki.server_key),
                "--rawpk-key",
                str(keys[SERVER]),
                "--require-client-cert",
                "--twinpeaks-client",
                DEVICE_NAME,
                "--twinpeaks-root",
                str(root),
                "--dns",
                f"127.0.0.1:{dns_port}",
                "--echo",
                "--trace",
                str(server_trace),
            ),
            directory,
            "listening on",
            [],
        )
        processes.append(server)
        agent_trace = directory / "agent.trace"
        processes.append(
            _start(
                "agent",
                _cli(
                    "agent",
                    "--listen",
                    f"127.0.0.1:{agent_port}",
                    "--psk-file",
                    str(agent_psk_file),
                    "--allow-server",
                    f"127.0.0.1:{server_port}",
                    "--ca",
                    str(pki.ca_cert),
                    "--ocsp",
                    f"http://127.0.0.1:{ocsp_port}",
                    "--trace",
                    str(agent_trace),
                    "--twinpeaks-server",
                    SERVER_NAME,
                    "--twinpeaks-root",
                    str(root),
                    "--dns",
                    f"127.0.0.1:{dns_port}",
                ),
                directory,
                "agent listening",
                [],
            )
        )
        common = [
            "--server",
            f"127.0.0.1:{server_port}",
            "--server-name",
            SERVER_NAME,
            "--rawpk",
            "--send",
            ECHO_TEXT,
        ]
        agent = ["--agent", f"127.0.0.1:{agent_port}"]
        ours = [*common, "--key", str(device_key)]
        device_trace = directory / "device-bound.trace"
        psk_arg = ["--psk", f"{identity.decode()}:{psk.hex()}"]
        trace = ["--trace", str(device_trace)]
        impostor_psk_arg = ["--psk", f"{IMPOSTOR_IDENTITY}:{impostor_psk.hex()}"]
        bound = succeeded(
            device_result(
                [*ours, *agent, *psk_arg, "--mode", "bound", "--connections", "2", *trace]
            )
        )
        blind = succeeded(device_result([*ours, *agent, *psk_arg, "--mode", "blind"]))
        standalone = succeeded(device_result([*ours, "--standalone", "--ca", str(pki.ca_cert)]))
        impostor = device_result(
            [*common, "--key", str(impostor_key), *agent, *impostor_psk_arg, "--mode", "bound"]
        )
    finally:
        for process in reversed(processes):
            process.stop()
    server_log = server.log.read_text(errors="replace")
    agent_log = (directory / "agent.log").read_text(errors="replace")
    return {
        "bound": bound["connections"],
        "blind": blind["connections"],
        "standalone": standalone["connections"],
        "impostor": {
            "ok": bool(impostor.get("ok")),
            "error": impostor.get("error"),
            "server_refused": "certificate_unknown" in server_log and "not trusted" in server_log,
        },
        "server_resolution": [
            line for line in server_log.splitlines() if line.startswith("twinpeaks:")
        ],
        "agent_resolution": [
            line for line in agent_log.splitlines() if line.startswith("twinpeaks:")
        ],
        "timeline": build_timeline([*read_trace(device_trace), *read_trace(agent_trace)]),
    }


class _Hierarchy:
    """The key-server hierarchy on its own thread and event loop, so that the demo's main
    thread runs the processes and handles Ctrl-C (it stops them, then this thread)."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="twinpeaks", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.live: LiveHierarchy | None = None
        self.error: BaseException | None = None

    def __enter__(self) -> LiveHierarchy:
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT) or self.error is not None or self.live is None:
            self.__exit__()
            raise DemoError(
                f"the TwinPeaks hierarchy failed: {self.error}"
                if self.error is not None
                else f"the TwinPeaks hierarchy did not register in {READY_TIMEOUT:g} s"
            )
        return self.live

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(READY_TIMEOUT)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the main thread by __enter__
            self.error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with LiveHierarchy(members=(DEVICE, SERVER)) as live:
            self.live = live
            self._ready.set()
            await self._stop.wait()


def _run(directory: Path) -> dict[str, Any]:
    with dnslab.KnotServer(demo_zones(), directory / "knot") as knot, _Hierarchy() as live:
        registered = live.registered[DEVICE]
        server_key = live.registered[SERVER].key.to_cryptography()
        keys = {
            DEVICE: directory / "device-twinpeaks.key",
            SERVER: directory / "server-twinpeaks.key",
            "impostor": directory / "impostor.key",
        }
        _write_key(keys[DEVICE], registered.key.to_cryptography())
        _write_key(keys[SERVER], server_key)
        _write_key(keys["impostor"], ec.generate_private_key(ec.SECP256R1()))
        root = directory / "root.anchors"
        root.write_bytes(dump_anchors(live.anchors()))
        results = _run_processes(directory, keys, root, knot.port)
    results["device"] = {
        "name": DEVICE_NAME,
        "serial": registered.serial,
        "raw_public_key": fingerprint(spki_of(registered.key.to_cryptography())),
    }
    results["server"] = {"name": SERVER_NAME, "raw_public_key": fingerprint(spki_of(server_key))}
    for row in results["bound"] + results["blind"]:
        if row.get("server_raw_public_key") != results["server"]["raw_public_key"]:
            raise DemoError(
                f"the agent did not authenticate {SERVER_NAME} by its TwinPeaks key "
                f"({row['mode']} mode: {row.get('server_raw_public_key')})"
            )
    for row in results["bound"] + results["blind"] + results["standalone"]:
        if row.get("received") != ECHO_TEXT:
            raise DemoError(f"no echo in {row['mode']} mode (got {row.get('received')!r})")
    impostor = results["impostor"]
    if impostor["ok"] or "certificate_unknown" not in str(impostor["error"]):
        raise DemoError(f"the impostor's key was not refused as expected: {impostor}")
    if not impostor["server_refused"]:
        raise DemoError("the server did not log its refusal of the impostor's raw public key")
    results["ok"] = True
    return results


def run(keep: Path | None = None) -> dict[str, Any]:
    """Run the demo; the results as a dict (DemoError on failure)."""
    with ExitStack() as stack:
        directory = keep or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="d2tls-demo-tp-"))
        )
        directory.mkdir(parents=True, exist_ok=True)
        return _run(directory)


def run_demo(as_json: bool = False, keep: str | None = None) -> int:
    """Entry point of ``d2tls demo --keys twinpeaks``; the exit status."""
    try:
        results = run(Path(keep) if keep else None)
    except (DemoError, OSError, subprocess.SubprocessError, dnslab.DnsLabError) as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        else:
            print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(results, sort_keys=True))
        return 0
    device = results["device"]
    print(
        "D2TLS demo on 127.0.0.1 — server: d2tls, device keys: TwinPeaks "
        "(client raw public keys, RFC 7250)\n"
    )
    print(
        f"Device {device['name']} registered with the example.test key server "
        f"(serial {device['serial']}); its key {device['raw_public_key']}"
    )
    for line in results["server_resolution"]:
        print(f"  server {line}")
    server = results["server"]
    print(f"Server {server['name']} registered too; its key {server['raw_public_key']}")
    for line in results["agent_resolution"]:
        print(f"  agent {line}")
    print(
        "  (delegated handshakes: the agent authenticates the server by this raw key, the "
        "server the device by its own;\n   the standalone device checks the server's X.509 "
        "certificate, the server the device's raw key)"
    )
    print("\nTimeline of the first delegated connection (paper Figure 8 (a) then (b)):")
    start = results["timeline"][0]["wall"] if results["timeline"] else 0.0
    for row in results["timeline"]:
        arrow = f"{row['from']:>6} -> {row['to']:<6}"
        print(f"  {1000 * (row['wall'] - start):8.1f} ms  {arrow}  {row['message']}")
    print("\nDevice cost per connection (key operations on the device, its CPU, its traffic):")
    for line in _table(results):
        print("  " + line)
    print(
        "\n  One device signature per new session (the 'sign' column), none for a reuse."
        f"\n\nImpostor (a key TwinPeaks does not serve for {DEVICE_NAME}): refused"
        f"\n  {results['impostor']['error']}"
    )
    print("\nresult: OK")
    return 0
