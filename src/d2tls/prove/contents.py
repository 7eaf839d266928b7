"""Message contents and signing guards of a theory, against spec/delegation.md.

The theories say what they model with structured comments (documented in proofs/ANNOTATIONS.md),
in the comment block right above a rule, beside its ``// spec:`` lines:

``// msg: SessionContext(request_id, session_id, master_secret, server_certificates)``
    every ``<'SessionContext', ...>`` tuple of the rule has exactly these components after the
    tag, in this order. A name is a field of the message in the §5.2 table; ``+name`` is a
    component the spec's message does not have (the model's own). A rule may give several
    shapes of one message; each tuple must have one of them, and each shape must occur.

``// policy: bound-signing``
    the rule is the bound-mode device's signing step; its text is checked against every
    numbered rule of §6 "Bound mode" (:data:`BOUND_RULE_CHECKS`).

and anywhere in the theory (a line of its own):

``// omit: SessionContext.lifetime (why)``
    a field of a spec message that the theory leaves out, with the reason.

``// abstraction: bound-signing fixed-transcript (why)``
    the bound signing rule accepts one fixed sequence of messages, which is stricter than §6
    (which fixes only the first and the last message and counts); the theory must say so.

:func:`check_contents` fails when an annotation names no spec message or field, a tuple of a
delegation message has no annotation or another arity than its annotation, a spec field is
neither modelled by some rule nor omitted, or the bound signing rule misses a §6 rule or is
stricter than §6 without declaring it. A theory is checked this strictly once it carries an
annotation, or when :data:`REQUIRE_ANNOTATIONS` names it; otherwise only the §6 rules are
checked on its bound signing rule (found by its ``St_D_AwaitSign(.., 'bound', ..)`` premise).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from d2tls.core.errors import D2TLSError
from d2tls.prove.runner import strip_comments
from d2tls.prove.spec_text import SpecField, bound_signing_rules, delegation_md, message_fields

#: Theories that must carry the annotations (they are checked strictly even without any):
#: losing them fails the check instead of silently making it lenient.
REQUIRE_ANNOTATIONS: frozenset[str] = frozenset({"d2tls_dtls12.spthy"})

POLICY_BOUND = "bound-signing"
FIXED_TRANSCRIPT = "fixed-transcript"

_MSG = re.compile(r"^\s*//\s*msg:\s*(?P<message>[A-Za-z]+)\((?P<fields>[^)]*)\)\s*$")
_POLICY = re.compile(r"^\s*//\s*policy:\s*(?P<policy>[a-z-]+)\s*$")
_OMIT = re.compile(
    r"^\s*//\s*omit:\s*(?P<message>[A-Za-z]+)\.(?P<field>[a-z_]+)\s+\((?P<why>.+)\)\s*$"
)
_ABSTRACTION = re.compile(
    r"^\s*//\s*abstraction:\s*(?P<policy>[a-z-]+)\s+(?P<what>[a-z-]+)\s+\((?P<why>.+)\)\s*$"
)
_ANY_ANNOTATION = re.compile(r"^\s*//\s*(msg|policy|omit|abstraction):", re.MULTILINE)
_RULE = re.compile(r"^\s*rule\s+(?P<name>[A-Za-z0-9_]+)\s*(?:\[[^\]]*\])?\s*:", re.MULTILINE)
_END = re.compile(r"^\s*(?:rule|lemma|restriction|end)\b", re.MULTILINE)


# --------------------------------------------------------------------------- terms


@dataclass(frozen=True)
class Tup:
    """A Tamarin tuple ``<a, b, ...>`` (kept n-ary, as written)."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class App:
    """A function application ``f(a, b)``."""

    name: str
    args: tuple[Node, ...]


Node = str | Tup | App  # a str is a name: variable (~x, $x, x) or 'constant'

_TOKEN = re.compile(r"\s*(?:(?P<punct>[<>(),])|(?P<atom>'[^']*'|[~$!]?[A-Za-z0-9_.]+))")


class TermError(D2TLSError):
    """A term the small parser here does not read."""


def parse_term(text: str) -> Node:
    """Parse one Tamarin term (names, 'constants', tuples, applications)."""
    tokens = _tokens(text)
    node, rest = _parse(tokens, 0)
    if rest != len(tokens):
        raise TermError(f"trailing text in term: {text!r}")
    return node


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise TermError(f"cannot read term at {text[pos : pos + 20]!r}")
        out.append(match["punct"] or match["atom"])
        pos = match.end()
    return out


