"""The Tamarin theories: syntax, consistency with the spec, expected verdicts, `d2tls prove`.

Syntax (Tree-sitter) and consistency tests always run. Tests that need Tamarin run only where
tamarin-prover and maude are on PATH and are skipped with a loud reason elsewhere; the unit
tests of the output parser use a stand-in prover, beside the real-prover tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from d2tls.cli import main as d2tls_main
from d2tls.prove import graphs, runner
from d2tls.prove.consistency import (
    EXCLUDED,
    TransitionRef,
    check_theories,
    resolve,
    rule_tags,
    security_relevant,
    spec_transitions,
)
from d2tls.prove.runner import (
    EXIT_MISMATCH,
    EXIT_NO_PROVER,
    EXIT_OK,
    EXIT_USAGE,
    FALSIFIED,
    INCOMPLETE,
    VERIFIED,
    LemmaResult,
    parse_output,
)
from d2tls.prove.syntax import check_file, check_source, top_level_items

ROOT = Path(__file__).resolve().parents[1]
PROOFS = ROOT / "proofs"
THEORIES = sorted(PROOFS.glob("*.spthy"))  # the ones `d2tls prove` proves
#: Every theory in the repository, experimental ones included: all must parse and match the spec.
ALL_THEORIES = sorted(PROOFS.rglob("*.spthy"))
MAIN_THEORY = PROOFS / "d2tls_dtls12.spthy"

TAMARIN = shutil.which("tamarin-prover")
MAUDE = shutil.which("maude")
NO_PROVER = (
    "TAMARIN TESTS DID NOT RUN: "
    + " and ".join(n for n, p in (("tamarin-prover", TAMARIN), ("maude", MAUDE)) if p is None)
    + " not on PATH. The proofs are unchecked here; install them (see `d2tls prove`) to run."
)
needs_prover = pytest.mark.skipif(TAMARIN is None or MAUDE is None, reason=NO_PROVER)


# --------------------------------------------------------------------------- syntax


def test_there_is_a_theory() -> None:
    assert MAIN_THEORY in THEORIES


@pytest.mark.parametrize("theory", ALL_THEORIES, ids=lambda p: p.name)
def test_theory_parses_with_tree_sitter(theory: Path) -> None:
    assert check_file(theory) == []


@pytest.mark.parametrize(
    "broken",
    [
        "rule A: [ In(x ] --> [ Out(x) ]",  # unbalanced parenthesis
        'lemma l: "All x #i. F(x) @ #i ==> "',  # formula without a conclusion
        "rule B: [ In(x) ] --[ ]-> [ Out(x) ",  # conclusion never closed
        "rule C: [ In(x) ] --> [ Out(<'key expansion', x>) ]",  # Tamarin rejects the space
    ],
)
def test_syntax_check_rejects_a_broken_theory(broken: str) -> None:
    text = MAIN_THEORY.read_text(encoding="utf-8").replace("\nend", f"\n{broken}\n\nend")
    problems = check_source(text.encode(), "broken.spthy")
    assert problems, broken


def test_tree_sitter_and_runner_agree_on_the_lemmas() -> None:
    source = MAIN_THEORY.read_bytes()
    assert top_level_items(source)["lemma"] == runner.lemma_names(source.decode())
    assert [r.rule for r in rule_tags(MAIN_THEORY)] == top_level_items(source)["rule"]


def test_commented_out_lemma_is_not_a_lemma() -> None:
    text = 'theory T begin\n/* lemma a: "F" */\n// lemma b: "F"\nlemma c: "F"\nend\n'
    assert runner.lemma_names(text) == ["c"]


# --------------------------------------------------------------------------- consistency


@pytest.mark.parametrize("theory", ALL_THEORIES, ids=lambda p: p.name)
def test_theories_are_consistent_with_the_spec(theory: Path) -> None:
    report = check_theories([theory])
    assert report.ok, "\n".join(report.problems())


def test_consistency_check_is_not_vacuous() -> None:
    relevant = security_relevant()
    labels = {t.label() for t in relevant}
    for needed in (
        "device.awaiting_sign_request->awaiting_context recv_SignRequest"
        " if sign_request_acceptable",
        "agent.handing_over->done context_sent",
        "dtls_server.wait_certificate_verify->wait_change_cipher_spec recv_CertificateVerify",
        "dtls_client.wait_server_hello->wait_change_cipher_spec_resumed recv_ServerHello"
        " if server_resumes_session",
    ):
        assert needed in labels
    report = check_theories(THEORIES)
    modelled = set(report.modelled)
    assert len(modelled) >= 25
    assert set(relevant) - set(EXCLUDED_REFS) <= modelled


EXCLUDED_REFS = [ref for key in EXCLUDED for ref in resolve(key, spec_transitions())]


def test_every_exclusion_names_one_transition_with_a_reason() -> None:
    transitions = spec_transitions()
    for key, why in EXCLUDED.items():
        assert len(resolve(key, transitions)) == 1, key
        assert len(why) > 20, key


def test_every_rule_is_tagged() -> None:
    for entry in rule_tags(MAIN_THEORY):
        assert entry.tags, entry.rule


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    text = MAIN_THEORY.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path = tmp_path / MAIN_THEORY.name
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def test_tag_naming_no_spec_transition_fails(tmp_path: Path) -> None:
    theory = _variant(
        tmp_path,
        "// spec: agent.handing_over->done context_sent",
        "// spec: agent.handing_over->done context_shredded",
    )
    report = check_theories([theory])
    assert not report.ok
    assert any("context_shredded" in p for p in report.bad_tags)
    wipe = TransitionRef("agent", "handing_over", "done", "context_sent")
    assert wipe in report.missing  # and the real transition is now unmodelled


def test_tag_with_unknown_role_or_guard_fails(tmp_path: Path) -> None:
    for old, new in (
        ("// spec: agent.handing_over->done context_sent", "// spec: broker.x->y context_sent"),
        (
            "// spec: device.awaiting_context->awaiting_wipe recv_SessionContext"
            " if context_acceptable",
            "// spec: device.awaiting_context->awaiting_wipe recv_SessionContext if context_tasty",
        ),
    ):
        report = check_theories([_variant(tmp_path, old, new)])
        assert report.bad_tags, new


def test_removing_the_tag_of_a_security_relevant_transition_fails(tmp_path: Path) -> None:
    tag = (
        "// spec: dtls_server.wait_certificate_verify->wait_change_cipher_spec"
        " recv_CertificateVerify\n"
    )
    report = check_theories([_variant(tmp_path, tag, "")])
    assert not report.ok
    assert [t.label() for t in report.missing] == [
        "dtls_server.wait_certificate_verify->wait_change_cipher_spec recv_CertificateVerify"
    ]
    assert not report.bad_tags and not report.untagged


def test_rule_without_any_tag_fails(tmp_path: Path) -> None:
    report = check_theories(
        [_variant(tmp_path, "// spec: agent.handing_over->done context_sent\n", "")]
    )
    assert any("Agent_Wipe" in u for u in report.untagged)


def test_none_tag_needs_a_reason_and_must_stand_alone(tmp_path: Path) -> None:
    old = "// spec: none (adversary: the agent is compromised from now on)"
    report = check_theories([_variant(tmp_path, old, "// spec: none")])
    assert report.bad_tags
    mixed = old + "\n// spec: agent.handing_over->done context_sent"
    report = check_theories([_variant(tmp_path, old, mixed)])
    assert report.bad_tags


def test_modelling_an_excluded_transition_fails(tmp_path: Path) -> None:
    old = "// spec: agent.handing_over->done context_sent"
    extra = old + "\n// spec: dtls_server.established->established recv_ClientHello"
    report = check_theories([_variant(tmp_path, old, extra)])
    assert [t.label() for t in report.excluded_but_modelled] == [
        "dtls_server.established->established recv_ClientHello"
    ]


# --------------------------------------------------------------------------- expected verdicts


def test_expected_lists_exactly_the_lemmas_of_each_theory() -> None:
    expected = runner.load_expected(PROOFS / runner.EXPECTED_FILE)
    assert set(expected) == {t.name for t in THEORIES}
    for theory in THEORIES:
        names = runner.lemma_names(theory.read_text(encoding="utf-8"))
        assert len(names) == len(set(names)), theory.name
        assert list(expected[theory.name]) == names, theory.name


def test_expected_has_the_lemmas_the_issue_asks_for() -> None:
    expected = runner.load_expected(PROOFS / runner.EXPECTED_FILE)[MAIN_THEORY.name]
    verdicts = {name: e.verdict for name, e in expected.items()}
    assert verdicts["executable_bound"] == verdicts["executable_blind"] == VERIFIED
    assert verdicts["master_secret_secrecy"] == verdicts["resumed_key_secrecy"] == VERIFIED
    assert verdicts["injective_agreement_full_bound"] == VERIFIED
    assert verdicts["injective_agreement_full_blind"] == FALSIFIED
    assert verdicts["server_authentication_resumed"] == VERIFIED
    assert verdicts["resumed_key_secrecy_compromise_after_handover"] == FALSIFIED
    assert verdicts["resumed_key_secrecy_wipe_before_compromise"] == FALSIFIED
    assert verdicts["resumed_key_secrecy_received_and_wiped_ecdhe_psk"] == VERIFIED
    assert verdicts["server_authentication_full_strict"] == VERIFIED
    for name, entry in expected.items():
        assert "\n" not in entry.why and len(entry.why) < 200, name


def test_every_lemma_is_explained_in_lemmas_md() -> None:
    doc = (PROOFS / "LEMMAS.md").read_text(encoding="utf-8")
    for name in runner.lemma_names(MAIN_THEORY.read_text(encoding="utf-8")):
        assert f"`{name}`" in doc, name


def test_load_expected_rejects_bad_entries(tmp_path: Path) -> None:
    bad = tmp_path / "expected.toml"
    bad.write_text('["t.spthy".l]\nverdict = "probably"\nwhy = "x"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="verdict"):
        runner.load_expected(bad)
    bad.write_text('["t.spthy".l]\nverdict = "verified"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="why"):
        runner.load_expected(bad)
    bad.write_text('["t.spthy".l]\nverdict = "verified"\nwhy = "x"\nalone = "yes"\n')
    with pytest.raises(ValueError, match="alone"):
        runner.load_expected(bad)
    bad.write_text('["t.spthy".l]\nverdict = "verified"\nwhy = "x"\nalso = true\n')
    with pytest.raises(ValueError, match="unknown keys"):
        runner.load_expected(bad)


def test_load_expected_reads_alone(tmp_path: Path) -> None:
    path = tmp_path / "expected.toml"
    path.write_text(
        '["t.spthy".a]\nverdict = "verified"\nwhy = "x"\nalone = true\n'
        '["t.spthy".b]\nverdict = "falsified"\nwhy = "y"\n',
        encoding="utf-8",
    )
    table = runner.load_expected(path)["t.spthy"]
    assert table["a"] == runner.Expectation("verified", "x", alone=True)
    assert table["b"] == runner.Expectation("falsified", "y", alone=False)


# --------------------------------------------------------------------------- output parsing

#: The end of a `tamarin-prover --prove=injective_agreement_full_blind` run (Tamarin 1.8).
FALSIFIED_RUN = """\
maude tool: 'maude'
 checking version: 3.2.1. OK.
 checking installation: OK.
