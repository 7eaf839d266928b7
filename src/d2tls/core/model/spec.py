"""Load and check the protocol spec: roles, states, transitions, messages.

The checks run at load time and each failure names the role and the offending entry, so a
broken spec never produces a half-working machine.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from d2tls.core import resources
from d2tls.core.errors import SpecError

#: Flight behaviour of a state (RFC 6347 §4.2.4): "await" runs the retransmission timer,
#: "final" retransmits only when the peer repeats its last flight, "none" never retransmits.
FLIGHT_KINDS = ("await", "final", "none")
WILDCARD = "*"
#: Record content types a state may accept (RFC 6347 §4.1; RFC 5246 §6.2.1).
CONTENT_TYPES = ("handshake", "change_cipher_spec", "alert", "application_data")
#: What a record of the next read epoch becomes (RFC 6347 §4.1): kept until the
#: ChangeCipherSpec that starts the epoch, or dropped.
NEXT_EPOCH_RULES = ("buffer", "discard")
#: What a ChangeCipherSpec with no transition becomes: held until the machine takes it (DTLS may
#: reorder it ahead of the handshake messages before it, RFC 6347 §4.1), or unexpected_message.
EARLY_CCS_RULES = ("hold", "fatal")
#: What a record of the current read epoch that does not authenticate becomes: dropped
#: (RFC 6347 §4.1.2.7), or, with a PSK suite, fatal decrypt_error (RFC 4279 §2).
UNDECRYPTABLE_RULES = ("discard", "fatal_with_psk")
RECORD_KEYS = (
    "accept",
    "epoch0",
    "old_epoch",
    "next_epoch",
    "early_change_cipher_spec",
    "undecryptable",
)


@dataclass(frozen=True)
class RecordRules:
    """The record-layer rules of one state (``record_layer`` of the role, then the state's
    ``record`` overrides): which content types reach the endpoint and how epochs are handled."""

    #: Content types processed in the current read epoch; others are dropped (RFC 6347 §4.1.2.7).
    accept: frozenset[str]
    #: Content types processed in epoch 0, which has no protection.
    epoch0: frozenset[str]
    #: Content types of an older epoch used only to notice a repeated flight (RFC 6347 §4.2.4).
    old_epoch: frozenset[str]
    next_epoch: str
    early_change_cipher_spec: str
    undecryptable: str

    def accepts(self, content_type: str, epoch: int) -> bool:
        """True if a record of ``content_type`` in the current read ``epoch`` is processed."""
        return content_type in (self.epoch0 & self.accept if epoch == 0 else self.accept)


@dataclass(frozen=True)
class StateSpec:
    """One state of a role."""

    name: str
    description: str
    final: bool
    flight: str
    #: RFC 6347 §4.2.1: nothing is kept for the peer while the machine is in this state; the
    #: endpoint answers from it and then drops the machine.
    stateless: bool = False
    record: RecordRules | None = None

    @property
    def rules(self) -> RecordRules:
        """The record rules; a role without ``record_layer`` accepts everything it decodes."""
        return self.record if self.record is not None else PERMISSIVE_RECORD_RULES


PERMISSIVE_RECORD_RULES = RecordRules(
    accept=frozenset(CONTENT_TYPES),
    epoch0=frozenset(CONTENT_TYPES),
    old_epoch=frozenset(),
    next_epoch="discard",
    early_change_cipher_spec="fatal",
    undecryptable="discard",
)


@dataclass(frozen=True)
class TransitionSpec:
    """One transition: on ``trigger`` in ``source``, if guards hold, go to ``dest``."""

    trigger: str
    source: str
    dest: str
    guards: tuple[str, ...]
    unless: tuple[str, ...]
    actions: tuple[str, ...]
    emits: tuple[str, ...]
    #: Messages built when the transition fires, before its actions (they take their
    #: message_seq and enter the transcript now) and sent at the head of the next flight
    #: that lists them in ``emits``.
    builds: tuple[str, ...] = ()

    @property
    def received_message(self) -> str | None:
        """The message whose arrival fires this transition, if any."""
        return self.trigger.removeprefix("recv_") if self.trigger.startswith("recv_") else None

    def callbacks(self) -> tuple[str, ...]:
        """Every guard and action name this transition needs."""
        return self.guards + self.unless + self.actions


@dataclass(frozen=True)
class RoleSpec:
    """A role: its states, its local events and its transitions with ``*`` expanded."""

    name: str
    description: str
    initial: str
    states: dict[str, StateSpec]
    local_events: dict[str, str]
    transitions: tuple[TransitionSpec, ...]

    def callbacks(self) -> set[str]:
        """Every guard and action name of the role."""
        return {name for t in self.transitions for name in t.callbacks()}

    def emitted_messages(self) -> set[str]:
        """Every message the role may send."""
        return {m for t in self.transitions for m in t.emits}

    def guards(self) -> set[str]:
        """Every guard name (``guards`` and ``unless``) of the role."""
        return {name for t in self.transitions for name in t.guards + t.unless}

    def actions(self) -> set[str]:
        """Every action name of the role."""
        return {name for t in self.transitions for name in t.actions}

    def built_messages(self) -> set[str]:
        """Every message the role builds or sends (each needs a builder)."""
        return self.emitted_messages() | {m for t in self.transitions for m in t.builds}

    def triggers_from(self, state: str) -> set[str]:
        """Triggers that have a transition from ``state``."""
        return {t.trigger for t in self.transitions if t.source == state}


@dataclass(frozen=True)
class Spec:
    """The whole spec: the message vocabulary and the roles."""

    messages: tuple[str, ...]
    roles: dict[str, RoleSpec]
    source: Path

    def role(self, name: str) -> RoleSpec:
        """Return a role or raise SpecError naming the known roles."""
        try:
            return self.roles[name]
        except KeyError:
            raise SpecError(f"unknown role {name!r}; known: {sorted(self.roles)}") from None


def spec_directory() -> Path:
    """Where the spec lives: ``$D2TLS_SPEC_DIR``, else the installed copy
    (:func:`d2tls.core.resources.spec_dir`)."""
    return resources.spec_dir()


def _as_tuple(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{where}: expected a list of names, got {value!r}")
    return tuple(value)


def _require(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise SpecError(f"{where}: missing {key!r}")
    return mapping[key]


def _parse_role(name: str, raw: Any, messages: tuple[str, ...]) -> RoleSpec:
    where = f"role {name}"
    raw_states = _require(raw, "states", where)
    if not isinstance(raw_states, dict) or not raw_states:
        raise SpecError(f"{where}: 'states' must be a non-empty mapping")
    defaults = raw.get("record_layer")
    if defaults is not None:
        _parse_record(defaults, None, f"{where}: record_layer", complete=True)
    states: dict[str, StateSpec] = {}
    for state_name, attrs in raw_states.items():
        attrs = attrs or {}
        sw = f"{where}: state {state_name}"
        unknown = set(attrs) - {"description", "final", "flight", "stateless", "record"}
        if unknown:
            raise SpecError(f"{sw}: unknown keys {sorted(unknown)}")
        final = bool(attrs.get("final", False))
        flight = str(attrs.get("flight", "none" if final else "await"))
        if flight not in FLIGHT_KINDS:
            raise SpecError(f"{sw}: flight must be one of {FLIGHT_KINDS}")
        record = None
        if defaults is not None:
            record = _parse_record(attrs.get("record") or {}, defaults, f"{sw}: record")
        elif "record" in attrs:
            raise SpecError(f"{sw}: 'record' needs a role-level 'record_layer'")
        states[state_name] = StateSpec(
            state_name,
            str(attrs.get("description", "")),
            final,
            flight,
            stateless=bool(attrs.get("stateless", False)),
            record=record,
        )
    initial = str(_require(raw, "initial", where))
    if initial not in states:
        raise SpecError(f"{where}: initial state {initial!r} is not a declared state")
    local_events = {str(k): str(v) for k, v in (raw.get("local_events") or {}).items()}
    non_final = [s for s, st in states.items() if not st.final]

    transitions: list[TransitionSpec] = []
    for index, t in enumerate(_require(raw, "transitions", where)):
        tw = f"{where}: transition #{index + 1}"
        trigger = str(_require(t, "trigger", tw))
        unknown = set(t) - {
            "trigger",
            "source",
            "dest",
            "guards",
            "unless",
            "actions",
            "emits",
            "builds",
        }
        if unknown:
            raise SpecError(f"{tw}: unknown keys {sorted(unknown)}")
        if trigger.startswith("recv_"):
            if trigger.removeprefix("recv_") not in messages:
                raise SpecError(f"{tw}: trigger {trigger!r} names an unknown message")
        elif trigger not in local_events:
            raise SpecError(
                f"{tw}: trigger {trigger!r} is neither recv_<Message> nor a local event"
            )
        source = str(_require(t, "source", tw))
        dest = str(_require(t, "dest", tw))
        if dest not in states:
            raise SpecError(f"{tw}: unknown destination state {dest!r}")
        if source != WILDCARD and source not in states:
            raise SpecError(f"{tw}: unknown source state {source!r}")
        emits = _as_tuple(t.get("emits"), tw)
        builds = _as_tuple(t.get("builds"), tw)
        for message in emits + builds:
            if message not in messages:
                raise SpecError(f"{tw}: emits or builds unknown message {message!r}")
        for source_state in non_final if source == WILDCARD else [source]:
            transitions.append(
                TransitionSpec(
                    trigger=trigger,
                    source=source_state,
                    dest=dest,
                    guards=_as_tuple(t.get("guards"), tw),
                    unless=_as_tuple(t.get("unless"), tw),
                    actions=_as_tuple(t.get("actions"), tw),
                    emits=emits,
                    builds=builds,
                )
            )
    role = RoleSpec(
        name=name,
        description=str(raw.get("description", "")),
        initial=initial,
        states=states,
        local_events=local_events,
        transitions=tuple(transitions),
    )
    _check_role(role)
    return role


def _names(value: Any, where: str) -> frozenset[str]:
    names = _as_tuple(value, where)
    unknown = set(names) - set(CONTENT_TYPES)
    if unknown:
        raise SpecError(f"{where}: unknown content types {sorted(unknown)}; known: {CONTENT_TYPES}")
    return frozenset(names)


def _parse_record(raw: Any, defaults: Any, where: str, *, complete: bool = False) -> RecordRules:
    """Record rules from ``raw`` over the role's ``defaults`` (every key required at role level)."""
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a mapping")
    unknown = set(raw) - set(RECORD_KEYS)
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}")
    if complete:
        missing = [k for k in RECORD_KEYS if k not in raw]
        if missing:
            raise SpecError(f"{where}: missing {missing}")
    merged = {**(defaults or {}), **raw}
    choices = {
        "next_epoch": NEXT_EPOCH_RULES,
        "early_change_cipher_spec": EARLY_CCS_RULES,
        "undecryptable": UNDECRYPTABLE_RULES,
    }
    for key, allowed in choices.items():
        if merged[key] not in allowed:
            raise SpecError(f"{where}: {key} must be one of {allowed}, got {merged[key]!r}")
    return RecordRules(
        accept=_names(merged["accept"], f"{where}: accept"),
        epoch0=_names(merged["epoch0"], f"{where}: epoch0"),
        old_epoch=_names(merged["old_epoch"], f"{where}: old_epoch"),
        next_epoch=str(merged["next_epoch"]),
        early_change_cipher_spec=str(merged["early_change_cipher_spec"]),
        undecryptable=str(merged["undecryptable"]),
    )