def _parse(tokens: list[str], i: int) -> tuple[Node, int]:
    if i >= len(tokens):
        raise TermError("term ends early")
    token = tokens[i]
    if token == "<":
        items, i = _parse_list(tokens, i + 1, ">")
        return Tup(tuple(items)), i
    if token in "(),>":
        raise TermError(f"unexpected {token!r}")
    if i + 1 < len(tokens) and tokens[i + 1] == "(":
        args, j = _parse_list(tokens, i + 2, ")")
        return App(token, tuple(args)), j
    return token, i + 1


def _parse_list(tokens: list[str], i: int, close: str) -> tuple[list[Node], int]:
    items: list[Node] = []
    if i < len(tokens) and tokens[i] == close:
        return items, i + 1
    while True:
        node, i = _parse(tokens, i)
        items.append(node)
        if i >= len(tokens):
            raise TermError(f"missing {close!r}")
        if tokens[i] == close:
            return items, i + 1
        if tokens[i] != ",":
            raise TermError(f"expected ',' or {close!r}, got {tokens[i]!r}")
        i += 1


def tuples_tagged(text: str, tags: set[str]) -> list[tuple[str, Tup]]:
    """Every tuple ``<'Tag', ...>`` of ``text`` whose tag is one of ``tags``."""
    found: list[tuple[str, Tup]] = []
    for match in re.finditer(r"<\s*'(?P<tag>[A-Za-z]+)'\s*,", text):
        if match["tag"] not in tags:
            continue
        end = _matching(text, match.start())
        node = parse_term(text[match.start() : end])
        if isinstance(node, Tup):
            found.append((match["tag"], node))
    return found


def _matching(text: str, start: int) -> int:
    """The index after the ``>`` that closes the ``<`` at ``start`` (``->``, ``-->`` skipped)."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "<":
            depth += 1
        elif ch == ">" and text[i - 1] != "-":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise TermError("unclosed tuple")


# --------------------------------------------------------------------------- rules


@dataclass
class Rule:
    """One rule: its name, its text (comments stripped), its annotation lines."""

    name: str
    line: int
    text: str
    lets: dict[str, Node]
    messages: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    policies: list[str] = field(default_factory=list)


def theory_rules(theory_text: str) -> list[Rule]:
    """The rules of a theory with their ``// msg:`` and ``// policy:`` annotations."""
    raw_lines = theory_text.splitlines()
    code = strip_comments(theory_text)
    rules: list[Rule] = []
    for match in _RULE.finditer(code):
        end = _END.search(code, match.end())
        body = code[match.end() : end.start() if end else len(code)]
        line = code.count("\n", 0, match.start("name"))
        rule = Rule(match["name"], line + 1, body, _lets(body))
        above = line - 1
        while above >= 0 and raw_lines[above].lstrip().startswith("//"):
            msg = _MSG.match(raw_lines[above])
            if msg:
                fields = tuple(f.strip() for f in msg["fields"].split(",") if f.strip())
                rule.messages.setdefault(msg["message"], []).insert(0, fields)
            policy = _POLICY.match(raw_lines[above])
            if policy:
                rule.policies.append(policy["policy"])
            above -= 1
        rules.append(rule)
    return rules


def _lets(body: str) -> dict[str, Node]:
    """The ``let x = term`` bindings of a rule (up to ``in``)."""
    match = re.match(r"\s*let\s+(?P<lets>.*?)\s+in\s", body, re.DOTALL)
    if match is None:
        return {}
    bindings: dict[str, Node] = {}
    parts = re.split(r"(?:^|\n)\s*([A-Za-z0-9_]+)\s*=", "\n" + match["lets"])
    for name, term in zip(parts[1::2], parts[2::2], strict=True):
        try:
            bindings[name] = parse_term(term)
        except TermError:
            continue
    return bindings


def expand(node: Node, lets: dict[str, Node], depth: int = 0) -> Node:
    """``node`` with let-bound names replaced by their terms."""
    if depth > 20:
        return node
    if isinstance(node, str):
        return expand(lets[node], lets, depth + 1) if node in lets else node
    if isinstance(node, Tup):
        return Tup(tuple(expand(item, lets, depth) for item in node.items))
    return App(node.name, tuple(expand(arg, lets, depth) for arg in node.args))