theory D2TLS_DTLS12 begin

// Function signature and definition of the equational theory E

functions: fst/1, h/1, pair/2, pk/1, prf/2, sign/2, snd/1, true/0, verify/3
...
lemma injective_agreement_full_blind:
  all-traces
  "..."
simplify
solve( St_S_AwaitClientFlight( S, cr, sr, sid, ske, ~y ) ▶₀ #i )
  case Server_Recv_ClientHello_Full
  ...
      SOLVED // trace found
...
end

==============================================================================
summary of summaries:

analyzed: proofs/d2tls_dtls12.spthy

  processing time: 41.07s

  context_session_id_known (all-traces): analysis incomplete (1 steps)
  one_signature_per_request (all-traces): analysis incomplete (1 steps)
  injective_agreement_full_blind (all-traces): falsified - found trace (23 steps)
  injective_agreement_resumed (all-traces): analysis incomplete (1 steps)

==============================================================================
"""

VERIFIED_WITH_WARNING = """\
theory T begin
...
/*
WARNING: the following wellformedness checks failed!

Fact usage
==========
  Possible reasons:
  1. Fact names are case-sensitive, different capitalizations are considered as different facts
  rule `Agent_Wipe' uses a fact that no rule produces: AgentHold( A, D, rid, ms )
*/
end

==============================================================================
summary of summaries:

analyzed: proofs/d2tls_dtls12.spthy

  processing time: 2.10s

  WARNING: 1 wellformedness check failed!
           The analysis results might be wrong!

  executable_bound (exists-trace): verified (31 steps)
  one_signature_per_request (all-traces): verified (4 steps)

==============================================================================
"""


def test_parse_falsified() -> None:
    parsed = parse_output(FALSIFIED_RUN, "injective_agreement_full_blind")
    assert (parsed.verdict, parsed.steps, parsed.kind) == (FALSIFIED, 23, "all-traces")
    assert parsed.wellformedness_failures == 0


def test_parse_unselected_lemma_is_incomplete() -> None:
    parsed = parse_output(FALSIFIED_RUN, "injective_agreement_resumed")
    assert (parsed.verdict, parsed.steps) == (INCOMPLETE, 1)


def test_parse_verified_with_wellformedness_warning() -> None:
    parsed = parse_output(VERIFIED_WITH_WARNING, "executable_bound")
    assert (parsed.verdict, parsed.steps, parsed.kind) == (VERIFIED, 31, "exists-trace")
    assert parsed.wellformedness_failures == 1
    assert any("wellformedness" in w for w in parsed.warnings)


def test_parse_garbage_is_an_error() -> None:
    assert parse_output("tamarin-prover: parse error at line 3", "x").verdict == runner.ERROR
    assert parse_output(FALSIFIED_RUN, "no_such_lemma").verdict == runner.ERROR


def test_result_with_wellformedness_warning_is_not_ok() -> None:
    result = LemmaResult("t", "l", VERIFIED, VERIFIED, 3, 1.0, wellformedness_failures=1)
    assert not result.ok
    assert LemmaResult("t", "l", VERIFIED, VERIFIED, 3, 1.0).ok
    assert not LemmaResult("t", "l", None, VERIFIED, 3, 1.0).ok


# --------------------------------------------------------------------------- `d2tls prove`


def _run_cli(*args: str, path: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=path)
    return subprocess.run(
        [sys.executable, "-c", "import sys; from d2tls.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_prove_help() -> None:
    result = _run_cli("prove", "--help", path=os.environ.get("PATH", ""))
    assert result.returncode == 0
    for option in ("--lemma", "--timeout", "--json", "--static", "--check-only", "THEORY"):
        assert option in result.stdout
    # Plain text, not the module's reStructuredText.
    for markup in ("``", ":data:", ":func:", "::"):
        assert markup not in result.stdout, markup
    assert "130" in result.stdout and "143" in result.stdout  # the signal exit statuses


def test_prove_without_tamarin_or_maude_says_so(tmp_path: Path) -> None:
    result = _run_cli("prove", path=str(tmp_path))  # an empty PATH directory
    assert result.returncode == EXIT_NO_PROVER
    assert "tamarin-prover and maude not found on PATH" in result.stderr
    assert "apt-get install maude" in result.stderr
    assert "tamarin-prover.com" in result.stderr


def test_prove_names_only_the_missing_tool(tmp_path: Path) -> None:
    _script(tmp_path / "maude", "print('Maude 3.2.1')")
    result = _run_cli("prove", "--lemma", "executable_bound", path=str(tmp_path))
    assert result.returncode == EXIT_NO_PROVER
    assert "tamarin-prover not found on PATH" in result.stderr
    assert "maude not found" not in result.stderr


@pytest.mark.parametrize("option", ["--static", "--check-only"])
def test_prove_static_checks_without_tamarin(tmp_path: Path, option: str) -> None:
    result = _run_cli("prove", option, path=str(tmp_path))
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert "d2tls_dtls12.spthy, twinpeaks.spthy: syntax ok" in result.stdout


def test_prove_uses_the_proofs_directory_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """D2TLS_PROOFS_DIR replaces the installed theories; naming no directory is an error."""
    other = tmp_path / "proofs"
    other.mkdir()
    shutil.copy(MAIN_THEORY, other / "renamed.spthy")
    monkeypatch.setenv("D2TLS_PROOFS_DIR", str(other))
    assert d2tls_main(["prove", "--static"]) == EXIT_OK
    assert "renamed.spthy: syntax ok" in capsys.readouterr().out
    monkeypatch.setenv("D2TLS_PROOFS_DIR", str(tmp_path / "missing"))
    assert d2tls_main(["prove", "--static"]) == EXIT_USAGE
    assert f"D2TLS_PROOFS_DIR={tmp_path / 'missing'}: no such directory" in capsys.readouterr().err


def test_prove_unknown_lemma_or_theory_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert d2tls_main(["prove", "--lemma", "no_such_lemma"]) == EXIT_USAGE
    assert "no such lemma: no_such_lemma" in capsys.readouterr().err
    assert d2tls_main(["prove", "no_such_theory"]) == EXIT_USAGE


#: A tamarin-prover stand-in that never finishes a proof: it starts a child of its own (as
#: Tamarin starts maude), appends "PID CHILD_PID" to $PIDS and sleeps.
SLEEPER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    if "--version" in sys.argv:
        print("tamarin-prover 1.8.0 (stand-in)"); sys.exit(0)
    if not any(a.startswith("--prove=") for a in sys.argv):
        print("summary of summaries:"); sys.exit(0)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with open(os.environ["PIDS"], "a") as f:
        f.write(f"{os.getpid()} {child.pid}\\n")
    time.sleep(300)
    """
)


