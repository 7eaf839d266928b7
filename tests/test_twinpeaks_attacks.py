"""TwinPeaks attacker models (section 2.5 of the dissertation, d2tls.adversary.twinpeaks).

Impersonation of a member succeeds only when both its DNS record and a key server on its chain
are compromised (a compromised root alone, or with the DNS, is caught when a second root
cross-checks); forged responses signed by a key that is not the asked server's are discarded
by the signature check. The table in docs/twinpeaks-outcomes.md must equal a fresh run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d2tls.adversary.twinpeaks import (
    CASES,
    DOC,
    KEY_SERVERS,
    Compromise,
    Outcome,
    expected_impersonation,
    render,
    run_world,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    return [run_world(c) for c in CASES]


def test_table_in_docs_is_up_to_date(outcomes: list[Outcome]) -> None:
    doc = ROOT / DOC
    assert doc.exists(), "run: python -m d2tls.adversary.twinpeaks"
    assert doc.read_text() == render(outcomes), f"{DOC} is stale: regenerate it"


def test_every_case_matches_the_rule(outcomes: list[Outcome]) -> None:
    for o in outcomes:
        assert (o.verdict == "impersonation") == expected_impersonation(o.compromise), o


def test_one_compromised_root_is_caught_by_cross_verification(outcomes: list[Outcome]) -> None:
    (o,) = [o for o in outcomes if o.compromise == Compromise(key_server="root", roots=2)]
    assert o.verdict == "detected" and "CrossCheckError" in o.how


def test_forged_responses_from_a_non_parent_fail_the_signature(outcomes: list[Outcome]) -> None:
    (o,) = [o for o in outcomes if o.compromise == Compromise(poison=True)]
    assert o.verdict == "prevented"
    assert o.discarded and all(reason.startswith("SignatureError") for reason in o.discarded)


def test_dns_alone_is_an_address_mismatch(outcomes: list[Outcome]) -> None:
    (o,) = [o for o in outcomes if o.compromise == Compromise(dns=True)]
    assert o.verdict == "detected" and "AddressMismatch" in o.how


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dns=st.booleans(),
    key_server=st.sampled_from(KEY_SERVERS),
    roots=st.sampled_from([1, 2]),
    poison=st.booleans(),
    seed=st.text(alphabet="abcdef0123456789", min_size=1, max_size=8),
)
def test_impersonation_iff_dns_and_key_server(
    dns: bool, key_server: str, roots: int, poison: bool, seed: str
) -> None:
    compromise = Compromise(dns, key_server, roots, poison)
    outcome = run_world(compromise, seed)
    assert (outcome.verdict == "impersonation") == expected_impersonation(compromise), outcome
