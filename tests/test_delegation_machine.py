"""The D2TLS delegation roles run spec/d2tls.yaml through typed handler tables.

* the device's :class:`DelegationAttempt` and the agent's :class:`AgentSession` each answer
  exactly the guards, actions and builders their machine names, and ``d2tls model lint`` (the
  build-time check) reports a handler missing from a table or one the spec does not name;
* handlers are private methods that take their message as an argument: neither role exposes a
  spec callback as a public name, none keeps the message in ``_current``, and the state is a
  member of the generated Enum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.x509.verification import Store

from d2tls.adversary import compromised
from d2tls.core.delegation.messages import (
    DelegationError,
    DelegationErrorCode,
    DelegationRequest,
    SessionContext,
    SignResponse,
)
from d2tls.core.errors import SpecError
from d2tls.core.model import machine
from d2tls.core.model.codegen import _delegation_tables, lint
from d2tls.core.model.machine import Handlers, table_problems
from d2tls.core.model.spec import load_spec
from d2tls.core.model.states import AgentState, DeviceState
from d2tls.core.pki.generate import create_ca
from d2tls.core.roles import agent, device
from d2tls.core.roles.signer import DeviceSigner

ROLE_CLASSES: dict[str, type] = {
    "device": device.DelegationAttempt,
    "agent": agent.AgentSession,
}


def test_the_delegation_tables_answer_exactly_the_spec() -> None:
    tables = dict(_delegation_tables())
    assert set(tables) == set(ROLE_CLASSES) == set(load_spec("d2tls").roles)
    for name, names in tables.items():
        role = load_spec("d2tls").role(name)
        assert table_problems(role, names) == []
        assert names.guards == frozenset(role.guards())
        assert names.actions == frozenset(role.actions())
        assert names.builders == frozenset(role.built_messages())
    assert lint() == []


def _patch_table(
    monkeypatch: pytest.MonkeyPatch,
    cls: type,
    change: Callable[[Handlers[object]], Handlers[object]],
) -> None:
    original = cls._handlers  # type: ignore[attr-defined]

    def patched(self: object) -> Handlers[object]:
        return change(original(self))

    monkeypatch.setattr(cls, "_handlers", patched)


@pytest.mark.parametrize("role_name", sorted(ROLE_CLASSES))
def test_lint_reports_a_missing_delegation_handler(
    role_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = load_spec("d2tls").role(role_name)
    dropped = sorted(role.actions())[0]

    def drop(table: Handlers[object]) -> Handlers[object]:
        actions = {k: v for k, v in table.actions.items() if k != dropped}
        return dataclasses.replace(table, actions=actions)

    _patch_table(monkeypatch, ROLE_CLASSES[role_name], drop)
    assert lint() == [f"role {role_name}: no actions handler for ['{dropped}']"]
    with pytest.raises(SpecError, match="no actions handler"):
        _delegation_tables()


@pytest.mark.parametrize("role_name", sorted(ROLE_CLASSES))
def test_lint_reports_an_extra_delegation_handler(
    role_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def add(table: Handlers[object]) -> Handlers[object]:
        builders = {**table.builders, "Hello": lambda: None}
        return dataclasses.replace(table, builders=builders)

    _patch_table(monkeypatch, ROLE_CLASSES[role_name], add)
    assert lint() == [f"role {role_name}: builders handlers the spec does not name: ['Hello']"]
    with pytest.raises(SpecError, match="the spec does not name"):
        _delegation_tables()


def test_spec_callbacks_are_not_public_names() -> None:
    """The public API is the inputs (messages, engine events, local events) and the outputs;
    the spec's guards, actions and builders are private (the machine gets them through the
    typed table), also in the attacker's rogue agent session."""
    for role_name, cls in {**ROLE_CLASSES, "rogue agent": compromised.RogueSession}.items():
        role = load_spec("d2tls").role(role_name.removeprefix("rogue "))
        callbacks = (
            set(role.guards())
            | set(role.actions())
            | {f"build_{m}" for m in role.built_messages()}
            | {"emit_flight"}
        )
        assert callbacks & set(dir(cls)) == set(), role_name


def test_no_role_keeps_its_message_in_current_and_the_driver_is_gone() -> None:
    for module in (agent, device, compromised):
        assert module.__file__ is not None
        assert "_current" not in Path(module.__file__).read_text(encoding="utf-8")
    assert not hasattr(machine, "MachineDriver")


def test_the_state_is_a_typed_member_of_the_generated_enum() -> None:
    """The state is the generated Enum's member (no string literals), and the machines run."""
    ca, key = create_ca("delegation machine test")
    config = device.DeviceConfig(
        agent=("127.0.0.1", 1),
        psk_identity=b"test",
        psk=b"k" * 16,
        server=("127.0.0.1", 2),
        server_name="test",
        certificate_chain=(),
        signer=DeviceSigner(key),
    )
    attempt = device.DelegationAttempt(config, context=None, first_request_id=5)
    seen: list[DeviceState] = [attempt.state]
    attempt.start()
    seen.append(attempt.state)
    assert list(attempt.commands) == [device.Command.OPEN_CHANNEL]
    attempt.channel_up()
    seen.append(attempt.state)
    (request,) = attempt.outbox
    assert isinstance(request, DelegationRequest) and request.request_id == 5
    attempt.receive(SessionContext(5, b"s" * 32, b"m" * 48, 0xC0AE, True, (), 60, 0))
    seen.append(attempt.state)
    assert seen == [
        DeviceState.IDLE,
        DeviceState.CONNECTING_AGENT,
        DeviceState.AWAITING_SIGN_REQUEST,
        DeviceState.FAILED,
    ]
    assert all(type(state) is DeviceState for state in seen) and attempt.is_final
    assert isinstance(attempt.outbox[-1], DelegationError)

    session = agent.AgentSession(agent.AgentConfig(psk_keys={}, trust_store=Store([ca])))
    states: list[AgentState] = [session.state]
    session.receive(SignResponse(9, b"signature"))
    states.append(session.state)
    assert states == [AgentState.AWAITING_REQUEST, AgentState.FAILED] and session.is_final
    assert all(type(state) is AgentState for state in states)
    (error,) = session.outbox
    assert isinstance(error, DelegationError)
    assert error.code is DelegationErrorCode.UNEXPECTED_MESSAGE
