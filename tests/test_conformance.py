"""The conformance suite (issue 6): readiness, scripted RFC scenarios, state-machine learning.

Our own server must come out ready, pass every scenario and learn to a machine equivalent to
the spec-derived one; deliberately misconfigured servers must be caught. Third-party peers
(OpenSSL, GnuTLS, mbedTLS, wolfSSL) are checked for the readiness verdicts the committed report in
docs/conformance explains. Everything runs on loopback (or in-process, or in a private
network namespace); nothing is mocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LoadedPKI, server_config
from d2tls.conformance.learning import learn
from d2tls.conformance.mealy import differences
from d2tls.conformance.peers import D2TLSServerProcess, run_peer
from d2tls.conformance.probe import ClientCredentials, InProcessTransport, ProbeError, UDPTransport
from d2tls.conformance.readiness import FAIL, INCONCLUSIVE, PASS, ReadinessSuite
from d2tls.conformance.report import markdown, summary_table, write_html
from d2tls.conformance.runner import run_conformance
from d2tls.conformance.scenarios import FAIL as SCENARIO_FAIL
from d2tls.conformance.scenarios import PASS as SCENARIO_PASS
from d2tls.conformance.scenarios import SCENARIOS, VOCABULARY, ScenarioRunner, Send
from d2tls.conformance.specmodel import INPUTS, ServerOptions, spec_machine
from d2tls.core.dtls.config import ClientAuth
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.pki.verify import load_psk_file
from d2tls.lab.peers import free_udp_port

#: Answer timeout over UDP: generous, so that a loaded test machine does not turn a late
#: answer into "silence" (the committed report used 0.4 s).
WAIT = 0.8


def credentials(pki: LoadedPKI) -> ClientCredentials:
    return ClientCredentials(chain=pki.device.chain, key=pki.device.key, server_name="localhost")


class InProcess:
    """Our sans-IO server, recreated by ``reset`` (a fresh server per query)."""

    def __init__(self, pki: LoadedPKI, echo: bool = False, **overrides: object) -> None:
        self.pki, self.echo, self.overrides = pki, echo, overrides
        self.port = 40000
        self.reset()

    def reset(self) -> None:
        self.server = DTLSServer(server_config(self.pki, **self.overrides))

    def transport(self, port: int | None = None) -> InProcessTransport:
        if port is None:
            self.port += 1
            port = self.port
        return InProcessTransport(self.server, ("192.0.2.1", port), echo=self.echo)


# --------------------------------------------------------------------------- our server


def test_cli_our_server_ready_and_passes_every_scenario(pki: LoadedPKI, tmp_path: Path) -> None:
    """``d2tls conformance`` against ``d2tls server`` (both real processes, real UDP)."""
    psk = next(iter(load_psk_file(pki.paths.psk_file).items()))
    server = D2TLSServerProcess(pki.paths, psk, free_udp_port()).start()
    try:
        device = pki.paths.devices[0]
        argv = [sys.executable, "-m", "d2tls.cli", "conformance", f"127.0.0.1:{server.port}"]
        argv += ["--ca", str(pki.paths.ca_cert), "--cert", str(device.cert)]
        argv += ["--key", str(device.key), "--psk", f"{psk[0].decode()}:{psk[1].hex()}"]
        argv += ["--only", "readiness", "scenarios", "--quiet", "--wait", str(WAIT)]
        argv += ["--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    finally:
        server.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ready" in done.stdout and "19 pass, 0 fail" in done.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    readiness = report["readiness"]
    assert readiness["verdict"] == "ready", readiness["reason"]
    statuses = {c["id"]: c["status"] for c in readiness["checks"]}
    assert {k: v for k, v in statuses.items() if v != PASS} == {}
    assert readiness["facts"]["echo"] is True
    assert [s["id"] for s in report["scenarios"] if s["verdict"] != SCENARIO_PASS] == []
    assert "<table>" in (tmp_path / "r.html").read_text()


def test_learned_machine_of_our_server_is_equivalent_to_the_spec(
    pki: LoadedPKI, tmp_path: Path
) -> None:
    """AALpy L# over the full DTLS-Fuzzer-style alphabet, a fresh server per query."""
    target = InProcess(pki)
    result = learn(
        lambda: target.transport(),
        credentials(pki),
        inputs=INPUTS,
        reset=target.reset,
        walks_per_state=3,
        progress=None,
        output_dir=tmp_path,
        name="d2tls",
    )
    assert result.equivalent, [d.to_dict() for d in result.differences]
    assert len(result.machine.states) == len(result.spec.states) > 10
    assert result.nondeterministic == 0
    assert result.cache_hits > 0
    assert (tmp_path / "d2tls-learned.dot").read_text().startswith("digraph")
    assert result.files.get("learned_png") == "d2tls-learned.png"
    assert (tmp_path / "d2tls-learned.png").read_bytes()[:4] == b"\x89PNG"
    # the report renders the machine and the verdict
    report = {
        "target": "in-process",
        "name": "d2tls",
        "command": ["test"],
        "readiness": None,
        "scenarios": None,
        "learning": result.to_dict(),
    }
    assert "equivalent" in summary_table(report)
    assert "![learned machine](d2tls-learned.svg)" in markdown(report)
    write_html(report, tmp_path / "r.html")
    assert "data:image/svg+xml;base64," in (tmp_path / "r.html").read_text()


