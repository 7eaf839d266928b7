"""``d2tls conformance-peers``: our server, OpenSSL, GnuTLS, mbedTLS and wolfSSL.

Each peer is started on loopback with a fresh test PKI (:func:`d2tls.core.pki.init_pki`), requiring
client certificates and accepting the PSK. The readiness checks run against the server as it
runs, never restarted between checks (what a user meets). Servers that serve one connection
at a time (``openssl s_server``, ``gnutls-serv --udp``, mbedTLS ``ssl_server2``, the wolfSSL
server) are restarted before every scenario (scenarios send deliberately stray records, and
one stray record wedges ``gnutls-serv``) and before every learning query (a complete, fast
learning run; ``d2tls conformance HOST:PORT`` learns a server it cannot restart by a new
client port, a clean close and a settle delay per query, see :mod:`.learning`).
``gnutls-serv`` binds every address, so its run happens inside a private network namespace
(this command re-executes itself there). The report goes to ``OUT/<peer>.json``,
``OUT/<peer>.md`` and ``OUT/machines/``; ``OUT/README.md`` is left to a human (it explains
the findings) but ``OUT/summary.md`` is regenerated.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from d2tls.conformance.probe import ClientCredentials
from d2tls.conformance.report import markdown, summary_rows, summary_table, write_json
from d2tls.conformance.runner import INPUT_SETS, report_ok, run_conformance
from d2tls.core.pki.generate import PKIPaths, init_pki
from d2tls.core.pki.verify import (
    load_certificate_chain,
    load_private_key,
    load_psk_file,
    load_trust_store,
)
from d2tls.lab.peers import (
    GnuTLSServer,
    MbedTLSServer,
    NetNamespace,
    OpenSSLServer,
    PeerError,
    WolfSSLServer,
    free_udp_port,
    mbedtls_version,
    require_tool,
    wolfssl_version,
)

PEERS = ("d2tls", "openssl", "gnutls", "mbedtls", "wolfssl")
NAMESPACE_ENV = "D2TLS_CONFORMANCE_NETNS"


def _version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unknown ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0]


class ManagedServer:
    """A started peer: its address, how to restart it, its version and command line."""

    def __init__(
        self,
        name: str,
        start: Callable[[], Any],
        version: str,
        *,
        restart_per_query: bool,
        learn_by_restart: bool = True,
    ) -> None:
        self.name = name
        self._start = start
        self.version = version
        self.restart_per_query = restart_per_query
        self.learn_by_restart = restart_per_query and learn_by_restart
        self.process: Any = None

    def start(self) -> None:
        self.process = self._start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def address(self) -> tuple[str, int]:
        assert self.process is not None
        return (self.process.host, int(self.process.port))

    def command(self) -> list[str]:
        assert self.process is not None
        return [str(a) for a in self.process.argv()]


class D2TLSServerProcess:
    """``d2tls server`` as a subprocess (what a user runs), with the peers' interface."""

    def __init__(self, pki: PKIPaths, psk: tuple[bytes, bytes], port: int) -> None:
        self.host, self.port = "127.0.0.1", port
        self.pki, self.psk = pki, psk
        self.popen: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        identity, key = self.psk
        return [
            sys.executable,
            "-m",
            "d2tls.cli",
            "server",
            "--listen",
            f"{self.host}:{self.port}",
            "--cert",
            str(self.pki.server_chain),
            "--key",
            str(self.pki.server_key),
            "--ca",
            str(self.pki.ca_cert),
            "--require-client-cert",
            "--echo",
            "--quiet",
            "--psk",
            f"{identity.decode()}:{key.hex()}",
            "--cipher",
            "ECDHE-ECDSA-AES128-CCM8",
            "--cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "--cipher",
            "PSK-AES128-CCM8",
        ]

    def start(self) -> D2TLSServerProcess:
        self.popen = subprocess.Popen(
            self.argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if b"listening" not in line:
            self.stop()
            raise PeerError(f"d2tls server did not start: {line!r}")
        return self

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


def make_server(peer: str, pki: PKIPaths, psk: tuple[bytes, bytes]) -> ManagedServer:
    """A (not yet started) managed server for ``peer``."""
    cert, key, ca = pki.server_chain, pki.server_key, pki.ca_cert
    port = free_udp_port()
    if peer == "d2tls":
        from d2tls import __version__

        server = D2TLSServerProcess(pki, psk, port)
        return ManagedServer(peer, server.start, f"d2tls {__version__}", restart_per_query=False)
    if peer == "openssl":
        version = _version([require_tool("openssl"), "version"])

        def start_openssl() -> OpenSSLServer:
            server = OpenSSLServer(
                cert=cert, key=key, ca=ca, client_auth="required", psk=psk, port=port
            )
            server.start()
            return server

        return ManagedServer(peer, start_openssl, version, restart_per_query=True)
    if peer == "mbedtls":
        version = mbedtls_version()

        def start_mbedtls() -> MbedTLSServer:
            server = MbedTLSServer(cert=cert, key=key, ca=ca, psk=psk, port=port)
            server.start()
            return server

        return ManagedServer(peer, start_mbedtls, version, restart_per_query=True)
    if peer == "wolfssl":
        version = wolfssl_version()

        def start_wolfssl() -> WolfSSLServer:
            server = WolfSSLServer(cert=cert, key=key, ca=ca, psk=psk, port=port)
            server.start()
            return server

        return ManagedServer(peer, start_wolfssl, version, restart_per_query=True)
    if peer == "gnutls":
        version = _version([require_tool("gnutls-serv"), "--version"])

        def start_gnutls() -> GnuTLSServer:
            # Already inside our private namespace: run gnutls-serv as a plain child.
            server = _InsideGnuTLSServer(
                cert=cert,
                key=key,
                ca=ca,
                client_auth="required",
                psk_file=pki.psk_file,
                port=port,
                namespace=NetNamespace(),
            )
            server.start()
            return server

        return ManagedServer(peer, start_gnutls, version, restart_per_query=True)
    raise ValueError(f"unknown peer {peer!r} (one of {', '.join(PEERS)})")


class _InsideGnuTLSServer(GnuTLSServer):
    """gnutls-serv started directly, by a process that already is in the namespace."""

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )


