"""Run Tamarin on the theories, many lemmas per process, and compare with the expected verdicts.

``tamarin-prover --prove=A --prove=B THEORY`` proves lemmas A and B in one process and then prints
a "summary of summaries" with one line per lemma of the theory, e.g.::

    executable_bound (exists-trace): verified (17 steps)
    injective_agreement_full_blind (all-traces): falsified - found trace (12 steps)
    master_secret_secrecy (all-traces): analysis incomplete (1 steps)

and a ``WARNING: N wellformedness check failed!`` line above them when the theory is not well
formed. :func:`parse_output` reads exactly that, for any lemma of the summary.

Batches (why and how). Most of a lemma's time on our theory is Tamarin's source precomputation
(about 140 s per process on Tamarin 1.8, the 2026-12-07 full run in proofs/LEMMAS.md: 3934 s
for 22 lemmas, of which about 850 s proof search), which does not depend on the lemma. So
``d2tls prove`` proves the lemmas of a theory in *batches*: one Tamarin process per batch, the
theory's lemmas dealt round-robin into as many batches as there are workers (cores), the slow
ones (``alone`` in expected.toml) first so that each batch gets its share; every core pays the
precomputation once and the batches run side by side (:func:`plan_batches`).
Tamarin (1.8 and 1.10 alike) prints nothing before every selected lemma is proved, and it
times only the whole theory (``processing time``), so:

- a batch gets a budget of (per-lemma limit) x (its lemmas) seconds (``--batch-timeout``
  overrides it). If it ends in time, each lemma gets its verdict and steps from the summary,
  and ``seconds`` is the wall time of its batch (``batch_size`` says how many lemmas shared it);
- if the batch runs out of its budget, its verdicts are lost with the killed process, and
  every lemma of it is proved again *singly*, each under the per-lemma limit, so one lemma
  that does not finish costs only its own verdict (``rerun`` marks those results);
- ``--per-lemma`` (:data:`PER_LEMMA`) proves every lemma in its own process, as before: per-lemma
  seconds, one precomputation each.

Tamarin's derivation check (part of its wellformedness checks: can every variable of a rule be
derived?) saturates the sources of the whole theory a second time, and it does not depend on
the lemma. So it runs once per theory, in :func:`check_wellformedness`
(``--quit-on-warning``, any warning or a timeout of the check is a failure), and the proving
runs switch it off (``--derivcheck-timeout=0``); :func:`run_all` schedules both.

Supported Tamarin releases: :data:`SUPPORTED_RELEASES` (1.8.x and 1.10.x);
:func:`check_release` refuses any other unless the caller overrides it.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from d2tls.core import resources
from d2tls.core.errors import D2TLSError

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
EXIT_NO_PROVER = 3  # also: a tamarin-prover release outside SUPPORTED_RELEASES

#: Tamarin releases ``d2tls prove`` supports, as (major, minor): any patch level of these.
SUPPORTED_RELEASES: tuple[tuple[int, int], ...] = ((1, 8), (1, 10))
SUPPORTED_TEXT = "Tamarin 1.8.x and 1.10.x"
_RELEASE = re.compile(r"tamarin-prover\s+(\d+)\.(\d+)(?:\.(\d+))?")

#: Seconds Tamarin may spend on its message-derivation wellformedness check (its default of
#: 5 s is too short for our theory on 2 cores; a timeout is reported as a warning, which
#: fails the check).
DERIVCHECK_TIMEOUT = 300
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
_SUMMARY_HEADER = "summary of summaries:"
_LEMMA_DECL = re.compile(r"^\s*lemma\s+([A-Za-z0-9_]+)\s*(?:\[[^\]]*\])?\s*:", re.MULTILINE)


class ProverMissing(D2TLSError):
    """tamarin-prover or maude is not installed (``d2tls prove`` exits with EXIT_NO_PROVER)."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(f"not found: {', '.join(self.missing)}")

    def message(self) -> str:
        return f"d2tls prove: {' and '.join(self.missing)} not found on PATH.\n{INSTALL_HELP}"


