"""The ``d2tls`` command line.

Start-up is kept short: this module imports only what building the parser needs; each
command imports its engines when it runs, and the plugin commands (``PLUGINS``) are imported
only when chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from d2tls.core.delegation.channel_security import (
    CHANNEL_IDLE_TIMEOUT,
    CHANNEL_REKEY_DELEGATIONS,
    CHANNEL_REKEY_SECONDS,
    CHANNELS,
)
from d2tls.core.dtls.constants import CIPHER_SUITE_NAMES, CipherSuite
from d2tls.core.errors import D2TLSError

if TYPE_CHECKING:
    from d2tls.core.dtls.config import ClientConfig, ServerConfig
    from d2tls.core.model.spec import RoleSpec
    from d2tls.core.pki.revocation import ClientRevocations

#: Default ``--timeout`` of ``client`` and ``device``: the whole handshake, with the RFC 6347
#: retransmissions (1 s, 2 s, 4 s, ...) inside it.
HANDSHAKE_TIMEOUT = 10.0
#: ``demo --fleet N``: instances are named A..Z.
MAX_FLEET = 26


def parse_address(text: str) -> tuple[str, int]:
    """Parse HOST:PORT or [V6]:PORT."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    if not host or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT with a port in 0..65535, got {text!r}"
        )
    return host, int(port)


def sha256_pin(text: str) -> bytes:
    """An argparse type for ``--server-pin``: 64 hex digits (a SHA-256 value)."""
    try:
        pin = bytes.fromhex(text)
    except ValueError:
        pin = b""
    if len(pin) != 32:
        raise argparse.ArgumentTypeError(f"expected 64 hex digits (SHA-256), got {text!r}")
    return pin


def server_pin_file(text: str) -> bytes:
    """An argparse type for ``--server-pin-file``: the RFC 7469 §2.4 pin (SHA-256 of the
    SubjectPublicKeyInfo) of the server's key, read from a PEM certificate (the first one of
    the file: the leaf) or one PEM/DER public key, which must be ECDSA P-256."""
    import hashlib

    from cryptography import x509

    from d2tls.core.dtls.rawpk import load_spki_file, spki_of_any
    from d2tls.core.pki.verify import load_certificate_chain

    path = Path(text)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {exc.strerror}") from None
    if b"PRIVATE KEY-----" in data:
        raise argparse.ArgumentTypeError(
            f"{text} holds a private key: give the server's certificate or public key"
        )
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            leaf = x509.load_der_x509_certificate(load_certificate_chain(path)[0])
            keys: tuple[bytes, ...] = (spki_of_any(leaf.public_key(), path),)
        elif b"-----BEGIN PUBLIC KEY-----" in data or not data.isascii():
            keys = load_spki_file(path)
        else:
            raise D2TLSError(f"{text} is neither a PEM certificate nor a PEM/DER public key")
    except (D2TLSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc).split(" (")[0]) from None
    if len(keys) != 1:
        raise argparse.ArgumentTypeError(
            f"{text} holds {len(keys)} public keys; pin exactly one (the server's)"
        )
    return hashlib.sha256(keys[0]).digest()


def server_rule(text: str) -> str:
    """An argparse type for ``--allow-server`` (d2tls.core.delegation.policy.parse_server_rule)."""
    from d2tls.core.delegation.policy import parse_server_rule

    try:
        parse_server_rule(text)
    except D2TLSError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def positive_int(text: str) -> int:
    """An argparse type for counts >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def positive_float(text: str) -> float:
    """An argparse type for durations > 0 (seconds)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def fleet_size(text: str) -> int:
    """An argparse type for ``demo --fleet``: 2..MAX_FLEET server instances."""
    if not text.isdigit() or not 2 <= int(text) <= MAX_FLEET:
        raise argparse.ArgumentTypeError(
            f"expected 2 to {MAX_FLEET} server instances, got {text!r} "
            "(without --fleet the demo runs one server)"
        )
    return int(text)


def parse_suites(
    names: list[str] | None, default: tuple[CipherSuite, ...]
) -> tuple[CipherSuite, ...]:
    if not names:
        return default
    suites = []
    for name in names:
        if name not in CIPHER_SUITE_NAMES:
            raise D2TLSError(f"unknown cipher {name!r}; known: {', '.join(CIPHER_SUITE_NAMES)}")
        suites.append(CIPHER_SUITE_NAMES[name])
    return tuple(suites)


# --------------------------------------------------------------------------- server
def open_session_store(url: str, key_file: str | None) -> Any:
    """The server's session store for ``url`` (see d2tls.core.store)."""
    if url == "memory://" and key_file is None:
        from d2tls.core.dtls.session import MemorySessionStore

        return MemorySessionStore()
    from d2tls.core.store import open_store

    return open_store(url, Path(key_file) if key_file else None)


def build_server_config(args: argparse.Namespace) -> ServerConfig:
    from d2tls.core.dtls.config import ClientAuth, ServerConfig
    from d2tls.core.dtls.keylog import keylog_from_environment
    from d2tls.core.dtls.rawpk import load_spki_file
    from d2tls.core.pki.verify import (
        load_certificate_chain,
        load_private_key,
        load_trust_store,
        parse_psk,
    )

    psk_keys = dict(parse_psk(p) for p in args.psk or [])
    default: tuple[CipherSuite, ...]
    if args.cert or args.rawpk_key:
        default = ServerConfig().cipher_suites + (
            (CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,) if psk_keys else ()
        )
    else:
        default = (CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,)
    config = ServerConfig(
        cipher_suites=parse_suites(args.cipher, default),
        certificate_chain=load_certificate_chain(Path(args.cert)) if args.cert else (),
        private_key=load_private_key(Path(args.key)) if args.key else None,
        trust_store=load_trust_store(Path(args.ca)) if args.ca else None,
        client_auth=ClientAuth.REQUIRED
        if args.require_client_cert
        else (
            ClientAuth.OPTIONAL
            if args.ca or args.trust_rawpk or args.twinpeaks_client
            else ClientAuth.NONE
        ),
        raw_private_key=load_private_key(Path(args.rawpk_key)) if args.rawpk_key else None,
        trusted_client_keys=frozenset(load_spki_file(Path(args.trust_rawpk)))
        if args.trust_rawpk
        else frozenset(),
        psk_keys=psk_keys,
        session_lifetime=args.session_lifetime,
        session_store=open_session_store(args.session_store, args.store_key_file),
        cookie_exchange=not args.no_cookie,
        mtu=args.mtu,
        keylog=keylog_from_environment(),
        max_connections=args.max_connections,
        max_half_open=args.max_half_open,
        resume_without_cookie=args.resume_without_cookie,
        revocations=_server_revocations(args),
    )
    return config


