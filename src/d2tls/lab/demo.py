"""``d2tls demo``: the D2TLS flow of the paper's Figure 8 with real processes on loopback.

With no arguments it creates a temporary PKI, starts an OCSP responder, a DTLS server that
requires client certificates (ours, or OpenSSL's / GnuTLS's with ``--server``), a security agent
and devices, each as its own process talking UDP on 127.0.0.1, and runs:

1. D2TLS bound mode: delegated full handshake -> handover -> resumption -> echo, then a second
   connection that resumes again from the cached context without delegation;
2. D2TLS blind mode (the paper's behaviour): two new delegated sessions, the second over the
   standing channel to the agent (no channel handshake; spec/delegation.md §3.1), and the same
   in bound mode;
3. the same device standalone: full handshake by itself.

It prints the timeline of the first delegated connection (from the JSON event traces) and a
comparison of the device's costs, and exits non-zero on any failure.
"""

from __future__ import annotations

import json
import os
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
from d2tls.lab.peers import GnuTLSServer, NetNamespace, OpenSSLServer, free_udp_port
from d2tls.trace import read_trace

SERVER_KINDS = ("d2tls", "openssl", "gnutls")
ECHO_TEXT = "hello from the device"


class DemoError(D2TLSError):
    """A demo step failed; the message says which."""


@dataclass
class Process:
    """A background process of the demo with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "d2tls.cli", *args]


def _start(name: str, argv: list[str], directory: Path, ready: str, prefix: list[str]) -> Process:
    log = directory / f"{name}.log"
    handle = log.open("wb")
    popen = subprocess.Popen(
        prefix + argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    process = Process(name, popen, log)
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            if ready.encode() in log.read_bytes():
                return process
            if popen.poll() is not None:
                break
            time.sleep(0.05)
    except BaseException:  # Ctrl-C / SIGTERM while waiting: do not leave it running
        process.stop()
        raise
    process.stop()
    raise DemoError(f"{name} did not start: {log.read_text(errors='replace')[-2000:]}")


def device_result(argv: list[str], prefix: list[str] | None = None) -> dict[str, Any]:
    """Run ``d2tls device ... --json`` (under ``prefix``, e.g. ``ip netns exec``); its JSON
    result, ``ok`` false on a failure. DemoError when it printed none."""
    completed = subprocess.run(
        (prefix or []) + _cli("device", *argv, "--json"),
        capture_output=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    lines = [ln for ln in completed.stdout.decode().splitlines() if ln.startswith("{")]
    if not lines:
        raise DemoError(
            f"device printed no result (exit {completed.returncode}): "
            f"{completed.stderr.decode(errors='replace')[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def succeeded(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` of :func:`device_result`; DemoError naming the cause when it failed."""
    if not result.get("ok"):
        raise DemoError(f"device ({result.get('mode')}) failed: {result.get('error')}")
    return result


def _run_device(argv: list[str], prefix: list[str]) -> dict[str, Any]:
    return succeeded(device_result(argv, prefix))


