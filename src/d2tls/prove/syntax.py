"""Syntax check of ``.spthy`` files with the Tree-sitter Spthy grammar (no Tamarin needed).

Needs ``tree-sitter`` and ``py-tree-sitter-spthy`` (the ``prove`` and ``test`` extras). The
grammar is Tamarin's own (``tree-sitter/tree-sitter-spthy`` in the Tamarin repository): a file
with an ERROR or MISSING node would not load in Tamarin either. The check is syntactic only;
well-formedness (sorts, unbound variables, fact arities) is Tamarin's job. One lexical rule
the grammar does not enforce is checked on top: a public constant ('name') holds no whitespace
(Tamarin rejects it).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d2tls.core.errors import D2TLSError

_CONSTANT = re.compile(r"'([^'\n]*)'")


class SyntaxCheckUnavailable(D2TLSError):
    """The Tree-sitter Spthy grammar is not installed."""


@dataclass(frozen=True)
class SyntaxProblem:
    """An ERROR or MISSING node of the parse tree."""

    path: str
    line: int  # 1-based
    column: int  # 1-based
    kind: str  # "ERROR" or "MISSING <node type>"
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.kind}: {self.text!r}"


def _parser() -> Any:
    try:
        grammar = importlib.import_module("tree_sitter_spthy")
        tree_sitter = importlib.import_module("tree_sitter")
    except ImportError as exc:
        raise SyntaxCheckUnavailable(
            "the Tree-sitter Spthy grammar is not installed: pip install 'd2tls[prove]' "
            "(tree-sitter and py-tree-sitter-spthy)"
        ) from exc
    language = grammar.language()
    if not isinstance(language, tree_sitter.Language):  # older bindings return a pointer
        language = tree_sitter.Language(language)
    return tree_sitter.Parser(language)


def parse_tree(source: bytes) -> Any:
    """The Tree-sitter tree of a theory's source."""
    return _parser().parse(source)


def check_source(source: bytes, path: str = "<theory>") -> list[SyntaxProblem]:
    """Every ERROR and MISSING node (outermost ERRORs only), in source order."""
    tree = parse_tree(source)
    problems: list[SyntaxProblem] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            row, col = node.start_point
            kind = "ERROR" if node.type == "ERROR" else f"MISSING {node.type}"
            text = source[node.start_byte : node.end_byte].decode("utf-8", "replace")
            problems.append(SyntaxProblem(path, row + 1, col + 1, kind, text[:80]))
            if node.type == "ERROR":
                continue
        stack.extend(reversed(node.children))
    if tree.root_node.has_error and not problems:  # defensive: the flag without a node
        problems.append(SyntaxProblem(path, 1, 1, "ERROR", "parse failed"))
    problems.extend(_spaced_constants(source.decode("utf-8", "replace"), path))
    return problems


def _spaced_constants(text: str, path: str) -> list[SyntaxProblem]:
    from d2tls.prove.runner import strip_comments

    code = strip_comments(text)
    found: list[SyntaxProblem] = []
    for match in _CONSTANT.finditer(code):
        if not any(ch.isspace() for ch in match.group(1)):
            continue
        line = code.count("\n", 0, match.start()) + 1
        column = match.start() - (code.rfind("\n", 0, match.start()) + 1) + 1
        found.append(SyntaxProblem(path, line, column, "CONSTANT WITH WHITESPACE", match.group(0)))
    return found


def check_file(path: Path) -> list[SyntaxProblem]:
    return check_source(path.read_bytes(), str(path))


def top_level_items(source: bytes) -> dict[str, list[str]]:
    """Names of the rules, lemmas and restrictions of a theory, from the parse tree."""
    tree = parse_tree(source)
    items: dict[str, list[str]] = {"rule": [], "lemma": [], "restriction": []}
    for node in tree.root_node.children:
        kind = node.type
        target = node
        if kind == "rule" and node.children:  # rule -> simple_rule -> rule_identifier
            target = node.children[0]
        if kind not in items:
            continue
        for field_name in ("rule_identifier", "lemma_identifier", "restriction_identifier"):
            ident = target.child_by_field_name(field_name)
            if ident is not None:
                items[kind].append(source[ident.start_byte : ident.end_byte].decode())
                break
    return items
