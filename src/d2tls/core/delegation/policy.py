"""The agent's delegation policy: which device may delegate, with which certificate, to where.

The agent's PSK file (spec/delegation.md §9.1) extends the ``IDENTITY:HEXKEY`` lines of a plain
PSK file with attributes after the key::

    device-1:3f0c...  cert-sha256=9a41...  allow=127.0.0.1:4433,10.0.0.0/8,[::1]:5684

* ``cert-sha256=HEX[,HEX...]``: SHA-256 fingerprints of the DER leaf certificates this identity
  may delegate for (several for a certificate rollover);
* ``rpk-sha256=HEX[,HEX...]``: SHA-256 fingerprints of the DER SubjectPublicKeyInfos this
  identity may delegate for as RFC 7250 raw public keys (a TwinPeaks member key);
* ``cert-subject=RFC4514``: or the leaf's subject as ``Name.rfc4514_string()`` writes it, with
  spaces written ``\\20`` (RFC 4514 §2.4);
* ``allow=RULE[,RULE...]``: servers this device may make the agent contact, in addition to the
  agent's own ``--allow-server`` rules (:func:`parse_server_rule`).

A line without attributes is read as before (the identity may contain ``:``; the key is after
the last one). Attributes start at the first whitespace after the hex key that is followed by
``NAME=``; unknown names are an error, so a typo never silently drops a restriction.
Policy checks are pure functions of the request and the table: no name resolution, no IO.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from d2tls.core.delegation.messages import DelegationRequest
from d2tls.core.errors import ConfigurationError
from d2tls.core.pki.verify import parse_psk

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ATTRIBUTES = ("cert-sha256", "rpk-sha256", "cert-subject", "allow")
_LINE = re.compile(r"^(?P<head>.*?:[0-9A-Fa-f]+)(?P<attrs>(?:\s+[a-z][a-z0-9-]*=\S*)+)\s*$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$"
)


@dataclass(frozen=True)
class ServerRule:
    """One allowed destination: a host name or an address block, and a port (None: any).

    A host-name rule matches a request naming exactly that host (case-insensitive); an address
    rule matches a request whose server_host is an address literal inside the block. Names are
    never resolved to be checked against address rules.
    """

    text: str
    host: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and port != self.port:
            return False
        address = _address(host)
        if address is not None:
            return self.network is not None and address in self.network
        return self.host is not None and _normal_name(host) == self.host

    def __str__(self) -> str:
        return self.text


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _normal_name(host: str) -> str:
    return host.lower().rstrip(".")


def _port(text: str, rule: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigurationError(f"server rule {rule!r}: port must be 1..65535")
    return int(text)


def _network(text: str, rule: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ConfigurationError(f"server rule {rule!r}: {exc}") from None


def parse_server_rule(text: str) -> ServerRule:
    """Parse ``HOST:PORT``, ``ADDRESS[:PORT]``, ``CIDR[:PORT]``; IPv6 with a port in brackets.

    Examples: ``localhost:4433``, ``127.0.0.1:4433``, ``10.0.0.0/8`` (any port),
    ``10.0.0.0/8:5684``, ``::1``, ``fd00::/8``, ``[::1]:4433``, ``[fd00::/8]:4433``.
    A bare address or block allows any port; a host name needs a port.
    """
    rule = text.strip()
    if not rule:
        raise ConfigurationError("empty server rule")
    if rule.startswith("["):
        inside, sep, rest = rule[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigurationError(f"server rule {rule!r}: expected [ADDRESS]:PORT")
        port = _port(rest[1:], rule) if rest else None
        return ServerRule(rule, network=_network(inside, rule), port=port)
    if _address(rule) is not None or ("/" in rule and rule.count(":") > 1):
        return ServerRule(rule, network=_network(rule, rule))  # a bare address or block
    if "/" in rule and ":" not in rule:
        return ServerRule(rule, network=_network(rule, rule))
    host, sep, port_text = rule.rpartition(":")
    if not sep:
        raise ConfigurationError(f"server rule {rule!r}: a host name needs a port (HOST:PORT)")
    port = _port(port_text, rule)
    if "/" in host or _address(host) is not None:
        return ServerRule(rule, network=_network(host, rule), port=port)
    if not _HOSTNAME.match(host):
        raise ConfigurationError(f"server rule {rule!r}: {host!r} is not a host name or address")
    return ServerRule(rule, host=_normal_name(host), port=port)


@dataclass(frozen=True)
class DeviceEntry:
    """One line of the agent's PSK file."""

    identity: bytes
    key: bytes = field(repr=False)
    cert_sha256: frozenset[bytes] = frozenset()
    cert_subject: str | None = None
    allow: tuple[ServerRule, ...] = ()
    rpk_sha256: frozenset[bytes] = frozenset()

    @property
    def bound(self) -> bool:
        """True if the line names the certificate or raw key this identity may delegate for."""
        return bool(self.cert_sha256) or self.cert_subject is not None or bool(self.rpk_sha256)

    def raw_key_refusal(self, spki: bytes) -> str | None:
        """Why the raw public key ``spki`` is not one bound to this identity, or None."""
        fingerprint = hashlib.sha256(spki).digest()
        if fingerprint in self.rpk_sha256:
            return None
        name = self.identity.decode("utf-8", "replace")
        return (
            f"PSK identity {name!r} is not bound to this raw public key (SHA-256 "
            f"{fingerprint.hex()[:16]}...; bind it with rpk-sha256=)"
        )

    def certificate_refusal(self, leaf_der: bytes) -> str | None:
        """Why ``leaf_der`` is not the certificate bound to this identity, or None."""
        name = self.identity.decode("utf-8", "replace")
        fingerprint = hashlib.sha256(leaf_der).digest()
        if fingerprint in self.cert_sha256:
            return None
        if self.cert_subject is not None:
            try:
                subject = x509.load_der_x509_certificate(leaf_der).subject.rfc4514_string()
            except ValueError:
                return f"PSK identity {name!r}: the device certificate cannot be parsed"
            if subject == self.cert_subject:
                return None
            return (
                f"PSK identity {name!r} is bound to another certificate: the request's leaf "
                f"has subject {subject!r} (SHA-256 {fingerprint.hex()[:16]}...)"
            )
        return (
            f"PSK identity {name!r} is bound to another certificate: the request's leaf has "
            f"SHA-256 {fingerprint.hex()[:16]}..."
        )


