"""The protocol spec (spec/dtls.yaml) and the machines built from it.

The spec is the single source of truth for which handshake message is acceptable when; these
tests check that it loads, that its schema checks reject broken specs with a clear message,
that the engines' handler tables answer exactly the names it uses, that the machine runs
guards, builds, actions and flights in the documented order, and that the diagram tool draws it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from d2tls.core.errors import IllegalParameter, ProtocolError, SpecError, UnexpectedMessage
from d2tls.core.model.codegen import _engine_tables
from d2tls.core.model.machine import (
    HandlerNames,
    Handlers,
    SpecMachine,
    expecting,
    states_of,
    table_problems,
)
from d2tls.core.model.spec import WILDCARD, RoleSpec, load_spec, parse_spec

ENGINE_ROLES = ("dtls_client", "dtls_server")

TINY = """
version: 1
messages: [Ping, Pong]
roles:
  tiny:
    initial: idle
    local_events:
      start: begin
      abort: give up
    states:
      idle: {flight: none}
      waiting: {}
      done: {flight: final}
      failed: {final: true}
    transitions:
      - {trigger: start, source: idle, dest: waiting, actions: [prepare], emits: [Ping]}
      - {trigger: recv_Pong, source: waiting, dest: done, guards: [pong_ok], actions: [finish]}
      - {trigger: recv_Pong, source: waiting, dest: failed, actions: [reject]}
      - {trigger: abort, source: "*", dest: failed}