def _server_revocations(args: argparse.Namespace) -> ClientRevocations | None:
    """The CRLs of ``--crl`` (checked against the CAs of ``--ca``), or None."""
    from d2tls.core.errors import ConfigurationError
    from d2tls.core.pki.revocation import ClientRevocations

    if not args.crl:
        return None
    if not args.ca:
        raise ConfigurationError("--crl needs --ca (the CA that signed the CRL)")
    return ClientRevocations.load([Path(p) for p in args.crl], Path(args.ca))


async def run_server(args: argparse.Namespace) -> int:
    """Serve until stopped by a signal (d2tls.interrupt); the finally block closes it."""
    from d2tls.core.dtls.events import ConnectionTerminated, Event, HandshakeCompleted
    from d2tls.core.dtls.server import DTLSServer
    from d2tls.net.udp import ServerEndpoint
    from d2tls.trace import TraceFile, tagged

    host, port = args.listen
    trace = TraceFile(Path(args.trace)) if args.trace else None
    config = build_server_config(args)
    client_keys = None
    if args.twinpeaks_client:  # the host resolves the devices' keys; the core checks them
        from d2tls.lab.twinpeaks_keys import TwinPeaksClientKeys

        client_keys = await TwinPeaksClientKeys.start(
            config, Path(args.twinpeaks_root), args.dns, args.twinpeaks_client
        )
    engine = DTLSServer(config, tracer=tagged(trace, party="server", link="server"))

    def report(event: Event) -> None:
        if args.quiet:
            return
        if isinstance(event, HandshakeCompleted):
            conn = engine.connection(event.peer) if event.peer else None
            subject = conn.peer_subject() if conn else None
            print(
                f"handshake {event.peer}: {event.cipher_suite.name} resumed={event.resumed} "
                f"ems={event.extended_master_secret} client={subject}",
                flush=True,
            )
        elif isinstance(event, ConnectionTerminated):
            alert = event.alert.name.lower() if event.alert else None
            print(f"closed {event.peer}: {event.reason} (alert {alert})", flush=True)

    endpoint = await ServerEndpoint.listen(host, port, engine, echo=args.echo, on_event=report)
    if args.stats_file:
        _write_stats_on_sigusr1(engine, Path(args.stats_file))
    print(
        f"listening on {endpoint.address[0]}:{endpoint.address[1]}" if endpoint.address else "",
        flush=True,
    )
    try:
        await _forever()
    finally:
        endpoint.close()
        if client_keys is not None:
            client_keys.close()
    return 0


def _write_stats_on_sigusr1(engine: Any, path: Path) -> None:
    """On SIGUSR1, write ``engine.counters()`` as one JSON object to ``path`` (atomically:
    a temporary file renamed over it, so a reader never sees half a file)."""
    import asyncio
    import dataclasses
    import os
    import signal

    def write() -> None:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(dataclasses.asdict(engine.counters())), encoding="utf-8")
        os.replace(temporary, path)

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, write)


def _run_async(coroutine: Coroutine[Any, Any, int]) -> int:
    import asyncio

    return asyncio.run(coroutine)


async def _forever() -> None:
    """Wait until cancelled (a signal stops the command: see d2tls.interrupt)."""
    import asyncio

    await asyncio.get_running_loop().create_future()


# --------------------------------------------------------------------------- client
def build_client_config(args: argparse.Namespace) -> ClientConfig:
    from d2tls.core.dtls.config import ClientConfig
    from d2tls.core.dtls.keylog import keylog_from_environment
    from d2tls.core.dtls.rawpk import load_spki_file, spki_of
    from d2tls.core.dtls.session_file import load_session
    from d2tls.core.pki.verify import (
        load_certificate_chain,
        load_private_key,
        load_trust_store,
        parse_psk,
    )

    psk_identity, psk = parse_psk(args.psk) if args.psk else (None, None)
    default = (
        (CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,)
        if args.psk and not args.ca and not args.trust_rawpk
        else ClientConfig().cipher_suites
    )
    suites = parse_suites(args.cipher, default)
    session = load_session(Path(args.session_in)) if args.session_in else None
    server_name = args.server_name or args.address[0]
    key_file = args.key or args.rawpk_key  # one key: the certificate's and the raw key
    private_key = load_private_key(Path(key_file)) if key_file else None
    return ClientConfig(
        cipher_suites=suites,
        trust_store=load_trust_store(Path(args.ca)) if args.ca else None,
        server_name=server_name,
        certificate_chain=load_certificate_chain(Path(args.cert)) if args.cert else (),
        private_key=private_key,
        trusted_server_keys=frozenset(load_spki_file(Path(args.trust_rawpk)))
        if args.trust_rawpk
        else frozenset(),
        client_raw_public_key=spki_of(private_key) if args.rawpk_key and private_key else None,
        psk_identity=psk_identity,
        psk=psk,
        session=session,
        mtu=args.mtu,
        keylog=keylog_from_environment(),
    )


def _cmd_client(args: argparse.Namespace) -> int:
    import asyncio

    result = asyncio.run(run_client(args))
    print_client_result(result, args.json)
    return 0 if result["ok"] else 1


