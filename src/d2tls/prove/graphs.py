"""Export Tamarin's own attack graphs for falsified lemmas.

Tamarin's batch mode prints a counterexample only as text; its graphs come from its
interactive mode, a web server. :func:`export_attack_graphs` starts that server on
127.0.0.1 (a free port, a private working and cache directory), asks its autoprover for each
lemma (``/thy/trace/IDX/autoprove/idfs/0/proof/LEMMA``, the same search as ``--prove``),
follows the redirect to the solved constraint system (the attack), and saves the graph Tamarin
renders for it: the SVG, and the Graphviz source Tamarin wrote into its cache. The server is
stopped afterwards, whatever happens.
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

from d2tls.errors import D2TLSError
from d2tls.prove.runner import Prover, kill_group

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 120.0
_THEORY_LINK = re.compile(r"/thy/trace/(\d+)/overview/")
_REDIRECT = re.compile(r"^/thy/trace/(\d+)/overview/(proof/.+)$")
_SOLVED = "Constraint System is Solved"


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
        answer = server.json(f"/thy/trace/{idx}/autoprove/idfs/0/proof/{lemma}", timeout)
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
        header = (
            f"// Attack on lemma {lemma} of {theory.name}: the graph Tamarin draws for the\n"
            f"// solved constraint system at proof path {path}\n"
            "// (written by `d2tls prove --attack-graphs`, see src/d2tls/prove/graphs.py).\n"
        )
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