def _scrub(text: str, pki: Path, secret: bytes = b"") -> str:
    """Recorded commands name the PKI directory ``$PKI`` and never show the PSK."""
    text = text.replace(str(pki), "$PKI")
    return text.replace(secret.hex(), "<psk-hex>") if secret else text


def run_peer(
    peer: str,
    out: Path,
    *,
    suites: Sequence[str],
    inputs: str = "full",
    pki_dir: Path | None = None,
    wait: float = 0.4,
) -> dict[str, Any]:
    """Start ``peer``, run the suites, write ``OUT/<peer>.json`` and ``.md``; the report.
    ``wait``: how long an answer may take before it counts as silence (s)."""
    if peer == "gnutls" and os.environ.get(NAMESPACE_ENV) is None:
        return _run_in_namespace(peer, out, suites=suites, inputs=inputs, wait=wait)
    directory = pki_dir or Path(tempfile.mkdtemp(prefix="d2tls-conformance-"))
    pki = init_pki(directory, server_name="localhost", devices=1)
    psk = next(iter(load_psk_file(pki.psk_file).items()))
    device = pki.devices[0]
    credentials = ClientCredentials(
        chain=tuple(load_certificate_chain(device.cert)),
        key=load_private_key(device.key),
        server_name="localhost",
    )
    server = make_server(peer, pki, psk)
    server.start()
    try:
        target = server.address
        reset = server.restart if server.restart_per_query else None
        command = [
            "d2tls",
            "conformance-peers",
            "--peers",
            peer,
            "--out",
            str(out),
            *(
                ["--only", *suites]
                if tuple(suites) != ("readiness", "scenarios", "learning")
                else []
            ),
            *(["--inputs", inputs] if inputs != "full" else []),
        ]
        peer_info = {
            "peer": peer,
            "version": server.version,
            "command": [_scrub(a, directory, psk[1]) for a in server.command()],
            "restarted_per_query": server.restart_per_query,
            "restarted_per_learning_query": server.learn_by_restart,
            "network_namespace": os.environ.get(NAMESPACE_ENV),
            "equivalent_command": [
                "d2tls",
                "conformance",
                f"{target[0]}:{target[1]}",
                "--ca",
                "$PKI/ca.pem",
                "--cert",
                _scrub(str(device.cert), directory),
                "--key",
                _scrub(str(device.key), directory),
                "--psk",
                f"{psk[0].decode()}:<psk-hex>",
            ],
        }
        report = run_conformance(
            target,
            credentials,
            name=peer,
            command=command,
            suites=suites,
            trust_store=load_trust_store(pki.ca_cert),
            psk=psk,
            reset=reset,
            learn_by_restart=server.learn_by_restart,
            peer=peer_info,
            inputs=INPUT_SETS[inputs],
            wait=wait,
            learn_wait=0.1,
            machines=out / "machines",
            image_formats=("svg",),  # small enough to commit; the .dot files are there too
        )
    finally:
        server.stop()
    _keep_previous(report, out / f"{peer}.json", suites)
    write_json(report, out / f"{peer}.json")
    (out / f"{peer}.md").write_text(markdown(report, image_dir="machines/"), encoding="utf-8")
    return report


