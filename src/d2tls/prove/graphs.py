"""Export Tamarin's own attack graphs for falsified lemmas.

Tamarin 1.8's batch mode prints a counterexample only as text; its graphs come from its
interactive mode, a web server. :func:`export_attack_graphs` starts that server on
127.0.0.1 (a free port, a private working and cache directory), asks its autoprover for each
lemma (:func:`autoprove_path`: ``/thy/trace/IDX/autoprove/idfs/0/proof/LEMMA`` on 1.8; 1.10's
route has one more segment, the "quit on empty oracle" flag: ``.../idfs/0/False/proof/LEMMA``),
follows the redirect to the solved constraint system (the attack), and saves the graph Tamarin
renders for it: the SVG, and the Graphviz source Tamarin wrote into its cache. The server is
stopped afterwards, whatever happens.

Tamarin 1.10's batch mode writes the graphs itself: ``--output-dot=FILE`` serialises every solved
constraint system of the run into FILE, one ``digraph "LABEL" {...}`` after another, LABEL being
``trace_THEORY_OPTIONS_LEMMA`` followed by the proof path (Tamarin 1.10
src/Main/Mode/Batch.hs, ``outputTraces``). On 1.10 ``d2tls prove`` passes that option to the
proving processes themselves (:func:`graphs_from_run`), so no second precomputation is needed:
:func:`graph_from_trace_dot` picks the lemma's graph from its process's file and draws the SVG
with Graphviz ``dot``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from d2tls.core.errors import D2TLSError
from d2tls.prove.runner import LemmaResult, Prover, kill_group, lemma_names

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 120.0
_THEORY_LINK = re.compile(r"/thy/trace/(\d+)/overview/")
_REDIRECT = re.compile(r"^/thy/trace/(\d+)/overview/(proof/.+)$")
_SOLVED = "Constraint System is Solved"
_DIGRAPH = re.compile(r'^digraph\s+"(?P<label>(?:[^"\\]|\\.)*)"\s*\{', re.MULTILINE)
_LABEL_OPTIONS = re.compile(r"-N[FB]_")  # the last of Tamarin's option codes: node style


def graphs_from_run(prover: Prover) -> bool:
    """Tamarin 1.10 or later: the proving run writes the attack graphs (``--output-dot``)."""
    return prover.release is not None and prover.release[:2] >= (1, 10)


def autoprove_path(release: tuple[int, int, int] | None, idx: int, lemma: str) -> str:
    """The interactive server's route that runs the autoprover (``--prove``'s search) on a lemma."""
    flag = "/False" if release is not None and release[:2] >= (1, 10) else ""
    return f"/thy/trace/{idx}/autoprove/idfs/0{flag}/proof/{lemma}"


class GraphExportError(D2TLSError):
    """The interactive Tamarin server did not start or answered unexpectedly."""


@dataclass
class AttackGraph:
    """The attack graph of one lemma, or why there is none."""

    theory: str
    lemma: str
    ok: bool
    seconds: float
    svg: str | None = None
    dot: str | None = None
    trace_path: str = ""  # Tamarin's proof path of the solved constraint system
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json, */*"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        return body


class _Server:
    """``tamarin-prover interactive`` on one theory, on loopback, in a private directory."""

    def __init__(self, prover: Prover, theory: Path, scratch: Path) -> None:
        self.work = scratch / "work"
        self.cache = scratch / "cache"  # Tamarin's cache (where its .dot files go) is in TMPDIR
        self.work.mkdir()
        self.cache.mkdir()
        shutil.copy(theory, self.work / theory.name)
        self.release = prover.release
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.log = scratch / "tamarin-interactive.log"
        command = [
            prover.tamarin,
            "interactive",
            str(self.work),
            f"--interface={HOST}",
            f"--port={self.port}",
            "--image-format=SVG",
            "--derivcheck-timeout=0",
            f"--with-maude={prover.maude}",
            *prover.extra_args,
        ]
        with self.log.open("w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, TMPDIR=str(self.cache)),
                cwd=scratch,  # its web framework writes client_session_key.aes into the cwd
                start_new_session=True,
            )

    def wait_for_theory(self, timeout: float) -> int:
        """Poll until the server lists the theory; return its index."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise GraphExportError(f"tamarin-prover interactive exited: {self.tail()}")
            try:
                page = _get(self.base + "/", timeout=5).decode("utf-8", "replace")
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
                continue
            match = _THEORY_LINK.search(page)
            if match is None:
                raise GraphExportError(f"the Tamarin server lists no theory: {self.tail()}")
            return int(match.group(1))
        raise GraphExportError(f"tamarin-prover interactive not up after {timeout:g} s")

    def json(self, path: str, timeout: float) -> dict[str, Any]:
        data = json.loads(_get(self.base + path, timeout))
        if not isinstance(data, dict):
            raise GraphExportError(f"{path}: not a JSON object")
        return data

    def dot_of(self, svg: bytes) -> Path | None:
        """The Graphviz source Tamarin rendered into ``svg`` (its cache keeps NAME.dot beside
        NAME.dot.svg)."""
        for dot in sorted(self.cache.rglob("*.dot")):
            image = dot.with_name(dot.name + ".svg")
            if image.is_file() and image.read_bytes() == svg:
                return dot
        return None

    def tail(self) -> str:
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-6:])

    def stop(self) -> None:
        kill_group(self.process)
        self.process.wait()


