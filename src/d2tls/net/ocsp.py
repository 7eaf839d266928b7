"""A small OCSP responder and client for the test PKI (RFC 6960, HTTP transport per Appendix A).

Responder (:class:`OCSPResponder`):

* The CA signs every response itself (RFC 6960 §4.2.2.2, first case); the ResponderID is
  ``byKey`` (§4.2.2.3) and no certificates are attached. A request nonce (§4.4.1) is echoed.
* Revocations live in ``revoked.json`` next to the CA (:class:`RevocationList`) and the file is
  re-read for every request, so ``d2tls pki revoke`` takes effect at once.
* A CertID whose issuer name/key hash is not this CA's gets ``unauthorized`` (§2.3, which
  points to RFC 5019 §2.2.3: a responder without authoritative records for the certificate
  MUST answer ``unauthorized``). A ``successful`` ``unknown`` signed by this CA could not be
  verified by the client anyway: the client trusts only the certificate's own issuer.
* For this CA's CertIDs the answer is ``revoked`` if listed, else ``good`` - which §2.2 defines
  as "no certificate with this serial number currently within its validity interval is
  revoked". Pass ``known_serials`` to answer ``unknown`` (§2.2) for serials it rejects.
* One Request per OCSPRequest (the RFC 5019 §2.1.1 profile; ``cryptography`` parses no
  other); anything unparsable gets ``malformedRequest`` (§2.3). A revocation file that cannot
  be read gets ``internalError``: failing closed beats answering ``good``.

Client (:func:`check_ocsp`): one SHA-1 CertID (what ``openssl ocsp`` and most responders use,
and what the RFC 5019 §2.1.1 profile mandates; RFC 6960 allows any hash), POSTed over
HTTP/1.0 to a loopback responder, then the acceptance checks of §3.2 - see :func:`check_ocsp`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import ipaddress
import json
import os
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from d2tls.core.clock import utc_now
from d2tls.core.errors import ConfigurationError, D2TLSError
from d2tls.core.errors import OCSPError as OCSPError  # re-exported from d2tls.core.errors
from d2tls.core.pki.verify import load_private_key

#: File names inside a PKI directory written by :func:`d2tls.core.pki.generate.init_pki`.
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
REVOCATIONS_FILE = "revoked.json"
#: Largest accepted HTTP request body (and OCSP response body on the client side).
MAX_BODY = 64 * 1024
#: Largest accepted HTTP request line + header block.
MAX_HEAD = 16 * 1024
#: Most header lines in one HTTP message.
MAX_HEADERS = 64
#: Seconds a client may take to send its whole HTTP request.
HTTP_READ_TIMEOUT = 10.0
#: Seconds and bytes of input discarded after an error response before closing.
LINGER_TIMEOUT = 1.0
LINGER_LIMIT = 256 * 1024
#: Tolerated clock difference for thisUpdate in the future (RFC 6960 §3.2 item 5, §4.2.2.1).
CLOCK_SKEW = timedelta(minutes=5)

_DER = Encoding.DER
_OCSP_REQUEST_TYPE = "application/ocsp-request"
_OCSP_RESPONSE_TYPE = "application/ocsp-response"
_CERTID_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_HTTP_REASONS = {
    200: "OK",
    400: "Bad Request",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
}


class OCSPStatus(enum.Enum):
    """CertStatus of a SingleResponse (RFC 6960 §2.2)."""

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class OCSPResult:
    """A verified OCSP answer for one certificate (RFC 6960 §4.2.1 SingleResponse).

    ``revocation_reason`` is the RFC 5280 §5.3.1 name (``"keyCompromise"``...), ``None`` if
    the certificate is not revoked or the responder gave no reason.
    """

    status: OCSPStatus
    this_update: datetime
    next_update: datetime | None
    revocation_reason: str | None
    revocation_time: datetime | None = None


# --------------------------------------------------------------------------- helpers


def _hostile(exc: BaseException) -> bool:
    """Whether ``exc`` may come from parsing attacker bytes (a Rust panic is a BaseException)."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


@contextlib.contextmanager
def _malformed(what: str) -> Iterator[None]:
    """Turn any parsing failure inside the block into :class:`OCSPError`."""
    try:
        yield
    except OCSPError:
        raise
    except BaseException as exc:
        if not _hostile(exc):
            raise
        raise OCSPError(f"malformed OCSP response: {what}: {exc}") from exc