def parse_psk_line(line: str) -> DeviceEntry:
    """Parse one non-comment line of an agent PSK file (see the module docstring)."""
    match = _LINE.match(line.strip())
    head, attributes = (match["head"], match["attrs"].split()) if match else (line, [])
    identity, key = parse_psk(head)
    sha256: set[bytes] = set()
    rpk_sha256: set[bytes] = set()
    subject: str | None = None
    allow: list[ServerRule] = []
    for attribute in attributes:
        name, _, value = attribute.partition("=")
        if name not in ATTRIBUTES:
            raise ConfigurationError(f"unknown attribute {name!r} (known: {', '.join(ATTRIBUTES)})")
        if not value:
            raise ConfigurationError(f"attribute {name!r} has no value")
        if name in ("cert-sha256", "rpk-sha256"):
            for item in value.split(","):
                try:
                    digest = bytes.fromhex(item)
                except ValueError:
                    digest = b""
                if len(digest) != 32:
                    raise ConfigurationError(f"{name} {item!r} is not 64 hex digits")
                (sha256 if name == "cert-sha256" else rpk_sha256).add(digest)
        elif name == "cert-subject":
            if subject is not None:
                raise ConfigurationError("cert-subject given twice")
            subject = value.replace("\\20", " ")
        else:
            allow.extend(parse_server_rule(item) for item in value.split(","))
    return DeviceEntry(
        identity, key, frozenset(sha256), subject, tuple(allow), frozenset(rpk_sha256)
    )


def load_agent_psk_file(path: Path) -> dict[bytes, DeviceEntry]:
    """Read an agent PSK file: blank lines and ``#`` comments ignored, identities unique."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read PSK file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"PSK file {path} is not UTF-8") from exc
    table: dict[bytes, DeviceEntry] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = parse_psk_line(line)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{path}:{number}: {exc}") from exc
        if entry.identity in table:
            raise ConfigurationError(f"{path}:{number}: duplicate PSK identity")
        table[entry.identity] = entry
    return table


def format_psk_line(identity: str, key: bytes, leaf_der: bytes | None = None) -> str:
    """An agent PSK file line binding ``identity`` to the certificate ``leaf_der``."""
    line = f"{identity}:{key.hex()}"
    if leaf_der is not None:
        line += f" cert-sha256={hashlib.sha256(leaf_der).hexdigest()}"
    return line


@dataclass(frozen=True)
class AgentPolicy:
    """What the agent serves (spec/delegation.md §9.1); the default serves nothing.

    ``devices`` is the PSK file; ``allow`` the operator's server rules, valid for every device;
    ``allow_unbound`` lets identities without a certificate binding delegate (legacy files).
    """

    devices: Mapping[bytes, DeviceEntry]
    allow: tuple[ServerRule, ...] = ()
    allow_unbound: bool = False

    @classmethod
    def build(
        cls,
        devices: Mapping[bytes, DeviceEntry],
        allow: Iterable[str] = (),
        allow_unbound: bool = False,
    ) -> AgentPolicy:
        return cls(dict(devices), tuple(parse_server_rule(r) for r in allow), allow_unbound)

    @property
    def psk_keys(self) -> dict[bytes, bytes]:
        return {identity: entry.key for identity, entry in self.devices.items()}

    def unbound_identities(self) -> list[str]:
        return [e.identity.decode("utf-8", "replace") for e in self.devices.values() if not e.bound]

    def refusal(self, identity: bytes | None, request: DelegationRequest) -> str | None:
        """Why the device with PSK ``identity`` may not make ``request``, or None."""
        entry = self.devices.get(identity) if identity is not None else None
        if entry is None:
            return "the channel's PSK identity is not in the agent's PSK file"
        name = identity.decode("utf-8", "replace") if identity is not None else ""
        if entry.bound:
            if request.raw_public_key is not None:
                refused = entry.raw_key_refusal(request.raw_public_key)
            elif request.certificate_chain:
                refused = entry.certificate_refusal(request.certificate_chain[0])
            else:
                return "the request carries no certificate"
            if refused is not None:
                return refused
        elif not self.allow_unbound:
            return (
                f"PSK identity {name!r} is not bound to a device certificate in the agent's PSK "
                "file (add cert-sha256=, or run the agent with --allow-unbound)"
            )
        host, port = request.server_host, request.server_port
        if not any(rule.matches(host, port) for rule in (*self.allow, *entry.allow)):
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            return f"server {shown} is not allowed for PSK identity {name!r}"
        return None