def _alive(pid: int) -> bool:
    """True while ``pid`` is a process that is not a zombie."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    "lemmas",
    [
        ["executable_bound", "executable_blind"],  # proved side by side by the thread pool
        ["injective_agreement_full_blind"],  # alone = true: proved in the main thread
    ],
    ids=["pooled", "alone"],
)
def test_prove_exits_on_signal_and_kills_every_prover(
    tmp_path: Path, signum: signal.Signals, lemmas: list[str]
) -> None:
    """SIGINT/SIGTERM: exit status 128 + signal, no traceback, no tamarin-prover left."""
    tamarin = _script(tmp_path / "tamarin-prover", SLEEPER)
    maude = _script(tmp_path / "maude", "print('Maude 3.2.1')")
    pids_file = tmp_path / "pids"
    argv = [sys.executable, "-m", "d2tls.cli", "prove", "--tamarin-prover", str(tamarin)]
    argv += ["--maude", str(maude), "--jobs", str(len(lemmas))]
    for lemma in lemmas:
        argv += ["--lemma", lemma]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PIDS=str(pids_file)),
        cwd=tmp_path,
        # A test runner started in the background may hand SIGINT down as ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = pids_file.read_text().splitlines() if pids_file.exists() else []
            if len(lines) == len(lemmas):
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        else:
            pytest.fail(f"the stand-in provers did not start: {lines}")
        pids = [int(pid) for line in lines for pid in line.split()]
        assert all(_alive(pid) for pid in pids)
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 128 + signum, out + err
    assert f"stopped by {signum.name}" in err
    assert "Traceback" not in err
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if _alive(pid)], "orphan stand-in provers"


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


#: A stand-in for tamarin-prover (the real one is tested below where it is installed): it
#: answers --version ($VERSION, default 1.8.0), and for --prove=A --prove=B ... prints a summary
#: giving each lemma L the verdict VERDICTS[L] (default: the expected one), with a wellformedness
#: warning if WARN is set; a lemma whose verdict is "sleep" keeps the whole process busy for
#: 30 s. With --output-dot=FILE (Tamarin 1.10) it writes a graph per falsified lemma there, in
#: 1.10's format. Without --prove (the wellformedness check) it fails like `--quit-on-warning`
#: does if WF_FAIL is set. LOG gets "start A B" and "end A B" lines per process.
STAND_IN = textwrap.dedent(
    """
    import json, os, sys, time, tomllib
    if "--version" in sys.argv:
        print(os.environ.get("VERSION", "tamarin-prover 1.8.0 (stand-in)")); sys.exit(0)
    if not any(a.startswith("--prove=") for a in sys.argv):
        if os.environ.get("WF_FAIL"):
            print("WARNING: the following wellformedness checks failed!")
            print("Derivation Checks")
            print("quit-on-warning mode selected - aborting on wellformedness errors.")
            sys.exit(1)
        print("summary of summaries:"); sys.exit(0)
    lemmas = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--prove=")]
    theory = next(a for a in sys.argv if a.endswith(".spthy"))
    expected = tomllib.load(open(os.environ["EXPECTED"], "rb"))[os.path.basename(theory)]
    chosen = json.loads(os.environ.get("VERDICTS", "{}"))
    verdicts = {lemma: chosen.get(lemma, expected[lemma]["verdict"]) for lemma in lemmas}
    if os.environ.get("LOG"):
        open(os.environ["LOG"], "a").write(f"start {' '.join(lemmas)}\\n")
        time.sleep(0.5)
    if "sleep" in verdicts.values():
        time.sleep(30)
    if "crash" in verdicts.values():
        print("tamarin-prover: heap exhausted"); sys.exit(251)
    if os.environ.get("LOG"):
        open(os.environ["LOG"], "a").write(f"end {' '.join(lemmas)}\\n")
    status = {"verified": "verified", "falsified": "falsified - found trace",
              "incomplete": "analysis incomplete"}
    dot = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--output-dot=")), None)
    if dot:
        with open(dot, "w") as f:
            for lemma, verdict in verdicts.items():
                if verdict == "falsified":
                    label = f"trace_T_SL2-AS0-CL1-A1-C1-NB_{lemma}Case_A-Case_B"
                    f.write(f'digraph "{label}" {{\\n  n1 [label="attack on {lemma}"];\\n}}\\n\\n')
    print("summary of summaries:")
    print("")
    print("analyzed: " + theory)
    if os.environ.get("WARN"):
        print("  WARNING: 1 wellformedness check failed!")
    for lemma, verdict in verdicts.items():
        print(f"  {lemma} (all-traces): {status[verdict]} (7 steps)")
    """
)


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    tamarin = _script(tmp_path / "tamarin-prover", STAND_IN)
    maude = _script(tmp_path / "maude", "print('Maude 3.2.1')")
    monkeypatch.setenv("EXPECTED", str(PROOFS / runner.EXPECTED_FILE))
    return ["--tamarin-prover", str(tamarin), "--maude", str(maude)]


def test_prove_all_as_expected_writes_report(
    stand_in: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_file = tmp_path / "report.json"
    table = tmp_path / "table.md"
    status = d2tls_main(["prove", *stand_in, "--json", str(report_file), "--markdown", str(table)])
    out = capsys.readouterr().out
    assert status == EXIT_OK, out
    lemmas = [n for t in THEORIES for n in runner.lemma_names(t.read_text(encoding="utf-8"))]
    assert "MISMATCH" not in out
    assert f"{len(lemmas)} of {len(lemmas)} lemmas as expected" in out
    header = out.splitlines()[1].split()
    assert header == ["theory", "lemma", "expected", "verdict", "steps", "time"]
    data = json.loads(report_file.read_text(encoding="utf-8"))
    assert data["ok"] is True and data["mismatches"] == 0 and data["timeout"] == 600.0
    assert data["prover"] == "tamarin-prover 1.8.0 (stand-in)"
    assert [r["lemma"] for r in data["results"]] == lemmas
    first = data["results"][0]
    assert set(first) >= {
        "theory", "lemma", "expected", "verdict", "steps", "seconds", "ok", "why",
        "wellformedness_failures", "warnings", "command",
    }  # fmt: skip
    assert first["steps"] == 7 and first["theory"] == MAIN_THEORY.name
    rows = [
        line for line in table.read_text(encoding="utf-8").splitlines() if line.startswith("| `")
    ]
    assert len(rows) == len(lemmas) and all(row.endswith("| ok |") for row in rows)


def test_prove_mismatch_fails(
    stand_in: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VERDICTS", json.dumps({"injective_agreement_full_blind": "verified"}))
    status = d2tls_main(["prove", *stand_in, "--lemma", "injective_agreement_full_blind"])
    captured = capsys.readouterr()
    assert status == EXIT_MISMATCH
    assert "MISMATCH" in captured.out
    assert "expected falsified, got verified" in captured.err


def test_prove_incomplete_fails(
    stand_in: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VERDICTS", json.dumps({"executable_bound": "incomplete"}))
    assert d2tls_main(["prove", *stand_in, "--lemma", "executable_bound"]) == EXIT_MISMATCH


def test_prove_wellformedness_warning_fails(
    stand_in: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WARN", "1")
    status = d2tls_main(["prove", *stand_in, "--lemma", "executable_bound", "--json"])
    captured = capsys.readouterr()
    assert status == EXIT_MISMATCH
    data = json.loads(captured.out)  # --json without FILE: the report replaces the table
    assert data["ok"] is False
    assert data["results"][0]["wellformedness_failures"] == 1
    assert "wellformedness" in captured.err


def test_prove_fails_when_the_theory_is_not_well_formed(
    stand_in: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WF_FAIL", "1")
    status = d2tls_main(["prove", *stand_in, "--lemma", "executable_bound", "--json"])
    captured = capsys.readouterr()
    assert status == EXIT_MISMATCH
    data = json.loads(captured.out)
    assert data["ok"] is False and data["mismatches"] == 1
    assert data["results"][0]["ok"] is True  # the lemma itself got its verdict
    (check,) = data["wellformedness"]
    assert check["ok"] is False and check["theory"] == MAIN_THEORY.name
    assert "--quit-on-warning" in check["command"]
    assert f"{MAIN_THEORY.name}: not well formed" in captured.err
    assert "0 of 1 theories well formed" in captured.err


def test_wellformedness_check_runs_once_per_theory_and_lemmas_skip_it(
    stand_in: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status = d2tls_main(
        ["prove", *stand_in, "--lemma", "executable_bound", "--lemma", "executable_blind"]
    )
    out = capsys.readouterr().out
    assert status == EXIT_OK, out
    assert out.count(runner.WELLFORMEDNESS_ROW) == 1
    prover = runner.Prover(stand_in[1], stand_in[3])
    lemma_run = runner.build_command(prover, MAIN_THEORY, "executable_bound")
    check_run = runner.wellformedness_command(prover, MAIN_THEORY)
    assert "--derivcheck-timeout=0" in lemma_run and "--quit-on-warning" not in lemma_run
    assert f"--derivcheck-timeout={runner.DERIVCHECK_TIMEOUT}" in check_run
    assert "--quit-on-warning" in check_run
    assert not any(arg.startswith("--prove") for arg in check_run)


def test_parse_wellformedness() -> None:
    ok = "theory T begin\nend\n" + "=" * 78 + "\nsummary of summaries:\n\nanalyzed: t.spthy\n"
    assert runner.parse_wellformedness(ok, 0) == (True, [], "")
    failed = "WARNING: the following wellformedness checks failed!\n\nFact usage\n"
    good, warnings, detail = runner.parse_wellformedness(failed, 1)
    assert not good and warnings and "Fact usage" in detail
    timed_out = ok.replace(
        "end", "Derivation checks timed out. Use --derivcheck-timeout=INT to configure timeout\nend"
    )
    good, warnings, _ = runner.parse_wellformedness(timed_out, 0)
    assert not good and any("timed out" in w for w in warnings)
    assert not runner.parse_wellformedness("segmentation fault", 139)[0]
    assert not runner.parse_wellformedness("", 0)[0]  # no summary: did not get through


def test_prove_timeout_kills_the_prover(
    stand_in: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VERDICTS", json.dumps({"executable_bound": "sleep"}))
    args = ["prove", *stand_in, "--lemma", "executable_bound", "--timeout", "1", "--json"]
    status = d2tls_main(args)
    data = json.loads(capsys.readouterr().out)
    assert status == EXIT_MISMATCH
    result = data["results"][0]
    assert result["verdict"] == runner.TIMEOUT and result["seconds"] < 10


def test_prove_runs_lemmas_in_parallel(stand_in: list[str]) -> None:
    prover = runner.Prover(stand_in[1], stand_in[3])
    expected = runner.load_expected(PROOFS / runner.EXPECTED_FILE)
    jobs = runner.plan([MAIN_THEORY], expected, ["executable_bound", "executable_blind"])
    prover = runner.Prover(prover.tamarin, prover.maude, extra_args=("--open-chains=5",))
    results = runner.run_lemmas(prover, jobs, timeout=30, workers=2)
    assert [r.lemma for r in results] == ["executable_bound", "executable_blind"]
    assert all(r.ok for r in results)
    assert all(r.command[-3:] == ["+RTS", "-N1", "-RTS"] for r in results)
    assert all(r.command[-5:-3] == ["--open-chains=5", str(MAIN_THEORY)] for r in results)


def test_alone_lemmas_run_one_at_a_time_after_the_others(
    stand_in: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "log"
    monkeypatch.setenv("LOG", str(log))
    prover = runner.Prover(stand_in[1], stand_in[3])
    expected = runner.load_expected(PROOFS / runner.EXPECTED_FILE)["d2tls_dtls12.spthy"]
    names = ["executable_bound", "server_authentication_compromised_agent", "executable_blind"]
    jobs = [
        runner.Job(MAIN_THEORY, name, replace(expected[name], alone=(i == 1)))
        for i, name in enumerate(names)
    ]
    run = runner.run_all(prover, [], jobs, timeout=30, workers=2, per_lemma=True)
    assert [r.lemma for r in run.lemmas] == names  # job order, not run order
    assert all(r.ok for r in run.lemmas)
    pooled, alone = [run.lemmas[0], run.lemmas[2]], run.lemmas[1]
    assert all(r.command[-3:] == ["+RTS", "-N1", "-RTS"] for r in [*pooled, alone])
    events = log.read_text(encoding="utf-8").split("\n")
    start_alone = events.index(f"start {names[1]}")
    assert {f"end {names[0]}", f"end {names[2]}"} <= set(events[:start_alone])
    assert events[start_alone + 1] == f"end {names[1]}"  # nothing else ran beside it


def _log_events(log: Path) -> list[str]:
    return [line for line in log.read_text(encoding="utf-8").split("\n") if line]


def test_batches_prove_many_lemmas_per_process(
    stand_in: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers: the lemmas of a theory go to two Tamarin processes (--prove=A --prove=B ..),
    the slow (alone) lemma dealt first; each lemma still gets its own verdict and steps."""
    log = tmp_path / "log"
    monkeypatch.setenv("LOG", str(log))
    prover = runner.Prover(stand_in[1], stand_in[3])
    expected = runner.load_expected(PROOFS / runner.EXPECTED_FILE)["d2tls_dtls12.spthy"]
    names = ["executable_bound", "executable_blind", "one_signature_per_request",
             "device_signature_origin", "server_authentication_compromised_agent"]  # fmt: skip
    jobs = [
        runner.Job(MAIN_THEORY, name, replace(expected[name], alone=(name == names[-1])))
        for name in names
    ]
    run = runner.run_all(prover, [], jobs, timeout=30, workers=2)
    assert [r.lemma for r in run.lemmas] == names and all(r.ok for r in run.lemmas)
    assert [r.batch_size for r in run.lemmas] == [2, 3, 2, 3, 3]
    assert [r.steps for r in run.lemmas] == [7] * 5
    assert [[j.lemma for j in b.batch.jobs] for b in run.batches] == [
        [names[4], names[1], names[3]], [names[0], names[2]],
    ]  # fmt: skip
    first = run.lemmas[0].command
    assert [a for a in first if a.startswith("--prove=")] == [f"--prove={names[0]}",
                                                             f"--prove={names[2]}"]  # fmt: skip
    assert first[-3:] == ["+RTS", "-N1", "-RTS"]
    events = _log_events(log)
    assert len([e for e in events if e.startswith("start")]) == 2  # two processes in all
    assert all(b.cpu_seconds is not None and b.finished for b in run.batches)
    per_lemma = runner.run_all(prover, [], jobs, timeout=30, workers=2, per_lemma=True)
    assert [len(b.batch.jobs) for b in per_lemma.batches] == [1] * 5
    assert per_lemma.batches[-1].batch.alone  # --per-lemma: the alone lemma last, by itself
    assert _log_events(log)[-2:] == [f"start {names[4]}", f"end {names[4]}"]


