"""Run Tamarin on the theories, one process per lemma, and compare with the expected verdicts.

``tamarin-prover --prove=LEMMA THEORY`` prints the proof and then a "summary of summaries" with
one line per lemma, e.g.::

    executable_bound (exists-trace): verified (17 steps)
    injective_agreement_full_blind (all-traces): falsified - found trace (12 steps)
    master_secret_secrecy (all-traces): analysis incomplete (1 steps)

and a ``WARNING: N wellformedness check failed!`` line above them when the theory is not well
formed. :func:`parse_output` reads exactly that; :func:`run_lemmas` runs the lemmas in parallel.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Verdicts a lemma can get. "verified"/"falsified" are Tamarin's answers (for an exists-trace
#: lemma "verified" means a trace was found); the others mean there is no answer.
VERIFIED = "verified"
FALSIFIED = "falsified"
INCOMPLETE = "incomplete"
UNDETERMINED = "undetermined"
TIMEOUT = "timeout"
ERROR = "error"
EXPECTABLE = (VERIFIED, FALSIFIED)

#: Exit statuses of ``d2tls prove``.
EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_NO_PROVER = 3

PROOFS_DIR = Path(__file__).resolve().parents[3] / "proofs"

#: Seconds Tamarin may spend on its message-derivation wellformedness check (its default of
#: 5 s is too short for our theory on 2 cores; a timeout is reported as a warning).
DERIVCHECK_TIMEOUT = 120
EXPECTED_FILE = "expected.toml"

INSTALL_HELP = """\
Tamarin is not on PyPI or in Debian; install it by hand:
  - tamarin-prover: a release binary or a source build (Haskell stack or cabal), see
    https://tamarin-prover.com/manual/master/book/002_installation.html
  - maude (>= 2.7.1, Tamarin's rewriting engine): `apt-get install maude` on Debian/Ubuntu
Both must be on PATH, or pass --tamarin-prover PATH / --maude PATH."""

_SUMMARY_LINE = re.compile(
    r"^\s*(?P<lemma>[A-Za-z0-9_]+)\s+\((?P<kind>all-traces|exists-trace)\):\s+"
    r"(?P<status>verified|falsified - found trace|falsified - no trace found|"
    r"analysis incomplete|analysis undetermined|"
    r"analysis cannot be finished \(reducible operators in subterms\))"
    r"\s+\((?P<steps>\d+) steps?\)\s*$",
    re.MULTILINE,
)
_WELLFORMEDNESS = re.compile(r"WARNING: (\d+) wellformedness checks? failed", re.IGNORECASE)
_LEMMA_DECL = re.compile(r"^\s*lemma\s+([A-Za-z0-9_]+)\s*(?:\[[^\]]*\])?\s*:", re.MULTILINE)


class ProverMissing(Exception):
    """tamarin-prover or maude is not installed (``d2tls prove`` exits with EXIT_NO_PROVER)."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(f"not found: {', '.join(self.missing)}")

    def message(self) -> str:
        return f"d2tls prove: {' and '.join(self.missing)} not found on PATH.\n{INSTALL_HELP}"


@dataclass(frozen=True)
class Prover:
    """The two executables Tamarin needs."""

    tamarin: str
    maude: str
    extra_args: tuple[str, ...] = ()  # passed to every tamarin-prover run

    def version(self) -> str:
        """First line of ``tamarin-prover --version`` (or the error)."""
        try:
            out = subprocess.run(
                [self.tamarin, "--version", f"--with-maude={self.maude}"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        lines = (out.stdout or out.stderr).strip().splitlines()
        return lines[0] if lines else "unknown"


def find_prover(tamarin: str | None = None, maude: str | None = None) -> Prover:
    """Locate tamarin-prover and maude (explicit paths, else PATH) or raise ProverMissing."""
    missing: list[str] = []
    found: list[str] = []
    for name, given in (("tamarin-prover", tamarin), ("maude", maude)):
        path = shutil.which(given or name)
        if path is None:
            missing.append(given or name)
        else:
            found.append(path)
    if missing:
        raise ProverMissing(missing)
    return Prover(tamarin=found[0], maude=found[1])


@dataclass(frozen=True)
class Expectation:
    """The expected verdict of one lemma, and why."""

    verdict: str
    why: str


@dataclass(frozen=True)
class Parsed:
    """What one Tamarin run said about one lemma."""

    verdict: str
    steps: int | None
    kind: str | None
    wellformedness_failures: int
    warnings: tuple[str, ...]


@dataclass
class LemmaResult:
    """One lemma's outcome, compared with its expectation."""

    theory: str
    lemma: str
    expected: str | None
    verdict: str
    steps: int | None
    seconds: float
    wellformedness_failures: int = 0
    warnings: list[str] = field(default_factory=list)
    detail: str = ""
    command: list[str] = field(default_factory=list)
    why: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.expected is not None
            and self.verdict == self.expected
            and self.wellformedness_failures == 0
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


# --------------------------------------------------------------------------- parsing


def parse_output(output: str, lemma: str) -> Parsed:
    """Read the verdict of ``lemma`` and any warnings from Tamarin's output."""
    wellformedness = sum(int(m.group(1)) for m in _WELLFORMEDNESS.finditer(output))
    warnings = tuple(
        line.strip() for line in output.splitlines() if line.strip().startswith("WARNING")
    )
    # The summary comes last; take the last line about this lemma.
    match = None
    for candidate in _SUMMARY_LINE.finditer(output):
        if candidate.group("lemma") == lemma:
            match = candidate
    if match is None:
        return Parsed(ERROR, None, None, wellformedness, warnings)
    status = match.group("status")
    kind = match.group("kind")
    verdict = {
        "verified": VERIFIED,
        "falsified - found trace": FALSIFIED,
        "falsified - no trace found": FALSIFIED,
        "analysis incomplete": INCOMPLETE,
        "analysis undetermined": UNDETERMINED,
    }.get(status, INCOMPLETE)
    return Parsed(verdict, int(match.group("steps")), kind, wellformedness, warnings)


def lemma_names(theory_text: str) -> list[str]:
    """Names of the lemmas declared in a theory, in order (comments ignored)."""
    return _LEMMA_DECL.findall(strip_comments(theory_text))


def strip_comments(text: str) -> str:
    """Remove ``//`` and (nested) ``/* */`` comments, keeping line structure."""
    out: list[str] = []
    i = 0
    depth = 0
    in_string = False
    while i < len(text):
        two = text[i : i + 2]
        ch = text[i]
        if depth:
            if two == "/*":
                depth += 1
                i += 2
            elif two == "*/":
                depth -= 1
                i += 2
            else:
                out.append("\n" if ch == "\n" else " ")
                i += 1
            continue
        if in_string:
            in_string = ch != '"'
            out.append(ch)
            i += 1
        elif ch == '"':
            in_string = True
            out.append(ch)
            i += 1
        elif two == "/*":
            depth = 1
            i += 2
        elif two == "//":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        else:
            out.append(ch)
            i += 1
    return "".join(out)


# --------------------------------------------------------------------------- expectations


def load_expected(path: Path) -> dict[str, dict[str, Expectation]]:
    """``expected.toml``: ``[theory-file.lemma]`` tables with ``verdict`` and ``why``."""
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    table: dict[str, dict[str, Expectation]] = {}
    for theory, lemmas in raw.items():
        if not isinstance(lemmas, dict):
            raise ValueError(f"{path}: [{theory}] must be a table of lemmas")
        table[theory] = {}
        for lemma, entry in lemmas.items():
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: {theory}.{lemma} must be a table")
            verdict = entry.get("verdict")
            why = entry.get("why")
            if verdict not in EXPECTABLE:
                raise ValueError(f"{path}: {theory}.{lemma}: verdict must be one of {EXPECTABLE}")
            if not isinstance(why, str) or not why.strip():
                raise ValueError(f"{path}: {theory}.{lemma}: 'why' must be a non-empty string")
            table[theory][lemma] = Expectation(verdict, why.strip())
    return table


def default_theories() -> list[Path]:
    return sorted(PROOFS_DIR.glob("*.spthy"))


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Job:
    theory: Path
    lemma: str
    expected: Expectation | None


def build_command(
    prover: Prover, theory: Path, lemma: str, threads: int | None = None
) -> list[str]:
    command = [
        prover.tamarin,
        f"--prove={lemma}",
        f"--derivcheck-timeout={DERIVCHECK_TIMEOUT}",
        f"--with-maude={prover.maude}",
        *prover.extra_args,
        str(theory),
    ]
    if threads is not None:
        command += ["+RTS", f"-N{threads}", "-RTS"]
    return command


def run_lemma(prover: Prover, job: Job, timeout: float, threads: int | None = None) -> LemmaResult:
    """Run one lemma; on timeout the whole process group is killed."""
    command = build_command(prover, job.theory, job.lemma, threads)
    expected = job.expected.verdict if job.expected else None
    why = job.expected.why if job.expected else ""
    start = time.monotonic()
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    except OSError as exc:
        return LemmaResult(
            job.theory.name, job.lemma, expected, ERROR, None, 0.0, detail=str(exc),
            command=command, why=why,
        )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        process.communicate()
        return LemmaResult(
            job.theory.name, job.lemma, expected, TIMEOUT, None, time.monotonic() - start,
            detail=f"no verdict within {timeout:g} s", command=command, why=why,
        )  # fmt: skip
    seconds = time.monotonic() - start
    parsed = parse_output(output, job.lemma)
    detail = ""
    if parsed.verdict == ERROR:
        detail = f"exit status {process.returncode}; output ends: " + _tail(output)
    return LemmaResult(
        theory=job.theory.name,
        lemma=job.lemma,
        expected=expected,
        verdict=parsed.verdict,
        steps=parsed.steps,
        seconds=seconds,
        wellformedness_failures=parsed.wellformedness_failures,
        warnings=list(parsed.warnings),
        detail=detail,
        command=command,
        why=why,
    )


def _kill_group(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _tail(output: str, lines: int = 8) -> str:
    return " | ".join(line.strip() for line in output.strip().splitlines()[-lines:])


def run_lemmas(
    prover: Prover,
    jobs: Sequence[Job],
    timeout: float,
    workers: int | None = None,
    on_result: Callable[[LemmaResult], None] | None = None,
) -> list[LemmaResult]:
    """Run the jobs in parallel (``workers``, default the core count); results in job order.

    With more than one worker each Tamarin process gets one thread (``+RTS -N1``) so that the
    lemmas do not compete for the cores; a single worker lets Tamarin use them all.
    """
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    threads = 1 if workers > 1 else None

    def one(job: Job) -> LemmaResult:
        result = run_lemma(prover, job, timeout, threads)
        if on_result is not None:
            on_result(result)
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, jobs))


def plan(
    theories: Iterable[Path],
    expected: dict[str, dict[str, Expectation]],
    only: Sequence[str] = (),
) -> list[Job]:
    """One job per lemma of each theory (restricted to ``only`` if given)."""
    jobs: list[Job] = []
    for theory in theories:
        names = lemma_names(theory.read_text(encoding="utf-8"))
        wanted = [n for n in names if not only or n in only]
        for name in wanted:
            jobs.append(Job(theory, name, expected.get(theory.name, {}).get(name)))
    return jobs


# --------------------------------------------------------------------------- reporting


def format_table(results: Sequence[LemmaResult]) -> str:
    """A plain-text table: theory, lemma, expected, verdict, steps, time, status."""
    header = ("theory", "lemma", "expected", "verdict", "steps", "time", "")
    rows = [header]
    for r in results:
        status = "ok" if r.ok else "MISMATCH"
        if r.expected is None:
            status = "NO EXPECTATION"
        elif r.wellformedness_failures:
            status = "WELLFORMEDNESS"
        rows.append(
            (
                r.theory,
                r.lemma,
                r.expected or "-",
                r.verdict,
                "-" if r.steps is None else str(r.steps),
                f"{r.seconds:.1f}s",
                status,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_markdown(results: Sequence[LemmaResult], prover_version: str) -> str:
    """The results as a Markdown table (for proofs/LEMMAS.md)."""
    lines = [
        f"Prover: {prover_version}; {os.cpu_count()} cores.",
        "",
        "| lemma | expected | got | steps | time | |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in results:
        steps = "-" if r.steps is None else str(r.steps)
        mark = "ok" if r.ok else "**MISMATCH**"
        lines.append(
            f"| `{r.lemma}` | {r.expected or '-'} | {r.verdict} | {steps} | {r.seconds:.1f} s "
            f"| {mark} |"
        )
    return "\n".join(lines) + "\n"


def report(
    results: Sequence[LemmaResult], prover_version: str, timeout: float | None = None
) -> dict[str, Any]:
    """The JSON report: overall ``ok``, the prover, and one entry per lemma."""
    return {
        "ok": bool(results) and all(r.ok for r in results),
        "prover": prover_version,
        "cpu_count": os.cpu_count(),
        "timeout": timeout,
        "mismatches": sum(1 for r in results if not r.ok),
        "results": [r.to_dict() for r in results],
    }