class UnsupportedProver(D2TLSError):
    """tamarin-prover is a release ``d2tls prove`` does not support (exit EXIT_NO_PROVER)."""

    def __init__(self, version: str) -> None:
        self.version = version
        super().__init__(f"unsupported {version!r}")

    def message(self) -> str:
        return (
            f"d2tls prove: {self.version} is not supported; supported: {SUPPORTED_TEXT} "
            "(from `tamarin-prover --version`). Other releases print other summaries and serve "
            "other web routes; pass --any-prover-version to run it anyway."
        )


def parse_release(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a ``tamarin-prover --version`` first line, or None."""
    match = _RELEASE.search(version)
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def check_release(version: str) -> tuple[int, int, int]:
    """The release of ``version``; UnsupportedProver unless it is in SUPPORTED_RELEASES."""
    release = parse_release(version)
    if release is None or release[:2] not in SUPPORTED_RELEASES:
        raise UnsupportedProver(version)
    return release


@dataclass(frozen=True)
class Prover:
    """The two executables Tamarin needs."""

    tamarin: str
    maude: str
    extra_args: tuple[str, ...] = ()  # passed to every tamarin-prover run
    release: tuple[int, int, int] | None = None  # from --version; None: not asked (yet)

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
        # "tamarin-prover 1.8.0, (C) David Basin, ..." -> "tamarin-prover 1.8.0"
        return lines[0].split(", (C)")[0] if lines else "unknown"


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
    """The expected verdict of one lemma, and why.

    ``alone``: a slow lemma. With ``--per-lemma`` it is proved by itself, after the others,
    because two at a time it ran past the time limit; in batch mode the slow lemmas are dealt
    into the batches first (see "Running" in proofs/LEMMAS.md).

    ``pending``: the verdict is the one the model's argument gives, but Tamarin has not yet
    confirmed it on the theory as it stands (proofs/LEMMAS.md, "Awaiting Tamarin"). ``d2tls
    prove`` checks it like any other; an expected attack that is pending has no graph yet.
    """

    verdict: str
    why: str
    alone: bool = False
    pending: bool = False


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
    batch_size: int = 1  # lemmas proved by the process of ``command``; seconds is its wall time
    rerun: bool = False  # proved singly after its batch ran out of time
    trace_dot: str = field(default="", repr=False)  # Tamarin 1.10 --output-dot file, if asked

    @property
    def ok(self) -> bool:
        return (
            self.expected is not None
            and self.verdict == self.expected
            and self.wellformedness_failures == 0
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["trace_dot"]  # a scratch file of this run
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
            alone = entry.get("alone", False)
            if not isinstance(alone, bool):
                raise ValueError(f"{path}: {theory}.{lemma}: 'alone' must be true or false")
            pending = entry.get("pending", False)
            if not isinstance(pending, bool):
                raise ValueError(f"{path}: {theory}.{lemma}: 'pending' must be true or false")
            unknown = sorted(set(entry) - {"verdict", "why", "alone", "pending"})
            if unknown:
                raise ValueError(f"{path}: {theory}.{lemma}: unknown keys {unknown}")
            table[theory][lemma] = Expectation(verdict, why.strip(), alone, pending)
    return table


def proofs_dir() -> Path:
    """The theories and ``expected.toml``: ``$D2TLS_PROOFS_DIR``, else the installed copy."""
    return resources.proofs_dir()


def default_theories() -> list[Path]:
    """Every ``*.spthy`` of :func:`proofs_dir` (not its ``experimental/`` subdirectory)."""
    return sorted(proofs_dir().glob("*.spthy"))


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Job:
    theory: Path
    lemma: str
    expected: Expectation | None


def build_command(
    prover: Prover,
    theory: Path,
    lemma: str | Sequence[str],
    threads: int | None = None,
    trace_dot: Path | None = None,
) -> list[str]:
    """One Tamarin process proving ``lemma`` (a name, or several: one ``--prove`` each).

    ``trace_dot``: Tamarin 1.10's ``--output-dot=FILE`` (the graphs of every solved constraint
    system, i.e. every attack found, in one file); 1.8 has no such option.
    """
    lemmas = [lemma] if isinstance(lemma, str) else list(lemma)
    command = [
        prover.tamarin,
        *(f"--prove={name}" for name in lemmas),
        "--derivcheck-timeout=0",  # checked once per theory by check_wellformedness
        f"--with-maude={prover.maude}",
        *prover.extra_args,
    ]
    if trace_dot is not None:
        command.append(f"--output-dot={trace_dot}")
    return [*command, str(theory), *_rts(threads)]


def wellformedness_command(prover: Prover, theory: Path, threads: int | None = None) -> list[str]:
    """Load and close the theory without proving; stop at the first wellformedness warning."""
    command = [
        prover.tamarin,
        "--quit-on-warning",
        f"--derivcheck-timeout={DERIVCHECK_TIMEOUT}",
        f"--with-maude={prover.maude}",
        *prover.extra_args,
        str(theory),
    ]
    return command + _rts(threads)


def _rts(threads: int | None) -> list[str]:
    return [] if threads is None else ["+RTS", f"-N{threads}", "-RTS"]


@dataclass(frozen=True)
class _Finished:
    """How one tamarin-prover process ended: its output, or why there is none."""

    output: str | None
    returncode: int | None
    seconds: float
    failure: str = ""  # TIMEOUT or ERROR when output is None
    detail: str = ""
    cpu_seconds: float | None = None  # user + system time of tamarin-prover itself


class _LiveProcesses:
    """The tamarin-prover processes running now, so that :func:`stop_all` can kill them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen[str]] = set()
        self._stopped = False

    def reopen(self) -> None:
        with self._lock:
            self._stopped = False

    def spawn(self, command: list[str]) -> subprocess.Popen[str] | None:
        """Start ``command`` in its own process group; None once :meth:`stop` was called."""
        with self._lock:
            if self._stopped:
                return None
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            self._live.add(process)
            return process

    def forget(self, process: subprocess.Popen[str]) -> None:
        with self._lock:
            self._live.discard(process)

    def stop(self) -> None:
        """Kill every live process group and start no new one."""
        with self._lock:
            self._stopped = True
            live = list(self._live)
        for process in live:
            kill_group(process)