"""


def tiny(**edits: Any) -> dict[str, Any]:
    """The TINY spec as data, with ``edits`` applied to its role."""
    raw: dict[str, Any] = yaml.safe_load(TINY)
    raw["roles"]["tiny"].update(edits)
    return raw


def tiny_transitions() -> list[dict[str, Any]]:
    transitions: list[dict[str, Any]] = yaml.safe_load(TINY)["roles"]["tiny"]["transitions"]
    return transitions


def parse(raw: dict[str, Any]) -> RoleSpec:
    return parse_spec(raw, Path("tiny.yaml")).role("tiny")


# --------------------------------------------------------------------------- the real spec


def test_the_dtls_spec_loads_with_both_roles() -> None:
    """spec/dtls.yaml: one client and one server role (RFC 6347 §4.2.4 flights)."""
    spec = load_spec()
    assert set(spec.roles) == {"dtls_client", "dtls_server"}
    client, server = spec.role("dtls_client"), spec.role("dtls_server")
    assert (client.initial, server.initial) == ("start", "listen")
    for role in (client, server):
        finals = {name for name, state in role.states.items() if state.final}
        assert finals == {"closed", "failed"}
        assert role.states["established"].flight == "final"
        assert all(t.source != WILDCARD for t in role.transitions)  # "*" is expanded
        for name, state in role.states.items():
            if not state.final:  # RFC 5246 §7.2: every live state can close, fail or time out
                assert {"close", "abort", "peer_closed", "peer_failed", "timeout"} <= (
                    role.triggers_from(name)
                )
    with pytest.raises(SpecError, match="unknown role 'nobody'"):
        spec.role("nobody")


def test_every_message_one_role_sends_the_other_can_receive() -> None:
    """RFC 5246 §7.3: the two machines describe one protocol; nothing sent is unreceivable."""
    spec = load_spec()
    client, server = spec.role("dtls_client"), spec.role("dtls_server")

    def received(role: RoleSpec) -> set[str]:
        return {m for t in role.transitions if (m := t.received_message) is not None}

    # CloseNotify is an alert: it arrives as the local event peer_closed.
    assert client.emitted_messages() - {"CloseNotify"} <= received(server)
    assert server.emitted_messages() - {"CloseNotify"} <= received(client)
    assert "HelloRequest" in received(client)  # refused with no_renegotiation (§7.4.1.1)


def test_the_engines_handler_tables_answer_exactly_the_spec() -> None:
    """Every guard, action and builder the spec names is in the engine's table, and the table
    holds nothing else (the machine refuses either when an engine is made)."""
    tables = dict(_engine_tables())
    assert set(tables) == set(ENGINE_ROLES)
    for name, names in tables.items():
        role = load_spec().role(name)
        assert table_problems(role, names) == []
        assert names.guards == frozenset(role.guards())
        assert names.actions == frozenset(role.actions())
        assert names.builders == frozenset(role.built_messages())


def test_the_client_machine_refuses_out_of_order_messages() -> None:
    """RFC 5246 §7.2.2 via the spec: e.g. no ServerKeyExchange before the server Certificate,
    no Finished before ChangeCipherSpec."""
    client = load_spec().role("dtls_client")
    assert "recv_ServerKeyExchange" not in client.triggers_from("wait_certificate")
    assert "recv_Finished" not in client.triggers_from("wait_change_cipher_spec")
    assert "recv_Certificate" in client.triggers_from("wait_certificate")
    server = load_spec().role("dtls_server")
    assert "recv_Finished" not in server.triggers_from("wait_certificate")
    assert server.triggers_from("established") & {"recv_ClientHello"}


# --------------------------------------------------------------------------- schema checks


def test_the_tiny_spec_is_valid() -> None:
    role = parse(tiny())
    assert set(role.states) == {"idle", "waiting", "done", "failed"}
    assert role.states["waiting"].flight == "await"  # the default for non-final states
    assert role.callbacks() == {"prepare", "pong_ok", "finish", "reject"}
    assert [t.source for t in role.transitions if t.trigger == "abort"] == [
        "idle",
        "waiting",
        "done",
    ]


def test_unknown_state_is_rejected() -> None:
    transitions = tiny_transitions()
    transitions[1]["dest"] = "nowhere"
    with pytest.raises(SpecError, match=r"role tiny: transition #2: unknown destination state"):
        parse(tiny(transitions=transitions))
    transitions = tiny_transitions()
    transitions[0]["source"] = "limbo"
    with pytest.raises(SpecError, match=r"transition #1: unknown source state 'limbo'"):
        parse(tiny(transitions=transitions))
    with pytest.raises(SpecError, match="initial state 'nowhere' is not a declared state"):
        parse(tiny(initial="nowhere"))


def test_unreachable_state_is_rejected() -> None:
    states = yaml.safe_load(TINY)["roles"]["tiny"]["states"]
    states["orphan"] = {}
    with pytest.raises(SpecError, match=r"role tiny: unreachable states \['orphan'\]"):
        parse(tiny(states=states))


def test_duplicate_trigger_with_the_same_guards_is_rejected() -> None:
    transitions = [*tiny_transitions(), dict(tiny_transitions()[1], dest="failed")]
    with pytest.raises(
        SpecError,
        match=r"duplicate trigger 'recv_Pong' from 'waiting' with the same guards "
        r"\(to 'done' and 'failed'\)",
    ):
        parse(tiny(transitions=transitions))


def test_transition_shadowed_by_an_unguarded_one_is_rejected() -> None:
    transitions = tiny_transitions()
    transitions[1], transitions[2] = transitions[2], transitions[1]
    with pytest.raises(SpecError, match="can never fire: an earlier one without guards"):
        parse(tiny(transitions=transitions))


def test_unknown_message_is_rejected() -> None:
    transitions = tiny_transitions()
    transitions[1]["trigger"] = "recv_Pang"
    with pytest.raises(SpecError, match=r"transition #2: trigger 'recv_Pang' names an unknown"):
        parse(tiny(transitions=transitions))
    transitions = tiny_transitions()
    transitions[0]["emits"] = ["Ping", "Pang"]
    with pytest.raises(SpecError, match=r"transition #1: emits or builds unknown message 'Pang'"):
        parse(tiny(transitions=transitions))
    transitions = tiny_transitions()
    transitions[0]["trigger"] = "launch"
    with pytest.raises(SpecError, match="'launch' is neither recv_<Message> nor a local event"):
        parse(tiny(transitions=transitions))


def test_malformed_entries_are_rejected() -> None:
    transitions = tiny_transitions()
    transitions[0]["after"] = ["x"]
    with pytest.raises(SpecError, match=r"unknown keys \['after'\]"):
        parse(tiny(transitions=transitions))
    with pytest.raises(SpecError, match="flight must be one of"):
        parse(tiny(states={"idle": {"flight": "sometimes"}}))
    with pytest.raises(SpecError, match="unsupported spec version 2"):
        parse_spec(dict(tiny(), version=2), Path("tiny.yaml"))


# --------------------------------------------------------------------------- machines


class TinyTable:
    """A typed handler table for TINY recording what ran (payload: the received message)."""

    def __init__(self, pong_ok: bool = True) -> None:
        self.calls: list[str] = []
        self._pong_ok = pong_ok

    def handlers(self, **extra_guards: object) -> Handlers[str | None]:
        def log(name: str) -> Any:
            return lambda payload: self.calls.append(f"{name}({payload})")

        guards: dict[str, Any] = {"pong_ok": lambda payload: self._pong_ok, **extra_guards}
        return Handlers(
            guards=guards,
            actions={name: log(name) for name in ("prepare", "finish", "reject")},
            builders={"Ping": lambda: self.calls.append("build Ping")},
            hold=lambda messages: self.calls.append("hold " + ",".join(messages)),
            emit=lambda messages: self.calls.append("emit " + ",".join(messages)),
        )


def test_a_table_missing_or_adding_a_handler_is_refused() -> None:
    role = parse(tiny())
    states = states_of(role)
    table = TinyTable()
    assert table_problems(role, table.handlers().names()) == []
    with pytest.raises(SpecError, match=r"guards handlers the spec does not name: \['extra'\]"):
        SpecMachine(role, states, table.handlers(extra=lambda payload: True))
    broken = table.handlers()
    without = Handlers(
        guards={},
        actions=broken.actions,
        builders=broken.builders,
        hold=broken.hold,
        emit=broken.emit,
    )
    with pytest.raises(SpecError, match=r"role tiny: no guards handler for \['pong_ok'\]"):
        SpecMachine(role, states, without)
    assert table_problems(role, HandlerNames(frozenset(), frozenset(), frozenset())) == [
        "role tiny: no guards handler for ['pong_ok']",
        "role tiny: no actions handler for ['finish', 'prepare', 'reject']",
        "role tiny: no builders handler for ['Ping']",
    ]


def test_the_machine_passes_the_message_and_runs_builds_actions_flights_in_order() -> None:
    transitions = tiny_transitions()
    transitions[0]["builds"] = ["Ping"]  # built ahead: must head the flight of a later transition
    transitions[0]["emits"] = []
    transitions.insert(
        1,
        {
            "trigger": "recv_Pong",
            "source": "waiting",
            "dest": "waiting",
            "guards": ["again"],
            "emits": ["Ping"],
        },
    )
    with pytest.raises(SpecError, match=r"builds \['Ping'\] but no transition from 'done'"):
        parse(tiny(transitions=[dict(transitions[0], dest="done"), *transitions[1:]]))
    role = parse(tiny(transitions=transitions))
    table = TinyTable()
    machine = SpecMachine(role, states_of(role), table.handlers(again=lambda payload: False))
    machine.fire_local("start", None)
    assert machine.state == "waiting" and machine.flight_kind() == "await"
    assert table.calls == ["hold Ping", "prepare(None)"]
    machine.fire("recv_Pong", "pong-1")
    assert machine.state == "done"
    assert table.calls[-1] == "finish(pong-1)"
    refused = TinyTable(pong_ok=False)
    machine = SpecMachine(role, states_of(role), refused.handlers(again=lambda payload: False))
    machine.fire_local("start", None)
    machine.fire("recv_Pong", "pong-2")
    assert (machine.state, refused.calls[-1]) == ("failed", "reject(pong-2)")


def test_a_typed_handler_refuses_a_message_of_another_class() -> None:
    """A handler of one message class gets exactly that class; anything else is
    illegal_parameter, never an AttributeError inside the handler."""
    seen: list[int] = []
    handler = expecting(int, seen.append)
    handler(3)
    with pytest.raises(IllegalParameter, match="expected int, got str"):
        handler("3")
    with pytest.raises(IllegalParameter, match="expected int, got no message"):
        handler(None)
    assert seen == [3]


def test_the_machine_turns_a_message_without_transition_into_unexpected_message() -> None:
    """RFC 5246 §7.2.2: a message the machine has no transition for is unexpected_message;
    a local event it does not allow is a programming error (internal_error)."""
    role = parse(tiny())
    table = TinyTable()
    machine = SpecMachine(role, states_of(role), table.handlers())
    assert machine.state == "idle" and not machine.is_final() and machine.flight_kind() == "none"
    with pytest.raises(UnexpectedMessage, match="Pong is not allowed in state idle"):
        machine.fire("recv_Pong", "pong-0")
    assert table.calls == []
    machine.fire_local("start", None)
    assert machine.flight_kind() == "await" and machine.accepts("recv_Pong")
    with pytest.raises(ProtocolError, match="local event start is not allowed in state waiting"):
        machine.fire_local("start", None)
    machine.fire("recv_Pong", "pong-1")
    assert machine.state == "done"
    machine.fire_local("abort", None)
    assert machine.is_final()


# --------------------------------------------------------------------------- diagrams


@pytest.mark.parametrize("role_name", ENGINE_ROLES)
def test_model_diagram_cli_writes_an_svg_with_every_state(tmp_path: Path, role_name: str) -> None:
    """``d2tls model diagram ROLE -o FILE.svg`` renders the machine with Graphviz."""
    output = tmp_path / f"{role_name}.svg"
    result = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", "model", "diagram", role_name, "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    svg = output.read_text(encoding="utf-8")
    assert "<svg" in svg
    for state in load_spec().role(role_name).states:
        assert f">{state}</text>" in svg, state


def test_model_diagram_cli_rejects_an_unknown_role(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "d2tls.cli",
            "model",
            "diagram",
            "nobody",
            "-o",
            str(tmp_path / "x.svg"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown role 'nobody'" in result.stderr
    assert not (tmp_path / "x.svg").exists()