async def run_client(args: argparse.Namespace) -> dict[str, Any]:
    from d2tls.core.dtls.client import DTLSClient
    from d2tls.core.dtls.rawpk import fingerprint
    from d2tls.core.dtls.session_file import save_session
    from d2tls.core.pki.verify import certificate_subject
    from d2tls.net.udp import ClientEndpoint, ConnectionFailed

    result: dict[str, Any] = {"ok": False}
    config = build_client_config(args)
    if config.certificate_chain and config.private_key is None:
        raise D2TLSError("--cert needs --key")
    if args.session_out:
        _check_writable(Path(args.session_out))
    engine = DTLSClient(config)
    started = time.perf_counter()
    endpoint = await ClientEndpoint.connect(args.address[0], args.address[1], engine)
    try:
        done = await endpoint.handshake(timeout=args.timeout)
        result.update(
            ok=True,
            cipher=done.cipher_suite.name,
            session_id=done.session.session_id.hex(),
            resumed=done.resumed,
            extended_master_secret=done.extended_master_secret,
            handshake_ms=round((time.perf_counter() - started) * 1000, 3),
            peer_certificate_subject=(
                certificate_subject(engine.peer_certificates[0])
                if engine.peer_certificates
                else None
            ),
            peer_raw_public_key=(
                fingerprint(engine.peer_raw_public_key) if engine.peer_raw_public_key else None
            ),
        )
        if args.session_out:
            try:  # an empty session ID cannot be resumed: say so now, write no file
                save_session(
                    done.session, Path(args.session_out), f"{args.address[0]}:{args.address[1]}"
                )
            except D2TLSError:
                await endpoint.close()
                raise
        result["received"] = None
        if args.send is not None:
            endpoint.send(args.send.encode())
            try:
                result["received"] = (await endpoint.receive(timeout=args.receive_timeout)).decode(
                    errors="replace"
                )
            except TimeoutError:
                result["received"] = None
        await endpoint.close()
    except ConnectionFailed as exc:
        result.update(
            ok=False,
            error=exc.terminated.reason or str(exc),
            alert=exc.terminated.alert.name.lower() if exc.terminated.alert else None,
            alert_from_peer=exc.terminated.by_peer,
        )
        await endpoint.close()
    except TimeoutError as exc:  # NoAnswer / HandshakeTimeout name the peer and the wait
        result.update(ok=False, error=str(exc) or "handshake timed out", alert=None)
        await endpoint.close()
    return result


def _check_writable(path: Path) -> None:
    """Fail before the handshake if the session cannot be saved."""
    if not path.parent.is_dir():
        raise D2TLSError(f"cannot write {path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise D2TLSError(f"cannot write {path}: it is a directory")


def print_client_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    if result["ok"]:
        print(
            f"connected: {result['cipher']} resumed={result['resumed']} "
            f"ems={result['extended_master_secret']} in {result['handshake_ms']} ms"
        )
        print(f"session id: {result['session_id']}")
        if result.get("peer_certificate_subject"):
            print(f"server: {result['peer_certificate_subject']}")
        if result.get("peer_raw_public_key"):
            print(f"server raw public key: {result['peer_raw_public_key']}")
        if "received" in result:
            print(f"received: {result['received']}")
    else:
        alert = result.get("alert")
        if alert:
            side = "from the server" if result.get("alert_from_peer") else "sent"
            print(f"failed: {result.get('error')} (alert {alert} {side})", file=sys.stderr)
        else:
            print(f"failed: {result.get('error')}", file=sys.stderr)


# --------------------------------------------------------------------------- agent, device
async def run_agent(args: argparse.Namespace) -> int:
    """Serve devices until stopped by a signal; the finally block closes and reports."""
    import logging

    from d2tls.core.delegation.policy import AgentPolicy, load_agent_psk_file
    from d2tls.core.dtls.keylog import keylog_from_environment
    from d2tls.core.pki.verify import load_certificate_chain, load_trust_store
    from d2tls.core.roles.agent import AgentConfig
    from d2tls.net.agent_host import Agent
    from d2tls.trace import TraceFile

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("agent: %(message)s"))
    logging.getLogger("d2tls.agent").addHandler(handler)
    logging.getLogger("d2tls.agent").setLevel(logging.INFO)
    policy = AgentPolicy.build(
        load_agent_psk_file(Path(args.psk_file)), args.allow_server or (), args.allow_unbound
    )

    trace = TraceFile(Path(args.trace)) if args.trace else None
    issuer = None
    if args.ocsp:
        from cryptography import x509

        issuer = x509.load_der_x509_certificate(load_certificate_chain(Path(args.ca))[0])
    config = AgentConfig(
        psk_keys=policy.psk_keys,
        trust_store=load_trust_store(Path(args.ca)),
        policy=policy,
        ocsp_url=args.ocsp,
        context_lifetime=args.context_lifetime,
        keylog=keylog_from_environment(),
        tracer=trace,
        max_connections=args.max_connections,
        max_half_open=args.max_half_open,
        channel=args.channel,
    )
    server_keys = None
    if args.twinpeaks_server:  # the host resolves the servers' keys; the core uses them
        from d2tls.lab.twinpeaks_keys import ServerKeyTable

        table = ServerKeyTable()
        server_keys = await table.start(Path(args.twinpeaks_root), args.dns, args.twinpeaks_server)
        config.server_keys = table
    agent = Agent(config, ocsp_issuer=issuer)
    host, port = await agent.start(*args.listen)
    print(f"agent listening on {host}:{port}", flush=True)
    try:
        await _forever()
    finally:
        agent.close()
        if server_keys is not None:
            server_keys.close()
        print(
            f"agent: {agent.completed} delegations completed, {agent.failed} failed, "
            f"{agent.chain_misses} chain-cache misses",
            flush=True,
        )
    return 0


def _cmd_device(args: argparse.Namespace) -> int:
    import asyncio

    result = asyncio.run(run_device(args))
    print_device_result(result, args.json)
    return 0 if result["ok"] else 1


