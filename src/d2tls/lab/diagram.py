"""Draw a role's state machine from the spec (Graphviz DOT, rendered by ``dot``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from d2tls.core.errors import ConfigurationError
from d2tls.core.model.spec import RoleSpec

#: Triggers that exist from every state; drawn once as a note instead of as many edges.
GLOBAL_TRIGGERS = frozenset({"close", "abort", "peer_closed", "peer_failed", "timeout"})


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def transition_label(
    trigger: str, guards: tuple[str, ...], unless: tuple[str, ...], emits: tuple[str, ...]
) -> str:
    """A compact edge label: trigger [guards] / emitted messages."""
    label = trigger.removeprefix("recv_")
    conditions = list(guards) + [f"not {u}" for u in unless]
    if conditions:
        label += " [" + ", ".join(conditions) + "]"
    if emits:
        label += " / " + ", ".join(emits)
    return label


def to_dot(role: RoleSpec) -> str:
    """The DOT source of ``role``'s machine."""
    lines = [
        f"digraph {_quote(role.name)} {{",
        "  rankdir=TB; node [shape=box, style=rounded, fontname=Helvetica, fontsize=10];",
        "  edge [fontname=Helvetica, fontsize=8];",
        f"  __start [shape=point]; __start -> {_quote(role.initial)};",
    ]
    for state in role.states.values():
        shape = ", peripheries=2" if state.final else ""
        lines.append(f"  {_quote(state.name)} [tooltip={_quote(state.description)}{shape}];")
    for t in role.transitions:
        if t.trigger in GLOBAL_TRIGGERS and not (t.guards or t.unless):
            continue  # summarised in the note; a guarded one is a real, drawn alternative
        label = transition_label(t.trigger, t.guards, t.unless, t.emits)
        lines.append(f"  {_quote(t.source)} -> {_quote(t.dest)} [label={_quote(label)}];")
    globals_present = sorted({t.trigger for t in role.transitions if t.trigger in GLOBAL_TRIGGERS})
    if globals_present:
        note = "from every non-final state: " + ", ".join(globals_present)
        lines.append(f"  __note [shape=note, label={_quote(note)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(role: RoleSpec, output: Path) -> Path:
    """Render to ``output`` (.svg, .png or .dot) with Graphviz."""
    dot_source = to_dot(role)
    suffix = output.suffix.lower().lstrip(".")
    if suffix == "dot":
        output.write_text(dot_source, encoding="utf-8")
        return output
    if suffix not in ("svg", "png"):
        raise ConfigurationError(
            f"unsupported diagram format {output.suffix!r}: use .svg, .png or .dot"
        )
    dot = shutil.which("dot")
    if dot is None:
        raise ConfigurationError("Graphviz 'dot' is not installed (apt-get install graphviz)")
    result = subprocess.run(
        [dot, f"-T{suffix}", "-o", str(output)],
        input=dot_source.encode(),
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise ConfigurationError(f"dot failed: {result.stderr.decode(errors='replace')}")
    return output
