"""One agreement run (tests/test_conformance_agreement.py): start PEER, run the readiness
checks against it as it runs, then, against the same running server, a direct
``d2tls client`` (full handshake, then resumption from the saved session) and ``d2tls agent``
+ ``d2tls device`` (bound mode, two connections: delegated, then resumed). Prints one JSON
object. Run inside a network namespace for gnutls (gnutls-serv binds every address).

usage: agreement_run.py PEER WORKDIR
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from d2tls.conformance.peers import make_server
from d2tls.conformance.probe import ClientCredentials
from d2tls.conformance.readiness import ReadinessSuite
from d2tls.conformance.runner import udp_factory
from d2tls.core.pki.generate import init_pki
from d2tls.core.pki.verify import (
    load_certificate_chain,
    load_private_key,
    load_psk_file,
    load_trust_store,
)
from d2tls.lab.peers import free_udp_port

D2TLS = [sys.executable, "-m", "d2tls.cli"]
#: Options ``d2tls agent`` needs to delegate to ADDRESS (its allow-list).
AGENT_ALLOW: list[str] = ["--allow-server", "ADDRESS"]


def _agent_allow(address: str) -> list[str]:
    return [a.replace("ADDRESS", address) for a in AGENT_ALLOW]


def _run(argv: list[str], timeout: float = 90) -> dict[str, Any]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    return {"rc": done.returncode, "out": (done.stdout + done.stderr)[-1500:]}


def main(peer: str, work: Path) -> dict[str, Any]:
    pki = init_pki(work / "pki", server_name="localhost", devices=1)
    psk = next(iter(load_psk_file(pki.psk_file).items()))
    device = pki.devices[0]
    credentials = ClientCredentials(
        chain=tuple(load_certificate_chain(device.cert)),
        key=load_private_key(device.key),
        server_name="localhost",
    )
    server = make_server(peer, pki, psk)
    server.start()
    result: dict[str, Any] = {"peer": peer}
    try:
        target = server.address
        hostport = f"{target[0]}:{target[1]}"
        started = time.monotonic()
        readiness = ReadinessSuite(
            udp_factory(target),
            credentials,
            psk=psk,
            d2tls_target=target,
            trust_store=load_trust_store(pki.ca_cert),
            wait=0.8,
        ).run()
        result["readiness_seconds"] = round(time.monotonic() - started, 1)
        result["verdict"] = readiness.verdict
        result["reason"] = readiness.reason
        result["statuses"] = {c.id: c.status for c in readiness.checks}
        client = [*D2TLS, "client", hostport, "--ca", str(pki.ca_cert)]
        client += ["--cert", str(device.cert), "--key", str(device.key)]
        client += ["--server-name", "localhost", "--json", "--timeout", "20"]
        session = work / "session.bin"
        result["client_full"] = _run([*client, "--session-out", str(session)])
        result["client_resumed"] = _run([*client, "--session-in", str(session)])
        agent_port = free_udp_port()
        agent = subprocess.Popen(
            [
                *D2TLS,
                "agent",
                "--listen",
                f"127.0.0.1:{agent_port}",
                "--psk-file",
                str(pki.agent_psk_file),  # PSKs bound to the device certificates
                "--ca",
                str(pki.ca_cert),
                *_agent_allow(hostport),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            time.sleep(1.5)  # the agent binds its UDP port
            result["device"] = _run(
                [
                    *D2TLS,
                    "device",
                    "--agent",
                    f"127.0.0.1:{agent_port}",
                    "--psk",
                    f"{psk[0].decode()}:{psk[1].hex()}",
                    "--server",
                    hostport,
                    "--server-name",
                    "localhost",
                    "--cert",
                    str(device.cert),
                    "--key",
                    str(device.key),
                    "--mode",
                    "bound",
                    "--connections",
                    "2",
                    "--json",
                ]
            )
        finally:
            agent.terminate()
            agent.wait(timeout=10)
    finally:
        server.stop()
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]))))