def _keep_previous(report: dict[str, Any], path: Path, suites: Sequence[str]) -> None:
    """Suites not run this time keep their section from the previous ``OUT/<peer>.json``
    (each section then names the run it comes from), so ``--only`` refreshes part of a
    committed report without losing the rest."""
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    for suite, keys in (
        ("readiness", ("readiness",)),
        ("scenarios", ("scenarios", "scenario_counts")),
        ("learning", ("learning",)),
    ):
        if suite in suites or previous.get(keys[0]) is None:
            continue
        for key in keys:
            report[key] = previous[key]
        if isinstance(report[keys[0]], dict):
            report[keys[0]].setdefault("from_run", previous.get("started", "an earlier run"))
        else:
            report.setdefault("sections_from_run", {})[suite] = previous.get("started", "")


def _run_in_namespace(
    peer: str, out: Path, *, suites: Sequence[str], inputs: str, wait: float
) -> dict[str, Any]:
    """Re-execute ``conformance-peers --peers PEER`` inside a private network namespace."""
    with NetNamespace("d2tls-conf") as namespace:
        argv = [sys.executable, "-m", "d2tls.cli", "conformance-peers", "--peers", peer]
        argv += ["--out", str(out), "--only", *suites, "--inputs", inputs, "--wait", str(wait)]
        env = dict(os.environ, **{NAMESPACE_ENV: namespace.name})
        process = subprocess.run(namespace.command(argv), env=env, check=False)
        if process.returncode not in (0, 1):
            raise PeerError(f"conformance run for {peer} in {namespace.name} failed")
    report: dict[str, Any] = json.loads((out / f"{peer}.json").read_text())
    return report


def write_summary(out: Path) -> None:
    """``OUT/summary.md``: one table over every ``OUT/<peer>.json`` present."""
    lines = ["# Conformance summary (generated by `d2tls conformance-peers`)", ""]
    lines += ["| peer | version | suite | result | details |", "|---|---|---|---|---|"]
    for peer in PEERS:
        path = out / f"{peer}.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        version = report.get("peer", {}).get("version", "")
        for suite, result, details in summary_rows(report):
            cells = (f"[{peer}]({peer}.md)", version, suite, result, details)
            lines.append("| " + " | ".join(re.sub(r"\|", "\\|", c) for c in cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_all_peers(
    out: Path,
    *,
    peers: Sequence[str],
    suites: Sequence[str],
    inputs: str = "full",
    wait: float = 0.4,
) -> int:
    out.mkdir(parents=True, exist_ok=True)
    ok = True
    for peer in peers:
        started = time.monotonic()
        report = run_peer(peer, out, suites=suites, inputs=inputs, wait=wait)
        print(summary_table(report))
        print(f"  ({time.monotonic() - started:.0f} s)")
        ok = ok and report_ok(report)
    if os.environ.get(NAMESPACE_ENV) is None:
        write_summary(out)
    return 0 if ok else 1


__all__ = ["PEERS", "make_server", "run_all_peers", "run_peer", "write_summary"]