def _premise_facts(body: str, fact: str) -> list[App]:
    facts: list[App] = []
    for match in re.finditer(rf"(?<![A-Za-z0-9_!]){re.escape(fact)}\(", body):
        end = _close_paren(body, match.end() - 1)
        node = parse_term(body[match.start() : end])
        if isinstance(node, App):
            facts.append(node)
    return facts


def _close_paren(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    raise TermError("unclosed (")


# --------------------------------------------------------------------------- bound signing


@dataclass(frozen=True)
class BoundSigning:
    """What the bound signing rule's text says, in spec terms."""

    digest: Node  # the SignRequest's digest component
    transcript: Node  # its transcript component, let-bindings expanded
    messages: tuple[Node, ...]  # the transcript's messages (empty: not a tuple)
    random: Node  # the client_random of the open request (St_D_AwaitSign)
    server: Node  # the server of the open request
    signer: Node  # whose key signs (!Ltk(X, ..))


def bound_signing(rule: Rule) -> BoundSigning | str:
    """Read the bound signing rule, or say why it cannot be read."""
    requests = [t for tag, t in tuples_tagged(rule.text, {"SignRequest"}) if tag == "SignRequest"]
    states = [f for f in _premise_facts(rule.text, "St_D_AwaitSign") if _mode_index(f) is not None]
    keys = [f for f in _premise_facts(rule.text, "!Ltk") if len(f.args) == 2]
    if states:  # the device's own key: the one of the state's first argument (D)
        keys = [k for k in keys if k.args[0] == states[0].args[0]] or keys
    if len(requests) != 1 or len(requests[0].items) != 4:
        return "no single <'SignRequest', rid, digest, transcript> in the rule"
    if len(states) != 1 or len(keys) != 1:
        return "no single St_D_AwaitSign(.., S, 'bound', random, ..) and !Ltk(D, key) premise"
    _, _, digest, transcript = requests[0].items
    transcript = expand(transcript, rule.lets)
    messages = transcript.items if isinstance(transcript, Tup) else ()
    state = states[0]
    mode = _mode_index(state)  # the request's server before the mode, its random after
    assert mode is not None
    return BoundSigning(
        expand(digest, rule.lets), transcript, messages, state.args[mode + 1],
        state.args[mode - 1], keys[0].args[0],
    )  # fmt: skip


#: Device modes that sign only a transcript they check (§6 "Bound mode"; a strict device
#: checks all of it and more).
CHECKING_MODES = ("'bound'", "'strict'")


def _mode_index(state: App) -> int | None:
    """Where the mode is among St_D_AwaitSign's arguments (server before it, random after)."""
    for i, arg in enumerate(state.args):
        if arg in CHECKING_MODES and 0 < i < len(state.args) - 1:
            return i
    return None


def _tag(node: Node) -> str | None:
    if isinstance(node, Tup) and node.items and isinstance(node.items[0], str):
        first = node.items[0]
        return first.strip("'") if first.startswith("'") else None
    if isinstance(node, str) and node.startswith("'"):
        return node.strip("'")
    return None


def _tagged(model: BoundSigning, tag: str) -> list[Tup]:
    return [m for m in model.messages if isinstance(m, Tup) and _tag(m) == tag]


def _rule1(m: BoundSigning) -> str | None:
    if m.digest != App("h", (m.transcript,)):
        return "the digest signed is not h(transcript) of the transcript in the SignRequest"
    return None


def _rule2(m: BoundSigning) -> str | None:
    if not m.messages:
        return "the transcript is not a tuple of messages"
    hellos = [sum(1 for x in m.messages if _tag(x) == t) for t in ("ClientHello", "ServerHello")]
    if hellos != [1, 1]:
        return (
            f"the transcript has {hellos[0]} ClientHello and {hellos[1]} ServerHello, not one each"
        )
    return None


def _rule3(m: BoundSigning) -> str | None:
    first = m.messages[0] if m.messages else None
    if not isinstance(first, Tup) or _tag(first) != "ClientHello":
        return "the transcript does not start with a ClientHello"
    if len(first.items) < 2 or first.items[1] != m.random:
        return (
            f"the ClientHello random is not the request's client_random {m.random!r} "
            "(St_D_AwaitSign)"
        )
    return None


def _certificates(m: BoundSigning) -> list[Tup]:
    return _tagged(m, "Certificate")


def _rule4(m: BoundSigning) -> str | None:
    certs = _certificates(m)
    if len(certs) != 2:
        return f"the transcript holds {len(certs)} Certificate messages, not two"
    if certs[1].items[1:] != (m.signer,):
        return f"the second Certificate is not the signing device's own ({m.signer!r})"
    return None


def _rule5(m: BoundSigning) -> str | None:
    if not m.messages or _tag(m.messages[-1]) != "ClientKeyExchange":
        return "the transcript does not end with the ClientKeyExchange"
    return None


def _rule6(m: BoundSigning) -> str | None:
    certs = _certificates(m)
    if not certs or certs[0].items[1:] != (m.server,):
        return (
            f"the first (server's) Certificate does not name the request's server {m.server!r} "
            "(spec/delegation.md §6: the device signs only for the server it asked for)"
        )
    return None


#: §6 bound-mode rule number -> the check of the bound signing rule that models it.
BOUND_RULE_CHECKS: dict[int, Callable[[BoundSigning], str | None]] = {
    1: _rule1, 2: _rule2, 3: _rule3, 4: _rule4, 5: _rule5, 6: _rule6,
}  # fmt: skip


def stricter_than_spec(m: BoundSigning) -> list[str]:
    """Constraints of the model's transcript that §6 does not make: messages pinned to a
    constant between the first and the last, beyond the ServerHello and the Certificates."""
    needed = {"ClientHello", "ServerHello", "Certificate", "ClientKeyExchange"}
    return [tag for item in m.messages if (tag := _tag(item)) is not None and tag not in needed]


# --------------------------------------------------------------------------- the check


@dataclass
class ContentsReport:
    """Problems found in the message contents and guards of the theories."""

    problems: list[str] = field(default_factory=list)
    strict: list[str] = field(default_factory=list)  # theories checked with annotations
    modelled_fields: dict[str, set[str]] = field(default_factory=dict)


def check_contents(theories: list[Path], spec_dir: Path | None = None) -> ContentsReport:
    """Check every theory's message tuples and bound signing rule against the spec text."""
    text = delegation_md(spec_dir)
    fields = message_fields(text)
    rules_of_spec = bound_signing_rules(text)
    report = ContentsReport()
    for number in sorted(set(rules_of_spec) - set(BOUND_RULE_CHECKS)):
        report.problems.append(
            f"spec/delegation.md §6 bound-mode rule {number} ({rules_of_spec[number][:60]}...) "
            "has no check in d2tls.prove.contents.BOUND_RULE_CHECKS"
        )
    for theory in theories:
        _check_theory(theory, fields, rules_of_spec, report)
    return report


def _check_theory(
    theory: Path,
    fields: dict[str, tuple[SpecField, ...]],
    spec_rules: dict[int, str],
    report: ContentsReport,
) -> None:
    raw = theory.read_text(encoding="utf-8")
    strict = bool(_ANY_ANNOTATION.search(raw)) or theory.name in REQUIRE_ANNOTATIONS
    if strict:
        report.strict.append(theory.name)
    rules = theory_rules(raw)
    where = theory.name
    omitted: dict[tuple[str, str], str] = {}
    abstractions: set[tuple[str, str]] = set()
    for line in raw.splitlines():
        if omit := _OMIT.match(line):
            key = (omit["message"], omit["field"])
            names = {f.name for f in fields.get(omit["message"], ())}
            if omit["field"] not in names:
                report.problems.append(f"{where}: omit names no spec field: {line.strip()}")
            omitted[key] = omit["why"]
        if abstraction := _ABSTRACTION.match(line):
            abstractions.add((abstraction["policy"], abstraction["what"]))
    modelled: set[tuple[str, str]] = set()
    for rule in rules:
        if strict:
            modelled |= _check_messages(where, rule, fields, report)
    signing = [r for r in rules if POLICY_BOUND in r.policies]
    if not signing:
        if strict:
            report.problems.append(f"{where}: no rule annotated '// policy: {POLICY_BOUND}'")
        # not annotated: the §6 checks still apply, to the rules with the bound state premise
        signing = [
            r
            for r in rules
            if re.search(r"St_D_AwaitSign\([^)]*'(bound|strict)'", r.text)
            and "'SignRequest'" in r.text
        ]
    for rule in signing:
        _check_bound(where, rule, spec_rules, abstractions, strict, report)
    if strict:
        for message, spec_fields in fields.items():
            if not any(m == message for m, _ in modelled) and not any(
                m == message for m, _ in omitted
            ):
                continue  # a message the theory does not model at all (e.g. DelegationError)
            for f in spec_fields:
                if (message, f.name) not in modelled and (message, f.name) not in omitted:
                    report.problems.append(
                        f"{where}: {message}.{f.name} (spec/delegation.md §5.2 key {f.key}) is "
                        "neither modelled by a '// msg:' annotation nor declared '// omit:'"
                    )
                if (message, f.name) in modelled and (message, f.name) in omitted:
                    report.problems.append(
                        f"{where}: {message}.{f.name} is declared omitted but a rule models it"
                    )


def _check_messages(
    where: str, rule: Rule, fields: dict[str, tuple[SpecField, ...]], report: ContentsReport
) -> set[tuple[str, str]]:
    modelled: set[tuple[str, str]] = set()
    at = f"{where}:{rule.line} rule {rule.name}"
    for message, shapes in rule.messages.items():
        if message not in fields:
            report.problems.append(f"{at}: '// msg:' names no spec message: {message}")
            continue
        names = {f.name for f in fields[message]}
        for shape in shapes:
            for name in shape:
                if name.startswith("+"):
                    continue
                if name not in names:
                    report.problems.append(
                        f"{at}: {message} has no field {name!r} in spec/delegation.md §5.2 "
                        f"(fields: {', '.join(f.name for f in fields[message])})"
                    )
                else:
                    modelled.add((message, name))
    used: set[tuple[str, tuple[str, ...]]] = set()
    try:
        tuples = tuples_tagged(rule.text, set(fields))
    except TermError as exc:
        report.problems.append(f"{at}: cannot read its message tuples: {exc}")
        return modelled
    for tag, node in tuples:
        shapes = rule.messages.get(tag, [])
        if not shapes:
            report.problems.append(
                f"{at}: carries {tag} (<'{tag}', ...> with {len(node.items) - 1} components) "
                f"but has no '// msg: {tag}(...)' annotation"
            )
            continue
        fitting = [s for s in shapes if len(s) == len(node.items) - 1]
        if not fitting:
            wanted = " or ".join(str(len(s)) for s in shapes)
            report.problems.append(
                f"{at}: a {tag} tuple has {len(node.items) - 1} components after the tag, "
                f"its '// msg:' annotation {wanted}: the annotation (and the spec fields it "
                "names) no longer describes the rule"
            )
        used.update((tag, s) for s in fitting)
    for message, shapes in rule.messages.items():
        for shape in shapes:
            if message in fields and (message, shape) not in used:
                report.problems.append(
                    f"{at}: '// msg: {message}({', '.join(shape)})' matches no tuple of the rule"
                )
    return modelled


def _check_bound(
    where: str,
    rule: Rule,
    spec_rules: dict[int, str],
    abstractions: set[tuple[str, str]],
    strict: bool,
    report: ContentsReport,
) -> None:
    at = f"{where} rule {rule.name} (bound signing, spec/delegation.md §6)"
    try:
        model = bound_signing(rule)
    except TermError as exc:
        report.problems.append(f"{at}: cannot read the rule: {exc}")
        return
    if isinstance(model, str):
        report.problems.append(f"{at}: {model}")
        return
    for number, check in sorted(BOUND_RULE_CHECKS.items()):
        if number not in spec_rules:
            report.problems.append(f"{at}: checks rule {number}, which §6 no longer has")
            continue
        problem = check(model)
        if problem is not None:
            report.problems.append(f"{at} rule {number}: {problem}")
    extra = stricter_than_spec(model)
    if strict and extra and (POLICY_BOUND, FIXED_TRANSCRIPT) not in abstractions:
        report.problems.append(
            f"{at}: accepts only the fixed transcript of {len(model.messages)} messages "
            f"(also pins {', '.join(extra)}), stricter than §6 and than "
            "d2tls.core.roles.signer.check_bound_transcript; declare it with "
            f"'// abstraction: {POLICY_BOUND} {FIXED_TRANSCRIPT} (why)' or relax the rule"
        )
