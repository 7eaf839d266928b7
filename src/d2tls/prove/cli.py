"""``d2tls prove``: run Tamarin on the theories and compare with the expected verdicts.

:data:`DESCRIPTION` is the command's ``--help`` text (plain text, no markup). The theories and
``expected.toml`` are the installed ones (:func:`d2tls.core.resources.proofs_dir`). SIGINT and
SIGTERM kill every running ``tamarin-prover`` (its whole process group, so maude too) and
exit with status 128 + the signal number (130, 143).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from d2tls.core.resources import ResourceError
from d2tls.prove import runner
from d2tls.prove.graphs import (
    AttackGraph,
    export_attack_graphs,
    graph_from_trace_dot,
    graphs_from_run,
)
from d2tls.prove.runner import (
    EXIT_MISMATCH,
    EXIT_NO_PROVER,
    EXIT_OK,
    EXIT_USAGE,
    FALSIFIED,
    LemmaResult,
    ProverMissing,
    UnsupportedProver,
    WellformednessResult,
)

DESCRIPTION = """\
Run Tamarin on the theories; compare each lemma's verdict with expected.toml.

Each theory first gets one run of Tamarin's wellformedness and derivation
checks (--quit-on-warning); the proofs then run with the derivation checks off.

Lemmas are proved in batches, so that Tamarin's precomputation (most of the
time) is done once per process, not once per lemma: per theory, one process
per core proves its share of the lemmas (--prove=A --prove=B ...), the slow
ones (alone in expected.toml) dealt first so that each batch gets its share;
with --per-lemma they run one at a time after the others. A batch may take
--timeout seconds per lemma in it (--batch-timeout sets its budget instead);
a batch out of time is killed and each of its lemmas is proved again in its
own process under --timeout, so one lemma that does not finish costs only its
own verdict. Tamarin reports time per process, not per lemma: a lemma's time
is that of its process ("batch of N"); --per-lemma runs one process per lemma
(per-lemma times, one precomputation each).

Supported: Tamarin 1.8.x and 1.10.x (from tamarin-prover --version); another
release is refused unless --any-prover-version is given.

The theories and expected.toml are the ones installed with d2tls (set
D2TLS_PROOFS_DIR to use another directory). --static (or --check-only) checks
without Tamarin: Tree-sitter syntax and consistency with the spec, message
contents and guards included (it needs the prove extra:
pip install 'd2tls[prove]').