_LIVE = _LiveProcesses()


def stop_all() -> None:
    """Kill every running tamarin-prover (with its maude children); start no more of them.

    ``d2tls prove`` calls it when SIGINT or SIGTERM arrives; :func:`run_all` calls it when it
    is left by an exception.
    """
    _LIVE.stop()


def _run(command: list[str], timeout: float) -> _Finished:
    """Run one prover process; on timeout or any exception its whole process group is killed.

    The process is reaped with ``os.wait4`` so that its CPU time is known (on a shared machine
    the wall time alone says little).
    """
    start = time.monotonic()
    try:
        process = _LIVE.spawn(command)
    except OSError as exc:
        return _Finished(None, None, 0.0, ERROR, str(exc))
    if process is None:
        return _Finished(None, None, 0.0, ERROR, "stopped before it started")
    chunks: list[str] = []
    assert process.stdout is not None
    stdout = process.stdout
    reader = threading.Thread(target=lambda: chunks.append(stdout.read()), daemon=True)
    reader.start()
    try:
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() >= deadline:
                kill_group(process)
                process.wait()
                reader.join()
                seconds = time.monotonic() - start
                return _Finished(None, None, seconds, TIMEOUT, f"no verdict within {timeout:g} s")
            time.sleep(0.05)
        reader.join()
    except BaseException:  # e.g. a signal in the main thread: leave no prover behind
        kill_group(process)
        process.wait()
        raise
    finally:
        _LIVE.forget(process)
    cpu = usage.ru_utime + usage.ru_stime
    return _Finished("".join(chunks), process.returncode, time.monotonic() - start, cpu_seconds=cpu)


