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

from d2tls import resources
from d2tls.errors import SpecError

#: Flight behaviour of a state (RFC 6347 §4.2.4): "await" runs the retransmission timer,
#: "final" retransmits only when the peer repeats its last flight, "none" never retransmits.
FLIGHT_KINDS = ("await", "final", "none")
WILDCARD = "*"


@dataclass(frozen=True)
class StateSpec:
    """One state of a role."""

    name: str
    description: str
    final: bool
    flight: str


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
    (:func:`d2tls.resources.spec_dir`)."""
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
    states: dict[str, StateSpec] = {}
    for state_name, attrs in raw_states.items():
        attrs = attrs or {}
        final = bool(attrs.get("final", False))
        flight = str(attrs.get("flight", "none" if final else "await"))
        if flight not in FLIGHT_KINDS:
            raise SpecError(f"{where}: state {state_name}: flight must be one of {FLIGHT_KINDS}")
        states[state_name] = StateSpec(state_name, str(attrs.get("description", "")), final, flight)
    initial = str(_require(raw, "initial", where))
    if initial not in states:
        raise SpecError(f"{where}: initial state {initial!r} is not a declared state")
    local_events = {str(k): str(v) for k, v in (raw.get("local_events") or {}).items()}
    non_final = [s for s, st in states.items() if not st.final]

    transitions: list[TransitionSpec] = []
    for index, t in enumerate(_require(raw, "transitions", where)):
        tw = f"{where}: transition #{index + 1}"
        trigger = str(_require(t, "trigger", tw))
        unknown = set(t) - {"trigger", "source", "dest", "guards", "unless", "actions", "emits"}
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
        for message in emits:
            if message not in messages:
                raise SpecError(f"{tw}: emits unknown message {message!r}")
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


def _check_role(role: RoleSpec) -> None:
    """Reject duplicate transitions, unguarded shadowing and unreachable states."""
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
