"""``d2tls bench record``: application-data cost per record, CCM_8 and GCM, vs the raw AEAD.

A client and a server engine complete a real handshake (ECDHE_ECDSA with the cipher suite under
test) in :class:`d2tls.sim.Simulation`; then each measured record goes the whole sans-IO path:
``send_application_data`` -> ``datagrams_to_send`` -> the server's ``receive_datagram`` (parse,
replay window, AEAD open) -> ``next_event``. Thread CPU per record is compared with sealing and
opening the same payload with ``cryptography``'s AESCCM/AESGCM, timed in the same run. Sockets
are left out on purpose (the UDP syscall costs the same for any record layer; see ``bench
server`` for a loopback run).
"""

from __future__ import annotations

import os
import time
from typing import Any

from d2tls.bench.common import (
    SERVER_NAME,
    Materials,
    Progress,
    environment,
    gc_paused,
    ratio,
    summary,
    table,
)
from d2tls.bench.floor import aead_record_floor
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientAuth, ClientConfig, ServerConfig
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.events import ApplicationDataReceived
from d2tls.core.dtls.server import DTLSServer
from d2tls.sim import Simulation

SUITES = {
    "ccm8": CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
    "gcm": CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
}
SIZES = (16, 64, 256, 1024, 1345)
CLIENT = ("198.51.100.9", 40000)


def established_pair(materials: Materials, suite: CipherSuite) -> tuple[DTLSClient, DTLSServer]:
    server = DTLSServer(
        ServerConfig(
            cipher_suites=(suite,),
            certificate_chain=materials.server_chain,
            private_key=materials.server_key,
            trust_store=materials.store,
            client_auth=ClientAuth.REQUIRED,
        )
    )
    client = DTLSClient(
        ClientConfig(
            cipher_suites=(suite,),
            trust_store=materials.store,
            server_name=SERVER_NAME,
            certificate_chain=materials.device_chain,
            private_key=materials.device_key,
        )
    )
    sim = Simulation(server)
    sim.add_client(client, CLIENT)
    sim.connect(CLIENT)
    sim.run(lambda: client.is_established or client.is_closed, max_time=60)
    sim.run(max_time=sim.now + 1)
    connection = server.connection(CLIENT)
    if not client.is_established or connection is None or not connection.is_established:
        raise RuntimeError(f"handshake with {suite.name} did not complete")
    while server.next_event() is not None:
        pass
    return client, server


def record_cost(client: DTLSClient, server: DTLSServer, size: int, batches: int) -> list[float]:
    """Seconds per record (seal + send + receive + open + event), one value per batch."""
    payload = os.urandom(size)
    batch = 200
    samples = []
    for _ in range(batches):
        with gc_paused():
            start = time.thread_time()
            for _ in range(batch):
                client.send_application_data(payload)
                for datagram, _ in client.datagrams_to_send(0.0):
                    server.receive_datagram(datagram, CLIENT, 0.0)
                event = server.next_event()
            elapsed = time.thread_time() - start
        if not isinstance(event, ApplicationDataReceived) or len(event.data) != size:
            raise RuntimeError("record did not arrive")
        samples.append(elapsed / batch)
    return samples


def run(
    runs: int = 50,
    sizes: tuple[int, ...] = SIZES,
    progress: bool = True,
    materials: Materials | None = None,
) -> dict[str, Any]:
    materials = materials or Materials.create()
    result: dict[str, Any] = {
        "benchmark": "record",
        "runs": runs,
        "environment": environment(),
        "suites": {},
    }
    batches = max(3, runs // 5)
    with Progress(len(SUITES) * len(sizes), "bench record", progress) as bar:
        for name, suite in SUITES.items():
            client, server = established_pair(materials, suite)
            rows = []
            for size in sizes:
                samples = record_cost(client, server, size, batches)
                raw = aead_record_floor(name, size)
                per = summary([s * 1e6 for s in samples], 3)
                rows.append(
                    {
                        "size": size,
                        "record_us": per,
                        "aead_us": round(raw * 1e6, 3),
                        "vs_aead": ratio(per["median"], raw * 1e6, 2),
                        "records_per_s": round(1e6 / per["median"]) if per["median"] else None,
                        "mb_per_s": round(size / per["median"], 2) if per["median"] else None,
                    }
                )
                bar.update()
            result["suites"][name] = {"cipher_suite": suite.name, "sizes": rows}
    return result


def render(result: dict[str, Any]) -> str:
    rows = []
    for name, suite in result["suites"].items():
        for row in suite["sizes"]:
            rows.append(
                [
                    name,
                    row["size"],
                    row["record_us"]["median"],
                    f"{row['record_us']['q1']:.1f}-{row['record_us']['q3']:.1f}",
                    row["aead_us"],
                    row["vs_aead"],
                    row["records_per_s"],
                    row["mb_per_s"],
                ]
            )
    return table(
        ["suite", "bytes", "record us", "IQR", "raw AEAD us", "x AEAD", "records/s", "MB/s"],
        rows,
        title="Application data, one record client -> server through the engines "
        "(thread CPU; raw AEAD = seal + open)",
    )