def run(server_kind: str = "d2tls", keep: Path | None = None) -> dict[str, Any]:
    """Run the whole demo; returns the results as a dict (raises DemoError on failure)."""
    if server_kind not in SERVER_KINDS:
        raise DemoError(f"unknown server {server_kind!r}; choose from {SERVER_KINDS}")
    with ExitStack() as stack:
        directory = keep or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="d2tls-demo-"))
        )
        directory.mkdir(parents=True, exist_ok=True)
        pki = init_pki(directory / "pki", server_name="localhost", devices=1)
        device = pki.devices[0]
        identity, psk = next(iter(load_psk_file(pki.psk_file).items()))
        prefix: list[str] = []
        namespace: NetNamespace | None = None
        if server_kind == "gnutls":
            namespace = stack.enter_context(NetNamespace())
            prefix = ["ip", "netns", "exec", namespace.name]
        processes: list[Process] = []

        def stop_all() -> None:
            for process in reversed(processes):
                process.stop()

        stack.callback(stop_all)

        ocsp_port, agent_port = free_udp_port(), free_udp_port()
        ocsp_url = f"http://127.0.0.1:{ocsp_port}"
        processes.append(
            _start(
                "ocsp",
                _cli(
                    "pki", "ocsp", "--listen", f"127.0.0.1:{ocsp_port}", "--pki", str(pki.directory)
                ),
                directory,
                "listening",
                prefix,
            )
        )
        server_trace = directory / "server.trace"
        if server_kind == "d2tls":
            server_port = free_udp_port()
            processes.append(
                _start(
                    "server",
                    _cli(
                        "server",
                        "--listen",
                        f"127.0.0.1:{server_port}",
                        "--cert",
                        str(pki.server_cert),
                        "--key",
                        str(pki.server_key),
                        "--ca",
                        str(pki.ca_cert),
                        "--require-client-cert",
                        "--echo",
                        "--trace",
                        str(server_trace),
                    ),
                    directory,
                    "listening on",
                    prefix,
                )
            )
        elif server_kind == "openssl":
            openssl = stack.enter_context(
                OpenSSLServer(cert=pki.server_cert, key=pki.server_key, ca=pki.ca_cert)
            )
            server_port = openssl.port
        else:
            assert namespace is not None
            gnutls = stack.enter_context(
                GnuTLSServer(
                    namespace=namespace,
                    cert=pki.server_cert,
                    key=pki.server_key,
                    ca=pki.ca_cert,
                    echo=True,
                )
            )
            server_port = gnutls.port
        agent_trace = directory / "agent.trace"
        processes.append(
            _start(
                "agent",
                _cli(
                    "agent",
                    "--listen",
                    f"127.0.0.1:{agent_port}",
                    "--psk-file",
                    str(pki.agent_psk_file),
                    "--allow-server",
                    f"127.0.0.1:{server_port}",
                    "--ca",
                    str(pki.ca_cert),
                    "--ocsp",
                    ocsp_url,
                    "--trace",
                    str(agent_trace),
                ),
                directory,
                "agent listening",
                prefix,
            )
        )
        common = [
            "--server",
            f"127.0.0.1:{server_port}",
            "--server-name",
            "localhost",
            "--cert",
            str(device.cert),
            "--key",
            str(device.key),
            "--send",
            ECHO_TEXT,
        ]
        if server_kind == "openssl":  # s_server does not echo: do not wait long for a reply
            common += ["--receive-timeout", "0.3"]
        delegated = [
            "--agent",
            f"127.0.0.1:{agent_port}",
            "--psk",
            f"{identity.decode()}:{psk.hex()}",
        ]
        device_trace = directory / "device-bound.trace"
        bound = _run_device(
            common
            + delegated
            + ["--mode", "bound", "--connections", "2", "--trace", str(device_trace)],
            prefix,
        )
        standing = ["--connections", "2", "--delegate-each"]
        blind = _run_device(common + delegated + ["--mode", "blind", *standing], prefix)
        bound_standing = _run_device(common + delegated + ["--mode", "bound", *standing], prefix)
        standalone = _run_device(
            [*common, "--standalone", "--ca", str(pki.ca_cert), "--connections", "2"], prefix
        )
        timeline = build_timeline([*read_trace(device_trace), *read_trace(agent_trace)])
        echo_expected = server_kind != "openssl"  # s_server prints data, it does not echo
        results = {
            "server": server_kind,
            "bound": bound["connections"],
            "blind": blind["connections"],
            "standalone": standalone["connections"],
            "bound_standing": bound_standing["connections"],
            "timeline": timeline,
        }
        if echo_expected:
            for row in (
                bound["connections"]
                + blind["connections"]
                + bound_standing["connections"]
                + standalone["connections"]
            ):
                if row.get("received") != ECHO_TEXT:
                    raise DemoError(f"no echo in {row['mode']} mode (got {row.get('received')!r})")
        results["ok"] = True
        return results