def run_lemma(prover: Prover, job: Job, timeout: float, threads: int | None = None) -> LemmaResult:
    """Prove one lemma in its own process (derivation checks off: see check_wellformedness)."""
    return run_batch(prover, Batch(job.theory, (job,)), timeout, threads=threads).results[0]


@dataclass(frozen=True)
class Batch:
    """Lemmas of one theory proved by one Tamarin process (``alone``: nothing runs beside it)."""

    theory: Path
    jobs: tuple[Job, ...]
    alone: bool = False


@dataclass
class BatchOutcome:
    """What one batch process gave: a result per job, or ``finished=False`` when it ran out of
    its budget (its results are then TIMEOUT placeholders, to be replaced by single runs)."""

    batch: Batch
    finished: bool
    seconds: float
    command: list[str]
    results: list[LemmaResult]
    detail: str = ""
    cpu_seconds: float | None = None

    @property
    def timed_out(self) -> bool:
        return any(r.verdict == TIMEOUT for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "theory": self.batch.theory.name,
            "lemmas": [job.lemma for job in self.batch.jobs],
            "alone": self.batch.alone,
            "finished": self.finished,  # its verdicts are final (else: proved again singly)
            "timed_out": self.timed_out,
            "seconds": round(self.seconds, 2),
            "cpu_seconds": None if self.cpu_seconds is None else round(self.cpu_seconds, 2),
            "command": self.command,
            "detail": self.detail,
        }


def run_batch(
    prover: Prover,
    batch: Batch,
    timeout: float,
    batch_timeout: float | None = None,
    threads: int | None = None,
    trace_dot: Path | None = None,
) -> BatchOutcome:
    """Prove the lemmas of ``batch`` in one process.

    Budget: ``batch_timeout``, else ``timeout`` per lemma (one lemma: exactly ``timeout``).
    On time, every lemma's verdict and steps come from the summary; ``seconds`` of each is
    the process's wall time. Out of time, or ended without Tamarin's summary, a batch of
    several lemmas is not ``finished``: :func:`run_all` proves its lemmas again singly.
    """
    jobs = batch.jobs
    command = build_command(prover, batch.theory, [j.lemma for j in jobs], threads, trace_dot)
    budget = batch_timeout if batch_timeout is not None and len(jobs) > 1 else None
    if budget is None:
        budget = timeout * len(jobs)
    done = _run(command, budget)
    results: list[LemmaResult] = []
    for job in jobs:
        expected = job.expected.verdict if job.expected else None
        why = job.expected.why if job.expected else ""
        common: dict[str, Any] = {
            "command": command, "why": why, "batch_size": len(jobs),
            "trace_dot": "" if trace_dot is None else str(trace_dot),
        }  # fmt: skip
        if done.output is None:
            results.append(
                LemmaResult(
                    job.theory.name,
                    job.lemma,
                    expected,
                    done.failure,
                    None,
                    done.seconds,
                    detail=done.detail,
                    **common,
                )
            )
            continue
        parsed = parse_output(done.output, job.lemma)
        detail = ""
        if parsed.verdict == ERROR:
            detail = f"exit status {done.returncode}; output ends: " + _tail(done.output)
        results.append(
            LemmaResult(
                theory=job.theory.name,
                lemma=job.lemma,
                expected=expected,
                verdict=parsed.verdict,
                steps=parsed.steps,
                seconds=done.seconds,
                wellformedness_failures=parsed.wellformedness_failures,
                warnings=list(parsed.warnings),
                detail=detail,
                **common,
            )
        )
    # Out of time, or ended without a summary (e.g. killed for its memory): a batch of
    # several lemmas is then proved again one lemma per process.
    finished = (done.output is None and done.failure != TIMEOUT) or (
        done.output is not None and _SUMMARY_HEADER in done.output
    )
    finished = finished or len(jobs) == 1
    return BatchOutcome(
        batch, finished, done.seconds, command, results, done.detail, done.cpu_seconds
    )


