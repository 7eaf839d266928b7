"""Run a role's spec machine through a typed table of the engine's handlers.

An engine hands :class:`SpecMachine` a :class:`Handlers` table: its guards and actions by spec
name (each takes the message that fired the transition, or None for a local event), its
message builders, and the two flight hooks. The table is checked against the spec when the
machine is made — a handler the spec does not name is as much an error as one it names and
the table lacks — so the spec and the engine cannot drift apart. The machine turns "no
transition for this trigger in this state" into a fatal ``unexpected_message`` (RFC 5246
§7.2.2), which is the only place that rule is enforced.

Semantics of one transition (see the header of ``spec/dtls.yaml``): the guards are tried in
the order the spec lists the transitions; the first transition whose guards hold and whose
``unless`` conditions do not fires: the state changes, the ``builds`` messages are built and
held, the actions run in order, then the ``emits`` flight is built and sent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, NamedTuple, TypeVar

from d2tls.core.errors import IllegalParameter, ProtocolError, SpecError, UnexpectedMessage
from d2tls.core.model.spec import RecordRules, RoleSpec, StateSpec
from d2tls.core.model.states import ROLE_STATES

S = TypeVar("S", bound=StrEnum)
P = TypeVar("P")
M = TypeVar("M")
R = TypeVar("R")

#: The flight hook names, always present in a table (not named by the spec).
Flight = Callable[[tuple[str, ...]], None]


class HandlerNames(NamedTuple):
    """The spec names a handler table answers to."""

    guards: frozenset[str]
    actions: frozenset[str]
    builders: frozenset[str]


@dataclass(frozen=True)
class Handlers(Generic[P]):
    """The typed bridge from a spec machine to its engine.

    ``P`` is what guards and actions receive: the message that fired the transition (None for
    a local event). ``hold`` builds messages now for a later flight (``builds``), ``emit``
    builds and sends one flight (``emits``), both with the ``builders``.
    """

    guards: Mapping[str, Callable[[P], bool]]
    actions: Mapping[str, Callable[[P], None]]
    builders: Mapping[str, Callable[[], None]]
    hold: Flight
    emit: Flight

    def names(self) -> HandlerNames:
        return HandlerNames(
            frozenset(self.guards), frozenset(self.actions), frozenset(self.builders)
        )


def expecting(kind: type[M], handler: Callable[[M], R]) -> Callable[[object], R]:
    """Adapt a handler of one message class: any other payload is illegal_parameter (a
    message of the right type whose body decoded to another variant, e.g. a PSK
    ServerKeyExchange where an ECDHE one was negotiated)."""

    def call(message: object) -> R:
        if not isinstance(message, kind):
            got = type(message).__name__ if message is not None else "no message"
            raise IllegalParameter(f"expected {kind.__name__}, got {got}")
        return handler(message)

    return call


def ignoring(handler: Callable[[], R]) -> Callable[[object], R]:
    """Adapt a handler that does not look at the message."""

    def call(_message: object) -> R:
        return handler()

    return call


def table_problems(role: RoleSpec, names: HandlerNames) -> list[str]:
    """Every disagreement between ``role`` and a handler table (empty: they agree)."""
    problems: list[str] = []
    wanted = HandlerNames(
        frozenset(role.guards()), frozenset(role.actions()), frozenset(role.built_messages())
    )
    for kind, need, have in zip(HandlerNames._fields, wanted, names, strict=True):
        if need - have:
            problems.append(f"role {role.name}: no {kind} handler for {sorted(need - have)}")
        if have - need:
            problems.append(
                f"role {role.name}: {kind} handlers the spec does not name: {sorted(have - need)}"
            )
    return problems


def check_states(role: RoleSpec, states: type[StrEnum]) -> None:
    """Refuse an Enum whose members are not exactly the role's states, in order."""
    values = [member.value for member in states]
    if values != list(role.states):
        raise SpecError(
            f"role {role.name}: {states.__name__} {values} disagrees with the spec's states "
            f"{list(role.states)}: run `d2tls model states`"
        )


@dataclass(frozen=True)
class _Transition(Generic[S]):
    trigger: str
    dest: S
    guards: tuple[str, ...]
    unless: tuple[str, ...]
    actions: tuple[str, ...]
    emits: tuple[str, ...]
    builds: tuple[str, ...]


@dataclass(frozen=True)
class _Compiled(Generic[S]):
    """A role's transitions indexed by (state, trigger), with typed destinations."""

    role: RoleSpec
    table: dict[S, dict[str, tuple[_Transition[S], ...]]]


