"""Run the three conformance suites against one server and build the report.

Used by ``d2tls conformance HOST:PORT`` (a server somebody else runs) and by
:mod:`.peers` (servers this package starts, and may restart between learning queries).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from cryptography.x509.verification import Store

from d2tls.conformance.probe import (
    ClientCredentials,
    Prober,
    Transport,
    UDPTransport,
    full_handshake,
)
from d2tls.conformance.readiness import ReadinessSuite
from d2tls.conformance.report import SUITES, build_report
from d2tls.conformance.scenarios import SCENARIOS, ScenarioRunner
from d2tls.conformance.specmodel import INPUTS, SMALL_INPUTS, ServerOptions

Address = tuple[str, int]


def udp_factory(target: Address) -> Callable[[int | None], Transport]:
    """Transports to ``target`` from loopback (a fresh port, or the one asked for)."""
    local = "::1" if ":" in target[0] else "127.0.0.1"

    def factory(port: int | None = None) -> Transport:
        return UDPTransport(target, None if port is None else (local, port))

    return factory


def server_echoes(factory: Callable[[], Transport], credentials: ClientCredentials) -> bool:
    """Does the server send application data back (after a correct handshake)?"""
    prober = Prober(factory(), credentials)
    try:
        answer = full_handshake(prober)
        if not prober.handshake_complete:
            if not answer.timeout:
                prober.close_association()
            return False
        probe = b"d2tls echo?\n"
        prober.send_records([prober.application_data(probe)])
        answer = prober.receive(wait=0.5)
        prober.close_association()
        return any(i.kind == "data" and probe in i.body for i in answer.items)
    finally:
        prober.close()


def run_conformance(
    target: Address,
    credentials: ClientCredentials,
    *,
    name: str,
    command: Sequence[str],
    suites: Sequence[str] = SUITES,
    factory: Callable[[int | None], Transport] | None = None,
    trust_store: Store | None = None,
    psk: tuple[bytes, bytes] | None = None,
    reset: Callable[[], None] | None = None,
    learn_by_restart: bool = True,
    settle: float = 0.2,
    peer: dict[str, Any] | None = None,
    inputs: Sequence[str] = INPUTS,
    wait: float = 0.4,
    learn_wait: float = 0.15,
    machines: Path | None = None,
    image_formats: Sequence[str] = ("svg", "png"),
    d2tls_flow: bool = True,
    stream: TextIO | None = sys.stderr,
) -> dict[str, Any]:
    """The report (see :func:`.report.build_report`) of the chosen suites.

    ``reset`` (a server this process can restart) gives readiness a fresh server to start
    from (its checks then run against it as it runs) and scenarios a fresh server each;
    learning restarts it per query unless ``learn_by_restart`` is False, then it resets by a
    new client port, a clean close and ``settle`` s, as against a server run by others."""
    from d2tls.conformance.learning import learn

    started = datetime.now(UTC).isoformat(timespec="seconds")
    clock = time.monotonic()
    make = factory or udp_factory(target)

    def say(text: str) -> None:
        if stream is not None:
            print(text, file=stream, flush=True)

    readiness = scenarios = learning = None
    echo: bool | None = None
    if "readiness" in suites:
        say(f"[readiness] {name}")
        suite = ReadinessSuite(
            make,
            credentials,
            psk=psk,
            d2tls_target=target if d2tls_flow else None,
            trust_store=trust_store,
            wait=wait,
            progress=say,
            reset=reset,
        )
        result = suite.run()
        readiness = result.to_dict()
        echo = bool(result.facts.get("echo"))
    if "scenarios" in suites:
        say(f"[scenarios] {name}")
        runner = ScenarioRunner(lambda: make(None), credentials, reset=reset, wait=wait)
        scenarios = [r.to_dict() for r in runner.run_all(SCENARIOS, progress=say)]
    if "learning" in suites:
        say(f"[learning] {name}")
        learn_reset = reset if learn_by_restart else None
        if reset is not None:
            reset()
        if echo is None:
            echo = server_echoes(lambda: make(None), credentials)
        outcome = learn(
            lambda: make(None),
            credentials,
            inputs=inputs,
            options=ServerOptions(echo=echo),
            reset=learn_reset,
            settle=settle,
            wait=learn_wait,
            progress=stream,
            output_dir=machines,
            name=_slug(name),
            formats=image_formats,
        )
        learning = outcome.to_dict()
        learning["echo"] = echo
        say(f"  {outcome.verdict()}")
    return build_report(
        _hostport(target),
        name=name,
        command=command,
        peer=peer,
        readiness=readiness,
        scenarios=scenarios,
        learning=learning,
        started=started,
        seconds=time.monotonic() - clock,
    )


def report_ok(report: dict[str, Any]) -> bool:
    """Ready, no failed scenario, learned machine equivalent (for the suites run)."""
    readiness, learning = report.get("readiness"), report.get("learning")
    counts = report.get("scenario_counts")
    return (
        (readiness is None or readiness["verdict"] == "ready")
        and (counts is None or counts["fail"] == 0)
        and (learning is None or learning["verdict"] == "equivalent")
    )


def _hostport(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name.lower()).strip("-")


INPUT_SETS = {"full": INPUTS, "small": SMALL_INPUTS}

__all__ = ["INPUT_SETS", "report_ok", "run_conformance", "server_echoes", "udp_factory"]
