"""Small deterministic Mealy machines: minimisation, comparison, DOT rendering.

Learned machines (from AALpy) and the machine derived from ``spec/dtls.yaml`` are both turned
into :class:`Mealy` so they can be minimised, compared (shortest distinguishing input
sequences, found by a breadth-first search of the product machine) and drawn.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Mealy:
    """``transitions[state][input] = (output, next_state)``; states are small ints after
    :meth:`minimized`, ``initial`` is the start state."""

    inputs: tuple[str, ...]
    initial: int
    transitions: dict[int, dict[str, tuple[str, int]]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)

    @property
    def states(self) -> list[int]:
        return sorted(self.transitions)

    def run(self, word: Sequence[str]) -> list[str]:
        state, out = self.initial, []
        for letter in word:
            output, state = self.transitions[state][letter]
            out.append(output)
        return out

    def access_sequences(self) -> dict[int, tuple[str, ...]]:
        """Shortest input sequence reaching each state (BFS, inputs in alphabet order)."""
        access: dict[int, tuple[str, ...]] = {self.initial: ()}
        queue = deque([self.initial])
        while queue:
            state = queue.popleft()
            for letter in self.inputs:
                _, nxt = self.transitions[state][letter]
                if nxt not in access:
                    access[nxt] = (*access[state], letter)
                    queue.append(nxt)
        return access

    def minimized(self) -> Mealy:
        """The reachable, minimal equivalent machine (Moore-style partition refinement);
        states are renumbered in BFS order from 0 (the initial state)."""
        reachable = list(self.access_sequences())
        signatures: dict[Hashable, int] = {}
        block = {
            s: signatures.setdefault(
                tuple(self.transitions[s][i][0] for i in self.inputs), len(signatures)
            )
            for s in reachable
        }
        while True:
            ids: dict[Hashable, int] = {}
            new_block = {
                s: ids.setdefault(
                    (block[s], tuple(block[self.transitions[s][i][1]] for i in self.inputs)),
                    len(ids),
                )
                for s in reachable
            }
            stable = len(ids) == len(set(block.values()))
            block = new_block
            if stable:
                break
        representative: dict[int, int] = {}
        for s in reachable:
            representative.setdefault(block[s], s)
        order: dict[int, int] = {}
        queue = deque([block[self.initial]])
        order[block[self.initial]] = 0
        while queue:
            b = queue.popleft()
            s = representative[b]
            for letter in self.inputs:
                nb = block[self.transitions[s][letter][1]]
                if nb not in order:
                    order[nb] = len(order)
                    queue.append(nb)
        result = Mealy(self.inputs, 0)
        for b, number in order.items():
            s = representative[b]
            result.transitions[number] = {
                letter: (out, order[block[nxt]])
                for letter, (out, nxt) in self.transitions[s].items()
            }
            if s in self.names:
                result.names[number] = self.names[s]
        return result

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "initial": self.initial,
            "states": {
                str(s): {
                    "name": self.names.get(s),
                    "transitions": {i: [o, n] for i, (o, n) in t.items()},
                }
                for s, t in sorted(self.transitions.items())
            },
        }


def from_aalpy(model: Any, inputs: Sequence[str]) -> Mealy:
    """Convert an AALpy ``MealyMachine``."""
    setup = model.to_state_setup()
    ids = {sid: n for n, sid in enumerate(setup)}
    initial = ids[model.initial_state.state_id]
    machine = Mealy(tuple(inputs), initial)
    for sid, transitions in setup.items():
        machine.transitions[ids[sid]] = {
            str(letter): (str(out), ids[nxt]) for letter, (out, nxt) in transitions.items()
        }
    return machine


def explore(
    inputs: Sequence[str],
    initial: Hashable,
    step: Callable[[Any, str], tuple[Any, str]],
    *,
    name: Callable[[Any], str] | None = None,
    max_states: int = 100_000,
) -> Mealy:
    """Build a machine by exhaustive exploration of a deterministic ``step`` function over
    hashable configurations (then minimise it)."""
    ids: dict[Hashable, int] = {initial: 0}
    queue = deque([initial])
    machine = Mealy(tuple(inputs), 0)
    while queue:
        config = queue.popleft()
        number = ids[config]
        row: dict[str, tuple[str, int]] = {}
        for letter in inputs:
            nxt, out = step(config, letter)
            if nxt not in ids:
                if len(ids) >= max_states:
                    raise RuntimeError("state space too large")
                ids[nxt] = len(ids)
                queue.append(nxt)
            row[letter] = (out, ids[nxt])
        machine.transitions[number] = row
        if name is not None:
            machine.names[number] = name(config)
    return machine.minimized()


@dataclass(frozen=True)
class Difference:
    """An input sequence on which two machines answer differently (at its last input)."""

    inputs: tuple[str, ...]
    expected: tuple[str, ...]
    observed: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "expected": list(self.expected),
            "observed": list(self.observed),
        }


def differences(expected: Mealy, observed: Mealy, limit: int = 5) -> list[Difference]:
    """Shortest distinguishing sequences (BFS of the product), at most one per product
    state pair, shortest first; empty when the machines are equivalent."""
    if expected.inputs != observed.inputs:
        common = [i for i in expected.inputs if i in observed.inputs]
    else:
        common = list(expected.inputs)
    start = (expected.initial, observed.initial)
    seen: dict[tuple[int, int], tuple[str, ...]] = {start: ()}
    queue: deque[tuple[int, int]] = deque([start])
    found: list[Difference] = []
    while queue and len(found) < limit:
        pair = queue.popleft()
        word = seen[pair]
        a, b = pair
        for letter in common:
            out_a, na = expected.transitions[a][letter]
            out_b, nb = observed.transitions[b][letter]
            longer = (*word, letter)
            if out_a != out_b:
                found.append(
                    Difference(longer, tuple(expected.run(longer)), tuple(observed.run(longer)))
                )
                if len(found) >= limit:
                    break
                continue
            if (na, nb) not in seen:
                seen[(na, nb)] = longer
                queue.append((na, nb))
    return found


# --------------------------------------------------------------------------- drawing


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(machine: Mealy, title: str, *, hide: Iterable[str] = ("TIMEOUT",)) -> str:
    """DOT source: one edge per (source, target) with its ``input / output`` labels; self-loops
    whose output is in ``hide`` are summarised in the state's tooltip instead of drawn."""
    hidden = set(hide)
    lines = [
        f"digraph {_quote(title)} {{",
        f"  label={_quote(title)}; labelloc=t; fontname=Helvetica;",
        "  rankdir=TB; node [shape=circle, fontname=Helvetica, fontsize=10];",
        "  edge [fontname=Helvetica, fontsize=8];",
        f"  __start [shape=point]; __start -> s{machine.initial};",
    ]
    for state in machine.states:
        silent = [
            i for i, (o, n) in machine.transitions[state].items() if n == state and o in hidden
        ]
        label = f"s{state}"
        if state in machine.names:
            label += f"\\n{machine.names[state]}"
        tooltip = "silent: " + ", ".join(silent) if silent else ""
        lines.append(f"  s{state} [label={_quote(label)}, tooltip={_quote(tooltip)}];")
    edges: dict[tuple[int, int], list[str]] = {}
    for state in machine.states:
        for letter, (out, nxt) in machine.transitions[state].items():
            if nxt == state and out in hidden:
                continue
            edges.setdefault((state, nxt), []).append(f"{letter} / {out}")
    for (src, dst), labels in edges.items():
        text = "\\l".join(labels) + "\\l"
        lines.append(f"  s{src} -> s{dst} [label={_quote(text)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_dot(dot_source: str, output: Path) -> bool:
    """Write ``output`` (.png/.svg) with Graphviz ``dot``; False when dot is missing/fails."""
    dot = shutil.which("dot")
    if dot is None:
        return False
    result = subprocess.run(
        [dot, f"-T{output.suffix.lstrip('.')}", "-o", str(output)],
        input=dot_source.encode(),
        capture_output=True,
        check=False,
        timeout=120,
    )
    return result.returncode == 0
