"""``d2tls demo``: a complete run on loopback with a temporary PKI.

Current scope (DTLS foundation): our server with client certificates required and echo, our
client doing a full ECDHE-ECDSA handshake, an echo, then an abbreviated handshake resuming the
session and another echo. Prints a short timeline and exits non-zero on any failure.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from d2tls.dtls.client import DTLSClient
from d2tls.dtls.config import ClientAuth, ClientConfig, ServerConfig
from d2tls.dtls.server import DTLSServer
from d2tls.dtls.session import Session
from d2tls.net.udp import ClientEndpoint, ConnectionFailed, ServerEndpoint
from d2tls.pki.generate import init_pki
from d2tls.pki.verify import load_certificate_chain, load_private_key, load_trust_store


async def _connect(
    port: int, config: ClientConfig, message: bytes, trace: list[dict[str, Any]]
) -> tuple[dict[str, Any], Session]:
    engine = DTLSClient(config, tracer=trace.append)
    started = time.perf_counter()
    endpoint = await ClientEndpoint.connect("127.0.0.1", port, engine)
    done = await endpoint.handshake(timeout=10)
    elapsed = (time.perf_counter() - started) * 1000
    endpoint.send(message)
    echoed = await endpoint.receive(timeout=5)
    await endpoint.close()
    result = {
        "resumed": done.resumed,
        "cipher": done.cipher_suite.name,
        "extended_master_secret": done.extended_master_secret,
        "session_id": done.session.session_id.hex(),
        "handshake_ms": round(elapsed, 3),
        "echo_ok": echoed == message,
        "datagrams_sent": engine.stats["datagrams_sent"],
        "bytes_sent": engine.stats["bytes_sent"],
    }
    return result, done.session


async def _demo() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="d2tls-demo-") as directory:
        pki = init_pki(Path(directory), server_name="localhost", devices=1)
        store = load_trust_store(pki.ca_cert)
        server = DTLSServer(
            ServerConfig(
                certificate_chain=load_certificate_chain(pki.server_cert),
                private_key=load_private_key(pki.server_key),
                trust_store=store,
                client_auth=ClientAuth.REQUIRED,
            )
        )
        endpoint = await ServerEndpoint.listen("127.0.0.1", 0, server, echo=True)
        assert endpoint.address is not None
        port = endpoint.address[1]
        device = pki.devices[0]
        base = ClientConfig(
            trust_store=store,
            server_name="localhost",
            certificate_chain=load_certificate_chain(device.cert),
            private_key=load_private_key(device.key),
        )
        trace: list[dict[str, Any]] = []
        try:
            full, session = await _connect(port, base, b"hello over DTLS 1.2", trace)
            base.session = session
            base.resume_only = True
            resumed, _ = await _connect(port, base, b"hello again, resumed", trace)
        finally:
            endpoint.close()
        return {"ok": full["echo_ok"] and resumed["echo_ok"] and resumed["resumed"],
                "full": full, "resumption": resumed, "trace": trace}


def _print_timeline(trace: list[dict[str, Any]]) -> None:
    start = trace[0]["t"] if trace else 0.0
    for entry in trace:
        if entry["event"] in ("message_sent", "message_received"):
            arrow = "->" if entry["event"] == "message_sent" else "<-"
            print(f"  {1000 * (entry['t'] - start):8.2f} ms  client {arrow} server  {entry['message']}")


def run_demo(as_json: bool = False) -> int:
    """Run the demo; return the process exit status."""
    try:
        result = asyncio.run(_demo())
    except (ConnectionFailed, TimeoutError) as exc:
        result = {"ok": False, "error": str(exc)}
    if as_json:
        print(json.dumps({k: v for k, v in result.items() if k != "trace"}, sort_keys=True))
        return 0 if result["ok"] else 1
    if "error" in result:
        print(f"demo failed: {result['error']}")
        return 1
    print("d2tls demo: DTLS 1.2 client <-> server on 127.0.0.1 (client certificates required)\n")
    _print_timeline(result["trace"])
    print()
    for label in ("full", "resumption"):
        r = result[label]
        print(
            f"{label:11} {r['cipher']}  resumed={r['resumed']}  ems={r['extended_master_secret']}  "
            f"{r['handshake_ms']:.1f} ms  {r['datagrams_sent']} datagrams / {r['bytes_sent']} bytes "
            f"sent  echo={'ok' if r['echo_ok'] else 'FAILED'}"
        )
    print("\nresult:", "OK" if result["ok"] else "FAILED")
    return 0 if result["ok"] else 1
