"""The compromised security agent: every case has the outcome the design claims.

DESIGN.md §3 and spec/delegation.md ("What a compromised agent cannot / can do") state which
attacks of a compromised agent are prevented, detected (by whom) or succeed; the Tamarin
lemmas of proofs/expected.toml say the same symbolically. Each case runs in a simulated D2TLS
world with the real engines (d2tls.adversary.compromised); a change in behaviour changes an
observed outcome and fails here, and docs/attacker-outcomes.md must equal a fresh rendering.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from d2tls.adversary import report
from d2tls.adversary.compromised import CASES, Case, Outcome, Verdict, run_case
from d2tls.adversary.report import lemma_verdicts, render

DOC = Path(__file__).resolve().parents[1] / report.DOC

P, D, S = Verdict.PREVENTED, Verdict.DETECTED, Verdict.SUCCEEDS

#: case -> (outcome, by whom, a phrase the observation must contain)
EXPECTED: dict[str, tuple[Verdict, str, str]] = {
    "inject-before-signing": (S, "nobody", "delivered to the server: True, to the device: True"),
    "inject-after-signing": (S, "nobody", "delivered to the server: True, to the device: True"),
    "inject-after-handover": (S, "nobody", "delivered to the server: True, to the device: True"),
    "inject-guessed-seq": (S, "nobody", "outside the server's window: delivered False"),
    "inject-after-wiping": (P, "server", "fail authentication"),
    "keep-server-connection": (S, "nobody", "device-authenticated full session"),
    "second-signature": (P, "device", "already signed once (1 signature"),
    "signature-unknown-request": (P, "device", "unknown request (1 signature"),
    "prestarted-bound": (P, "device", "ClientHello random is not the one this device chose"),
    "prestarted-blind": (S, "nobody", "handshake begun before the request"),
    "wrong-master-secret": (D, "device", "timed out"),
    "stale-session-id": (D, "device", "resumption_refused; delegated again (2 delegations)"),
    "context-without-ems": (D, "device", "context without the extended master secret"),
    "replayed-context": (D, "device", "message for an unknown request"),
    "made-up-context": (S, "nobody", "real server took no part"),
    "other-server": (P, "device", "is not for 'server.d2tls.test', the server this device asked"),
    "other-server-blind": (S, "device (afterwards)", "delegated again (2 delegations)"),
}


@pytest.fixture(scope="module")
def outcomes() -> dict[str, Outcome]:
    return {case.id: run_case(case) for case in CASES}


def test_every_case_has_an_expectation() -> None:
    assert sorted(EXPECTED) == sorted(c.id for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_outcome_is_what_the_design_claims(case: Case, outcomes: dict[str, Outcome]) -> None:
    verdict, by, phrase = EXPECTED[case.id]
    observed = outcomes[case.id]
    assert (observed.verdict, observed.by) == (verdict, by), observed.how
    assert phrase in observed.how


def test_lemmas_exist_and_match_the_outcome(outcomes: dict[str, Outcome]) -> None:
    """Cross-references name real lemmas; a prevented attack never cites only falsified ones."""
    verdicts = lemma_verdicts()
    assert verdicts, "proofs/expected.toml not found"
    for case in CASES:
        for lemma in case.lemmas:
            assert lemma in verdicts, f"{case.id}: unknown lemma {lemma}"
        cited = [verdicts[lemma] for lemma in case.lemmas]
        if outcomes[case.id].verdict is Verdict.PREVENTED and cited:
            assert "verified" in cited, case.id


def test_table_in_docs_is_up_to_date(outcomes: dict[str, Outcome]) -> None:
    fresh = render(outcomes[c.id] for c in CASES)
    assert DOC.exists(), "run: python -m d2tls.adversary.report"
    assert DOC.read_text() == fresh, "docs/attacker-outcomes.md is stale: regenerate it"


def test_bound_device_refuses_another_server_and_tells_the_agent(
    outcomes: dict[str, Outcome],
) -> None:
    """Bound mode binds the server (issue 24 item 2): no signature leaves the device, the agent
    hears SIGNING_REFUSED. Blind mode cannot check: the other server accepts its signature."""
    how = outcomes["other-server"].how
    assert "(0 signature for the request)" in how
    assert "the agent was told (DelegationError signing_refused)" in how
    assert "other.d2tls.test accepted" in outcomes["other-server-blind"].how


def test_device_signs_at_most_once_per_request(outcomes: dict[str, Outcome]) -> None:
    """Whatever the agent asks, one signature per DelegationRequest (DESIGN.md §2)."""
    for case_id in ("second-signature", "signature-unknown-request"):
        assert "(1 signature for the request)" in outcomes[case_id].how
