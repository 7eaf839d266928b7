"""The documentation: it builds with warnings as errors, its generated pages match the spec,
the CLI and the expected proof verdicts, and every example on its pages runs as shown.

The build is the command documented in docs/index.md (and README.md), run into a temporary
directory. Examples are run by a small runner:

* ```` ```console ```` blocks: each ``$ `` line is a bash command, run in a fresh directory per
  page (the commands of one page share it, in order); the lines after it are its expected
  standard output, compared as doctest does with ``...`` wildcards and whitespace normalised.
  A block with the class ``long-running`` (a server in its own terminal) is started in the
  background; the runner waits until its output shows the lines given, and stops it at the end
  of the page. A ``% docs-test: interrupt NAME`` comment on the page is the reader's Ctrl-C for
  the background command that starts with NAME. A block with the class ``checkout`` (the
  repository's own tests and scripts) runs in the root of the checkout instead, as the reader
  who cloned the repository does; it must not write files there.
* ```` ```pycon ```` blocks are doctests and ```` ```python ```` blocks are executed, in the
  page's directory, with one namespace per page.
* The class ``setup`` marks the installation commands (``scripts/setup.sh``), which CI runs
  before the test suite and this test therefore does not repeat; ``docs-build`` marks the build
  command, which the build fixture runs.

The well-known ports of the pages (4433, 5684) are replaced by free ports, so the examples can
run beside other tests. A page whose blocks cannot be run would be listed in NOT_EXECUTED with
the reason (none is); the test fails on any other code block it cannot run.
"""

from __future__ import annotations

import doctest
import html.parser
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from d2tls.core.model.spec import RoleSpec, load_spec

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
VENV_BIN = Path(sys.executable).parent

#: Roles and the spec file that defines them; every role of the spec must have a page.
ROLE_SPECS = {"device": "d2tls", "agent": "d2tls", "dtls_server": "dtls", "dtls_client": "dtls"}
ANY_STATE = "any non-final state"
PORTS = (4433, 5684)
#: A reader switches terminals after a server says it is ready (tshark prints "Capturing on" a
#: moment before its capture process sees packets), and presses Ctrl-C a moment after the
#: last step (tshark reads the kernel's buffer in batches).
SETTLE = 1.0

#: Pages (relative to docs/) whose code blocks are not run here, and why.
NOT_EXECUTED: dict[str, str] = {}
#: Languages of blocks that are output or illustrations, not commands.
LITERAL_LANGUAGES = {"text", "cddl", "", "none"}
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def matches(want: str, got: str) -> bool:
    """Doctest's comparison with ``...``, spaces collapsed within each line (not across lines,
    so that a ``...`` line stands for one or more whole lines)."""

    def norm(text: str) -> str:
        return "".join(" ".join(line.split()) + "\n" for line in text.splitlines())

    return doctest.OutputChecker().check_output(norm(want), norm(got), doctest.ELLIPSIS)


# --------------------------------------------------------------------------- page parsing
@dataclass
class Block:
    language: str
    body: str
    line: int
    classes: set[str] = field(default_factory=set)
    comment: str | None = None  # a "% docs-test: ..." line instead of a block


FENCE = re.compile(r"^(`{3,})\s*(\{[\w-]+\})?\s*([\w-]*)\s*(.*)$")