def test_spec_comparison_reports_shortest_differences() -> None:
    """A server that does not require client certificates differs from one that does, and
    the first difference is the shortest sequence showing it."""
    required = spec_machine(INPUTS, ServerOptions(client_auth="required"))
    optional = spec_machine(INPUTS, ServerOptions(client_auth="optional"))
    found = differences(required, optional, limit=3)
    assert found
    assert len(found[0].inputs) <= len(found[-1].inputs)
    assert "EmptyCertificate" in found[0].inputs
    assert found[0].expected[-1] != found[0].observed[-1]
    assert differences(required, required) == []


# --------------------------------------------------------------------------- misconfigured


def test_readiness_catches_a_server_without_cookies_or_client_auth(pki: LoadedPKI) -> None:
    target = InProcess(pki, cookie_exchange=False, client_auth=ClientAuth.NONE)
    result = ReadinessSuite(target.transport, credentials(pki)).run()
    assert not result.ready
    assert result.check("cookie").status == FAIL
    assert result.check("client-auth-requested").status == FAIL
    assert result.check("client-auth-required").status == FAIL
    assert result.check("suite-ccm8").status == PASS
    assert "cookie exchange" in result.reason


def test_scenarios_fail_a_server_that_skips_the_cookie(pki: LoadedPKI) -> None:
    target = InProcess(pki, cookie_exchange=False)
    runner = ScenarioRunner(lambda: target.transport(), credentials(pki), reset=target.reset)
    forged = next(s for s in SCENARIOS if s.id == "forged-cookie")
    result = runner.run(forged)
    assert result.verdict == SCENARIO_FAIL
    assert "ServerHello" in result.reason


def test_scenarios_in_process_with_echo_all_pass(pki: LoadedPKI) -> None:
    target = InProcess(pki, echo=True)
    report = run_conformance(
        ("192.0.2.1", 1),
        credentials(pki),
        name="in-process",
        command=["test"],
        suites=("scenarios",),
        factory=target.transport,
        reset=target.reset,
        stream=None,
    )
    assert report["scenario_counts"] == {"pass": len(SCENARIOS), "fail": 0, "inconclusive": 0}


def test_scenario_scripts_use_only_the_documented_vocabulary() -> None:
    for scenario in SCENARIOS:
        assert scenario.rfc.startswith("RFC")
        for step in scenario.script:
            if isinstance(step, Send):
                for item in step.items:
                    assert item.partition(":")[0] in VOCABULARY, (scenario.id, item)


def test_prober_refuses_non_loopback_targets() -> None:
    with pytest.raises(ProbeError):
        UDPTransport(("192.0.2.1", 4433))


def test_cli_refuses_non_loopback_target(pki: LoadedPKI) -> None:
    argv = [sys.executable, "-m", "d2tls.cli", "conformance", "192.0.2.1:4433"]
    argv += ["--ca", "x", "--cert", "x", "--key", "x"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr


# --------------------------------------------------------------------------- third parties


@pytest.mark.parametrize(
    ("peer", "verdict", "failing"),
    [
        ("openssl", "ready", set()),
        ("wolfssl", "ready", set()),
        ("mbedtls", "not ready", {"ems-resume-without", "ems-upgrade"}),
    ],
)
def test_third_party_readiness_verdicts(
    pki: LoadedPKI, tmp_path: Path, peer: str, verdict: str, failing: set[str]
) -> None:
    """The verdicts explained in docs/conformance/README.md, reached by ``run_peer`` (what
    ``d2tls conformance-peers`` runs): the server is not restarted between checks. mbedTLS
    2.28 resumes across an extended-master-secret mismatch (RFC 7627 §5.3). GnuTLS (whose
    later checks are inconclusive) is covered by tests/test_conformance_agreement.py. A
    missing ssl_server2 or wolfssl_server fails here."""
    report = run_peer(peer, tmp_path, suites=("readiness",), pki_dir=tmp_path / "pki", wait=WAIT)
    readiness = report["readiness"]
    assert readiness["verdict"] == verdict, readiness["reason"]
    failed = {c["id"] for c in readiness["checks"] if c["status"] == FAIL}
    assert failed == failing
    d2tls = next(c for c in readiness["checks"] if c["id"] == "d2tls")
    assert d2tls["status"] == PASS, d2tls
    assert INCONCLUSIVE not in {c["status"] for c in readiness["checks"]}