def plan_batches(jobs: Sequence[Job], workers: int, per_lemma: bool = False) -> list[Batch]:
    """The batches of ``jobs``, per theory: its lemmas dealt round-robin into ``workers``
    batches, the ``alone`` ones (the slow ones) first so that each batch gets its share.

    ``per_lemma``: one batch per lemma, the ``alone`` ones last and run one at a time (two
    single-lemma processes side by side slowed each other past the limit). In batch mode that
    rule would cost one more precomputation (about 140 s) on the critical path, more than the
    slowdown it avoids, and a batch's budget is the sum of its lemmas' limits anyway.
    """
    batches: list[Batch] = []
    alone_batches: list[Batch] = []
    theories = list(dict.fromkeys(job.theory for job in jobs))
    for theory in theories:
        mine = [job for job in jobs if job.theory == theory]
        alone = [job for job in mine if job.expected is not None and job.expected.alone]
        shared = [job for job in mine if job not in alone]
        if per_lemma:
            batches += [Batch(theory, (job,)) for job in shared]
            alone_batches += [Batch(theory, (job,), alone=True) for job in alone]
            continue
        ordered = alone + shared
        count = max(1, min(workers, len(ordered)))
        groups = [tuple(ordered[i::count]) for i in range(count)]
        batches += [Batch(theory, group) for group in groups if group]
    return batches + alone_batches


@dataclass
class WellformednessResult:
    """Tamarin's wellformedness checks (derivation checks included) of one theory."""

    theory: str
    ok: bool
    seconds: float
    warnings: list[str] = field(default_factory=list)
    detail: str = ""
    command: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_wellformedness(output: str, returncode: int | None) -> tuple[bool, list[str], str]:
    """(ok, warning lines, detail) of a ``--quit-on-warning`` run without ``--prove``.

    Well formed means: exit status 0, no WARNING line, and the summary printed (so the run
    got through loading and closing the theory).
    """
    # Other WARNING lines (e.g. about the Maude version) are not about the theory.
    warnings = [
        line.strip()
        for line in output.splitlines()
        if "WARNING" in line and "wellformedness check" in line
    ]
    if "Derivation checks timed out" in output:
        warnings.append(
            f"Derivation checks timed out after {DERIVCHECK_TIMEOUT} s (DERIVCHECK_TIMEOUT)"
        )
    if warnings:
        return False, warnings, "wellformedness warnings: " + _tail(output, 20)
    if returncode != 0 or _SUMMARY_HEADER not in output:
        return False, [], f"exit status {returncode}; output ends: " + _tail(output)
    return True, [], ""


def check_wellformedness(
    prover: Prover, theory: Path, timeout: float, threads: int | None = None
) -> WellformednessResult:
    """Run Tamarin's wellformedness and derivation checks on one theory, once."""
    command = wellformedness_command(prover, theory, threads)
    done = _run(command, timeout)
    if done.output is None:
        return WellformednessResult(
            theory.name, False, done.seconds, detail=f"{done.failure}: {done.detail}",
            command=command,
        )  # fmt: skip
    ok, warnings, detail = parse_wellformedness(done.output, done.returncode)
    return WellformednessResult(theory.name, ok, done.seconds, warnings, detail, command)


