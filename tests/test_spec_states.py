"""The spec owns the states and the record-layer rules; the code holds no copy of them.

* the state Enums (d2tls.core.model.states) are generated from spec/*.yaml and regenerated here;
* ``d2tls model lint`` checks the spec against the code built from it and fails on a
  disagreement;
* no module compares a state with a string literal, and the DTLS engines keep no
  ``_current`` message: handlers take it as an argument;
* the record-layer rules (content types per state, the next epoch, an early
  ChangeCipherSpec, the stateless listen state) are read from the YAML by the engines and by
  the conformance reference machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientConfig
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.errors import SpecError
from d2tls.core.model.codegen import STATES_MODULE, enum_name, lint, render_states
from d2tls.core.model.machine import check_states, states_of
from d2tls.core.model.spec import load_spec, parse_spec
from d2tls.core.model.states import ROLE_STATES, AgentState, ClientState, DeviceState, ServerState

SRC = Path(__file__).resolve().parents[1] / "src" / "d2tls"


def test_the_generated_enums_are_up_to_date_with_the_spec() -> None:
    """Regenerating d2tls/core/model/states.py from the spec gives the checked-in file."""
    assert STATES_MODULE.read_text(encoding="utf-8") == render_states()
    for spec_name in ("dtls", "d2tls", "twinpeaks"):
        for role in load_spec(spec_name).roles.values():
            states = ROLE_STATES[role.name]
            assert states.__name__ == enum_name(role.name, spec_name)
            assert [m.value for m in states] == list(role.states)
            check_states(role, states)
    assert (ClientState.WAIT_SIGNATURE, ServerState.LISTEN) == ("wait_signature", "listen")
    assert (DeviceState.CONNECTED, AgentState.DONE) == ("connected", "done")


def test_an_enum_that_disagrees_with_the_spec_is_refused() -> None:
    """A state renamed in the YAML but not regenerated: the machine refuses the old Enum."""
    raw: dict[str, Any] = yaml.safe_load((load_spec().source).read_text(encoding="utf-8"))
    text = yaml.safe_dump(raw).replace("wait_finished_resumed", "wait_peer_finished_resumed")
    renamed = parse_spec(yaml.safe_load(text), Path("renamed.yaml")).role("dtls_client")
    with pytest.raises(SpecError, match=r"ClientState .* disagrees with the spec's states"):
        check_states(renamed, ClientState)
    assert states_of(renamed) is not ClientState  # a spec outside the package gets its own


def test_model_lint_passes_and_fails_on_a_stale_states_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``d2tls model lint`` exits 0 on the shipped spec; a states module that no longer
    matches is reported (the lint run in the test suite is the build-time check)."""
    result = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", "model", "lint"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "spec OK" in result.stdout
    stale = tmp_path / "states.py"
    stale.write_text(render_states().replace('"wait_signature"', '"wait_sig"'), encoding="utf-8")
    monkeypatch.setattr("d2tls.core.model.codegen.STATES_MODULE", stale)
    assert lint() == ["states.py is out of date with spec/*.yaml: run `d2tls model states`"]


def test_model_states_cli_writes_the_module(tmp_path: Path) -> None:
    out = tmp_path / "states.py"
    result = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", "model", "states", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text(encoding="utf-8") == render_states()


#: A comparison of something's state with a string literal, e.g. ``x.state == "listen"`` or
#: ``state in ("failed", ...)``.
STATE_LITERAL = re.compile(r"""state\s*(==|!=)\s*["']|state\s+(not\s+)?in\s+\(\s*["']""")


def test_no_state_is_compared_with_a_string_literal() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if STATE_LITERAL.search(line)
    ]
    assert offenders == []
    assert STATE_LITERAL.search('if self.state == "established":')
    assert STATE_LITERAL.search("if config.state in ('failed', 'closed'):")
    assert not STATE_LITERAL.search("if self.state == ClientState.ESTABLISHED:")


def test_the_dtls_engines_keep_no_current_message() -> None:
    """Handlers take their message as an argument (issue 20): no ``_current`` in the engines."""
    for name in ("connection.py", "client.py", "server.py"):
        text = (SRC / "core" / "dtls" / name).read_text(encoding="utf-8")
        assert "_current" not in text, name
        assert "getattr(self" not in text, name  # the spec calls handlers through the table


def test_the_client_public_surface_is_what_a_user_needs() -> None:
    """Callbacks are private: the spec reaches them through the handler table."""
    public = {name for name in dir(DTLSClient) if not name.startswith("_")}
    assert public == {
        # the sans-IO calls
        "connect",
        "receive_datagram",
        "datagrams_to_send",
        "next_timer",
        "handle_timer",
        "next_event",
        "send_application_data",
        "close",
        "abort",  # end with a chosen fatal alert (the agent, when the device refused to sign)
        "provide_signature",
        # state and results
        "state",
        "is_established",
        "is_closed",
        "resumed",
        "peer_certificates",
        "has_partial_message",
        "reassembly_bytes",
        # class constants
        "ROLE",
        "IS_CLIENT",
        "raise_internal_errors",
    }
    client = DTLSClient(
        ClientConfig(
            cipher_suites=(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,),
            psk=b"k" * 16,
            psk_identity=b"id",
        )
    )
    assert client.state is ClientState.START


# --------------------------------------------------------------------------- record layer