_COMPILED: dict[tuple[int, type[StrEnum], HandlerNames], _Compiled[StrEnum]] = {}
_LOCK = threading.Lock()


def _compile(role: RoleSpec, states: type[S], names: HandlerNames) -> _Compiled[S]:
    problems = table_problems(role, names)
    if problems:
        raise SpecError("; ".join(problems))
    check_states(role, states)
    table: dict[S, dict[str, tuple[_Transition[S], ...]]] = {s: {} for s in states}
    for t in role.transitions:
        entry = _Transition(
            t.trigger, states(t.dest), t.guards, t.unless, t.actions, t.emits, t.builds
        )
        by_trigger = table[states(t.source)]
        by_trigger[t.trigger] = (*by_trigger.get(t.trigger, ()), entry)
    return _Compiled(role, table)


def _compiled(role: RoleSpec, states: type[S], names: HandlerNames) -> _Compiled[S]:
    """Compile once per role, Enum and table shape (a machine is made per connection)."""
    key = (id(role), states, names)
    with _LOCK:
        entry = _COMPILED.get(key)
        if entry is None or entry.role is not role:
            entry = _compile(role, states, names)
            _COMPILED[key] = entry
    return entry  # type: ignore[return-value]  # keyed by the Enum type S


class SpecMachine(Generic[S, P]):
    """One running machine of ``role``: its state (a member of ``states``) and its handlers."""

    def __init__(self, role: RoleSpec, states: type[S], handlers: Handlers[P]) -> None:
        self.role = role
        self._compiled: _Compiled[S] = _compiled(role, states, handlers.names())
        self._handlers = handlers
        self.state: S = states(role.initial)

    @property
    def spec_state(self) -> StateSpec:
        """The spec entry of the current state."""
        return self.role.states[self.state]

    @property
    def rules(self) -> RecordRules:
        """The record-layer rules of the current state."""
        return self.role.states[self.state].rules

    def accepts(self, trigger: str) -> bool:
        """True if some transition for ``trigger`` leaves the current state."""
        return trigger in self._compiled.table[self.state]

    def is_final(self) -> bool:
        """True in a final state (closed or failed)."""
        return self.role.states[self.state].final

    def flight_kind(self) -> str:
        """The current state's flight behaviour (see spec.FLIGHT_KINDS)."""
        return self.role.states[self.state].flight

    def fire(self, trigger: str, payload: P) -> None:
        """Fire ``trigger``; a trigger with no (enabled) transition is ``unexpected_message``."""
        candidates = self._compiled.table[self.state].get(trigger)
        if not candidates:
            what = trigger.removeprefix("recv_")
            raise UnexpectedMessage(f"{what} is not allowed in state {self.state}")
        if not self._run(candidates, payload):
            raise UnexpectedMessage(f"{trigger} has no enabled transition in state {self.state}")

    def fire_local(self, trigger: str, payload: P) -> None:
        """Fire a local event; illegal local events are programming errors (internal_error).
        With every guard false nothing happens."""
        candidates = self._compiled.table[self.state].get(trigger)
        if not candidates:
            raise ProtocolError(f"local event {trigger} is not allowed in state {self.state}")
        self._run(candidates, payload)

    def _run(self, candidates: tuple[_Transition[S], ...], payload: P) -> bool:
        handlers = self._handlers
        guards = handlers.guards
        for t in candidates:
            # The guards in order, stopping at the first false one, then the ``unless``
            # conditions, stopping at the first true one (all() / any(), without generators).
            enabled = True
            for g in t.guards:
                if not guards[g](payload):
                    enabled = False
                    break
            if enabled:
                for u in t.unless:
                    if guards[u](payload):
                        enabled = False
                        break
            if enabled:
                self.state = t.dest
                self._entered()
                if t.builds:
                    handlers.hold(t.builds)
                for action in t.actions:
                    handlers.actions[action](payload)
                if t.emits:
                    handlers.emit(t.emits)
                return True
        return False

    def _entered(self) -> None:
        """Hook run right after each state change."""


# --------------------------------------------------------------------------- helpers
def states_of(role: RoleSpec) -> type[StrEnum]:
    """The generated Enum of ``role`` (d2tls.core.model.states), or one made from the spec for a
    role outside the shipped spec (tests)."""
    states = ROLE_STATES.get(role.name)
    if states is not None and [m.value for m in states] == list(role.states):
        return states
    members = {name.upper(): name for name in role.states}
    made: type[StrEnum] = StrEnum(f"{role.name}_states", members)  # type: ignore[misc]
    return made