def page_blocks(path: Path) -> list[Block]:
    """Code blocks and runner comments of a MyST page, in order (directives are skipped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("% docs-test:"):
            blocks.append(Block("", "", i + 1, comment=line.removeprefix("% docs-test:").strip()))
        match = FENCE.match(line)
        if not match:
            i += 1
            continue
        fence, directive, language = match.group(1), match.group(2), match.group(3)
        start = i + 1
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i])
            i += 1
        i += 1
        classes: set[str] = set()
        if directive is not None:
            if directive not in ("{code-block}", "{code}", "{sourcecode}"):
                continue  # toctree, include, eval-rst, image, sequence-diagram, ...
            while body and body[0].startswith(":"):
                key, _, value = body.pop(0)[1:].partition(":")
                if key == "class":
                    classes.update(value.split())
            while body and not body[0].strip():
                body.pop(0)
        blocks.append(Block(language, "\n".join(body) + "\n", start, classes))
    return blocks


def console_commands(body: str) -> list[tuple[str, str]]:
    """``(command, expected output)`` pairs of a console block."""
    pairs: list[tuple[str, list[str]]] = []
    continuing = False
    for line in body.splitlines():
        if continuing:
            pairs[-1] = (pairs[-1][0] + "\n" + line, pairs[-1][1])
            continuing = line.endswith("\\")
        elif line.startswith("$ "):
            pairs.append((line[2:], []))
            continuing = line.endswith("\\")
        elif pairs:
            pairs[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"output before any command: {line!r}")
    return [(command, "\n".join(out).strip("\n") + "\n" if out else "") for command, out in pairs]


def rel(page: Path) -> str:
    return page.relative_to(DOCS).as_posix()


def doc_pages() -> list[Path]:
    pages = [
        p for p in sorted(DOCS.rglob("*.md")) if not p.relative_to(DOCS).parts[0].startswith("_")
    ]
    assert pages, "no pages under docs/"
    return pages


# --------------------------------------------------------------------------- running
@dataclass
class Background:
    command: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)


class PageRunner:
    def __init__(self, page: Path, workdir: Path) -> None:
        self.page = page
        self.workdir = workdir
        self.ports = {str(p): str(free_udp_port()) for p in PORTS}
        self.background: list[Background] = []
        self.globs: dict[str, Any] = {"__name__": "__docs__"}
        self.env = dict(os.environ)
        self.env.pop("SSLKEYLOGFILE", None)
        self.env["PATH"] = f"{VENV_BIN}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["COLUMNS"] = "100"
        self.ran: list[str] = []

    def where(self, block: Block) -> str:
        return f"{self.page.relative_to(ROOT)}:{block.line}"

    def ported(self, text: str) -> str:
        for old, new in self.ports.items():
            text = re.sub(rf"\b{old}\b", new, text)
        return text

    def run(self, block: Block) -> None:
        if block.comment is not None:
            self.comment(block)
        elif block.language == "console":
            if block.classes & {"setup", "docs-build"}:
                return
            for command, expected in console_commands(block.body):
                if "long-running" in block.classes:
                    self.start(block, command, expected)
                else:
                    cwd = ROOT if "checkout" in block.classes else self.workdir
                    self.command(block, command, expected, cwd)
        elif block.language == "pycon":
            self.doctest(block)
        elif block.language == "python":
            self.python(block)
        elif block.language not in LITERAL_LANGUAGES:
            raise AssertionError(f"{self.where(block)}: no way to run a {block.language!r} block")

    def command(self, block: Block, command: str, expected: str, cwd: Path) -> None:
        result = subprocess.run(
            ["bash", "-c", self.ported(command)],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.ran.append(command)
        assert result.returncode == 0, (
            f"{self.where(block)}: {command!r} exited with {result.returncode}\n"
            f"{result.stdout}\n{result.stderr}"
        )
        if expected:
            want = self.ported(expected)
            assert matches(want, result.stdout), (
                f"{self.where(block)}: output of {command!r} differs; expected\n{want}\n"
                f"got\n{result.stdout}"
            )

    def start(self, block: Block, command: str, expected: str) -> None:
        process = subprocess.Popen(
            ["bash", "-c", "exec " + self.ported(command)],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        bg = Background(command, process)
        self.background.append(bg)
        self.ran.append(command)

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                bg.output.append(line)

        threading.Thread(target=pump, daemon=True).start()
        wanted = [self.ported(line) for line in expected.splitlines() if line.strip()]
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            text = "".join(bg.output)
            if all(any(matches(w, line) for line in text.splitlines()) for w in wanted):
                time.sleep(SETTLE)
                return
            assert process.poll() is None, (
                f"{self.where(block)}: {command!r} ended ({process.returncode}):\n{text}"
            )
            time.sleep(0.05)
        raise AssertionError(f"{self.where(block)}: {command!r} never printed {wanted}:\n{text}")

    def comment(self, block: Block) -> None:
        verb, _, name = block.comment.partition(" ") if block.comment else ("", "", "")
        assert verb == "interrupt", f"{self.where(block)}: unknown runner comment {block.comment!r}"
        matches = [b for b in self.background if b.command.startswith(name)]
        assert matches, f"{self.where(block)}: no background command starts with {name!r}"
        time.sleep(2 * SETTLE)  # a capture reads the kernel's buffer only every so often
        for bg in matches:
            bg.process.send_signal(signal.SIGINT)
            bg.process.wait(timeout=20)
            self.background.remove(bg)

    def doctest(self, block: Block) -> None:
        parser = doctest.DocTestParser()
        test = parser.get_doctest(
            block.body, self.globs, str(self.page), str(self.page), block.line
        )
        runner = doctest.DocTestRunner(optionflags=OPTIONS)
        report: list[str] = []
        old = Path.cwd()
        os.chdir(self.workdir)
        try:
            runner.run(test, out=report.append, clear_globs=False)
        finally:
            os.chdir(old)
        self.ran.append(f"pycon at line {block.line}")
        assert runner.failures == 0, f"{self.where(block)}:\n" + "".join(report)

    def python(self, block: Block) -> None:
        old = Path.cwd()
        os.chdir(self.workdir)
        try:
            exec(compile(block.body, f"{self.where(block)}", "exec"), self.globs)
        finally:
            os.chdir(old)
        self.ran.append(f"python at line {block.line}")

    def stop(self) -> None:
        for bg in self.background:
            if bg.process.poll() is None:
                os.killpg(bg.process.pid, signal.SIGINT)
        for bg in self.background:
            try:
                bg.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(bg.process.pid, signal.SIGKILL)
                bg.process.wait(timeout=10)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- the build
def documented_build_command() -> str:
    for block in page_blocks(DOCS / "index.md"):
        if "docs-build" in block.classes:
            ((command, _),) = console_commands(block.body)
            return command
    raise AssertionError("docs/index.md has no docs-build block")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    command = documented_build_command()
    assert command in (ROOT / "README.md").read_text(encoding="utf-8"), (
        "README.md must document the same build command as docs/index.md"
    )
    out = tmp_path_factory.mktemp("docs") / "html"
    argv = command.split()
    assert argv[0] == ".venv/bin/python" and argv[-1] == "docs/_build/html", argv
    argv = [sys.executable, *argv[1:-1], "-E", str(out)]
    result = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    assert "-W" in argv and "-n" in argv
    return out


def test_docs_build_without_warnings(built: Path) -> None:
    assert (built / "index.html").is_file()
    for page in doc_pages():
        name = page.relative_to(DOCS)
        if name.parts[0] == "conformance":
            continue  # included in the generated conformance page (next test)
        assert (built / name.with_suffix(".html")).is_file(), f"{page} was not built"


def test_conformance_page_includes_every_report(built: Path) -> None:
    html_text = tables_of(built / "_generated" / "reports" / "conformance.html")
    text = " ".join("".join(html_text.text).split())
    reports = sorted((DOCS / "conformance").glob("*.md"))
    assert {"README.md", "summary.md"} <= {r.name for r in reports}
    for report in reports:
        first = report.read_text(encoding="utf-8").splitlines()[0].lstrip("#").strip()
        first = re.sub(r"[`*]", "", first)
        assert first in text, f"{report.name}: {first!r} missing from the conformance page"


# --------------------------------------------------------------------------- generated pages
#: docutils' "smart quotes" turn the spec's apostrophes into typographic ones.
SMART_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})


class Tables(html.parser.HTMLParser):
    """The text of every table cell, grouped by table and row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables:
            text = "".join(self._cell).translate(SMART_QUOTES)
            self.tables[-1][-1].append(" ".join(text.split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def tables_of(path: Path) -> Tables:
    parser = Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def names(cell: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in cell.split(",") if part.strip())


def expected_rows(role: RoleSpec) -> set[tuple[Any, ...]]:
    return {
        (t.source, t.trigger, t.guards, t.unless, t.dest, t.builds, t.actions, t.emits)
        for t in role.transitions
    }


def test_every_role_of_the_spec_has_a_page() -> None:
    assert {name for spec in ("dtls", "d2tls") for name in load_spec(spec).roles} == set(ROLE_SPECS)


@pytest.mark.parametrize("role_name", sorted(ROLE_SPECS))
def test_state_machine_page_matches_the_spec(built: Path, role_name: str) -> None:
    role = load_spec(ROLE_SPECS[role_name]).role(role_name)
    page = built / "_generated" / "machines" / f"{role_name}.html"
    tables = tables_of(page).tables
    header = {"state", "final", "flight", "meaning"}
    (states,) = [t for t in tables if t and set(t[0]) == header]
    assert [row[0] for row in states[1:]] == list(role.states)
    for row in states[1:]:
        state = role.states[row[0]]
        assert row[1:] == ["yes" if state.final else "", state.flight, state.description]
    (transitions,) = [t for t in tables if t and t[0][:2] == ["source", "trigger"]]
    non_final = [s for s, st in role.states.items() if not st.final]
    documented: list[tuple[Any, ...]] = []
    for source, trigger, guards, unless, dest, builds, actions, emits in transitions[1:]:
        for from_state in non_final if source == ANY_STATE else [source]:
            documented.append(
                (
                    from_state,
                    trigger,
                    names(guards),
                    names(unless),
                    dest,
                    names(builds),
                    names(actions),
                    names(emits),
                )
            )
    assert len(documented) == len(set(documented)), "a transition is listed twice"
    assert set(documented) == expected_rows(role)
    # The record layer (spec/dtls.yaml `record_layer`): one row per live state, as loaded.
    records = [t for t in tables if t and t[0][:2] == ["state", "accepts"]]
    if any(state.record is not None for state in role.states.values()):
        (record_table,) = records
        rows = {row[0]: row[1:] for row in record_table[1:]}
        assert set(rows) == {name for name, st in role.states.items() if not st.final}
        for name, row in rows.items():
            rules = role.states[name].rules
            assert names(row[0]) == tuple(sorted(rules.accept)), name
            assert row[3:6] == [
                rules.next_epoch,
                rules.early_change_cipher_spec,
                rules.undecryptable,
            ], name
            assert row[6] == ("yes" if role.states[name].stateless else ""), name
    else:
        assert records == []
    # The diagram: one node per state (Graphviz names each node's SVG group by its title).
    svg = (built / "_images" / f"{role_name}.svg").read_text(encoding="utf-8")
    for name in role.states:
        assert f"<title>{name}</title>" in svg, name


def test_cli_reference_lists_every_command_and_option(built: Path) -> None:
    import argparse

    from d2tls.cli import build_parser

    text = " ".join("".join(tables_of(built / "cli.html").text).split())

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        assert f"usage: {prefix}" in text, prefix
        for action in parser._actions:
            for option in action.option_strings:
                assert option in text, f"{prefix} {option}"
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(f"{prefix} {name}", child)

    walk("d2tls", build_parser())


def test_security_page_lists_every_lemma_with_its_verdict(built: Path) -> None:
    raw = tomllib.loads((ROOT / "proofs" / "expected.toml").read_text(encoding="utf-8"))
    rows = {
        (row[0], row[1]): row[2]
        for table in tables_of(built / "security.html").tables
        for row in table
        if len(row) == 4
    }
    for theory, lemmas in raw.items():
        for lemma, entry in lemmas.items():
            assert rows.get((theory, lemma)) == entry["verdict"], (theory, lemma)
    page = (built / "security.html").read_text(encoding="utf-8")
    for graph in sorted((DOCS / "proofs").glob("*.svg")):
        assert f'src="_images/{graph.name}"' in page, f"attack graph {graph.name} not shown"


# --------------------------------------------------------------------------- examples
def test_every_page_is_checked_or_exempt() -> None:
    for page in doc_pages():
        for block in page_blocks(page):
            if rel(page) in NOT_EXECUTED or block.comment is not None:
                continue
            assert block.language in LITERAL_LANGUAGES | {"console", "pycon", "python"}, (
                f"{page.relative_to(ROOT)}:{block.line}: {block.language!r} block cannot be run"
            )


@pytest.mark.parametrize(
    "page",
    [p for p in doc_pages() if rel(p) not in NOT_EXECUTED],
    ids=lambda p: str(p.relative_to(DOCS)),
)
def test_examples_run_as_shown(page: Path, tmp_path: Path) -> None:
    runner = PageRunner(page, tmp_path)
    try:
        for block in page_blocks(page):
            runner.run(block)
    finally:
        runner.stop()


def test_tutorial_runs_every_step() -> None:
    """The runner really sees the tutorial's steps (a parsing slip would skip them)."""
    blocks = page_blocks(DOCS / "tutorial.md")
    commands = [c for b in blocks if b.language == "console" for c, _ in console_commands(b.body)]
    for step in (
        "d2tls demo",
        "d2tls pki init",
        "d2tls server",
        "d2tls agent",
        "d2tls device",
        "tshark -i lo",
        "tshark -r",
    ):
        assert any(c.startswith(step) or f" {step}" in c for c in commands), step
    assert sum(b.language == "pycon" for b in blocks) >= 1
    assert [b.comment for b in blocks if b.comment] == ["interrupt tshark"]
    setup = [b for b in blocks if "setup" in b.classes]
    assert [c for b in setup for c, _ in console_commands(b.body)] == [
        "bash scripts/setup.sh",
        "source .venv/bin/activate",
    ]


def test_protocol_diagrams_name_the_messages_of_a_real_run() -> None:
    """Figure 8 as drawn in protocol.md names exactly the messages of the timeline that the
    tutorial records from real processes (and checks as its output)."""
    vocabulary = set(load_spec("dtls").messages) | set(load_spec("d2tls").messages)
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    diagrams = re.findall(r"^```\{sequence-diagram\}.*?\n(.*?)^```", text, re.S | re.M)
    assert len(diagrams) == 2, "Figure 8 (a) and (b)"
    drawn = {word for body in diagrams for word in re.findall(r"\b[A-Z]\w+", body)} & vocabulary
    (timeline,) = [b.body for b in page_blocks(DOCS / "tutorial.md") if b.language == "pycon"]
    recorded = {
        line.split()[-1]
        for line in timeline.splitlines()
        if " -> " in line and not line.startswith((">>>", "...")) and "[PSK" not in line
    }
    assert recorded, "no timeline in the tutorial"
    assert drawn == recorded