def test_batch_out_of_time_proves_its_lemmas_singly(
    stand_in: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lemma that does not finish costs only its own verdict: its batch is killed at the
    budget, and every lemma of it is proved again alone under the per-lemma limit."""
    monkeypatch.setenv("VERDICTS", json.dumps({"executable_blind": "sleep"}))
    prover = runner.Prover(stand_in[1], stand_in[3])
    expected = runner.load_expected(PROOFS / runner.EXPECTED_FILE)
    names = ["executable_bound", "executable_blind", "one_signature_per_request"]
    jobs = runner.plan([MAIN_THEORY], expected, names)
    started = time.monotonic()
    run = runner.run_all(prover, [], jobs, timeout=3, workers=1, batch_timeout=4)
    assert time.monotonic() - started < 25  # 4 s batch + 3 singles (one killed at 3 s)
    batch, *singles = run.batches
    assert not batch.finished and batch.seconds < 10
    assert sorted(j.lemma for s in singles for j in s.batch.jobs) == sorted(names)
    assert [s.cpu_seconds is None for s in singles].count(True) == 1  # only the killed one
    by_name = {r.lemma: r for r in run.lemmas}
    assert by_name["executable_blind"].verdict == runner.TIMEOUT
    assert by_name["executable_bound"].ok and by_name["one_signature_per_request"].ok
    assert all(r.rerun and r.batch_size == 1 for r in run.lemmas)
    assert "(alone, after its batch ran out of time)" in runner.format_table(run.lemmas)


def test_batch_that_dies_without_a_summary_proves_its_lemmas_singly(
    stand_in: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch process that ends without Tamarin's summary (say, out of memory) loses no
    other lemma's verdict: they are proved again one per process."""
    monkeypatch.setenv("VERDICTS", json.dumps({"executable_blind": "crash"}))
    prover = runner.Prover(stand_in[1], stand_in[3])
    expected = runner.load_expected(PROOFS / runner.EXPECTED_FILE)
    jobs = runner.plan([MAIN_THEORY], expected, ["executable_bound", "executable_blind"])
    run = runner.run_all(prover, [], jobs, timeout=30, workers=1)
    assert [b.finished for b in run.batches] == [False, True, True]
    bound, blind = run.lemmas
    assert bound.ok and bound.rerun
    assert blind.verdict == runner.ERROR and "heap exhausted" in blind.detail


def test_per_lemma_mode_runs_one_process_per_lemma(
    stand_in: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["prove", *stand_in, "--lemma", "executable_bound", "--lemma", "executable_blind"]
    assert d2tls_main([*args, "--per-lemma", "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "per-lemma" and len(data["batches"]) == 2
    assert all(r["batch_size"] == 1 for r in data["results"])
    assert d2tls_main([*args, "--jobs", "1", "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "batch" and len(data["batches"]) == 1
    assert data["batches"][0]["lemmas"] == ["executable_bound", "executable_blind"]
    assert data["supported"] == runner.SUPPORTED_TEXT and data["seconds"] > 0


@pytest.mark.parametrize(
    ("line", "release"),
    [
        ("tamarin-prover 1.8.0, (C) David Basin, ...", (1, 8, 0)),
        ("tamarin-prover 1.10.0", (1, 10, 0)),
        ("tamarin-prover 1.8.1 (stand-in)", (1, 8, 1)),
        ("tamarin-prover 1.6.1", None),
        ("tamarin-prover 1.11.0", None),
        ("unknown (no such file)", None),
    ],
)
def test_supported_releases(line: str, release: tuple[int, int, int] | None) -> None:
    if release is None:
        with pytest.raises(runner.UnsupportedProver) as caught:
            runner.check_release(line)
        assert "1.8.x and 1.10.x" in caught.value.message()
        assert "--any-prover-version" in caught.value.message()
    else:
        assert runner.check_release(line) == release


def test_prove_refuses_an_unsupported_tamarin(
    stand_in: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VERSION", "tamarin-prover 1.6.1, (C) David Basin")
    args = ["prove", *stand_in, "--lemma", "executable_bound"]
    assert d2tls_main(args) == EXIT_NO_PROVER
    err = capsys.readouterr().err
    assert "tamarin-prover 1.6.1 is not supported" in err and "1.8.x and 1.10.x" in err
    assert d2tls_main([*args, "--any-prover-version"]) == EXIT_OK
    assert "running it anyway" in capsys.readouterr().err
    monkeypatch.setenv("VERSION", "tamarin-prover 1.10.0, (C) David Basin")
    assert d2tls_main(args) == EXIT_OK


def test_autoprove_route_per_release() -> None:
    assert graphs.autoprove_path((1, 8, 0), 1, "l") == "/thy/trace/1/autoprove/idfs/0/proof/l"
    assert (
        graphs.autoprove_path((1, 10, 0), 2, "l") == "/thy/trace/2/autoprove/idfs/0/False/proof/l"
    )


def test_trace_labels_of_tamarin_1_10() -> None:
    names = ["secret", "secret_key", "other"]
    label = "trace_Small_SL2-AS0-CL1-A1-C1-NB_secret_keySend-Leak"
    assert graphs.lemma_of_label(label, names) == ("secret_key", "proof/secret_key/Send/Leak")
    assert graphs.lemma_of_label("trace_Small_SL2-AS0-CL1-A1-C1-NF_other", names) == (
        "other", "proof/other",
    )  # fmt: skip
    assert graphs.lemma_of_label("trace_Small_SL2-AS0-CL1-A1-C1-NB_nope", names) is None
    text = 'digraph "a" {\n x;\n}\n\ndigraph "b \\"q\\"" {\n y;\n}\n'
    assert [label for label, _ in graphs.split_trace_dot(text)] == ["a", 'b "q"']


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")
def test_attack_graphs_from_the_proving_run_on_tamarin_1_10(
    stand_in: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """1.10: the proving processes write --output-dot; no interactive server is started (the
    stand-in has no web interface, so any attempt would fail)."""
    monkeypatch.setenv("VERSION", "tamarin-prover 1.10.0")
    out = tmp_path / "graphs"
    lemmas = ["injective_agreement_full_blind", "executable_bound", "same_server_blind"]
    args = ["prove", *stand_in, "--attack-graphs", str(out), "--json", "--jobs", "1"]
    for lemma in lemmas:
        args += ["--lemma", lemma]
    assert d2tls_main(args) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert [(g["lemma"], g["ok"]) for g in data["attack_graphs"]] == [
        ("injective_agreement_full_blind", True), ("same_server_blind", True),
    ]  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [
        "injective_agreement_full_blind.dot", "injective_agreement_full_blind.svg",
        "same_server_blind.dot", "same_server_blind.svg",
    ]  # fmt: skip
    dot = (out / "same_server_blind.dot").read_text(encoding="utf-8")
    assert dot.startswith(f"// Attack on lemma same_server_blind of {MAIN_THEORY.name}:")
    assert "at proof path proof/same_server_blind/Case_A/Case_B" in dot
    assert "attack on same_server_blind" in dot and "attack on injective" not in dot
    assert "<svg" in (out / "same_server_blind.svg").read_text(encoding="utf-8")
    assert all("--output-dot=" in r["command"][-5] for r in data["results"])


# --------------------------------------------------------------------------- the real prover

#: A small theory with one verified and one falsified lemma, to check the parser against what
#: the installed Tamarin really prints.
SMALL_THEORY = """\
theory Small
begin
builtins: symmetric-encryption
rule Send: [ Fr(~k), Fr(~m) ] --[ Secret(~m), Sent(~m) ]-> [ Out(senc(~m, ~k)), Key(~k) ]
rule Leak: [ Key(k) ] --[ Leaked(k) ]-> [ Out(k) ]
lemma sent_before_leak:
  "All m #i. Secret(m) @ #i ==> Ex #j. Sent(m) @ #j"
lemma secret:
  "All m #i. Secret(m) @ #i ==> not (Ex #k. K(m) @ #k)"
end
"""


@needs_prover
def test_parser_reads_the_real_tamarin(tmp_path: Path) -> None:
    assert TAMARIN is not None and MAUDE is not None
    theory = tmp_path / "small.spthy"
    theory.write_text(SMALL_THEORY, encoding="utf-8")
    prover = runner.Prover(TAMARIN, MAUDE)
    for lemma, verdict in (("sent_before_leak", VERIFIED), ("secret", FALSIFIED)):
        job = runner.Job(theory, lemma, runner.Expectation(verdict, "small theory"))
        result = runner.run_lemma(prover, job, timeout=120)
        assert result.verdict == verdict, result.detail
        assert result.steps is not None and result.steps > 0
        assert result.ok


@needs_prover
def test_real_wellformedness_check(tmp_path: Path) -> None:
    assert TAMARIN is not None and MAUDE is not None
    prover = runner.Prover(TAMARIN, MAUDE)
    good = tmp_path / "small.spthy"
    good.write_text(SMALL_THEORY, encoding="utf-8")
    result = runner.check_wellformedness(prover, good, timeout=120)
    assert result.ok, result.detail
    bad = tmp_path / "bad.spthy"  # a rule consumes a fact no rule produces
    bad.write_text(
        SMALL_THEORY.replace("rule Leak: [ Key(k) ]", "rule Leak: [ Kee(k) ]"), encoding="utf-8"
    )
    result = runner.check_wellformedness(prover, bad, timeout=120)
    assert not result.ok and result.warnings, result
    underivable = tmp_path / "underivable.spthy"  # a variable of In() that cannot be derived
    underivable.write_text(
        SMALL_THEORY.replace(
            "rule Leak: [ Key(k) ]",
            "rule Open: [ In(senc(m, k)) ] --[ Opened(m) ]-> [ ]\nrule Leak: [ Key(k) ]",
        ),
        encoding="utf-8",
    )
    result = runner.check_wellformedness(prover, underivable, timeout=120)
    assert not result.ok and "Derivation" in result.detail, result


def _small_theory_with_expected(tmp_path: Path) -> tuple[Path, Path]:
    """SMALL_THEORY and an expected.toml with its true verdicts, in tmp_path."""
    theory = tmp_path / "small.spthy"
    theory.write_text(SMALL_THEORY, encoding="utf-8")
    expected = tmp_path / "expected.toml"
    expected.write_text(
        '["small.spthy".sent_before_leak]\nverdict = "verified"\nwhy = "trivial"\n'
        '["small.spthy".secret]\nverdict = "falsified"\nwhy = "the key leaks"\n',
        encoding="utf-8",
    )
    return theory, expected


@needs_prover
def test_real_prove_cli_on_a_small_theory(tmp_path: Path) -> None:
    theory, expected = _small_theory_with_expected(tmp_path)
    report_file = tmp_path / "report.json"
    args = ["prove", str(theory), "--expected", str(expected), "--json", str(report_file)]
    assert d2tls_main(args) == EXIT_OK
    data = json.loads(report_file.read_text(encoding="utf-8"))
    assert [(r["lemma"], r["verdict"]) for r in data["results"]] == [
        ("sent_before_leak", VERIFIED),
        ("secret", FALSIFIED),
    ]
    assert data["prover"].startswith("tamarin-prover 1.")
    runner.check_release(data["prover"])  # the installed Tamarin is a supported one
    assert d2tls_main([*args, "--jobs", "1"]) == EXIT_OK  # both lemmas in one process
    data = json.loads(report_file.read_text(encoding="utf-8"))
    assert [r["batch_size"] for r in data["results"]] == [2, 2]
    (batch,) = data["batches"]
    assert batch["finished"] and batch["lemmas"] == ["sent_before_leak", "secret"]
    assert [(r["verdict"], r["steps"]) for r in data["results"]] == [(VERIFIED, 2), (FALSIFIED, 4)]
    expected.write_text(
        expected.read_text(encoding="utf-8").replace('"falsified"', '"verified"'),
        encoding="utf-8",
    )
    assert d2tls_main(args) == EXIT_MISMATCH


@pytest.mark.skipif(
    TAMARIN is None or MAUDE is None or not os.environ.get("D2TLS_PROVE_ALL"),
    reason=NO_PROVER
    if TAMARIN is None or MAUDE is None
    else "set D2TLS_PROVE_ALL=1 to prove every lemma (minutes to an hour)",
)
def test_real_prove_of_every_lemma(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    status = d2tls_main(["prove", "--json", str(report_file)])
    data = json.loads(report_file.read_text(encoding="utf-8"))
    assert status == EXIT_OK, [r for r in data["results"] if not r["ok"]]


def test_parse_unfinishable_is_incomplete() -> None:
    line = (
        "  l (all-traces): analysis cannot be finished (reducible operators in subterms) (5 steps)"
    )
    assert parse_output(line, "l").verdict == INCOMPLETE


def test_every_expected_attack_has_tamarins_graph() -> None:
    """Each expected attack has the graph Tamarin drew for its counterexample
    (``d2tls prove --attack-graphs docs/proofs``), linked from LEMMAS.md; no graph drawn by
    hand stands in for one, and no graph is left over from a lemma that is no longer falsified."""
    expected = runner.load_expected(PROOFS / runner.EXPECTED_FILE)[MAIN_THEORY.name]
    doc = (PROOFS / "LEMMAS.md").read_text(encoding="utf-8")
    attacks = sorted(
        name for name, entry in expected.items() if entry.verdict == FALSIFIED and not entry.pending
    )
    graph_dir = ROOT / "docs" / "proofs"
    assert sorted(p.stem for p in graph_dir.glob("*.svg")) == attacks
    assert sorted(p.stem for p in graph_dir.glob("*.dot")) == attacks
    for name in attacks:
        dot = graph_dir / f"{name}.dot"
        source = dot.read_text(encoding="utf-8")
        svg = dot.with_suffix(".svg").read_text(encoding="utf-8")
        assert "<svg" in svg and "Generated by graphviz" in svg, name
        assert f"../docs/proofs/{name}.svg" in doc, name
        assert source.startswith(f"// Attack on lemma {name} of {MAIN_THEORY.name}:"), name
        assert "the graph Tamarin draws" in source and "\ndigraph " in source, name
        assert f"at proof path proof/{name}/" in source, name


def test_every_pending_verdict_is_named_in_lemmas_md() -> None:
    """A verdict Tamarin has not yet confirmed on the theory as it stands says so in
    expected.toml (``pending = true``) and is listed under "Awaiting Tamarin" in LEMMAS.md;
    a confirmed one is not listed there."""
    doc = (PROOFS / "LEMMAS.md").read_text(encoding="utf-8")
    section = doc.split("## Awaiting Tamarin", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([a-z_0-9]+)`", section))
    for theory, lemmas in runner.load_expected(PROOFS / runner.EXPECTED_FILE).items():
        pending = {name for name, entry in lemmas.items() if entry.pending}
        assert pending <= listed, theory
        assert not (listed & (set(lemmas) - pending)), theory


def test_attack_graphs_fail_loudly_when_the_server_does_not_start(tmp_path: Path) -> None:
    broken = _script(
        tmp_path / "tamarin-prover", "import sys; print('no web UI here'); sys.exit(1)"
    )
    theory = tmp_path / "small.spthy"
    theory.write_text(SMALL_THEORY, encoding="utf-8")
    prover = runner.Prover(str(broken), "maude")
    found = graphs.export_attack_graphs(prover, theory, ["secret"], tmp_path / "out", 10)
    assert [(g.lemma, g.ok) for g in found] == [("secret", False)]
    assert "exited" in found[0].detail and "no web UI here" in found[0].detail
    assert not list((tmp_path / "out").iterdir())


@needs_prover
def test_real_attack_graph_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert TAMARIN is not None and MAUDE is not None
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the Tamarin web server must leave the caller's directory alone
    theory = tmp_path / "small.spthy"
    theory.write_text(SMALL_THEORY, encoding="utf-8")
    out = tmp_path / "graphs"
    prover = runner.Prover(TAMARIN, MAUDE)
    secret, sent = graphs.export_attack_graphs(
        prover, theory, ["secret", "sent_before_leak"], out, timeout=120
    )
    assert secret.ok, secret.detail
    assert secret.trace_path.startswith("proof/secret/")
    svg = (out / "secret.svg").read_text(encoding="utf-8")
    assert "<svg" in svg and "Leak" in svg  # the attack uses the Leak rule
    dot = (out / "secret.dot").read_text(encoding="utf-8")
    assert dot.startswith("// Attack on lemma secret of small.spthy:") and "digraph" in dot
    assert not sent.ok and "no counterexample" in sent.detail  # a verified lemma has no attack
    assert not (out / "sent_before_leak.svg").exists()
    assert not list(cwd.iterdir())


@needs_prover
def test_real_prove_cli_writes_attack_graphs(tmp_path: Path) -> None:
    theory, expected = _small_theory_with_expected(tmp_path)
    report_file = tmp_path / "report.json"
    out = tmp_path / "graphs"
    args = ["prove", str(theory), "--expected", str(expected), "--json", str(report_file)]
    assert d2tls_main([*args, "--attack-graphs", str(out)]) == EXIT_OK
    data = json.loads(report_file.read_text(encoding="utf-8"))
    assert [(g["lemma"], g["ok"]) for g in data["attack_graphs"]] == [("secret", True)]
    assert sorted(p.name for p in out.iterdir()) == ["secret.dot", "secret.svg"]