def _check_builds(role: RoleSpec) -> None:
    """A message built ahead must go out with a flight that can follow: some transition from
    the destination sends it (RFC 6347 §4.2.4: one flight, in order)."""
    for t in role.transitions:
        if not t.builds:
            continue
        following = [u for u in role.transitions if u.source == t.dest and u.emits]
        if not any(tuple(u.emits[: len(t.builds)]) == t.builds for u in following):
            raise SpecError(
                f"role {role.name}: {t.trigger} from {t.source!r} builds {list(t.builds)} but "
                f"no transition from {t.dest!r} sends them at the head of its flight"
            )


def _check_role(role: RoleSpec) -> None:
    """Reject duplicate transitions, unguarded shadowing, unreachable states and messages
    built ahead that no flight sends."""
    _check_builds(role)
    seen: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], TransitionSpec] = {}
    unguarded: set[tuple[str, str]] = set()
    for t in role.transitions:
        key = (t.trigger, t.source, t.guards, t.unless)
        if key in seen:
            raise SpecError(
                f"role {role.name}: duplicate trigger {t.trigger!r} from {t.source!r} "
                f"with the same guards (to {seen[key].dest!r} and {t.dest!r})"
            )
        if (t.trigger, t.source) in unguarded:
            raise SpecError(
                f"role {role.name}: transition {t.trigger!r} from {t.source!r} to {t.dest!r} "
                "can never fire: an earlier one without guards always wins"
            )
        seen[key] = t
        if not t.guards and not t.unless:
            unguarded.add((t.trigger, t.source))
    reachable = {role.initial}
    queue = deque([role.initial])
    while queue:
        state = queue.popleft()
        for t in role.transitions:
            if t.source == state and t.dest not in reachable:
                reachable.add(t.dest)
                queue.append(t.dest)
    unreachable = sorted(set(role.states) - reachable)
    if unreachable:
        raise SpecError(f"role {role.name}: unreachable states {unreachable}")


def parse_spec(raw: Any, source: Path) -> Spec:
    """Build a Spec from parsed YAML, checking it."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: the spec must be a mapping")
    if raw.get("version") != 1:
        raise SpecError(f"{source}: unsupported spec version {raw.get('version')!r}")
    messages = _as_tuple(_require(raw, "messages", str(source)), f"{source}: messages")
    raw_roles = _require(raw, "roles", str(source))
    if not isinstance(raw_roles, dict):
        raise SpecError(f"{source}: 'roles' must be a mapping")
    roles = {name: _parse_role(name, body, messages) for name, body in raw_roles.items()}
    return Spec(messages=messages, roles=roles, source=source)


def load_spec_file(path: Path) -> Spec:
    """Load one spec file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read spec {path}: {exc}") from exc
    return parse_spec(raw, path)


@cache
def load_spec(name: str = "dtls") -> Spec:
    """Load ``spec/<name>.yaml`` (cached)."""
    return load_spec_file(spec_directory() / f"{name}.yaml")