def kill_group(process: subprocess.Popen[Any]) -> None:
    """Kill a process started with ``start_new_session=True`` and all its children."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _tail(output: str, lines: int = 8) -> str:
    return " | ".join(line.strip() for line in output.strip().splitlines()[-lines:])


def _workers(requested: int | None, tasks: int) -> tuple[int, int | None]:
    """(processes at once, Tamarin threads each): always one thread (``+RTS -N1``); more make
    Tamarin 1.8 slower, not faster (its parallel garbage collector; see proofs/LEMMAS.md)."""
    workers = max(1, min(requested or os.cpu_count() or 1, tasks or 1))
    return workers, 1


def run_lemmas(
    prover: Prover,
    jobs: Sequence[Job],
    timeout: float,
    workers: int | None = None,
    on_result: Callable[[LemmaResult], None] | None = None,
    per_lemma: bool = False,
) -> list[LemmaResult]:
    """Prove the jobs (batched, see the module docstring); results in job order."""
    return run_all(prover, [], jobs, timeout, workers, on_result, per_lemma=per_lemma).lemmas


@dataclass
class Run:
    """Everything one ``d2tls prove`` run found."""

    checks: list[WellformednessResult]
    lemmas: list[LemmaResult]
    batches: list[BatchOutcome] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the whole run

    def cpu_seconds(self) -> float | None:
        """CPU time of all proving processes (wellformedness checks not included)."""
        times = [b.cpu_seconds for b in self.batches]
        if not times or any(t is None for t in times):
            return None
        return round(sum(t for t in times if t is not None), 2)

    @property
    def ok(self) -> bool:
        return (
            bool(self.lemmas) and all(c.ok for c in self.checks) and all(r.ok for r in self.lemmas)
        )


def run_all(
    prover: Prover,
    theories: Sequence[Path],
    jobs: Sequence[Job],
    timeout: float,
    workers: int | None = None,
    on_result: Callable[[LemmaResult], None] | None = None,
    on_check: Callable[[WellformednessResult], None] | None = None,
    *,
    batch_timeout: float | None = None,
    per_lemma: bool = False,
    trace_dot_dir: Path | None = None,
) -> Run:
    """One wellformedness check per theory, then the lemmas in batches (:func:`plan_batches`).

    The checks and the ordinary batches share one process pool (checks queued first); the
    lemmas of a batch that ran out of its budget are then proved singly in the same pool.
    Then the ``alone`` batches (``--per-lemma`` only) run one at a time (and, out of time,
    their lemmas singly, one at a time). Every process gets one Tamarin thread (more make
    Tamarin 1.8 slower, not faster: parallel GC). ``trace_dot_dir``: each process writes its
    attacks there with 1.10's ``--output-dot`` (:attr:`LemmaResult.trace_dot`). Results come
    back in the order of ``theories`` and ``jobs``.
    """
    started = time.monotonic()
    count, threads = _workers(workers, len(theories) + len(jobs))
    batches = plan_batches(jobs, count, per_lemma)
    shared = [b for b in batches if not b.alone]
    alone = [b for b in batches if b.alone]
    numbers = itertools.count()
    lock = threading.Lock()

    def dot_file() -> Path | None:
        if trace_dot_dir is None:
            return None
        with lock:
            return trace_dot_dir / f"process-{next(numbers)}.dot"

    def report_results(results: Iterable[LemmaResult]) -> None:
        if on_result is not None:
            for result in results:
                on_result(result)

    def check(theory: Path) -> WellformednessResult:
        result = check_wellformedness(prover, theory, timeout, threads)
        if on_check is not None:
            on_check(result)
        return result

    def prove(batch: Batch) -> BatchOutcome:
        outcome = run_batch(prover, batch, timeout, batch_timeout, threads, dot_file())
        if outcome.finished:
            report_results(outcome.results)
        return outcome

    def single(job: Job, alone: bool) -> LemmaResult:
        outcome = run_batch(prover, Batch(job.theory, (job,), alone), timeout, None, threads,
                            dot_file())  # fmt: skip
        result = outcome.results[0]
        result.rerun = True
        with lock:
            reruns.append(outcome)
        report_results([result])
        return result

    def settle(outcome: BatchOutcome) -> bool:
        """Keep a finished batch's results; False when its lemmas must be proved singly."""
        if outcome.finished:
            by_job.update(zip(outcome.batch.jobs, outcome.results, strict=True))
            return True
        return False

    by_job: dict[Job, LemmaResult] = {}
    outcomes: list[BatchOutcome] = []
    reruns: list[BatchOutcome] = []  # single runs of the lemmas of batches out of time
    _LIVE.reopen()
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            try:
                checks = [pool.submit(check, theory) for theory in theories]
                pooled = [pool.submit(prove, batch) for batch in shared]
                check_results = [c.result() for c in checks]
                outcomes += [p.result() for p in pooled]
                again = [job for o in outcomes if not settle(o) for job in o.batch.jobs]
                singles = [pool.submit(single, job, False) for job in again]
                by_job.update(zip(again, [f.result() for f in singles], strict=True))
            except BaseException:
                # Interrupted (a signal in the main thread) or failed: kill the running
                # provers so the pool's threads return, and drop the queued jobs.
                stop_all()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        for batch in alone:
            outcome = prove(batch)
            outcomes.append(outcome)
            if not settle(outcome):
                for job in batch.jobs:
                    by_job[job] = single(job, True)
    except BaseException:
        stop_all()
        raise
    return Run(
        check_results,
        [by_job[job] for job in jobs],
        outcomes + reruns,
        time.monotonic() - started,
    )


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