def _utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (naive values are taken to be UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _issuer_hashes(
    issuer: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> tuple[bytes, bytes]:
    """(issuerNameHash, issuerKeyHash) of RFC 6960 §4.1.1 for ``issuer``.

    Computed by ``cryptography`` itself (a throw-away request for the issuer), so the key hash
    covers exactly the subjectPublicKey BIT STRING value as the RFC requires.
    """
    req = ocsp.OCSPRequestBuilder().add_certificate(issuer, issuer, algorithm).build()
    return req.issuer_name_hash, req.issuer_key_hash


def _parse_reason(reason: str | x509.ReasonFlags) -> x509.ReasonFlags:
    if isinstance(reason, x509.ReasonFlags):
        flag = reason
    else:
        try:
            flag = x509.ReasonFlags(reason)
        except ValueError:
            names = ", ".join(f.value for f in x509.ReasonFlags if f.value != "removeFromCRL")
            raise ConfigurationError(
                f"unknown revocation reason {reason!r}; known: {names}"
            ) from None
    if flag is x509.ReasonFlags.remove_from_crl:
        raise ConfigurationError("removeFromCRL is only meaningful in delta CRLs (RFC 5280 §5.3.1)")
    return flag


# --------------------------------------------------------------------------- revocation list


@dataclass(frozen=True)
class Revocation:
    """One revoked serial: when and why (RFC 6960 §4.2.1 RevokedInfo)."""

    time: datetime
    reason: x509.ReasonFlags


class RevocationList:
    """Revoked serials of one CA, stored as a small JSON file.

    Format: ``{"revoked": {"<serial lowercase hex>": {"time": ISO 8601, "reason": NAME}}}``
    with RFC 5280 §5.3.1 reason names (``keyCompromise``, ``superseded``...).
    """

    def __init__(self, entries: dict[int, Revocation] | None = None) -> None:
        self._entries: dict[int, Revocation] = dict(entries or {})

    @classmethod
    def load(cls, path: Path) -> RevocationList:
        """Read ``path``; a missing file means nothing is revoked.

        Raises :class:`ConfigurationError` if the file is unreadable or malformed.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read revocation list {path}: {exc}") from exc
        try:
            data = json.loads(text)
            revoked = data["revoked"]
            if not isinstance(revoked, dict):
                raise TypeError("'revoked' is not an object")
            entries: dict[int, Revocation] = {}
            for serial_hex, info in revoked.items():
                serial = int(serial_hex, 16)
                if serial <= 0:
                    raise ValueError(f"serial {serial_hex!r} is not positive")
                when = _utc(datetime.fromisoformat(info["time"]))
                entries[serial] = Revocation(when, _parse_reason(info["reason"]))
        except (ValueError, TypeError, KeyError, ConfigurationError) as exc:
            raise ConfigurationError(f"malformed revocation list {path}: {exc}") from exc
        return cls(entries)

    def save(self, path: Path) -> None:
        """Write the list atomically (temporary file + rename), so readers never see half."""
        path = Path(path)
        data = {
            "revoked": {
                format(serial, "x"): {"time": entry.time.isoformat(), "reason": entry.reason.value}
                for serial, entry in sorted(self._entries.items())
            }
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2)
                handle.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def revoke(
        self,
        certificate: x509.Certificate,
        reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise,
        *,
        when: datetime | None = None,
    ) -> None:
        """Mark ``certificate`` revoked (``when`` defaults to now, whole seconds).

        Revoking again keeps the first revocation time and replaces the reason (e.g. a
        ``certificateHold`` that becomes ``keyCompromise``, RFC 5280 §5.3.1).
        """
        flag = _parse_reason(reason)
        serial = certificate.serial_number
        previous = self._entries.get(serial)
        if previous is not None:
            moment = previous.time
        else:
            moment = _utc(when if when is not None else utc_now()).replace(microsecond=0)
        self._entries[serial] = Revocation(moment, flag)

    def is_revoked(self, serial: int) -> Revocation | None:
        """The revocation of ``serial``, or ``None`` if it is not revoked."""
        return self._entries.get(serial)

    def __len__(self) -> int:
        return len(self._entries)


# --------------------------------------------------------------------------- responder


class OCSPResponder:
    """An OCSP responder for the certificates of one CA, which signs the responses itself.

    ``validity`` is nextUpdate - thisUpdate (RFC 6960 §4.2.2.1). ``known_serials``, if given,
    says which serials this CA issued; the others are answered ``unknown`` (§2.2).
    """

    def __init__(
        self,
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        revocations_path: Path,
        validity: timedelta = timedelta(hours=1),
        *,
        known_serials: Callable[[int], bool] | None = None,
    ) -> None:
        if ca_key.public_key().public_numbers() != _ec_public_numbers(ca_cert):
            raise ConfigurationError("the OCSP signing key does not match the CA certificate")
        if validity <= timedelta(0):
            raise ConfigurationError("OCSP response validity must be positive")
        self.ca_cert = ca_cert
        self.ca_key = ca_key
        self.revocations_path = Path(revocations_path)
        self.validity = validity
        self.known_serials = known_serials
        self._hashes = {
            name: _issuer_hashes(ca_cert, alg()) for name, alg in _CERTID_HASHES.items()
        }
        size = ca_key.curve.key_size
        self._sign_hash: hashes.HashAlgorithm = (
            hashes.SHA512() if size > 384 else hashes.SHA384() if size > 256 else hashes.SHA256()
        )

    # ------------------------------------------------------------------ OCSP
    def respond(self, request_der: bytes) -> bytes:
        """The DER OCSPResponse for DER ``request_der`` (RFC 6960 §4.2.1); never raises.

        Unparsable input gives ``malformedRequest``, a foreign issuer ``unauthorized`` and an
        unreadable revocation list ``internalError`` (§2.3).
        """
        try:
            parsed = self._parse_request(request_der)
        except BaseException as exc:
            if not _hostile(exc):
                raise
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        algorithm, name_hash, key_hash, serial, nonce = parsed
        if self._hashes[algorithm.name] != (name_hash, key_hash):
            return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        try:
            return self._sign(algorithm, name_hash, key_hash, serial, nonce)
        except BaseException as exc:
            if not _hostile(exc):
                raise
            return _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)

    @staticmethod
    def _parse_request(
        request_der: bytes,
    ) -> tuple[hashes.HashAlgorithm, bytes, bytes, int, x509.OCSPNonce | None]:
        request = ocsp.load_der_ocsp_request(bytes(request_der))
        algorithm = request.hash_algorithm
        if algorithm.name not in _CERTID_HASHES:
            raise UnsupportedAlgorithm(f"CertID hash {algorithm.name} not supported")
        nonce: x509.OCSPNonce | None = None
        for ext in request.extensions:
            if isinstance(ext.value, x509.OCSPNonce):
                nonce = ext.value
        return (
            algorithm,
            request.issuer_name_hash,
            request.issuer_key_hash,
            request.serial_number,
            nonce,
        )

    def _sign(
        self,
        algorithm: hashes.HashAlgorithm,
        name_hash: bytes,
        key_hash: bytes,
        serial: int,
        nonce: x509.OCSPNonce | None,
    ) -> bytes:
        revocation = RevocationList.load(self.revocations_path).is_revoked(serial)
        now = utc_now().replace(microsecond=0)
        status = ocsp.OCSPCertStatus.GOOD
        revoked_at: datetime | None = None
        reason: x509.ReasonFlags | None = None
        if revocation is not None:
            status = ocsp.OCSPCertStatus.REVOKED
            revoked_at = revocation.time
            # RFC 5280 §5.3.1: the reason code SHOULD be absent rather than "unspecified".
            if revocation.reason is not x509.ReasonFlags.unspecified:
                reason = revocation.reason
        elif self.known_serials is not None and not self.known_serials(serial):
            status = ocsp.OCSPCertStatus.UNKNOWN
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=name_hash,
                issuer_key_hash=key_hash,
                serial_number=serial,
                algorithm=algorithm,
                cert_status=status,
                this_update=now,
                next_update=now + self.validity,
                revocation_time=revoked_at,
                revocation_reason=reason,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.ca_cert)
        )
        if nonce is not None:
            builder = builder.add_extension(nonce, critical=False)
        response = builder.sign(self.ca_key, self._sign_hash)
        return response.public_bytes(_DER)

    # ------------------------------------------------------------------ HTTP
    async def serve(self, host: str, port: int) -> asyncio.Server:
        """Start the HTTP transport of RFC 6960 Appendix A.1 on ``host:port`` (0 = any port).

        ``POST`` with ``Content-Type: application/ocsp-request`` or ``GET /<url-encoded
        base64 request>``; one response per connection, then close. Junk gets 400.
        """
        return await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._converse(reader, writer)
        except asyncio.CancelledError:
            pass  # server shutting down; Python 3.11 would log a cancelled handler as an error
        except Exception:  # a broken client must never stop the server
            pass
        finally:
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request, one response, then close (RFC 9112 §9.6)."""
        try:
            async with asyncio.timeout(HTTP_READ_TIMEOUT):
                code, body = await self._http_exchange(reader)
        except TimeoutError:
            code, body = 408, b""
        except _HTTPError as exc:
            code, body = exc.code, b""
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        headers = [f"Content-Length: {len(body)}", "Connection: close"]
        if code == 200:
            headers += [f"Content-Type: {_OCSP_RESPONSE_TYPE}", "Cache-Control: no-store"]
        elif code == 405:
            headers.append("Allow: GET, POST")
        head = f"HTTP/1.1 {code} {_HTTP_REASONS[code]}\r\n" + "\r\n".join(headers)
        writer.write(head.encode("ascii") + b"\r\n\r\n" + body)
        await writer.drain()
        if code != 200:
            # Lingering close: discard what the client is still sending so that closing
            # does not reset the connection before it has read the error (RFC 9112 §9.6).
            if writer.can_write_eof():
                writer.write_eof()
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(LINGER_TIMEOUT):
                    discarded = 0
                    while discarded <= LINGER_LIMIT and (chunk := await reader.read(MAX_BODY)):
                        discarded += len(chunk)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _http_exchange(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        method, target, headers = await _read_head(reader, request=True)
        if method == "GET":
            return 200, self.respond(_decode_get_target(target))
        if method != "POST":
            raise _HTTPError(405)
        if "transfer-encoding" in headers:
            raise _HTTPError(400)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != _OCSP_REQUEST_TYPE:
            raise _HTTPError(415)
        length = _content_length(headers)
        if length is None:
            raise _HTTPError(411)
        if length > MAX_BODY:
            raise _HTTPError(413)
        return 200, self.respond(await reader.readexactly(length))


def _ec_public_numbers(cert: x509.Certificate) -> ec.EllipticCurvePublicNumbers:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigurationError("the CA certificate does not hold an EC public key")
    return key.public_numbers()


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(_DER)


# --------------------------------------------------------------------------- HTTP/1.x helpers


class _HTTPError(D2TLSError):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _is_token(text: str) -> bool:
    return bool(text) and all(33 <= ord(c) < 127 and c not in '"(),/:;<=>?@[\\]{}' for c in text)


async def _read_head(
    reader: asyncio.StreamReader, *, request: bool
) -> tuple[str, str, dict[str, str]]:
    """Read a start line and headers (RFC 9112 §2-5). Returns (first, second, headers).

    For a request that is (method, target); for a response (status code, reason phrase).
    Header names are lower-cased; repeated headers are joined with ``,``.
    """
    total = 0
    lines: list[str] = []
    while True:
        try:
            raw = await reader.readline()
        except ValueError as exc:  # line longer than the stream limit
            raise _HTTPError(400) from exc
        total += len(raw)
        if not raw.endswith(b"\n") or total > MAX_HEAD or len(lines) > MAX_HEADERS:
            raise _HTTPError(400)
        try:
            line = raw.decode("latin-1").rstrip("\r\n")
        except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes everything
            raise _HTTPError(400) from exc
        if not line:
            if lines:
                break
            continue  # RFC 9112 §2.2: ignore empty lines before the request line
        lines.append(line)
    start, *header_lines = lines
    if request:
        parts = start.split(" ")
        if len(parts) != 3 or not _is_token(parts[0]) or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
            raise _HTTPError(400)
        first, second = parts[0], parts[1]
    else:
        version, _, rest = start.partition(" ")
        code, _, phrase = rest.partition(" ")
        if version not in ("HTTP/1.0", "HTTP/1.1") or len(code) != 3 or not code.isdigit():
            raise _HTTPError(400)
        first, second = code, phrase
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not _is_token(name):
            raise _HTTPError(400)
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return first, second, headers


def _content_length(headers: dict[str, str]) -> int | None:
    """The Content-Length value, ``None`` if absent; 400 if invalid (RFC 9112 §6.3)."""
    if "content-length" not in headers:
        return None
    values = {v.strip() for v in headers["content-length"].split(",")}
    if len(values) != 1:
        raise _HTTPError(400)
    value = values.pop()
    if not value.isdigit() or not value.isascii() or len(value) > 18:
        raise _HTTPError(400)
    return int(value)


def _decode_get_target(target: str) -> bytes:
    """The DER request of a ``GET /<url-encoded base64>`` target (RFC 6960 Appendix A.1)."""
    if not target.startswith("/"):
        target = urllib.parse.urlsplit(target).path  # absolute-form (RFC 9112 §3.2.2)
    encoded = urllib.parse.unquote(target.lstrip("/")).strip()
    if not encoded:
        raise _HTTPError(400)
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _HTTPError(400) from exc


# --------------------------------------------------------------------------- client


def _loopback_addresses(host: str) -> list[str]:
    """Addresses to try for ``host``: a loopback literal or a ``localhost`` name (RFC 6761 §6.3).

    Names are never sent to DNS; anything that is not loopback is refused.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.lower().rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            return ["127.0.0.1", "::1"]
        raise OCSPError(f"OCSP responder host {host!r} is not a loopback address") from None
    if not address.is_loopback:
        raise OCSPError(f"OCSP responder host {host!r} is not a loopback address")
    return [host]


async def _http_post(url: str, body: bytes) -> bytes:
    """POST ``body`` to ``url`` (RFC 6960 Appendix A.1) and return the response body."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 80
    except ValueError as exc:
        raise OCSPError(f"invalid OCSP URL {url!r}: {exc}") from exc
    if parts.scheme.lower() != "http":
        raise OCSPError(f"OCSP URL {url!r} is not http://")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise OCSPError(f"OCSP URL {url!r} has no host or carries credentials")
    host = parts.hostname
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        host_header += f":{parts.port}"

    last_error: OSError | None = None
    for address in _loopback_addresses(host):
        try:
            reader, writer = await asyncio.open_connection(address, port)
            break
        except OSError as exc:
            last_error = exc
    else:
        raise OCSPError(f"OCSP responder {url} unreachable: {last_error}")
    try:
        head = (
            f"POST {path} HTTP/1.0\r\nHost: {host_header}\r\n"
            f"Content-Type: {_OCSP_REQUEST_TYPE}\r\nContent-Length: {len(body)}\r\n"
            f"Accept: {_OCSP_RESPONSE_TYPE}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode("ascii") + body)
        await writer.drain()
        try:
            code, phrase, headers = await _read_head(reader, request=False)
            length = _content_length(headers)
        except _HTTPError as exc:
            raise OCSPError(f"OCSP responder {url} sent no valid HTTP response") from exc
        if code != "200":
            raise OCSPError(f"OCSP responder {url} answered HTTP {code} {phrase}".rstrip())
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != _OCSP_RESPONSE_TYPE:
            raise OCSPError(f"OCSP responder {url} sent Content-Type {media_type or 'none'!r}")
        if length is not None:
            if length > MAX_BODY:
                raise OCSPError(f"OCSP response from {url} larger than {MAX_BODY} bytes")
            return await reader.readexactly(length)
        data = await reader.read(MAX_BODY + 1)
        while data and len(data) <= MAX_BODY:
            more = await reader.read(MAX_BODY + 1 - len(data))
            if not more:
                break
            data += more
        if len(data) > MAX_BODY:
            raise OCSPError(f"OCSP response from {url} larger than {MAX_BODY} bytes")
        return data
    except asyncio.IncompleteReadError as exc:
        raise OCSPError(f"OCSP responder {url} closed the connection early") from exc
    except OSError as exc:
        raise OCSPError(f"OCSP exchange with {url} failed: {exc}") from exc
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _verify_signature(key: object, response: ocsp.OCSPResponse) -> None:
    """Check the BasicOCSPResponse signature with ``key`` (RFC 6960 §4.2.1, §3.2 item 2)."""
    with _malformed("signature algorithm"):
        signature = response.signature
        data = response.tbs_response_bytes
        oid = response.signature_algorithm_oid
        algorithm = response.signature_hash_algorithm
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            if oid == SignatureAlgorithmOID.RSASSA_PSS:
                raise OCSPError("RSASSA-PSS signed OCSP responses are not supported")
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            raise OCSPError(f"unsupported OCSP signature algorithm {oid.dotted_string}")
    except InvalidSignature:
        raise OCSPError("OCSP response signature does not verify") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise OCSPError(f"OCSP response signature does not verify: {exc}") from exc


def _responder_matches(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    """Whether the ResponderID (RFC 6960 §4.2.2.3) names ``cert``."""
    with _malformed("responderID or certs"):
        key_hash = response.responder_key_hash
        if key_hash is not None:
            return key_hash == _issuer_hashes(cert, hashes.SHA1())[1]
        name = response.responder_name
        return name is not None and name == cert.subject


def _ocsp_signing_authorized(cert: x509.Certificate) -> bool:
    """id-kp-OCSPSigning in the EKU (RFC 6960 §4.2.2.2) and, if keyUsage is present,
    digitalSignature (RFC 5280 §4.2.1.3)."""
    with _malformed("responder certificate extensions"):
        extensions = cert.extensions
        try:
            eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return False
        try:
            usage = extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            return ExtendedKeyUsageOID.OCSP_SIGNING in eku
        return ExtendedKeyUsageOID.OCSP_SIGNING in eku and usage.digital_signature


def _authorized_responder(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime
) -> x509.Certificate:
    """The certificate that signed ``response``: the issuer itself, or a responder certificate
    issued directly by it with the id-kp-OCSPSigning EKU (RFC 6960 §4.2.2.2)."""
    if _responder_matches(response, issuer):
        return issuer
    with _malformed("certs"):
        candidates = list(response.certificates)
    for cert in candidates:
        if not _responder_matches(response, cert):
            continue
        try:
            cert.verify_directly_issued_by(issuer)
        except BaseException as exc:
            if not _hostile(exc):
                raise
            raise OCSPError(
                f"OCSP responder certificate was not issued by the certificate issuer: {exc}"
            ) from exc
        if not _ocsp_signing_authorized(cert):
            raise OCSPError("OCSP responder certificate lacks the id-kp-OCSPSigning EKU")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise OCSPError("OCSP responder certificate is outside its validity period")
        return cert
    raise OCSPError("OCSP response is signed neither by the issuer nor by an authorized responder")


def _verify_response(
    der: bytes, request: ocsp.OCSPRequest, issuer: x509.Certificate, now: datetime
) -> OCSPResult:
    with _malformed("not a DER OCSPResponse"):
        response = ocsp.load_der_ocsp_response(der)
        status = response.response_status
    if status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OCSPError(f"OCSP responder refused the request: {status.name.lower()}")
    signer = _authorized_responder(response, issuer, now)
    with _malformed("signer key"):
        key = signer.public_key()
    _verify_signature(key, response)

    with _malformed("responses"):
        for single in response.responses:
            if (
                single.serial_number == request.serial_number
                and single.issuer_name_hash == request.issuer_name_hash
                and single.issuer_key_hash == request.issuer_key_hash
                and single.hash_algorithm.name == request.hash_algorithm.name
            ):
                break
        else:
            raise OCSPError("OCSP response does not cover the requested certificate (CertID)")
        cert_status = single.certificate_status
        this_update = single.this_update_utc
        next_update = single.next_update_utc
        revocation_time = single.revocation_time_utc
        reason = single.revocation_reason

    if this_update > now + CLOCK_SKEW:
        raise OCSPError(f"OCSP response thisUpdate {this_update.isoformat()} is in the future")
    if next_update is None:
        # §4.2.2.1: no nextUpdate means "newer information is always available": only a
        # response produced just now can be current.
        if this_update < now - CLOCK_SKEW:
            raise OCSPError("stale OCSP response: no nextUpdate and an old thisUpdate")
    elif next_update < now:
        raise OCSPError(f"stale OCSP response: nextUpdate {next_update.isoformat()} has passed")

    result_status = {
        ocsp.OCSPCertStatus.GOOD: OCSPStatus.GOOD,
        ocsp.OCSPCertStatus.REVOKED: OCSPStatus.REVOKED,
        ocsp.OCSPCertStatus.UNKNOWN: OCSPStatus.UNKNOWN,
    }[cert_status]
    return OCSPResult(
        status=result_status,
        this_update=this_update,
        next_update=next_update,
        revocation_reason=reason.value if reason is not None else None,
        revocation_time=revocation_time,
    )


async def check_ocsp(
    certificate: x509.Certificate,
    issuer: x509.Certificate,
    url: str,
    *,
    timeout: float = 5.0,
    now: datetime | None = None,
) -> OCSPResult:
    """Ask the responder at ``url`` for the status of ``certificate`` (RFC 6960 §4.1, §3.2).

    The request has one SHA-1 CertID and no nonce. The answer is accepted only if: the
    response status is successful; it is signed by ``issuer`` or by a responder certificate
    issued directly by ``issuer`` with id-kp-OCSPSigning (§4.2.2.2); a SingleResponse carries
    our CertID; thisUpdate <= now + 5 min and nextUpdate >= now. ``url`` must be ``http://``
    to a loopback address or ``localhost``. Any failure raises :class:`OCSPError`.
    """
    moment = _utc(now) if now is not None else utc_now()
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise OCSPError(f"certificate was not issued by the given issuer: {exc}") from exc
    request = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1()).build()
    try:
        async with asyncio.timeout(timeout):
            der = await _http_post(url, request.public_bytes(_DER))
    except TimeoutError:
        raise OCSPError(f"OCSP responder {url} timed out after {timeout:g} s") from None
    return _verify_response(der, request, issuer, moment)


# --------------------------------------------------------------------------- CLI helpers


def _load_ca(pki_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    path = Path(pki_dir) / CA_CERT_FILE
    try:
        ca_cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load CA certificate {path}: {exc}") from exc
    return ca_cert, load_private_key(Path(pki_dir) / CA_KEY_FILE)


def _listen_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_ocsp_responder_forever(pki_dir: Path, host: str, port: int) -> None:
    """Serve OCSP for the CA of ``pki_dir`` (``ca.pem``/``ca.key``, ``revoked.json``) forever.

    Prints ``OCSP responder listening on http://HOST:PORT`` (the bound port if ``port`` is 0).
    """
    ca_cert, ca_key = _load_ca(pki_dir)
    responder = OCSPResponder(ca_cert, ca_key, Path(pki_dir) / REVOCATIONS_FILE)

    async def main() -> None:
        try:
            server = await responder.serve(host, port)
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from exc
        bound = server.sockets[0].getsockname()[1] if server.sockets else port
        print(f"OCSP responder listening on {_listen_url(host, bound)}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def revoke_certificate(pki_dir: Path, cert_path: Path, reason: str = "keyCompromise") -> int:
    """Add the certificate in ``cert_path`` (PEM or DER) to ``pki_dir``/revoked.json.

    The certificate must have been issued by the CA of ``pki_dir``; returns its serial.
    """
    flag = _parse_reason(reason)
    ca_cert, _ = _load_ca(pki_dir)
    try:
        data = Path(cert_path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read certificate {cert_path}: {exc}") from exc
    try:
        if b"-----BEGIN" in data:
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ConfigurationError(f"{cert_path} holds no valid certificate: {exc}") from exc
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigurationError(
            f"{cert_path} was not issued by the CA of {pki_dir}: {exc}"
        ) from exc
    path = Path(pki_dir) / REVOCATIONS_FILE
    revocations = RevocationList.load(path)
    revocations.revoke(cert, flag)
    revocations.save(path)
    return cert.serial_number


__all__ = [
    "OCSPError",
    "OCSPResponder",
    "OCSPResult",
    "OCSPStatus",
    "Revocation",
    "RevocationList",
    "check_ocsp",
    "revoke_certificate",
    "run_ocsp_responder_forever",
]
