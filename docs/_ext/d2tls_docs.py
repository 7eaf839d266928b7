"""Sphinx extension: pages generated from the project itself at build time.

* ``_generated/machines/<role>.md`` and ``.svg``: a diagram and the complete transition table of
  each role, drawn from ``spec/*.yaml`` with :mod:`d2tls.core.model` (nothing is copied by hand, so
  the pages cannot drift from the spec the engines run);
* ``_generated/cli.md``: the help of every ``d2tls`` subcommand, taken from the argument parser;
* ``_generated/lemmas.md``: the Tamarin lemmas and their expected verdicts, from
  ``proofs/expected.toml``;
* the ``sequence-diagram`` directive, which draws a message sequence chart as inline SVG.

Everything is written below ``docs/_generated/`` (ignored by git), and only when its content
changed, so incremental builds stay incremental.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from sphinx import addnodes
from sphinx.application import Sphinx

from d2tls.core.model.spec import RoleSpec, TransitionSpec, load_spec
from d2tls.lab.diagram import render, transition_label

#: The roles documented, in page order: (spec file, role, page title).
ROLES: tuple[tuple[str, str, str], ...] = (
    ("d2tls", "device", "Device"),
    ("d2tls", "agent", "Security agent"),
    ("dtls", "dtls_server", "Server"),
    ("dtls", "dtls_client", "Standalone client"),
)

#: Source cell of a transition that exists from every non-final state (``source: "*"``).
ANY_STATE = "any non-final state"

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` unless the file already holds exactly that."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _cell(items: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"`{item}`" for item in items) if items else ""


def grouped_transitions(role: RoleSpec) -> list[tuple[str, TransitionSpec]]:
    """The role's transitions in spec order, one row per transition.

    A transition that exists with identical guards, actions and messages from every non-final
    state (a ``source: "*"`` entry of the spec) becomes a single row whose source is
    :data:`ANY_STATE`; every other transition keeps its own source.
    """
    non_final = {name for name, state in role.states.items() if not state.final}

    def key(t: TransitionSpec) -> tuple[Any, ...]:
        return (t.trigger, t.dest, t.guards, t.unless, t.actions, t.emits, t.builds)

    sources: dict[tuple[Any, ...], set[str]] = {}
    for t in role.transitions:
        sources.setdefault(key(t), set()).add(t.source)
    rows: list[tuple[str, TransitionSpec]] = []
    emitted: set[tuple[Any, ...]] = set()
    for t in role.transitions:
        k = key(t)
        if sources[k] == non_final and len(non_final) > 1:
            if k not in emitted:
                emitted.add(k)
                rows.append((ANY_STATE, t))
        else:
            rows.append((t.source, t))
    return rows


def record_section(role: RoleSpec) -> list[str]:
    """The record-layer rules of every live state (the spec's ``record_layer``), if any."""
    live = [state for state in role.states.values() if not state.final]
    if all(state.record is None for state in live):
        return []
    lines = [
        "",
        "## Record layer",
        "",
        "What each state does with a record before the machine sees a message (RFC 6347 §4.1;",
        "the vocabulary is in the header of `spec/dtls.yaml`). *Old epoch*: content types of an",
        "older epoch that only tell that the peer repeated a flight.",
        "",
        "| state | accepts | in epoch 0 | old epoch | next epoch | early ChangeCipherSpec "
        "| undecryptable | stateless |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for state in live:
        rules = state.rules
        lines.append(
            f"| `{state.name}` | {_cell(sorted(rules.accept))} "
            f"| {_cell(sorted(rules.epoch0 & rules.accept))} | {_cell(sorted(rules.old_epoch))} "
            f"| {rules.next_epoch} | {rules.early_change_cipher_spec} | {rules.undecryptable} "
            f"| {'yes' if state.stateless else ''} |"
        )
    return lines


def role_page(spec_name: str, role: RoleSpec, title: str) -> str:
    """The Markdown page of one role: description, states, diagram, transitions."""
    lines = [
        f"# {title}: `{role.name}`",
        "",
        f"Generated from `spec/{spec_name}.yaml` when the documentation is built.",
        "",
        role.description,
        "",
        f"Initial state: `{role.initial}`.",
        "",
        "## States",
        "",
        "| state | final | flight | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for state in role.states.values():
        final = "yes" if state.final else ""
        desc = state.description.replace("|", "\\|")
        lines.append(f"| `{state.name}` | {final} | {state.flight} | {desc} |")
    lines += [
        "",
        "## Diagram",
        "",
        "Edges are labelled *trigger [guards] / messages sent*. Triggers that apply to every",
        "non-final state (close, abort, timeouts, peer failures) are listed in the note rather",
        "than drawn as edges; the table below has them.",
        "",
        f"```{{image}} {role.name}.svg",
        f":alt: state machine of {role.name}",
        "```",
        "",
        "## Transitions",
        "",
        "Transitions of one trigger and source are tried in the order listed; the first whose",
        "guards hold (and whose *unless* conditions do not) fires. A received message with no",
        "row for the current state is a protocol violation.",
        "",
        "| source | trigger | guards | unless | destination | builds ahead | actions | sends |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for source, t in grouped_transitions(role):
        src = ANY_STATE if source == ANY_STATE else f"`{source}`"
        lines.append(
            f"| {src} | `{t.trigger}` | {_cell(t.guards)} | {_cell(t.unless)} | `{t.dest}` "
            f"| {_cell(t.builds)} | {_cell(t.actions)} | {_cell(t.emits)} |"
        )
    lines += record_section(role)
    lines += ["", "## Local events", "", "| event | meaning |", "| --- | --- |"]
    for event, meaning in role.local_events.items():
        lines.append(f"| `{event}` | {meaning.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n"


def generate_machines(outdir: Path) -> None:
    for spec_name, role_name, title in ROLES:
        role = load_spec(spec_name).role(role_name)
        svg = outdir / f"{role_name}.svg"
        tmp = outdir / f".{role_name}.tmp.svg"
        outdir.mkdir(parents=True, exist_ok=True)
        render(role, tmp)
        _write(svg, tmp.read_bytes())
        tmp.unlink()
        _write(outdir / f"{role_name}.md", role_page(spec_name, role, title))
        # Also keep the one-line-per-transition form of `d2tls model table ROLE`.
        labels = [
            f"{t.source} -> {t.dest}: {transition_label(t.trigger, t.guards, t.unless, t.emits)}"
            for t in role.transitions
        ]
        _write(outdir / f"{role_name}.txt", "\n".join(labels) + "\n")


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def cli_page() -> str:
    """Every subcommand's ``--help``, in the order the parser defines them."""
    from d2tls.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps help text to the terminal width
    try:
        parser = build_parser()
        lines = [
            "# Command-line reference",
            "",
            "Generated from `d2tls`'s own argument parser when the documentation is built, so",
            "it lists exactly the options of the installed version.",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
            "",
        ]

        def walk(prefix: str, sub: argparse.ArgumentParser, depth: int) -> None:
            children = _subcommands(sub)
            lines.extend(
                [
                    "#" * min(depth, 4) + f" `{prefix}`",
                    "",
                    "```text",
                    sub.format_help().rstrip(),
                    "```",
                    "",
                ]
            )
            for name, child in children:
                walk(f"{prefix} {name}", child, depth + 1)

        for name, child in _subcommands(parser):
            walk(f"d2tls {name}", child, 2)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(lines)


def lemmas_page() -> str:
    """A table of the Tamarin lemmas with their expected verdicts."""
    raw = tomllib.loads((ROOT / "proofs" / "expected.toml").read_text(encoding="utf-8"))
    lines = [
        "| theory | lemma | expected verdict | why |",
        "| --- | --- | --- | --- |",
    ]
    for theory, lemmas in raw.items():
        for lemma, entry in lemmas.items():
            why = str(entry.get("why", "")).replace("|", "\\|")
            lines.append(f"| `{theory}` | `{lemma}` | **{entry['verdict']}** | {why} |")
    return "\n".join(lines) + "\n"


def conformance_page(reports: Path) -> str:
    """One page from the reports of ``d2tls conformance-peers`` in ``docs/conformance/``.

    The directory's README (the explanation of the results) comes first, then the summary
    table, then each peer's report. Links between these files become links within this page,
    and image paths are made relative to this page.
    """
    readme = reports / "README.md"
    summary = reports / "summary.md"
    peers = sorted(p for p in reports.glob("*.md") if p not in (readme, summary))
    prefix = "../../conformance/"

    def rewrite(text: str) -> str:
        for part in [summary, *peers]:
            text = text.replace(f"]({part.name})", f"](#conformance-{part.stem})")
        return re.sub(r"(!\[[^\]]*\]\()(?!https?:|/)([^)]+\))", rf"\g<1>{prefix}\g<2>", text)

    if readme.exists():
        lines = [rewrite(readme.read_text(encoding="utf-8")), ""]
    else:
        lines = [
            "# Conformance of DTLS servers",
            "",
            "The reports of `d2tls conformance-peers`, from `docs/conformance/`.",
            "",
        ]
    if not summary.exists() and not peers:
        lines.append("No report has been written yet.")
        return "\n".join(lines) + "\n"
    if summary.exists():
        text = summary.read_text(encoding="utf-8")
        text = re.sub(r"^# ", "## ", text, count=1, flags=re.M)
        lines += ["(conformance-summary)=", "", rewrite(text), ""]
    for peer in peers:
        lines += [f"(conformance-{peer.stem})=", "", rewrite(peer.read_text(encoding="utf-8")), ""]
    return "\n".join(lines) + "\n"


def attack_graphs_page(graphs: Path) -> str:
    """A figure per attack graph in ``docs/proofs/`` (written by ``d2tls prove``), captioned
    with the lemma's expected verdict and reason from ``proofs/expected.toml``."""
    raw = tomllib.loads((ROOT / "proofs" / "expected.toml").read_text(encoding="utf-8"))
    expected = {lemma: entry for lemmas in raw.values() for lemma, entry in lemmas.items()}
    lines: list[str] = []
    for svg in sorted(graphs.glob("*.svg")):
        entry = expected.get(svg.stem, {})
        verdict = entry.get("verdict", "not in proofs/expected.toml")
        lines += [
            f"```{{figure}} proofs/{svg.name}",
            f":alt: attack graph of {svg.stem}",
            "",
            f"`{svg.stem}` (expected: {verdict}): {entry.get('why', '')}",
            "```",
            "",
        ]
    if not lines:
        lines = ["No attack graph has been written yet (`d2tls prove` writes them)."]
    return "\n".join(lines) + "\n"


def generate(app: Sphinx) -> None:
    out = Path(app.srcdir) / "_generated"
    generate_machines(out / "machines")
    _write(out / "cli.md", cli_page())
    _write(out / "lemmas.md", lemmas_page())
    _write(out / "attack-graphs.md", attack_graphs_page(Path(app.srcdir) / "proofs"))
    _write(out / "reports" / "conformance.md", conformance_page(Path(app.srcdir) / "conformance"))


# --------------------------------------------------------------------------- sequence diagrams
def sequence_svg(participants: list[str], steps: list[tuple[str, str, str, bool]]) -> str:
    """An SVG message sequence chart.

    ``steps`` are ``(sender, receiver, label, dashed)``; a step whose sender is its receiver is
    drawn as a note beside that participant's lifeline.
    """
    column, top, row = 300, 40, 30
    width = column * len(participants)
    height = top + row * (len(steps) + 1)
    x = {name: column // 2 + i * column for i, name in enumerate(participants)}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="d2tls-sequence" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'style="max-width: 100%; height: auto" font-family="sans-serif" font-size="12">',
        '<defs><marker id="d2tls-arrow" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z" fill="currentColor"/></marker></defs>',
        '<g stroke="currentColor" fill="currentColor">',
    ]
    for name in participants:
        cx = x[name]
        out.append(
            f'<rect x="{cx - 60}" y="4" width="120" height="24" rx="4" fill="none"/>'
            f'<text x="{cx}" y="21" text-anchor="middle" stroke="none">'
            f"{html.escape(name)}</text>"
            f'<line x1="{cx}" y1="28" x2="{cx}" y2="{height - 4}" stroke-dasharray="2,3"/>'
        )
    for i, (sender, receiver, label, dashed) in enumerate(steps):
        y = top + row * (i + 1)
        text = html.escape(label)
        if sender == receiver:
            cx = x[sender]
            out.append(
                f'<text x="{cx + 8}" y="{y - 4}" stroke="none" font-style="italic">{text}</text>'
            )
            continue
        x1, x2 = x[sender], x[receiver]
        dash = ' stroke-dasharray="6,4"' if dashed else ""
        out.append(
            f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}"{dash} '
            'marker-end="url(#d2tls-arrow)"/>'
            f'<text x="{(x1 + x2) // 2}" y="{y - 5}" text-anchor="middle" stroke="none">'
            f"{text}</text>"
        )
    out.append("</g></svg>")
    return "\n".join(out)


def parse_sequence(lines: list[str]) -> tuple[list[str], list[tuple[str, str, str, bool]]]:
    """Parse ``participants: A, B`` then ``A -> B: label`` (``-->`` dashed) lines."""
    participants: list[str] = []
    steps: list[tuple[str, str, str, bool]] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("participants:"):
            participants = [p.strip() for p in line.split(":", 1)[1].split(",")]
            continue
        head, sep, label = line.partition(":")
        if not sep:
            raise ValueError(f"line {number}: expected 'A -> B: label', got {raw!r}")
        dashed = "-->" in head
        sender, arrow, receiver = head.partition("-->" if dashed else "->")
        if not arrow:
            raise ValueError(f"line {number}: no arrow in {raw!r}")
        sender, receiver = sender.strip(), receiver.strip()
        for name in (sender, receiver):
            if name not in participants:
                raise ValueError(f"line {number}: unknown participant {name!r}")
        steps.append((sender, receiver, label.strip(), dashed))
    if not participants:
        raise ValueError("missing 'participants:' line")
    return participants, steps


class SequenceDiagram(Directive):
    """``sequence-diagram``: a message sequence chart; the optional argument is its caption."""

    has_content = True
    optional_arguments = 1
    final_argument_whitespace = True
    option_spec: ClassVar[dict[str, Any]] = {"name": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        try:
            participants, steps = parse_sequence(list(self.content))
        except ValueError as exc:
            raise self.error(f"sequence-diagram: {exc}") from exc
        container = nodes.container(classes=["d2tls-sequence"])
        container += nodes.raw("", sequence_svg(participants, steps), format="html")
        # Other builders (and the text of the page) get the same chart as a list.
        listing = "\n".join(f"{s} {'-->' if d else '->'} {r}: {label}" for s, r, label, d in steps)
        fallback = addnodes.only(expr="not html")
        fallback += nodes.literal_block(listing, listing)
        container += fallback
        if self.arguments:
            caption = nodes.paragraph(classes=["caption"])
            caption += nodes.emphasis(text=self.arguments[0])
            container += caption
        return [container]


_ATTRIBUTE_DOCSTRINGS: dict[str, list[str]] = {}


def _keep_attribute_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    if what in ("attribute", "data"):
        _ATTRIBUTE_DOCSTRINGS[name] = list(lines)


def _restore_attribute_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Undo napoleon on attribute docstrings.

    Napoleon reads the text before the first colon of an attribute's docstring as its type;
    our ``#:`` comments are prose whose first sentence often has a colon (the types come from
    the annotations), so their text is put back as written.
    """
    if what in ("attribute", "data") and name in _ATTRIBUTE_DOCSTRINGS:
        lines[:] = _ATTRIBUTE_DOCSTRINGS.pop(name)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", generate)
    # Around napoleon's handler (priority 500).
    app.connect("autodoc-process-docstring", _keep_attribute_docstring, priority=400)
    app.connect("autodoc-process-docstring", _restore_attribute_docstring, priority=600)
    app.add_directive("sequence-diagram", SequenceDiagram)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