WELLFORMEDNESS_ROW = "(wellformedness)"


def time_cell(result: LemmaResult) -> str:
    """Its seconds, and how many lemmas shared them (one process proved them together)."""
    text = f"{result.seconds:.1f}s"
    if result.batch_size > 1:
        text += f" (batch of {result.batch_size})"
    if result.rerun:
        text += " (alone, after its batch ran out of time)"
    return text


def format_table(
    results: Sequence[LemmaResult], checks: Sequence[WellformednessResult] = ()
) -> str:
    """A plain-text table: theory, lemma, expected, verdict, steps, time, status.

    Each theory's wellformedness check comes first, as a row named ``(wellformedness)``.
    """
    header = ("theory", "lemma", "expected", "verdict", "steps", "time", "")
    rows = [header]
    for c in checks:
        verdict = "well-formed" if c.ok else "NOT well-formed"
        status = "ok" if c.ok else "WELLFORMEDNESS"
        rows.append(
            (c.theory, WELLFORMEDNESS_ROW, "well-formed", verdict, "-", f"{c.seconds:.1f}s", status)
        )
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
                time_cell(r),
                status,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_markdown(
    results: Sequence[LemmaResult],
    prover_version: str,
    checks: Sequence[WellformednessResult] = (),
) -> str:
    """The results as a Markdown table (for proofs/LEMMAS.md)."""
    lines = [f"Prover: {prover_version}; {os.cpu_count()} cores.", ""]
    for c in checks:
        state = "passed" if c.ok else "**FAILED**"
        lines.append(
            f"Wellformedness and derivation checks of `{c.theory}`: {state} ({c.seconds:.1f} s)."
        )
    if checks:
        lines.append("")
    lines += ["| lemma | expected | got | steps | time | |", "|---|---|---|---:|---:|---|"]
    for r in results:
        steps = "-" if r.steps is None else str(r.steps)
        mark = "ok" if r.ok else "**MISMATCH**"
        lines.append(
            f"| `{r.lemma}` | {r.expected or '-'} | {r.verdict} | {steps} | "
            f"{time_cell(r).replace('s', ' s', 1)} | {mark} |"
        )
    return "\n".join(lines) + "\n"


def report(
    results: Sequence[LemmaResult],
    prover_version: str,
    timeout: float | None = None,
    checks: Sequence[WellformednessResult] = (),
    run: Run | None = None,
    mode: str = "batch",
) -> dict[str, Any]:
    """The JSON report: overall ``ok``, the prover, the wellformedness checks, one entry per
    lemma, and (given ``run``) its Tamarin processes and wall time."""
    return {
        "ok": Run(list(checks), list(results)).ok,
        "prover": prover_version,
        "supported": SUPPORTED_TEXT,
        "mode": mode,
        "cpu_count": os.cpu_count(),
        "timeout": timeout,
        "seconds": None if run is None else round(run.seconds, 2),
        "cpu_seconds": None if run is None else run.cpu_seconds(),
        "batches": [] if run is None else [b.to_dict() for b in run.batches],
        "mismatches": sum(1 for r in results if not r.ok) + sum(1 for c in checks if not c.ok),
        "wellformedness": [c.to_dict() for c in checks],
        "results": [r.to_dict() for r in results],
    }
