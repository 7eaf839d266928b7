"""One error hierarchy (src/d2tls/core/errors.py): every exception class of the package derives from
D2TLSError, the core's classes live in d2tls.core.errors and keep their old import names, and
failures are classified by type, never by alert-name strings."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import d2tls
from d2tls.core import errors
from d2tls.core.delegation.messages import DelegationErrorCode
from d2tls.core.dtls.constants import AlertDescription
from d2tls.core.dtls.events import ConnectionTerminated
from d2tls.core.roles.agent import CERTIFICATE_ALERTS, describe_server_failure

ROOT = Path(__file__).resolve().parents[1]
#: Exceptions that deliberately are not D2TLSErrors, and why.
INTENTIONAL = {
    # Ctrl-C must not be swallowed by an ``except D2TLSError`` (clean exit on Ctrl-C).
    "d2tls.interrupt.Interrupted": "a KeyboardInterrupt: a signal, not an error",
    "d2tls.prove.cli.Interrupted": "SIGINT/SIGTERM during a proof run: a signal, not an error",
    # An oracle failure of the adversary harness must fail a test like ``assert`` does.
    "d2tls.adversary.observer.InvariantViolation": "an AssertionError by design",
    # Private control flow inside one function family; never escapes its module.
    "d2tls.conformance.scenarios._Inconclusive": "private control-flow signal",
    "d2tls.conformance.specmodel._Abort": "private control-flow signal",
}
#: Classes whose home is d2tls.core.errors, by the module that re-exports them under the old name.
MOVED = {
    "d2tls.core.dtls.connection": ["InvalidStateError"],
    "d2tls.core.dtls.session_file": ["SessionNotResumable"],
    "d2tls.core.delegation.messages": ["DelegationProtocolError"],
    "d2tls.core.roles.device": ["DelegationFailed"],
    "d2tls.net.ocsp": ["OCSPError"],
    "d2tls.core.pki.generate": ["PKIExistsError"],
    "d2tls.core.store.codec": ["CorruptEntry"],
    "d2tls.lab.redis_server": ["RedisServerMissing"],
    "d2tls.core.twinpeaks.errors": [
        "TwinPeaksError",
        "EncodingError",
        "InvalidPoint",
        "InvalidScalar",
        "InvalidIdentity",
        "KeyValidationError",
        "SignatureError",
    ],
}


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of the package (imported to resolve bases)."""
    found: dict[str, type[BaseException]] = {}
    package = Path(d2tls.__file__).parent
    for path in sorted(package.rglob("*.py")):  # files, not pkgutil: roles/ is a namespace
        parts = path.relative_to(package.parent).with_suffix("").parts
        module_name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if module_name == "d2tls.__main__":
            continue
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module_name
            ):
                found[f"{module_name}.{name}"] = value
    return found


def test_every_exception_class_derives_from_d2tls_error() -> None:
    classes = exception_classes()
    assert "d2tls.core.errors.ProtocolError" in classes and "d2tls.net.udp.NoAnswer" in classes
    outside = sorted(
        name
        for name, cls in classes.items()
        if not issubclass(cls, errors.D2TLSError) and name not in INTENTIONAL
    )
    assert outside == [], f"derive these from d2tls.core.errors.D2TLSError: {outside}"
    stale = sorted(set(INTENTIONAL) - set(classes))
    assert stale == [], f"documented exceptions that no longer exist: {stale}"


def test_the_source_defines_no_exception_class_the_import_walk_missed() -> None:
    """Every ``class X(...Error/Exception...)`` written in the source was seen by the walk."""
    seen = {name.rsplit(".", 1)[1] for name in exception_classes()}
    for path in (ROOT / "src" / "d2tls").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and base.id.endswith(("Error", "Exception"))
                for base in node.bases
            ):
                assert node.name in seen, f"{path}: {node.name}"


@pytest.mark.parametrize("module_name", sorted(MOVED))
def test_moved_classes_keep_their_old_import_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in MOVED[module_name]:
        assert getattr(module, name) is getattr(errors, name)
        assert getattr(errors, name).__module__ == "d2tls.core.errors"


@pytest.mark.parametrize("alert", list(AlertDescription))
@pytest.mark.parametrize("by_peer", [False, True])
def test_the_agent_classifies_server_failures_by_alert_member(
    alert: AlertDescription, by_peer: bool
) -> None:
    code, reason = describe_server_failure(
        ConnectionTerminated(reason="refused", alert=alert, by_peer=by_peer, error=True)
    )
    if alert in CERTIFICATE_ALERTS and not by_peer:
        assert code is DelegationErrorCode.SERVER_CERTIFICATE_INVALID
    else:
        assert code is DelegationErrorCode.HANDSHAKE_FAILED
    if by_peer:
        assert alert.name.lower() in reason


def test_certificate_alerts_are_the_rfc_5246_certificate_alerts() -> None:
    """RFC 5246 §7.2.2: the alerts about a certificate, plus access_denied (the peer's
    certificate was valid but refused by policy)."""
    assert all(isinstance(a, AlertDescription) for a in CERTIFICATE_ALERTS)
    expected = {
        AlertDescription.BAD_CERTIFICATE,
        AlertDescription.UNSUPPORTED_CERTIFICATE,
        AlertDescription.CERTIFICATE_REVOKED,
        AlertDescription.CERTIFICATE_EXPIRED,
        AlertDescription.CERTIFICATE_UNKNOWN,
        AlertDescription.UNKNOWN_CA,
        AlertDescription.ACCESS_DENIED,
    }
    assert frozenset(expected) == CERTIFICATE_ALERTS
