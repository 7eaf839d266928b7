"""What spec/delegation.md fixes about message contents and the device's signing guards.

Two parts of the RFC-style text are structured enough to read mechanically, and the consistency
checks compare the theories and the roles against them:

- the field table of §5.2 (``| key | name | message | type | constraints |``): which fields
  each delegation message carries (:func:`message_fields`);
- the numbered list after ``**Bound mode.**`` in §6: the checks a bound-mode device makes before
  it signs (:func:`bound_signing_rules`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from d2tls.core import resources
from d2tls.core.errors import D2TLSError

DELEGATION_MD = "delegation.md"
_ROW = re.compile(
    r"^\|\s*(?P<key>\d+)\s*\|\s*(?P<name>[a-z_]+)\s*\|\s*(?P<message>[A-Za-z, ]+?)\s*\|"
)
_BOUND = "**Bound mode.**"
_NUMBERED = re.compile(r"^(?P<n>\d+)\.\s+(?P<text>.*)$")


class SpecTextError(D2TLSError):
    """spec/delegation.md lacks the table or list the consistency checks read."""


@dataclass(frozen=True)
class SpecField:
    """One row of the §5.2 field table."""

    key: int
    name: str


def delegation_md(spec_dir: Path | None = None) -> str:
    return ((spec_dir or resources.spec_dir()) / DELEGATION_MD).read_text(encoding="utf-8")


def message_fields(text: str) -> dict[str, tuple[SpecField, ...]]:
    """Message name -> its fields in table order (``type``, in every message, left out)."""
    fields: dict[str, list[SpecField]] = {}
    for line in text.splitlines():
        row = _ROW.match(line)
        if row is None or row["name"] == "type":
            continue
        messages = [m.strip() for m in row["message"].split(",")]
        for message in messages:
            if message == "all":
                continue
            fields.setdefault(message, []).append(SpecField(int(row["key"]), row["name"]))
    if not fields:
        raise SpecTextError(f"{DELEGATION_MD}: no field table (| key | name | message | ...)")
    # request_id is in every message ("all"): add it first to each.
    for line in text.splitlines():
        row = _ROW.match(line)
        if row is not None and row["message"].strip() == "all" and row["name"] != "type":
            for message in fields:
                fields[message].insert(0, SpecField(int(row["key"]), row["name"]))
    for message in ("Wiped",):  # a message with no field of its own
        if f"| {message} |" in text and message not in fields:
            fields[message] = [f for f in next(iter(fields.values())) if f.name == "request_id"]
    return {message: tuple(found) for message, found in fields.items()}


def bound_signing_rules(text: str) -> dict[int, str]:
    """Number -> first line of each rule of the bound-mode signing list of §6."""
    start = text.find(_BOUND)
    if start < 0:
        raise SpecTextError(f"{DELEGATION_MD}: no '{_BOUND}' paragraph (§6)")
    rules: dict[int, str] = {}
    for line in text[start:].splitlines()[1:]:
        numbered = _NUMBERED.match(line)
        if numbered:
            rules[int(numbered["n"])] = numbered["text"].strip()
        elif rules and line and not line.startswith(" "):
            break  # the first unindented line after the list ends it
    if not rules:
        raise SpecTextError(f"{DELEGATION_MD}: no numbered rules after '{_BOUND}'")
    return rules
