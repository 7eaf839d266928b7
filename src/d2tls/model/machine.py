"""Build `transitions` state machines from the spec and drive protocol engines with them.

The builder refuses a spec whose guard, action or message-builder names the implementation
lacks. The driver turns "no transition for this trigger in this state" into a fatal
``unexpected_message`` (RFC 5246 §7.2.2), which is the only place that rule is enforced.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from transitions import EventData, Machine

from d2tls.errors import ProtocolError, SpecError, UnexpectedMessage
from d2tls.model.spec import RoleSpec, load_spec

# `transitions` warns for every model method it does not overwrite (our engines define
# close(), connect(), ... themselves on purpose); those warnings are noise, errors are not.
logging.getLogger("transitions.core").setLevel(logging.ERROR)


def builder_name(message: str) -> str:
    """Name of the engine method that builds and queues ``message`` (e.g. ``build_Finished``)."""
    return f"build_{message}"


def missing_callbacks(role: RoleSpec, model: object) -> list[str]:
    """Callbacks the spec names that ``model`` does not implement."""
    needed = set(role.callbacks()) | {builder_name(m) for m in role.emitted_messages()}
    needed.add("emit_flight")
    return sorted(n for n in needed if not callable(getattr(model, n, None)))


class _Callback:
    """A spec guard or action: calls ``model.<name>()`` on the event's model.

    Machines run with ``send_event=True``, so every callback receives the event data and with it
    the model; one machine per role and engine class then serves every connection.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, event: EventData) -> Any:
        return getattr(event.model, self.name)()

    def __repr__(self) -> str:
        return self.name


class _EmitFlight:
    """The action that queues a transition's flight: ``model.emit_flight(messages)``."""

    __slots__ = ("messages",)

    def __init__(self, messages: tuple[str, ...]) -> None:
        self.messages = messages

    def __call__(self, event: EventData) -> None:
        model: Any = event.model
        model.emit_flight(self.messages)

    def __repr__(self) -> str:
        return f"emit_flight({', '.join(self.messages)})"


_MACHINES: dict[tuple[int, type], tuple[RoleSpec, Machine]] = {}
_MACHINES_LOCK = threading.Lock()


def build_machine(role: RoleSpec, model: Any) -> Machine:
    """The machine for ``role`` driving objects of ``model``'s class; puts ``model`` in the
    initial state.

    The machine is built once per role and class and shared (models are not attached to it:
    triggers are fired with ``machine.events[trigger].trigger(model)``), because building a
    ``transitions`` machine costs far more than one handshake message.
    """
    key = (id(role), type(model))
    with _MACHINES_LOCK:
        entry = _MACHINES.get(key)
        if entry is None or entry[0] is not role:
            entry = (role, _new_machine(role, model))
            _MACHINES[key] = entry
    model.state = role.initial
    return entry[1]


def _new_machine(role: RoleSpec, model: Any) -> Machine:
    missing = missing_callbacks(role, model)
    if missing:
        raise SpecError(
            f"role {role.name}: {type(model).__name__} lacks callbacks named in the spec: "
            + ", ".join(missing)
        )
    machine = Machine(
        model=[],
        states=list(role.states),
        initial=role.initial,
        auto_transitions=False,
        ignore_invalid_triggers=False,
        model_attribute="state",
        send_event=True,
    )
    for t in role.transitions:
        after: list[Any] = [_Callback(name) for name in t.actions]
        if t.emits:
            after.append(_EmitFlight(tuple(t.emits)))
        machine.add_transition(
            t.trigger,
            t.source,
            t.dest,
            conditions=[_Callback(name) for name in t.guards],
            unless=[_Callback(name) for name in t.unless],
            after=after,
        )
    return machine


class MachineDriver:
    """Fires spec triggers on one engine and maps illegal triggers to protocol errors."""

    def __init__(self, role_name: str, model: Any, spec_name: str = "dtls") -> None:
        self.role = load_spec(spec_name).role(role_name)
        self.model = model
        self.machine = build_machine(self.role, model)
        self._triggers_by_state = {s: self.role.triggers_from(s) for s in self.role.states}

    @property
    def state(self) -> str:
        """The model's current state."""
        return str(self.model.state)

    def accepts(self, trigger: str) -> bool:
        """True if some transition for ``trigger`` leaves the current state."""
        return trigger in self._triggers_by_state[self.state]

    def is_final(self) -> bool:
        """True in a final state (closed or failed)."""
        return self.role.states[self.state].final

    def flight_kind(self) -> str:
        """The current state's flight behaviour (see spec.FLIGHT_KINDS)."""
        return self.role.states[self.state].flight

    def fire(self, trigger: str) -> None:
        """Fire ``trigger``; a trigger with no (enabled) transition is ``unexpected_message``."""
        if not self.accepts(trigger):
            what = trigger.removeprefix("recv_")
            raise UnexpectedMessage(f"{what} is not allowed in state {self.state}")
        fired = self.machine.events[trigger].trigger(self.model)
        if not fired:
            raise UnexpectedMessage(f"{trigger} has no enabled transition in state {self.state}")

    def fire_local(self, trigger: str) -> None:
        """Fire a local event; illegal local events are programming errors (internal_error)."""
        if not self.accepts(trigger):
            raise ProtocolError(f"local event {trigger} is not allowed in state {self.state}")
        self.machine.events[trigger].trigger(self.model)