def test_the_record_rules_come_from_the_spec() -> None:
    """RFC 6347 §4.1 as written in spec/dtls.yaml: application data only when established,
    the next epoch buffered before, an early ChangeCipherSpec held before and fatal after,
    a PSK Finished that does not authenticate is decrypt_error, listen keeps nothing."""
    for role_name in ("dtls_client", "dtls_server"):
        role = load_spec().role(role_name)
        for name, state in role.states.items():
            if state.final:
                continue
            rules = state.rules
            if state.stateless:  # before the cookie: epoch-0 handshake records only
                assert (role_name, name) == ("dtls_server", "listen")
                assert rules.accept == rules.epoch0 == {"handshake"}
                assert rules.old_epoch == set()
                continue
            established = name == "established"
            assert rules.accepts("application_data", 1) is established, name
            assert not rules.accepts("application_data", 0), name
            assert rules.accepts("handshake", 0) and rules.accepts("alert", 1), name
            assert rules.next_epoch == ("discard" if established else "buffer"), name
            assert rules.early_change_cipher_spec == ("fatal" if established else "hold"), name
            assert rules.old_epoch == {"handshake", "change_cipher_spec"}, name
            assert (rules.undecryptable == "fatal_with_psk") is (name == "wait_finished"), name


def test_the_listener_filters_what_the_stateless_listen_state_takes() -> None:
    """RFC 6347 §4.2.1: before a cookie the server takes what its ``listen`` state accepts:
    epoch-0 handshake records with ClientHello fragments, nothing else in the datagram."""
    from d2tls.core.dtls.record import Record, encode_record
    from d2tls.core.dtls.server import _client_hello_fragments, _listen_filter

    assert _listen_filter() == ({"handshake"}, {1})
    client = DTLSClient(
        ClientConfig(
            cipher_suites=(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,),
            psk=b"k" * 16,
            psk_identity=b"id",
        ),
        remote=("192.0.2.1", 4433),
    )
    client.connect(0.0)
    ((hello, _),) = client.datagrams_to_send(0.0)
    assert _client_hello_fragments(hello) is not None
    alert = encode_record(Record(21, 0xFEFD, 0, 7, b"\x01\x00"))
    assert _client_hello_fragments(hello + alert) is None


def _spec_with(edit: Any) -> Any:
    raw: dict[str, Any] = yaml.safe_load((load_spec().source).read_text(encoding="utf-8"))
    edit(raw["roles"]["dtls_server"])
    return lambda: parse_spec(raw, Path("edited.yaml"))


def test_broken_record_rules_are_rejected() -> None:
    def unknown_type(role: dict[str, Any]) -> None:
        role["record_layer"]["accept"].append("heartbeat")

    def bad_choice(role: dict[str, Any]) -> None:
        role["states"]["established"]["record"]["next_epoch"] = "keep"

    def missing_key(role: dict[str, Any]) -> None:
        del role["record_layer"]["old_epoch"]

    def unknown_state_key(role: dict[str, Any]) -> None:
        role["states"]["listen"]["statless"] = True

    cases = [
        (unknown_type, r"record_layer: accept: unknown content types \['heartbeat'\]"),
        (bad_choice, r"state established: record: next_epoch must be one of"),
        (missing_key, r"record_layer: missing \['old_epoch'\]"),
        (unknown_state_key, r"state listen: unknown keys \['statless'\]"),
    ]
    for edit, message in cases:
        with pytest.raises(SpecError, match=message):
            _spec_with(edit)()


def test_the_conformance_machine_reads_the_same_rules() -> None:
    """conformance.specmodel derives the endpoint from the spec: dropping the established
    override of spec/dtls.yaml (so application data is never accepted) changes its answer."""
    from d2tls.conformance.specmodel import Config, ServerOptions, SpecModel

    role = load_spec().role("dtls_server")
    model = SpecModel(role, ServerOptions(echo=True))
    established = Config(
        state=ServerState.ESTABLISHED, read_epoch=1, write_epoch=1, write_keys_good=True
    )
    assert model.step(established, "ApplicationData")[1] == "ApplicationData"

    def no_data(role_raw: dict[str, Any]) -> None:
        del role_raw["states"]["established"]["record"]

    edited = _spec_with(no_data)().role("dtls_server")
    assert (
        SpecModel(edited, ServerOptions(echo=True)).step(established, "ApplicationData")[1]
        == "TIMEOUT"
    )


@pytest.fixture
def edited_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the engines on an edited copy of the spec (the loader's cache is cleared around)."""
    import shutil

    from d2tls.core.resources import spec_dir

    copy = tmp_path / "spec"
    shutil.copytree(spec_dir(), copy)

    def edit(change: Any) -> None:
        path = copy / "dtls.yaml"
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        change(raw["roles"])
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        monkeypatch.setenv("D2TLS_SPEC_DIR", str(copy))
        load_spec.cache_clear()

    yield edit
    monkeypatch.delenv("D2TLS_SPEC_DIR")
    load_spec.cache_clear()


def test_the_engine_enforces_the_record_rules_of_the_yaml(edited_spec: Any) -> None:
    """The engines have no rule of their own: with application data taken out of the client's
    ``established`` state in the YAML, the same handshake completes, but the client is not
    established and drops the server's application data (RFC 6347 §4.1.2.7)."""
    from conftest import Run, psk_client_config, psk_server_config

    run = Run(psk_server_config(), psk_client_config())
    run.handshake()
    assert run.both_established()
    run.send_to_client(b"pong")
    run.settle()
    assert run.received(run.client_events) == [b"pong"]

    def no_data(roles: dict[str, Any]) -> None:
        roles["dtls_client"]["states"]["established"]["record"]["accept"].remove("application_data")

    edited_spec(no_data)
    run = Run(psk_server_config(), psk_client_config())
    run.handshake()
    assert run.client.state is ClientState.ESTABLISHED and run.completed(run.client_events)
    assert not run.client.is_established
    discarded = run.client.stats["records_discarded"]
    run.send_to_client(b"pong")
    run.settle()
    assert run.received(run.client_events) == []
    assert run.client.stats["records_discarded"] == discarded + 1