def export_attack_graphs(
    prover: Prover,
    theory: Path,
    lemmas: Sequence[str],
    out_dir: Path,
    timeout: float,
) -> list[AttackGraph]:
    """Write ``out_dir/LEMMA.svg`` and ``out_dir/LEMMA.dot`` for each falsified lemma.

    A lemma that Tamarin does not falsify within ``timeout`` seconds gets an entry with
    ``ok=False`` and the reason; an error of the server fails every remaining lemma.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[AttackGraph] = []
    with tempfile.TemporaryDirectory(prefix="d2tls-graphs-") as scratch:
        server = _Server(prover, theory, Path(scratch))
        try:
            try:
                idx = server.wait_for_theory(STARTUP_TIMEOUT)
            except GraphExportError as exc:
                return [
                    AttackGraph(theory.name, lemma, False, 0.0, detail=str(exc)) for lemma in lemmas
                ]
            for lemma in lemmas:
                results.append(_export_one(server, idx, theory, lemma, out_dir, timeout))
        finally:
            server.stop()
    return results


def _export_one(
    server: _Server, idx: int, theory: Path, lemma: str, out_dir: Path, timeout: float
) -> AttackGraph:
    start = time.monotonic()

    def failed(detail: str) -> AttackGraph:
        return AttackGraph(theory.name, lemma, False, time.monotonic() - start, detail=detail)

    try:
        answer = server.json(autoprove_path(server.release, idx, lemma), timeout)
        redirect = str(answer.get("redirect", ""))
        match = _REDIRECT.match(redirect)
        if match is None:
            return failed(f"the autoprover did not end at a proof path: {answer}")
        proved_idx, path = match.group(1), match.group(2)
        if not path.startswith(f"proof/{lemma}/"):
            return failed(f"no attack: Tamarin's autoprover found no counterexample to {lemma}")
        node = server.json(f"/thy/trace/{proved_idx}/main/{path}", timeout)
        if _SOLVED not in str(node.get("html", "")):
            return failed(f"no attack: Tamarin's proof of {lemma} ends at {path}, not solved")
        svg = _get(f"{server.base}/thy/trace/{proved_idx}/graph/{path}", timeout)
    except (urllib.error.URLError, OSError, ValueError, GraphExportError) as exc:
        return failed(f"{type(exc).__name__}: {exc}; server log: {server.tail()}")
    if not svg.lstrip().startswith((b"<?xml", b"<svg")):
        return failed("the graph is not an SVG image")
    svg_file = out_dir / f"{lemma}.svg"
    svg_file.write_bytes(svg)
    dot_source = server.dot_of(svg)
    dot_file: Path | None = None
    if dot_source is not None:
        dot_file = out_dir / f"{lemma}.dot"
        header = _dot_header(lemma, theory, path)
        dot_file.write_text(header + dot_source.read_text(encoding="utf-8"), encoding="utf-8")
    return AttackGraph(
        theory.name,
        lemma,
        dot_file is not None,
        time.monotonic() - start,
        svg=str(svg_file),
        dot=None if dot_file is None else str(dot_file),
        trace_path=path,
        detail="" if dot_file is not None else "Tamarin wrote no Graphviz source",
    )


def split_trace_dot(text: str) -> list[tuple[str, str]]:
    """(label, Graphviz source) of each ``digraph "LABEL" {...}`` of a 1.10 --output-dot file."""
    starts = list(_DIGRAPH.finditer(text))
    graphs: list[tuple[str, str]] = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        graphs.append(
            (match["label"].replace('\\"', '"'), text[match.start() : end].rstrip() + "\n")
        )
    return graphs


def lemma_of_label(label: str, lemmas: Sequence[str]) -> tuple[str, str] | None:
    """(lemma, proof path) a 1.10 trace label names: ``trace_THY_OPTS_LEMMA`` + the proof path
    (case names joined by ``-``, right after the lemma name); the longest lemma name that fits."""
    match = _LABEL_OPTIONS.search(label)
    if not label.startswith("trace_") or match is None:
        return None
    rest = label[match.end() :]
    fitting = [name for name in lemmas if rest.startswith(name)]
    if not fitting:
        return None
    lemma = max(fitting, key=len)
    steps = [step for step in rest[len(lemma) :].split("-") if step]
    return lemma, "/".join(["proof", lemma, *steps])


def render_svg(dot_source: str, timeout: float = 120.0) -> bytes:
    """The SVG Graphviz ``dot`` draws for ``dot_source`` (GraphExportError if it cannot)."""
    dot = shutil.which("dot")
    if dot is None:
        raise GraphExportError("Graphviz dot not found on PATH (apt-get install graphviz)")
    try:
        done = subprocess.run(
            [dot, "-Tsvg"], input=dot_source.encode("utf-8"), capture_output=True,
            timeout=timeout, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GraphExportError(f"dot -Tsvg failed: {exc}") from exc
    if done.returncode != 0:
        raise GraphExportError(f"dot -Tsvg failed: {done.stderr.decode('utf-8', 'replace')[:300]}")
    return done.stdout


def graph_from_trace_dot(result: LemmaResult, theory: Path, out_dir: Path) -> AttackGraph:
    """``out_dir/LEMMA.svg`` and ``.dot`` from the ``--output-dot`` file of the 1.10 process
    that falsified ``result.lemma``."""
    start = time.monotonic()
    lemma = result.lemma

    def failed(detail: str) -> AttackGraph:
        return AttackGraph(theory.name, lemma, False, time.monotonic() - start, detail=detail)

    if not result.trace_dot:
        return failed("the proving run wrote no --output-dot file")
    try:
        text = Path(result.trace_dot).read_text(encoding="utf-8")
    except OSError as exc:
        return failed(f"no --output-dot file from Tamarin: {exc}")
    names = [lemma_name for lemma_name in lemma_names(theory.read_text(encoding="utf-8"))]
    found = [
        (named[1], source)
        for label, source in split_trace_dot(text)
        if (named := lemma_of_label(label, names)) is not None and named[0] == lemma
    ]
    if not found:
        return failed(f"Tamarin's --output-dot file has no graph for {lemma}")
    path, source = found[0]
    try:
        svg = render_svg(source)
    except GraphExportError as exc:
        return failed(str(exc))
    out_dir.mkdir(parents=True, exist_ok=True)
    svg_file = out_dir / f"{lemma}.svg"
    svg_file.write_bytes(svg)
    dot_file = out_dir / f"{lemma}.dot"
    dot_file.write_text(_dot_header(lemma, theory, path) + source, encoding="utf-8")
    return AttackGraph(
        theory.name, lemma, True, time.monotonic() - start, svg=str(svg_file),
        dot=str(dot_file), trace_path=path,
    )  # fmt: skip


def _dot_header(lemma: str, theory: Path, path: str) -> str:
    return (
        f"// Attack on lemma {lemma} of {theory.name}: the graph Tamarin draws for the\n"
        f"// solved constraint system at proof path {path}\n"
        "// (written by `d2tls prove --attack-graphs`, see src/d2tls/prove/graphs.py).\n"
    )