async def run_device(args: argparse.Namespace) -> dict[str, Any]:
    from d2tls.core.delegation.messages import DelegationMode
    from d2tls.core.dtls.config import ClientConfig
    from d2tls.core.dtls.keylog import keylog_from_environment
    from d2tls.core.dtls.rawpk import spki_of
    from d2tls.core.pki.verify import (
        load_certificate_chain,
        load_private_key,
        load_trust_store,
        parse_psk,
    )
    from d2tls.core.roles.device import DeviceConfig
    from d2tls.core.roles.signer import DeviceSigner
    from d2tls.net.device_host import Device, run_standalone
    from d2tls.net.udp import ConnectionFailed
    from d2tls.trace import TraceFile, tagged

    trace = TraceFile(Path(args.trace)) if args.trace else None
    chain = tuple(load_certificate_chain(Path(args.cert))) if args.cert else ()
    key = load_private_key(Path(args.key))
    raw_key = spki_of(key) if args.rawpk else None  # RFC 7250: e.g. a TwinPeaks member key
    suites = parse_suites(args.cipher, (CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,))
    mode = "standalone" if args.standalone else "strict" if args.strict else args.mode
    result: dict[str, Any] = {"ok": False, "mode": mode}
    connections: list[dict[str, Any]] = []
    result["connections"] = connections
    if args.standalone:
        if not args.ca:
            raise D2TLSError("--standalone needs --ca (the device verifies the server itself)")
        config = ClientConfig(
            cipher_suites=suites,
            trust_store=load_trust_store(Path(args.ca)),
            server_name=args.server_name,
            certificate_chain=chain,
            private_key=key,
            client_raw_public_key=raw_key,
            keylog=keylog_from_environment(),
        )
        for _ in range(args.connections):
            try:
                connection, report = await run_standalone(
                    config,
                    args.server,
                    tracer=tagged(trace, party="device", link="device-server"),
                    timeout=args.timeout,
                )
            except (ConnectionFailed, TimeoutError) as exc:
                result["error"] = str(exc) or f"no answer from the server after {args.timeout:g} s"
                return result
            entry = report.to_dict()
            entry["received"] = await _exchange(connection, args)
            connections.append(entry)
        result["ok"] = True
        return result
    if not args.agent or not args.psk:
        raise D2TLSError("delegation needs --agent HOST:PORT and --psk ID:HEX")
    identity, psk = parse_psk(args.psk)
    device = Device(
        DeviceConfig(
            agent=args.agent,
            psk_identity=identity,
            psk=psk,
            server=args.server,
            server_name=args.server_name,
            certificate_chain=chain,
            signer=DeviceSigner(key),
            mode=DelegationMode[args.mode.upper()],
            cipher_suites=suites,
            keylog=keylog_from_environment(),
            tracer=trace,
            timeout=args.timeout,
            server_pin=args.server_pin,
            strict=args.strict,
            server_trust_store=load_trust_store(Path(args.ca)) if args.ca else None,
            channel=args.channel,
            raw_public_key=raw_key,
            channel_idle_timeout=args.channel_idle_timeout,
            channel_rekey_delegations=args.channel_rekey_delegations,
            channel_rekey_seconds=args.channel_rekey_seconds,
        )
    )
    try:
        return await _delegated_connections(device, args, result, connections)
    finally:
        device.close()


async def _delegated_connections(
    device: Any,
    args: argparse.Namespace,
    result: dict[str, Any],
    connections: list[dict[str, Any]],
) -> dict[str, Any]:
    from d2tls.core.errors import DelegationFailed

    for _ in range(args.connections):
        if args.delegate_each:
            device.context = None  # a new D2TLS session, over the standing channel
        try:
            delegated = await device.connect()
        except DelegationFailed as exc:
            result["error"] = str(exc) or "delegation failed (no reason given)"
            return result
        entry = delegated.report.to_dict()
        protocol = device.protocol
        if protocol is not None:
            entry["channel_handshakes"] = {
                "full": protocol.channel_full_handshakes,
                "abbreviated": protocol.channel_abbreviated_handshakes,
            }
        entry["session_id"] = delegated.session.session_id.hex()
        entry["server_raw_public_key"] = _raw_key_fingerprint(delegated.session.peer_certificates)
        entry["received"] = await _exchange(delegated, args)
        connections.append(entry)
    result["ok"] = True
    return result


def _raw_key_fingerprint(peer: tuple[bytes, ...]) -> str | None:
    """``sha256:...`` of the server's raw public key (RFC 7250), None for a certificate."""
    from d2tls.core.dtls.rawpk import fingerprint, load_raw_public_key
    from d2tls.core.errors import CertificateError

    if len(peer) != 1:
        return None
    try:
        return fingerprint(load_raw_public_key(peer[0], "server")[1])
    except CertificateError:
        return None


async def _exchange(connection: Any, args: argparse.Namespace) -> str | None:
    from d2tls.net.udp import ConnectionFailed

    received = None
    if args.send is not None:
        connection.send(args.send.encode())
        try:
            received = (await connection.receive(timeout=args.receive_timeout)).decode(
                errors="replace"
            )
        except (TimeoutError, ConnectionFailed):
            received = None
    await connection.close()
    return received


def print_device_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    if not result["ok"]:
        print(f"device failed: {result.get('error')}", file=sys.stderr)
    for index, entry in enumerate(result["connections"], 1):
        ops = entry["key_operations"]
        print(
            f"connection {index} ({entry['mode']}): delegations={entry['delegations']} "
            f"sign={ops['sign']} verify={ops['verify']} ecdh={ops['ecdh']} keygen={ops['keygen']} "
            f"cpu={entry['cpu_ms']:.1f} ms wall={entry['wall_ms']:.1f} ms "
            f"received={entry['received']!r}"
        )


# --------------------------------------------------------------------------- pki, model, demo
def run_pki_init(args: argparse.Namespace) -> int:
    from d2tls.core.pki.generate import init_pki

    paths = init_pki(
        Path(args.directory),
        server_name=args.server_name,
        devices=args.devices,
        replace=args.force,
    )
    print(f"CA:      {paths.ca_cert}")
    print(f"server:  {paths.server_cert} (key {paths.server_key})")
    for device in paths.devices:
        print(f"device:  {device.cert} (key {device.key})")
    print(f"PSKs:    {paths.psk_file}")
    print(f"agent:   {paths.agent_psk_file} (the PSKs bound to the device certificates)")
    return 0


def run_pki_ocsp(args: argparse.Namespace) -> int:
    """Serve OCSP until stopped by a signal (d2tls.interrupt)."""
    from d2tls.net.ocsp import run_ocsp_responder_forever

    run_ocsp_responder_forever(Path(args.pki), args.listen[0], args.listen[1])
    return 0


def run_pki_revoke(args: argparse.Namespace) -> int:
    from d2tls.net.ocsp import revoke_certificate

    serial = revoke_certificate(Path(args.pki), Path(args.certificate), args.reason)
    print(f"revoked serial {serial:x}")
    return 0


