"""States of every role, generated from ``spec/*.yaml`` by ``d2tls model states``.

Do not edit: ``d2tls model lint`` and tests/test_spec_states.py fail when this file and
the spec disagree. Members are strings (``StrEnum``), so a state prints as its spec name.
"""

from __future__ import annotations

from enum import StrEnum


class ClientState(StrEnum):
    """States of ``dtls_client`` (spec/dtls.yaml)."""

    START = "start"
    WAIT_SERVER_HELLO = "wait_server_hello"
    WAIT_CERTIFICATE = "wait_certificate"
    WAIT_SERVER_KEY_EXCHANGE = "wait_server_key_exchange"
    WAIT_CERTIFICATE_REQUEST = "wait_certificate_request"
    WAIT_SERVER_HELLO_DONE = "wait_server_hello_done"
    WAIT_SIGNATURE = "wait_signature"
    WAIT_PSK_SERVER_KEY_EXCHANGE = "wait_psk_server_key_exchange"
    WAIT_PSK_SERVER_HELLO_DONE = "wait_psk_server_hello_done"
    WAIT_ECDHE_PSK_SERVER_KEY_EXCHANGE = "wait_ecdhe_psk_server_key_exchange"
    WAIT_CHANGE_CIPHER_SPEC = "wait_change_cipher_spec"
    WAIT_FINISHED = "wait_finished"
    WAIT_CHANGE_CIPHER_SPEC_RESUMED = "wait_change_cipher_spec_resumed"
    WAIT_FINISHED_RESUMED = "wait_finished_resumed"
    ESTABLISHED = "established"
    CLOSED = "closed"
    FAILED = "failed"


class ServerState(StrEnum):
    """States of ``dtls_server`` (spec/dtls.yaml)."""

    LISTEN = "listen"
    WAIT_CERTIFICATE = "wait_certificate"
    WAIT_CLIENT_KEY_EXCHANGE = "wait_client_key_exchange"
    WAIT_CLIENT_KEY_EXCHANGE_CERTIFIED = "wait_client_key_exchange_certified"
    WAIT_CERTIFICATE_VERIFY = "wait_certificate_verify"
    WAIT_CHANGE_CIPHER_SPEC = "wait_change_cipher_spec"
    WAIT_FINISHED = "wait_finished"
    WAIT_CHANGE_CIPHER_SPEC_RESUMED = "wait_change_cipher_spec_resumed"
    WAIT_FINISHED_RESUMED = "wait_finished_resumed"
    ESTABLISHED = "established"
    CLOSED = "closed"
    FAILED = "failed"


class DeviceState(StrEnum):
    """States of ``device`` (spec/d2tls.yaml)."""

    IDLE = "idle"
    CONNECTING_AGENT = "connecting_agent"
    AWAITING_SIGN_REQUEST = "awaiting_sign_request"
    AWAITING_CONTEXT = "awaiting_context"
    AWAITING_WIPE = "awaiting_wipe"
    RESUMING = "resuming"
    CONNECTED = "connected"
    CLOSED = "closed"
    FAILED = "failed"


class AgentState(StrEnum):
    """States of ``agent`` (spec/d2tls.yaml)."""

    AWAITING_REQUEST = "awaiting_request"
    HANDSHAKING = "handshaking"
    CHECKING_STATUS = "checking_status"
    AWAITING_SIGNATURE = "awaiting_signature"
    FINISHING = "finishing"
    HANDING_OVER = "handing_over"
    DONE = "done"
    FAILED = "failed"


class TwinPeaksMemberState(StrEnum):
    """States of ``member`` (spec/twinpeaks.yaml)."""

    UNREGISTERED = "unregistered"
    CONNECTING = "connecting"
    REGISTERING = "registering"
    REGISTERED = "registered"
    UPDATING = "updating"
    STOPPED = "stopped"
    FAILED = "failed"


class TwinPeaksKeyServerState(StrEnum):
    """States of ``key_server`` (spec/twinpeaks.yaml)."""

    CREATED = "created"
    AWAITING_OWN_KEY = "awaiting_own_key"
    SERVING = "serving"
    STOPPED = "stopped"
    FAILED = "failed"


class TwinPeaksResolverState(StrEnum):
    """States of ``resolver`` (spec/twinpeaks.yaml)."""

    IDLE = "idle"
    RESOLVING_ADDRESS = "resolving_address"
    QUERYING = "querying"
    DONE = "done"
    FAILED = "failed"


class TwinPeaksClientState(StrEnum):
    """States of ``client`` (spec/twinpeaks.yaml)."""

    IDLE = "idle"
    RESOLVING = "resolving"
    HANDSHAKING = "handshaking"
    INVALIDATING = "invalidating"
    CONNECTED = "connected"
    RESOLVED = "resolved"
    CLOSED = "closed"
    FAILED = "failed"


#: The Enum of each role, by role name.
ROLE_STATES: dict[str, type[StrEnum]] = {
    "dtls_client": ClientState,
    "dtls_server": ServerState,
    "device": DeviceState,
    "agent": AgentState,
    "member": TwinPeaksMemberState,
    "key_server": TwinPeaksKeyServerState,
    "resolver": TwinPeaksResolverState,
    "client": TwinPeaksClientState,
}

__all__ = [
    "ROLE_STATES",
    "AgentState",
    "ClientState",
    "DeviceState",
    "ServerState",
    "TwinPeaksClientState",
    "TwinPeaksKeyServerState",
    "TwinPeaksMemberState",
    "TwinPeaksResolverState",
]
