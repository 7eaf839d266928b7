"""Save and load a client session (``--session-out`` / ``--session-in``).

The file holds the master secret, so it is written with mode 0600 and must be treated like a
private key.

A session can only be resumed by its ID (RFC 5246 §7.4.1.3): a server that sends an empty
session ID in its ServerHello "will not cache the session and it cannot be resumed", so no file
is written for it (:class:`SessionNotResumable`).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.session import Session
from d2tls.core.errors import ConfigurationError
from d2tls.core.errors import (
    SessionNotResumable as SessionNotResumable,  # re-exported: its home is d2tls.core.errors
)

FORMAT = "d2tls-session-v1"


def check_resumable(session: Session, server: str | None = None) -> None:
    """Raise :class:`SessionNotResumable` if ``session`` has no session ID (RFC 5246 §7.4.1.3)."""
    if session.session_id:
        return
    where = f"the server {server}" if server else "the server"
    raise SessionNotResumable(
        f"{where} sent an empty session ID: it does not cache sessions, so this session cannot "
        f"be resumed (RFC 5246 §7.4.1.3); no session file written"
    )


def session_to_dict(session: Session) -> dict[str, object]:
    """A JSON-able form of ``session`` (includes the master secret)."""
    return {
        "format": FORMAT,
        "session_id": session.session_id.hex(),
        "master_secret": bytes(session.master_secret).hex(),
        "cipher_suite": session.cipher_suite.name,
        "extended_master_secret": session.extended_master_secret,
        "server_name": session.server_name,
        "peer_certificates": [base64.b64encode(c).decode() for c in session.peer_certificates],
        "psk_identity": session.psk_identity.hex() if session.psk_identity is not None else None,
        "created_at": session.created_at,
        "lifetime": session.lifetime,
    }


def session_from_dict(data: dict[str, object]) -> Session:
    """Inverse of ``session_to_dict``; ConfigurationError on anything malformed."""
    try:
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        psk_identity = data.get("psk_identity")
        certificates = data.get("peer_certificates") or []
        assert isinstance(certificates, list)
        session = Session(
            session_id=bytes.fromhex(str(data["session_id"])),
            master_secret=bytearray.fromhex(str(data["master_secret"])),
            cipher_suite=CipherSuite[str(data["cipher_suite"])],
            extended_master_secret=bool(data["extended_master_secret"]),
            server_name=None if data.get("server_name") is None else str(data["server_name"]),
            peer_certificates=tuple(base64.b64decode(str(c)) for c in certificates),
            psk_identity=None if psk_identity is None else bytes.fromhex(str(psk_identity)),
            created_at=float(str(data["created_at"])),
            lifetime=float(str(data["lifetime"])),
        )
    except (KeyError, ValueError, TypeError, AssertionError) as exc:
        raise ConfigurationError(f"malformed session file: {exc}") from exc
    if not session.session_id:
        raise SessionNotResumable(
            "session file holds an empty session ID: the server that issued it does not cache "
            "sessions, so it cannot be resumed (RFC 5246 §7.4.1.3)"
        )
    if not 1 <= len(session.session_id) <= 32 or len(session.master_secret) != 48:
        raise ConfigurationError("malformed session file: bad session ID or master secret length")
    return session


def save_session(session: Session, path: Path, server: str | None = None) -> None:
    """Write ``session`` to ``path`` with mode 0600; :class:`SessionNotResumable` (and no
    file) if the server issued no session ID."""
    check_resumable(session, server)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(session_to_dict(session), handle)
    os.chmod(path, 0o600)


def load_session(path: Path) -> Session:
    """Read a session written by ``save_session``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"cannot read session file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError("malformed session file: not an object")
    return session_from_dict(data)