Exit status:
  0    every theory well formed and every lemma got its expected verdict
  1    a mismatch, a lemma without an expected verdict, a timeout, an
       incomplete analysis or a wellformedness warning
  2    a usage error (unknown theory or lemma, bad expected file)
  3    tamarin-prover or maude is missing, or tamarin-prover is a release
       this command does not support
  130  stopped by SIGINT (Ctrl-C); 143 stopped by SIGTERM (provers killed)"""


def register(subparsers: Any) -> None:
    """Add the ``prove`` subcommand."""
    parser = subparsers.add_parser(
        "prove",
        help="prove the Tamarin theories and compare with the expected verdicts",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "theories",
        nargs="*",
        metavar="THEORY",
        help="a .spthy file, or the name of an installed theory, e.g. d2tls_dtls12 or "
        "experimental/d2tls_dtls12_ecdhe (default: every installed *.spthy)",
    )
    parser.add_argument(
        "--lemma",
        action="append",
        default=[],
        metavar="NAME",
        help="prove only this lemma (repeatable)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds per lemma before it counts as a timeout (default 600)",
    )
    parser.add_argument(
        "--batch-timeout",
        type=float,
        metavar="S",
        help="seconds a batch of lemmas may take before its lemmas are proved one by one "
        "(default: --timeout times the lemmas in it)",
    )
    parser.add_argument(
        "--per-lemma",
        action="store_true",
        help="one Tamarin process per lemma (per-lemma times; precomputation repeated)",
    )
    parser.add_argument(
        "--any-prover-version",
        action="store_true",
        help="run a tamarin-prover release other than 1.8.x or 1.10.x anyway",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the JSON report to FILE; without FILE print it instead of the table",
    )
    parser.add_argument(
        "--markdown", metavar="FILE", help="also write the results as a Markdown table to FILE"
    )
    parser.add_argument(
        "--attack-graphs",
        metavar="DIR",
        help="for every falsified lemma, write Tamarin's attack graph to DIR/LEMMA.svg and "
        "DIR/LEMMA.dot (1.8: Tamarin's interactive mode on 127.0.0.1; 1.10: the proving "
        "run's --output-dot, drawn with Graphviz dot); e.g. docs/proofs",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="Tamarin processes at once, and batches per theory (default: the core count)",
    )
    parser.add_argument(
        "--expected",
        metavar="FILE",
        help=f"expected verdicts (default: the installed {runner.EXPECTED_FILE})",
    )
    parser.add_argument(
        "--tamarin-prover", metavar="PATH", help="tamarin-prover executable (default: on PATH)"
    )
    parser.add_argument("--maude", metavar="PATH", help="maude executable (default: on PATH)")
    parser.add_argument(
        "--prover-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra tamarin-prover option, e.g. --prover-arg=--open-chains=5 (repeatable)",
    )
    parser.add_argument(
        "--static",
        "--check-only",
        dest="static",
        action="store_true",
        help="no proving: check syntax (Tree-sitter) and consistency with the spec",
    )
    parser.set_defaults(handler=main)


def _theory_paths(names: list[str]) -> list[Path]:
    if not names:
        return runner.default_theories()
    paths: list[Path] = []
    for name in names:
        path = Path(name)
        if not path.exists():
            candidate = runner.proofs_dir() / (name if name.endswith(".spthy") else f"{name}.spthy")
            if not candidate.exists():
                raise FileNotFoundError(f"no theory {name!r} (nor {candidate})")
            path = candidate
        paths.append(path)
    return paths


def _static(theories: list[Path]) -> int:
    from d2tls.prove.consistency import OTHER_SYSTEM_THEORIES, check_theories
    from d2tls.prove.syntax import SyntaxCheckUnavailable, check_file

    problems: list[str] = []
    try:
        for theory in theories:
            problems += [str(p) for p in check_file(theory)]
    except SyntaxCheckUnavailable as exc:
        print(f"d2tls prove: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = check_theories(theories)
    problems += report.problems()
    for line in problems:
        print(line)
    names = ", ".join(t.name for t in theories)
    if problems:
        print(f"{len(problems)} problem(s) in {names}")
        return EXIT_MISMATCH
    if all(t.name in OTHER_SYSTEM_THEORIES for t in theories):
        print(f"{names}: syntax ok; every rule tagged (models no D2TLS role)")
        return EXIT_OK
    annotated = ", ".join(report.annotated) or "none"
    print(
        f"{names}: syntax ok; {len(report.modelled)} spec transitions modelled, "
        "every security-relevant one covered; message contents and signing guards agree "
        f"with spec/delegation.md §5.2 and §6 (theories with content annotations: {annotated}; "
        "roles: codec fields, signer run against every §6 bound-mode rule)"
    )
    return EXIT_OK


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while ``d2tls prove`` was running."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, then as before."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    # A signal ignored from the start (e.g. SIGINT of a background job) stays ignored.
    caught = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) != signal.SIG_IGN]
    previous = {signum: signal.signal(signum, _interrupt) for signum in caught}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(args: argparse.Namespace) -> int:
    """Run ``d2tls prove``; on SIGINT/SIGTERM kill the provers and return 128 + signal."""
    try:
        with _signals_interrupt():
            try:
                return _main(args)
            except Interrupted:
                for signum in (signal.SIGINT, signal.SIGTERM):  # no second interrupt while
                    signal.signal(signum, signal.SIG_IGN)  # the provers are being killed
                runner.stop_all()
                raise
    except Interrupted as exc:
        print(f"d2tls prove: stopped by {exc}; every tamarin-prover killed", file=sys.stderr)
        return 128 + exc.signum


def _main(args: argparse.Namespace) -> int:
    try:
        proofs = runner.proofs_dir()
        theories = _theory_paths(args.theories)
    except (FileNotFoundError, ResourceError) as exc:
        print(f"d2tls prove: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not theories:
        print(f"d2tls prove: no .spthy files in {proofs}", file=sys.stderr)
        return EXIT_USAGE
    if args.static:
        return _static(theories)

    expected_path = Path(args.expected) if args.expected else proofs / runner.EXPECTED_FILE
    try:
        expected = runner.load_expected(expected_path)
    except (OSError, ValueError) as exc:
        print(f"d2tls prove: cannot read expected verdicts: {exc}", file=sys.stderr)
        return EXIT_USAGE
    jobs = runner.plan(theories, expected, args.lemma)
    unknown = sorted(set(args.lemma) - {job.lemma for job in jobs})
    if unknown:
        print(f"d2tls prove: no such lemma: {', '.join(unknown)}", file=sys.stderr)
        return EXIT_USAGE
    if not jobs:
        print("d2tls prove: the theories declare no lemma", file=sys.stderr)
        return EXIT_USAGE

    try:
        prover = runner.find_prover(args.tamarin_prover, args.maude)
    except ProverMissing as exc:
        print(exc.message(), file=sys.stderr)
        return EXIT_NO_PROVER

    to_stdout = args.json == "-"
    out = sys.stderr if to_stdout else sys.stdout
    version = prover.version()
    release: tuple[int, int, int] | None
    try:
        release = runner.check_release(version)
    except UnsupportedProver as exc:
        if not args.any_prover_version:
            print(exc.message(), file=sys.stderr)
            return EXIT_NO_PROVER
        release = runner.parse_release(version)
        print(f"d2tls prove: {version} is not supported; running it anyway", file=sys.stderr)
    prover = dataclasses.replace(prover, extra_args=tuple(args.prover_arg), release=release)
    alone = sum(1 for job in jobs if job.expected is not None and job.expected.alone)
    after = f" ({alone} of them alone, after the others)" if alone and args.per_lemma else ""
    mode = "per-lemma" if args.per_lemma else "batch"
    print(
        f"{version}; {len(jobs)} lemma(s){after}, {mode} mode, timeout {args.timeout:g} s each",
        file=out,
        flush=True,
    )

    def progress(result: LemmaResult) -> None:
        mark = "ok" if result.ok else "MISMATCH"
        print(
            f"  {result.lemma}: {result.verdict} ({result.seconds:.1f}s) {mark}",
            file=sys.stderr,
            flush=True,
        )

    def checked(result: WellformednessResult) -> None:
        state = "well-formed" if result.ok else "NOT well-formed"
        print(f"  {result.theory}: {state} ({result.seconds:.1f}s)", file=sys.stderr, flush=True)

    proved = sorted({job.theory for job in jobs}, key=theories.index)
    with tempfile.TemporaryDirectory(prefix="d2tls-prove-") as scratch:
        dots = Path(scratch) if args.attack_graphs and graphs_from_run(prover) else None
        run = runner.run_all(
            prover, proved, jobs, args.timeout, args.jobs, on_result=progress, on_check=checked,
            batch_timeout=args.batch_timeout, per_lemma=args.per_lemma, trace_dot_dir=dots,
        )  # fmt: skip
        return _finish(args, prover, version, proved, run, mode, to_stdout, out)


def _finish(
    args: argparse.Namespace,
    prover: runner.Prover,
    version: str,
    proved: list[Path],
    run: runner.Run,
    mode: str,
    to_stdout: bool,
    out: Any,
) -> int:
    """Report the run (table, JSON, Markdown, attack graphs); the exit status."""
    results, checks = run.lemmas, run.checks
    data = runner.report(results, version, args.timeout, checks, run, mode)
    if not to_stdout:
        print(runner.format_table(results, checks))
    if args.markdown:
        Path(args.markdown).write_text(
            runner.format_markdown(results, version, checks), encoding="utf-8"
        )
    graphs_ok = True
    if args.attack_graphs:
        graphs = _attack_graphs(prover, proved, results, Path(args.attack_graphs), args.timeout)
        data["attack_graphs"] = [g.to_dict() for g in graphs]
        graphs_ok = all(g.ok for g in graphs)
        for g in graphs:
            state = f"{g.svg}, {g.dot}" if g.ok else f"NO GRAPH: {g.detail}"
            print(f"attack graph {g.lemma}: {state} ({g.seconds:.1f}s)", file=out)
    if to_stdout:
        print(json.dumps(data, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    for c in checks:
        if not c.ok:
            print(f"{c.theory}: not well formed: {c.detail}", file=sys.stderr)
    bad = [r for r in results if not r.ok]
    for r in bad:
        why = r.detail or (
            f"{r.wellformedness_failures} wellformedness warning(s)"
            if r.wellformedness_failures
            else f"expected {r.expected}, got {r.verdict}"
        )
        print(f"{r.theory} {r.lemma}: {why}", file=sys.stderr)
    well_formed = sum(1 for c in checks if c.ok)
    print(
        f"{len(results) - len(bad)} of {len(results)} lemmas as expected; "
        f"{well_formed} of {len(checks)} theories well formed; {run.seconds:.1f} s "
        f"in {len(run.batches)} batch process(es)",
        file=out,
    )
    return EXIT_OK if run.ok and graphs_ok else EXIT_MISMATCH


def _attack_graphs(
    prover: runner.Prover,
    theories: list[Path],
    results: list[LemmaResult],
    out_dir: Path,
    timeout: float,
) -> list[AttackGraph]:
    """Tamarin's attack graph of every lemma that got the verdict falsified: from the proving
    run's ``--output-dot`` files (1.10), else from Tamarin's interactive mode (1.8)."""
    graphs: list[AttackGraph] = []
    for theory in theories:
        falsified = [r for r in results if r.theory == theory.name and r.verdict == FALSIFIED]
        if not falsified:
            continue
        if graphs_from_run(prover):
            graphs += [graph_from_trace_dot(r, theory, out_dir) for r in falsified]
        else:
            names = [r.lemma for r in falsified]
            graphs += export_attack_graphs(prover, theory, names, out_dir, timeout)
    return graphs