def _spec_role(name: str) -> RoleSpec:
    """A role of spec/dtls.yaml, spec/d2tls.yaml (the D2TLS device and agent) or
    spec/twinpeaks.yaml (member, key_server, resolver)."""
    from d2tls.core.errors import SpecError
    from d2tls.core.model.spec import load_spec

    specs = [load_spec("dtls"), load_spec("d2tls"), load_spec("twinpeaks")]
    for spec in specs:
        if name in spec.roles:
            return spec.roles[name]
    known = sorted(role for spec in specs for role in spec.roles)
    raise SpecError(f"unknown role {name!r}; known: {known}")


def run_model_diagram(args: argparse.Namespace) -> int:
    from d2tls.lab.diagram import render

    out = render(_spec_role(args.role), Path(args.output))
    print(f"wrote {out}")
    return 0


def run_model_table(args: argparse.Namespace) -> int:
    from d2tls.lab.diagram import GLOBAL_TRIGGERS, transition_label

    role = _spec_role(args.role)
    for t in role.transitions:
        if t.trigger in GLOBAL_TRIGGERS:
            continue
        print(
            f"{t.source:34} {t.dest:34} {transition_label(t.trigger, t.guards, t.unless, t.emits)}"
        )
    return 0


def run_model_lint(args: argparse.Namespace) -> int:
    """Load every spec (schema, references, reachability), then compare it with the code
    built from it: the generated state Enums and the engines' handler tables."""
    from d2tls.core.model.codegen import SPEC_FILES, lint

    problems = lint()
    for problem in problems:
        print(f"d2tls model lint: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"spec OK: {', '.join(f'spec/{name}.yaml' for name in SPEC_FILES)}")
    return 0


def run_model_states(args: argparse.Namespace) -> int:
    """Regenerate d2tls/core/model/states.py from the spec."""
    from d2tls.core.model.codegen import STATES_MODULE, render_states

    output = Path(args.output) if args.output else STATES_MODULE
    output.write_text(render_states(), encoding="utf-8")
    print(f"wrote {output}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    if args.fleet is not None:
        from d2tls.lab.fleet import run_fleet_demo

        return run_fleet_demo(args.fleet, as_json=args.json, keep=args.keep)
    if args.keys == "twinpeaks":
        from d2tls.lab.twinpeaks_d2tls import run_demo as twinpeaks_demo

        return twinpeaks_demo(as_json=args.json, keep=args.keep)
    from d2tls.lab.demo import run_demo as demo

    return demo(as_json=args.json, server_kind=args.server or "d2tls", keep=args.keep)


# --------------------------------------------------------------------------- parser
def add_association_limits(parser: argparse.ArgumentParser) -> None:
    """``--max-connections`` / ``--max-half-open`` (docs/security.md, association limits)."""
    from d2tls.core.dtls.config import ServerConfig

    defaults = ServerConfig()
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        default=defaults.max_connections,
        metavar="N",
        help="associations held; a live established one is never evicted (default %(default)s)",
    )
    parser.add_argument(
        "--max-half-open",
        type=positive_int,
        default=defaults.max_half_open,
        metavar="N",
        help="unfinished handshakes held, oldest evicted first (default %(default)s)",
    )


# One ``_add_<command>(subparsers)`` per subcommand: it declares the options and sets
# ``handler`` (``args -> exit status``) and, if needed, ``check`` (``(parser, args) -> None``,
# calls ``parser.error`` for combinations argparse cannot express). Adding an option is a
# local change to one of these functions.
def _add_server(sub: Any) -> None:
    server = sub.add_parser("server", help="run a DTLS 1.2 server (until Ctrl-C)")
    server.add_argument(
        "--listen",
        type=parse_address,
        required=True,
        metavar="HOST:PORT",
        help="UDP address to listen on (port 0: any free port, printed at start)",
    )
    server.add_argument("--cert", help="server certificate chain (PEM)")
    server.add_argument("--key", help="server private key (PEM, P-256)")
    server.add_argument("--ca", help="trust store for client certificates (PEM)")
    server.add_argument(
        "--rawpk-key", metavar="FILE", help="raw public key pair to offer (RFC 7250; PEM, P-256)"
    )
    server.add_argument(
        "--trust-rawpk", metavar="FILE", help="client raw public keys to accept (PEM PUBLIC KEYs)"
    )
    server.add_argument(
        "--require-client-cert",
        action="store_true",
        help="refuse clients without a certificate or raw key (needs --ca, --trust-rawpk or "
        "--twinpeaks-client)",
    )
    server.add_argument(
        "--psk", action="append", metavar="ID:HEX", help="accept this PSK (repeatable)"
    )
    server.add_argument(
        "--cipher",
        action="append",
        choices=sorted(CIPHER_SUITE_NAMES),
        help="offer only these cipher suites (repeatable; default: all that the keys allow)",
    )
    server.add_argument("--echo", action="store_true", help="echo application data back")
    server.add_argument(
        "--session-lifetime",
        type=float,
        default=3600.0,
        metavar="S",
        help="seconds a session can be resumed (default 3600)",
    )
    server.add_argument(
        "--mtu", type=int, default=1400, help="largest datagram to send, bytes (default 1400)"
    )
    server.add_argument("--no-cookie", action="store_true", help="skip HelloVerifyRequest (unsafe)")
    server.add_argument(
        "--resume-without-cookie",
        action="store_true",
        help="resume known sessions without HelloVerifyRequest (RFC 6347 4.2.1; "
        "see docs/security.md for the amplification bound)",
    )
    server.add_argument(
        "--crl",
        action="append",
        metavar="FILE",
        help="refuse client certificates this CRL revokes (PEM/DER, signed by a --ca; repeatable)",
    )
    server.add_argument("--quiet", action="store_true", help="do not print one line per handshake")
    server.add_argument("--trace", metavar="FILE", help="append JSON event traces to FILE")
    server.add_argument(
        "--stats-file",
        metavar="FILE",
        help="on SIGUSR1, write the server's counters (pending hellos, half-open and "
        "established associations, drops, internal errors) to FILE as JSON",
    )
    add_association_limits(server)
    server.add_argument(
        "--twinpeaks-client",
        action="append",
        type=_client_name,
        metavar="NAME[@ADDR]",
        help="accept the device NAME's TwinPeaks key as a client raw public key (RFC 7250), "
        "looked up through --twinpeaks-root and --dns (repeatable)",
    )
    server.add_argument(
        "--twinpeaks-root", metavar="FILE", help="TwinPeaks trust-anchor file for the lookups"
    )
    server.add_argument(
        "--dns", type=parse_address, metavar="HOST:PORT", help="DNS server for TwinPeaks lookups"
    )
    server.add_argument(
        "--session-store",
        default="memory://",
        metavar="URL",
        help="memory:// (default), sqlite:///path.db or redis://host:port/db",
    )
    server.add_argument(
        "--store-key-file",
        metavar="FILE",
        help="key that encrypts master secrets in sqlite/redis stores (32 bytes, hex)",
    )
    server.set_defaults(handler=lambda args: _run_async(run_server(args)), check=_check_server)


def _client_name(text: str) -> Any:
    from d2tls.lab.twinpeaks_keys import parse_client_name

    try:
        return parse_client_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_server(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    tp = [args.twinpeaks_client, args.twinpeaks_root, args.dns]
    if any(v is not None for v in tp) and not all(v is not None for v in tp):
        parser.error("--twinpeaks-client, --twinpeaks-root and --dns come together")


def _add_client(sub: Any) -> None:
    client = sub.add_parser("client", help="run a DTLS 1.2 client (one handshake)")
    client.add_argument(
        "address", type=parse_address, metavar="HOST:PORT", help="the server's UDP address"
    )
    client.add_argument("--ca", help="trust store for the server certificate (PEM)")
    client.add_argument("--cert", help="client certificate chain (PEM)")
    client.add_argument("--key", help="client private key (PEM)")
    client.add_argument(
        "--rawpk-key", metavar="FILE", help="authenticate with this raw key (RFC 7250; PEM, P-256)"
    )
    client.add_argument(
        "--trust-rawpk",
        metavar="FILE",
        help="server raw public keys to trust (PEM PUBLIC KEYs; RFC 7250)",
    )
    client.add_argument("--server-name", help="expected server name (default: HOST)")
    client.add_argument("--psk", metavar="ID:HEX", help="pre-shared key: identity and hex key")
    client.add_argument(
        "--cipher",
        action="append",
        choices=sorted(CIPHER_SUITE_NAMES),
        help="offer only these cipher suites (repeatable)",
    )
    client.add_argument(
        "--mtu", type=int, default=1400, help="largest datagram to send, bytes (default 1400)"
    )
    client.add_argument("--session-in", metavar="FILE", help="resume the session saved in FILE")
    client.add_argument(
        "--session-out", metavar="FILE", help="save the session (holds a secret; 0600)"
    )
    client.add_argument("--send", metavar="TEXT", help="send TEXT and print the reply")
    client.add_argument("--json", action="store_true", help="print one JSON object")
    _add_timeouts(client)
    client.set_defaults(handler=_cmd_client)


def _add_timeouts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=HANDSHAKE_TIMEOUT,
        metavar="S",
        help=f"give up a handshake after S seconds, retransmissions included "
        f"(RFC 6347 §4.2.4; default {HANDSHAKE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--receive-timeout",
        type=positive_float,
        default=3.0,
        metavar="S",
        help="seconds to wait for the reply to --send (default 3)",
    )


def _add_pki(sub: Any) -> None:
    pki = sub.add_parser("pki", help="test PKI").add_subparsers(dest="pki_command", required=True)
    init = pki.add_parser("init", help="create a CA, a server certificate, devices and PSKs")
    init.add_argument("directory", help="where to write the PKI (created if missing)")
    init.add_argument(
        "--server-name", default="localhost", help="DNS name in the server certificate"
    )
    init.add_argument(
        "--devices", type=positive_int, default=1, help="device certificates to issue (default 1)"
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing PKI in DIRECTORY (deletes its CA, keys, devices and PSKs)",
    )
    init.set_defaults(handler=run_pki_init)
    ocsp = pki.add_parser(
        "ocsp", help="run an OCSP responder for the PKI's CA (RFC 6960; until Ctrl-C)"
    )
    ocsp.add_argument(
        "--listen",
        type=parse_address,
        required=True,
        metavar="HOST:PORT",
        help="TCP address of the HTTP responder",
    )
    ocsp.add_argument("--pki", required=True, metavar="DIR", help="a directory from 'pki init'")
    ocsp.set_defaults(handler=run_pki_ocsp)
    revoke = pki.add_parser("revoke", help="mark a certificate revoked for the OCSP responder")
    revoke.add_argument("pki", metavar="DIR", help="a directory from 'pki init'")
    revoke.add_argument("certificate", help="the certificate to revoke (PEM or DER)")
    revoke.add_argument(
        "--reason", default="keyCompromise", help="RFC 5280 revocation reason (keyCompromise)"
    )
    revoke.set_defaults(handler=run_pki_revoke)


def _add_agent(sub: Any) -> None:
    agent = sub.add_parser("agent", help="run a D2TLS security agent (until Ctrl-C)")
    agent.add_argument(
        "--listen",
        type=parse_address,
        required=True,
        metavar="HOST:PORT",
        help="UDP address for the devices' DTLS-PSK channel",
    )
    agent.add_argument(
        "--psk-file",
        required=True,
        help="the agent's PSK file: one 'ID:HEX [cert-sha256=FP] [allow=RULE,...]' line per "
        "device (written by 'd2tls pki init' as agent-psk.txt)",
    )
    agent.add_argument(
        "--allow-server",
        action="append",
        type=server_rule,
        metavar="RULE",
        help="a server any device may delegate to: HOST:PORT, ADDRESS[:PORT], CIDR[:PORT], "
        "[IPV6]:PORT (repeatable; default: only the PSK file's allow= entries)",
    )
    agent.add_argument(
        "--allow-unbound",
        action="store_true",
        help="let PSK identities without a certificate binding delegate (default: refuse)",
    )
    agent.add_argument("--ca", required=True, help="trust store for server certificates (PEM)")
    agent.add_argument("--ocsp", metavar="URL", help="check the server certificate with OCSP")
    agent.add_argument(
        "--context-lifetime",
        type=int,
        default=6 * 3600,
        metavar="S",
        help="seconds a device may resume a handed-over session (default 21600)",
    )
    agent.add_argument("--trace", metavar="FILE", help="append JSON event traces to FILE")
    agent.add_argument(
        "--channel",
        choices=CHANNELS,
        default="psk",
        help="device channel: psk (default) accepts PSK or ECDHE-PSK devices; ecdhe-psk "
        "requires ECDHE-PSK (RFC 5489: forward secrecy for handed-over contexts)",
    )
    add_association_limits(agent)
    agent.add_argument(
        "--twinpeaks-server",
        action="append",
        type=_client_name,
        metavar="NAME[@ADDR]",
        help="authenticate the server NAME (a request's server_name) by the raw public key "
        "TwinPeaks serves for it (RFC 7250) instead of a chain and OCSP (repeatable)",
    )
    agent.add_argument(
        "--twinpeaks-root", metavar="FILE", help="TwinPeaks trust-anchor file for the lookups"
    )
    agent.add_argument(
        "--dns", type=parse_address, metavar="HOST:PORT", help="DNS server for TwinPeaks lookups"
    )
    agent.set_defaults(handler=lambda args: _run_async(run_agent(args)), check=_check_agent)


def _check_agent(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    tp = [args.twinpeaks_server, args.twinpeaks_root, args.dns]
    if any(v is not None for v in tp) and not all(v is not None for v in tp):
        parser.error("--twinpeaks-server, --twinpeaks-root and --dns come together")


def _add_device(sub: Any) -> None:
    device = sub.add_parser("device", help="run a D2TLS device (or the standalone baseline)")
    device.add_argument(
        "--agent", type=parse_address, metavar="HOST:PORT", help="the security agent's address"
    )
    device.add_argument("--psk", metavar="ID:HEX", help="PSK shared with the agent")
    device.add_argument(
        "--channel",
        choices=CHANNELS,
        default="psk",
        help="agent channel: psk (default, TLS_PSK_WITH_AES_128_CCM_8) or ecdhe-psk "
        "(TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256: forward secrecy for contexts)",
    )
    device.add_argument(
        "--server",
        type=parse_address,
        required=True,
        metavar="HOST:PORT",
        help="the DTLS server's UDP address",
    )
    device.add_argument(
        "--server-name", required=True, help="the name the server certificate must carry"
    )
    device.add_argument("--cert", help="device certificate chain (PEM; or --rawpk)")
    device.add_argument(
        "--rawpk",
        action="store_true",
        help="present the key of --key as an RFC 7250 raw public key instead of a certificate "
        "(e.g. a TwinPeaks member key, which the server resolves through TwinPeaks)",
    )
    device.add_argument(
        "--key", required=True, help="device private key (PEM); never leaves the device"
    )
    device.add_argument(
        "--mode",
        choices=["bound", "blind"],
        default="bound",
        help="bound (default): check the handshake before signing; blind: sign the given hash",
    )
    pin = device.add_mutually_exclusive_group()
    pin.add_argument(
        "--server-pin",
        type=sha256_pin,
        metavar="HEX",
        help="bound mode: sign only if the server certificate carries this key (SHA-256 of its "
        "SubjectPublicKeyInfo, 64 hex digits, RFC 7469 §2.4)",
    )
    pin.add_argument(
        "--server-pin-file",
        type=server_pin_file,
        dest="server_pin",
        metavar="FILE",
        help="as --server-pin, the pin taken from the server's PEM certificate or its PEM/DER "
        "public key (ECDSA P-256)",
    )
    device.add_argument(
        "--strict",
        action="store_true",
        help="strict mode (bound mode only): before signing, also verify the server's "
        "ServerKeyExchange signature itself (RFC 8422 §5.4), under the pinned key "
        "(--server-pin/--server-pin-file: 1 ECDSA verify) or else under a server chain "
        "verified for --server-name against --ca (chain length + 1 verifies); a compromised "
        "agent then cannot have the device sign a handshake the server took no part in",
    )
    device.add_argument("--standalone", action="store_true", help="full handshake without an agent")
    device.add_argument(
        "--ca", help="trust store for the server's chain (--standalone, or --strict without a pin)"
    )
    device.add_argument(
        "--cipher",
        action="append",
        choices=sorted(CIPHER_SUITE_NAMES),
        help="offer only these cipher suites (repeatable)",
    )
    device.add_argument(
        "--connections", type=positive_int, default=1, help="connect N times in a row"
    )
    device.add_argument(
        "--delegate-each",
        action="store_true",
        help="delegate for every connection (forget the cached context): each is a new D2TLS "
        "session, over the standing channel to the agent",
    )
    device.add_argument(
        "--channel-idle-timeout",
        type=float,
        default=CHANNEL_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="close the standing channel to the agent after this long without a delegation "
        "(0: close it after every delegation; default %(default)g)",
    )
    device.add_argument(
        "--channel-rekey-delegations",
        type=int,
        default=CHANNEL_REKEY_DELEGATIONS,
        metavar="N",
        help="a fresh full channel handshake after N delegations (0: never; default %(default)d)",
    )
    device.add_argument(
        "--channel-rekey-seconds",
        type=float,
        default=CHANNEL_REKEY_SECONDS,
        metavar="SECONDS",
        help="a fresh full channel handshake after this long (0: never; default %(default)g)",
    )
    device.add_argument("--send", metavar="TEXT", help="send TEXT on each connection")
    device.add_argument("--json", action="store_true", help="print one JSON object")
    device.add_argument("--trace", metavar="FILE", help="append JSON event traces to FILE")
    _add_timeouts(device)
    device.set_defaults(handler=_cmd_device, check=_check_device)


def _check_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.cert is None) == (not args.rawpk):
        parser.error("give exactly one device credential: --cert FILE or --rawpk")
    if args.server_pin is not None and (args.standalone or args.mode == "blind"):
        parser.error(
            "--server-pin needs bound mode: a blind or standalone device does not check the "
            "server certificate before it signs"
        )
    if args.strict and (args.standalone or args.mode == "blind"):
        parser.error(
            "--strict needs bound mode: a blind device sees only a hash and cannot verify the "
            "ServerKeyExchange (a standalone device verifies the server anyway)"
        )
    if args.strict and args.server_pin is None and not args.ca:
        parser.error(
            "--strict needs the server's key: --server-pin HEX, --server-pin-file FILE, or --ca "
            "FILE to verify the server's chain"
        )
    if args.ca and not (args.standalone or args.strict):
        parser.error("--ca is used only with --standalone or with --strict")


def _add_model(sub: Any) -> None:
    model = sub.add_parser("model", help="the spec's state machines").add_subparsers(
        dest="model_command", required=True
    )
    diagram = model.add_parser("diagram", help="draw a role's machine (.svg, .png, .dot)")
    diagram.add_argument("role", help="a role of the spec, e.g. dtls_client or d2tls_device")
    diagram.add_argument(
        "-o", "--output", required=True, help="output file; its suffix picks the format"
    )
    diagram.set_defaults(handler=run_model_diagram)
    table = model.add_parser("table", help="print a role's transition table")
    table.add_argument("role", help="a role of the spec, e.g. dtls_server")
    table.set_defaults(handler=run_model_table)
    lint = model.add_parser(
        "lint", help="check the spec and the code generated from it (exit 1 on any problem)"
    )
    lint.set_defaults(handler=run_model_lint)
    states = model.add_parser("states", help="regenerate the state Enums (d2tls.core.model.states)")
    states.add_argument("-o", "--output", help="write here instead of the package module")
    states.set_defaults(handler=run_model_states)


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the end-to-end demo on loopback")
    demo.add_argument("--json", action="store_true", help="print the whole result as JSON")
    demo.add_argument(
        "--server",
        choices=["d2tls", "openssl", "gnutls"],
        help="which DTLS server the device and agent talk to (default d2tls)",
    )
    demo.add_argument("--keep", metavar="DIR", help="keep PKI, logs and traces in DIR")
    demo.add_argument(
        "--keys",
        choices=["x509", "twinpeaks"],
        default="x509",
        help="the device's identity: an X.509 certificate (default), or a TwinPeaks member "
        "key as an RFC 7250 raw public key that the server resolves through TwinPeaks",
    )
    demo.add_argument(
        "--fleet",
        type=fleet_size,
        metavar="N",
        help=f"run N (2..{MAX_FLEET}) d2tls server instances sharing a Redis session store "
        "behind a UDP load balancer",
    )
    demo.set_defaults(handler=run_demo, check=_check_demo)


def _check_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.keys == "twinpeaks" and (args.fleet is not None or args.server not in (None, "d2tls")):
        parser.error("--keys twinpeaks runs one d2tls server (no --fleet, no --server)")
    if args.fleet is not None and args.server not in (None, "d2tls"):
        parser.error(
            f"--fleet runs d2tls servers only; it cannot be combined with --server {args.server}"
        )


#: Subcommands that live in other modules, imported only when chosen: name -> (module, help).
#: Each module has ``register(subparsers)`` adding its commands with ``handler`` set; the
#: help here is what ``d2tls --help`` lists (tests/test_cli.py checks that it matches).
PLUGINS: dict[str, tuple[str, str]] = {
    "prove": (
        "d2tls.prove.cli",
        "prove the Tamarin theories and compare with the expected verdicts",
    ),
    "bench": (
        "d2tls.bench.cli",
        "benchmarks (device, latency, server, record, flood, auth, channel)",
    ),
    "overhead": ("d2tls.bench.cli", "24-hour session-overhead model of the paper (Figs. 9-10)"),
    "conformance": (
        "d2tls.conformance.cli",
        "D2TLS readiness, scripted RFC scenarios and state-machine learning of a server",
    ),
    "twinpeaks": (
        "d2tls.lab.twinpeaks_cli",
        "TwinPeaks key servers, resolver, lookup, connect and demo on loopback",
    ),
    "conformance-peers": (
        "d2tls.conformance.cli",
        "start OpenSSL, GnuTLS, mbedTLS, wolfSSL and d2tls servers on loopback and test each",
    ),
}


def _add_plugins(sub: Any, load: set[str] | None) -> None:
    """Register every plugin module in ``load`` (None: all); list the others by name only."""
    import importlib

    modules = list(dict.fromkeys(module for module, _ in PLUGINS.values()))
    for module in modules:
        if load is None or module in load:
            importlib.import_module(module).register(sub)
            continue
        for name, (owner, help_text) in PLUGINS.items():
            if owner == module:
                sub.add_parser(name, help=help_text, add_help=False)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole ``d2tls`` parser; with ``command``, plugin modules other than the one that
    provides ``command`` are listed but not imported (fast start-up)."""
    parser = argparse.ArgumentParser(prog="d2tls", description="D2TLS: delegation-based DTLS 1.2")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_server, _add_client, _add_pki, _add_agent, _add_device, _add_model, _add_demo):
        add(sub)
    load = None
    if command is not None:
        load = {PLUGINS[command][0]} if command in PLUGINS else set()
    _add_plugins(sub, load)
    return parser


def _chosen_command(argv: list[str]) -> str:
    """The subcommand named on the command line ('' for none, e.g. ``d2tls --help``)."""
    return next((arg for arg in argv if not arg.startswith("-")), "")


def _subparser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The (sub)parser that parsed ``args``, for ``parser.error`` in ``check`` hooks."""
    current = parser
    for dest in ("command", "pki_command", "model_command", "twinpeaks_command"):
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction) and action.dest == dest:
                name = getattr(args, dest, None)
                if name in action.choices:
                    current = action.choices[name]
    return current


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``d2tls``: exit status 0 success, 1 failure, 2 usage error, 130/143
    stopped by SIGINT/SIGTERM (see :mod:`d2tls.interrupt`)."""
    from d2tls import interrupt

    argv = sys.argv[1:] if argv is None else argv
    with interrupt.stop_on_signals():
        try:
            return _run(argv)
        except KeyboardInterrupt as exc:
            print(f"d2tls: {exc or 'interrupted'}", file=sys.stderr)
            return interrupt.exit_status(exc)


def _run(argv: list[str]) -> int:
    parser = build_parser(_chosen_command(argv))
    args = parser.parse_args(argv)
    check = getattr(args, "check", None)
    if check is not None:
        check(_subparser(parser, args), args)
    try:
        status: int = args.handler(args)
        return status
    except (D2TLSError, OSError) as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(exc) or type(exc).__name__, "alert": None}))
        else:
            print(f"d2tls: error: {exc or type(exc).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