def build_timeline(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages of the first delegated connection, in wall-clock order, one line each."""
    rows = []
    for entry in entries:
        event = entry.get("event")
        party, link = entry.get("party"), entry.get("link", "")
        if event not in ("message_sent", "message_received") or party is None:
            continue
        peer = link.replace(f"{party}-", "") if link.startswith(f"{party}-") else "?"
        if event == "message_received" and peer != "server":
            continue  # the sender's own trace already has it
        source, dest = (party, peer) if event == "message_sent" else (peer, party)
        message = entry["message"]
        if {source, dest} == {"device", "agent"} and entry.get("layer") != "delegation":
            message = f"[PSK channel] {message}"  # the device<->agent DTLS-PSK handshake
        rows.append({"wall": entry["wall"], "from": source, "to": dest, "message": message})
    rows.sort(key=lambda r: r["wall"])
    # Stop after the first resumption's Finished so the timeline is Figure 8 (a) + (b).
    out: list[dict[str, Any]] = []
    seen_context = False
    for row in rows:
        out.append(row)
        if row["message"] == "Wiped":
            seen_context = True
        if (
            seen_context
            and row["from"] == "device"
            and row["to"] == "server"
            and row["message"] == "Finished"
        ):
            break
    return out


def _table(results: dict[str, Any]) -> list[str]:
    header = (
        f"{'':36}{'sign':>5}{'verify':>7}{'ecdh':>5}{'keygen':>7}{'CPU ms':>8}"
        f"{'dev-agent B':>12}{'dev-server B':>13}{'datagrams':>10}{'RTTs':>5}{'wall ms':>9}"
    )
    lines = [header, "-" * len(header)]
    standing = "bound_standing" in results  # the twinpeaks lab shows the first rows only
    rows = [
        (
            "D2TLS bound (new, channel handshake)" if standing else "D2TLS bound (new)",
            results["bound"][0],
        ),
        *(
            [("D2TLS bound (new, standing channel)", results["bound_standing"][1])]
            if standing
            else []
        ),
        (
            "D2TLS bound (reuse cached context)" if standing else "D2TLS bound (reuse)",
            results["bound"][1],
        ),
        (
            "D2TLS blind (new, channel handshake)" if standing else "D2TLS blind (new)",
            results["blind"][0],
        ),
        *([("D2TLS blind (new, standing channel)", results["blind"][1])] if standing else []),
        (
            "standalone (new, first in process)" if standing else "standalone (new)",
            results["standalone"][0],
        ),
        *([("standalone (new)", results["standalone"][-1])] if standing else []),
    ]
    for label, row in rows:
        ops = row["key_operations"]
        agent_link, server_link = row["links"]["device-agent"], row["links"]["device-server"]
        datagrams = sum(
            link["datagrams_sent"] + link["datagrams_received"]
            for link in (agent_link, server_link)
        )
        lines.append(
            f"{label:36}{ops['sign']:>5}{ops['verify']:>7}{ops['ecdh']:>5}{ops['keygen']:>7}"
            f"{row['cpu_ms']:>8.1f}{agent_link['bytes_sent'] + agent_link['bytes_received']:>12}"
            f"{server_link['bytes_sent'] + server_link['bytes_received']:>13}{datagrams:>10}"
            f"{agent_link['round_trips'] + server_link['round_trips']:>5}{row['wall_ms']:>9.1f}"
        )
    return lines


def run_demo(as_json: bool = False, server_kind: str = "d2tls", keep: str | None = None) -> int:
    """Entry point of ``d2tls demo``; returns the exit status."""
    try:
        results = run(server_kind, Path(keep) if keep else None)
    except (DemoError, OSError, subprocess.SubprocessError) as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        else:
            print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(results, sort_keys=True))
        return 0
    print(f"D2TLS demo on 127.0.0.1 — server: {server_kind} (client certificates required)\n")
    print("Timeline of the first delegated connection (paper Figure 8 (a) then (b)):")
    start = results["timeline"][0]["wall"] if results["timeline"] else 0.0
    for row in results["timeline"]:
        arrow = f"{row['from']:>6} -> {row['to']:<6}"
        print(f"  {1000 * (row['wall'] - start):8.1f} ms  {arrow}  {row['message']}")
    print("\nDevice cost per connection (key operations on the device, its CPU, its traffic):")
    for line in _table(results):
        print("  " + line)
    print(
        "\n  A device's first D2TLS session includes the channel handshake with the agent; later"
        "\n  ones reuse the standing channel (idle timeout, then an abbreviated handshake)."
        "\n  A first row of a device process also pays that process's one-time warm-up."
        "\n  Channel choice: plain PSK (here) is cheapest, but an agent compromised later holds the"
        "\n  PSK and decrypts a recorded SessionContext: resumed_key_secrecy_received_and_wiped_psk"
        "\n  is falsified; with --channel ecdhe-psk"
        "\n  resumed_key_secrecy_received_and_wiped_ecdhe_psk holds per channel key"
        "\n  (full handshake; rekey interval --channel-rekey-*): proofs/LEMMAS.md,"
        "\n  docs/security.md."
        "\n  Steady-state medians and ratios: d2tls bench device."
    )
    print("\nresult: OK")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(as_json="--json" in sys.argv))
    os._exit(0)
