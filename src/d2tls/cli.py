"""The ``d2tls`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from d2tls.dtls.client import DTLSClient
from d2tls.dtls.config import ClientAuth, ClientConfig, ServerConfig
from d2tls.dtls.constants import CIPHER_SUITE_NAMES, CipherSuite
from d2tls.dtls.events import ConnectionTerminated, Event, HandshakeCompleted
from d2tls.dtls.keylog import keylog_from_environment
from d2tls.dtls.server import DTLSServer
from d2tls.dtls.session_file import load_session, save_session
from d2tls.errors import D2TLSError
from d2tls.model.spec import RoleSpec
from d2tls.net.udp import ClientEndpoint, ConnectionFailed, ServerEndpoint
from d2tls.pki.verify import (
    certificate_subject,
    load_certificate_chain,
    load_private_key,
    load_trust_store,
    parse_psk,
)
from d2tls.trace import TraceFile, tagged


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


def server_rule(text: str) -> str:
    """An argparse type for ``--allow-server`` (d2tls.delegation.policy.parse_server_rule)."""
    from d2tls.delegation.policy import parse_server_rule

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
    """The server's session store for ``url`` (see d2tls.store)."""
    if url == "memory://" and key_file is None:
        from d2tls.dtls.session import MemorySessionStore

        return MemorySessionStore()
    from d2tls.store import open_store

    return open_store(url, Path(key_file) if key_file else None)


def build_server_config(args: argparse.Namespace) -> ServerConfig:
    psk_keys = dict(parse_psk(p) for p in args.psk or [])
    default: tuple[CipherSuite, ...]
    if args.cert:
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
        else (ClientAuth.OPTIONAL if args.ca else ClientAuth.NONE),
        psk_keys=psk_keys,
        session_lifetime=args.session_lifetime,
        session_store=open_session_store(args.session_store, args.store_key_file),
        cookie_exchange=not args.no_cookie,
        mtu=args.mtu,
        keylog=keylog_from_environment(),
        max_connections=args.max_connections,
        max_half_open=args.max_half_open,
    )
    return config


async def run_server(args: argparse.Namespace) -> int:
    host, port = args.listen
    trace = TraceFile(Path(args.trace)) if args.trace else None
    engine = DTLSServer(
        build_server_config(args), tracer=tagged(trace, party="server", link="server")
    )

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
    print(
        f"listening on {endpoint.address[0]}:{endpoint.address[1]}" if endpoint.address else "",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    endpoint.close()
    return 0


# --------------------------------------------------------------------------- client
def build_client_config(args: argparse.Namespace) -> ClientConfig:
    psk_identity, psk = parse_psk(args.psk) if args.psk else (None, None)
    default = (
        (CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,)
        if args.psk and not args.ca
        else ClientConfig().cipher_suites
    )
    suites = parse_suites(args.cipher, default)
    session = load_session(Path(args.session_in)) if args.session_in else None
    server_name = args.server_name or args.address[0]
    return ClientConfig(
        cipher_suites=suites,
        trust_store=load_trust_store(Path(args.ca)) if args.ca else None,
        server_name=server_name,
        certificate_chain=load_certificate_chain(Path(args.cert)) if args.cert else (),
        private_key=load_private_key(Path(args.key)) if args.key else None,
        psk_identity=psk_identity,
        psk=psk,
        session=session,
        mtu=args.mtu,
        keylog=keylog_from_environment(),
    )


async def run_client(args: argparse.Namespace) -> dict[str, Any]:
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
        )
        if args.session_out:
            save_session(done.session, Path(args.session_out))
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
            error=exc.terminated.reason,
            alert=exc.terminated.alert.name.lower() if exc.terminated.alert else None,
            alert_from_peer=exc.terminated.by_peer,
        )
    except TimeoutError:
        result.update(ok=False, error="handshake timed out", alert=None)
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
        if "received" in result:
            print(f"received: {result['received']}")
    else:
        print(f"failed: {result.get('error')} (alert {result.get('alert')})", file=sys.stderr)


# --------------------------------------------------------------------------- agent, device
async def run_agent(args: argparse.Namespace) -> int:
    import logging

    from d2tls.delegation.policy import AgentPolicy, load_agent_psk_file
    from d2tls.roles.agent import Agent, AgentConfig

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
    )
    agent = Agent(config, ocsp_issuer=issuer)
    host, port = await agent.start(*args.listen)
    print(f"agent listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    agent.close()
    print(f"agent: {agent.completed} delegations completed, {agent.failed} failed", flush=True)
    return 0


async def run_device(args: argparse.Namespace) -> dict[str, Any]:
    from d2tls.delegation.messages import DelegationMode
    from d2tls.roles.device import DelegationFailed, Device, DeviceConfig, run_standalone
    from d2tls.roles.signer import DeviceSigner

    trace = TraceFile(Path(args.trace)) if args.trace else None
    chain = tuple(load_certificate_chain(Path(args.cert)))
    key = load_private_key(Path(args.key))
    suites = parse_suites(args.cipher, (CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,))
    result: dict[str, Any] = {"ok": False, "mode": "standalone" if args.standalone else args.mode}
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
            keylog=keylog_from_environment(),
        )
        for _ in range(args.connections):
            try:
                connection, report = await run_standalone(
                    config, args.server, tracer=tagged(trace, party="device", link="device-server")
                )
            except (ConnectionFailed, TimeoutError) as exc:
                result["error"] = str(exc)
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
        )
    )
    for _ in range(args.connections):
        try:
            connection = await device.connect()
        except DelegationFailed as exc:
            result["error"] = str(exc)
            return result
        entry = connection.report.to_dict()
        entry["session_id"] = connection.session.session_id.hex()
        entry["received"] = await _exchange(connection, args)
        connections.append(entry)
    result["ok"] = True
    return result


async def _exchange(connection: Any, args: argparse.Namespace) -> str | None:
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
    from d2tls.pki.generate import init_pki

    paths = init_pki(Path(args.directory), server_name=args.server_name, devices=args.devices)
    print(f"CA:      {paths.ca_cert}")
    print(f"server:  {paths.server_cert} (key {paths.server_key})")
    for device in paths.devices:
        print(f"device:  {device.cert} (key {device.key})")
    print(f"PSKs:    {paths.psk_file}")
    print(f"agent:   {paths.agent_psk_file} (the PSKs bound to the device certificates)")
    return 0


def run_pki_ocsp(args: argparse.Namespace) -> int:
    from d2tls.pki.ocsp import run_ocsp_responder_forever

    run_ocsp_responder_forever(Path(args.pki), args.listen[0], args.listen[1])
    return 0


def run_pki_revoke(args: argparse.Namespace) -> int:
    from d2tls.pki.ocsp import revoke_certificate

    serial = revoke_certificate(Path(args.pki), Path(args.certificate), args.reason)
    print(f"revoked serial {serial:x}")
    return 0


def _spec_role(name: str) -> RoleSpec:
    """A role of spec/dtls.yaml or spec/d2tls.yaml (the D2TLS device and agent)."""
    from d2tls.errors import SpecError
    from d2tls.model.spec import load_spec

    specs = [load_spec("dtls"), load_spec("d2tls")]
    for spec in specs:
        if name in spec.roles:
            return spec.roles[name]
    known = sorted(role for spec in specs for role in spec.roles)
    raise SpecError(f"unknown role {name!r}; known: {known}")


def run_model_diagram(args: argparse.Namespace) -> int:
    from d2tls.model.diagram import render

    out = render(_spec_role(args.role), Path(args.output))
    print(f"wrote {out}")
    return 0


def run_model_table(args: argparse.Namespace) -> int:
    from d2tls.model.diagram import GLOBAL_TRIGGERS, transition_label

    role = _spec_role(args.role)
    for t in role.transitions:
        if t.trigger in GLOBAL_TRIGGERS:
            continue
        print(
            f"{t.source:34} {t.dest:34} {transition_label(t.trigger, t.guards, t.unless, t.emits)}"
        )
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from d2tls.demo import run_demo as demo

    if args.fleet:
        from d2tls.fleet import run_fleet_demo

        return run_fleet_demo(args.fleet, as_json=args.json)
    return demo(as_json=args.json, server_kind=args.server, keep=args.keep)


# --------------------------------------------------------------------------- parser
def add_association_limits(parser: argparse.ArgumentParser) -> None:
    """``--max-connections`` / ``--max-half-open`` (docs/security.md, association limits)."""
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d2tls", description="D2TLS: delegation-based DTLS 1.2")
    sub = parser.add_subparsers(dest="command", required=True)

    server = sub.add_parser("server", help="run a DTLS 1.2 server")
    server.add_argument("--listen", type=parse_address, required=True, metavar="HOST:PORT")
    server.add_argument("--cert", help="server certificate chain (PEM)")
    server.add_argument("--key", help="server private key (PEM, P-256)")
    server.add_argument("--ca", help="trust store for client certificates (PEM)")
    server.add_argument("--require-client-cert", action="store_true")
    server.add_argument(
        "--psk", action="append", metavar="ID:HEX", help="accept this PSK (repeatable)"
    )
    server.add_argument("--cipher", action="append", choices=sorted(CIPHER_SUITE_NAMES))
    server.add_argument("--echo", action="store_true", help="echo application data back")
    server.add_argument("--session-lifetime", type=float, default=3600.0, metavar="S")
    server.add_argument("--mtu", type=int, default=1400)
    server.add_argument("--no-cookie", action="store_true", help="skip HelloVerifyRequest (unsafe)")
    server.add_argument("--quiet", action="store_true")
    server.add_argument("--trace", metavar="FILE", help="append JSON event traces to FILE")
    add_association_limits(server)
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

    client = sub.add_parser("client", help="run a DTLS 1.2 client")
    client.add_argument("address", type=parse_address, metavar="HOST:PORT")
    client.add_argument("--ca", help="trust store for the server certificate (PEM)")
    client.add_argument("--cert", help="client certificate chain (PEM)")
    client.add_argument("--key", help="client private key (PEM)")
    client.add_argument("--server-name", help="expected server name (default: HOST)")
    client.add_argument("--psk", metavar="ID:HEX")
    client.add_argument("--cipher", action="append", choices=sorted(CIPHER_SUITE_NAMES))
    client.add_argument("--mtu", type=int, default=1400)
    client.add_argument("--session-in", metavar="FILE", help="resume the session saved in FILE")
    client.add_argument(
        "--session-out", metavar="FILE", help="save the session (holds a secret; 0600)"
    )
    client.add_argument("--send", metavar="TEXT", help="send TEXT and print the reply")
    client.add_argument("--json", action="store_true", help="print one JSON object")
    client.add_argument("--timeout", type=float, default=30.0)
    client.add_argument("--receive-timeout", type=float, default=3.0)

    pki = sub.add_parser("pki", help="test PKI").add_subparsers(dest="pki_command", required=True)
    init = pki.add_parser("init", help="create a CA, a server certificate, devices and PSKs")
    init.add_argument("directory")
    init.add_argument("--server-name", default="localhost")
    init.add_argument("--devices", type=positive_int, default=1)
    ocsp = pki.add_parser("ocsp", help="run an OCSP responder for the PKI's CA (RFC 6960)")
    ocsp.add_argument("--listen", type=parse_address, required=True, metavar="HOST:PORT")
    ocsp.add_argument("--pki", required=True, metavar="DIR")
    revoke = pki.add_parser("revoke", help="mark a certificate revoked for the OCSP responder")
    revoke.add_argument("pki", metavar="DIR")
    revoke.add_argument("certificate")
    revoke.add_argument("--reason", default="keyCompromise")

    agent = sub.add_parser("agent", help="run a D2TLS security agent")
    agent.add_argument("--listen", type=parse_address, required=True, metavar="HOST:PORT")
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
    agent.add_argument("--context-lifetime", type=int, default=6 * 3600, metavar="S")
    agent.add_argument("--trace", metavar="FILE", help="append JSON event traces to FILE")
    add_association_limits(agent)

    device = sub.add_parser("device", help="run a D2TLS device (or the standalone baseline)")
    device.add_argument("--agent", type=parse_address, metavar="HOST:PORT")
    device.add_argument("--psk", metavar="ID:HEX", help="PSK shared with the agent")
    device.add_argument("--server", type=parse_address, required=True, metavar="HOST:PORT")
    device.add_argument("--server-name", required=True)
    device.add_argument("--cert", required=True, help="device certificate chain (PEM)")
    device.add_argument(
        "--key", required=True, help="device private key (PEM); never leaves the device"
    )
    device.add_argument("--mode", choices=["bound", "blind"], default="bound")
    device.add_argument("--standalone", action="store_true", help="full handshake without an agent")
    device.add_argument("--ca", help="trust store (only for --standalone)")
    device.add_argument("--cipher", action="append", choices=sorted(CIPHER_SUITE_NAMES))
    device.add_argument(
        "--connections", type=positive_int, default=1, help="connect N times in a row"
    )
    device.add_argument("--send", metavar="TEXT")
    device.add_argument("--receive-timeout", type=float, default=3.0)
    device.add_argument("--json", action="store_true")
    device.add_argument("--trace", metavar="FILE", help="append JSON event traces to FILE")

    model = sub.add_parser("model", help="the spec's state machines").add_subparsers(
        dest="model_command", required=True
    )
    diagram = model.add_parser("diagram", help="draw a role's machine (.svg, .png, .dot)")
    diagram.add_argument("role")
    diagram.add_argument("-o", "--output", required=True)
    table = model.add_parser("table", help="print a role's transition table")
    table.add_argument("role")

    demo = sub.add_parser("demo", help="run the end-to-end demo on loopback")
    demo.add_argument("--json", action="store_true", help="print the whole result as JSON")
    demo.add_argument(
        "--server",
        choices=["d2tls", "openssl", "gnutls"],
        default="d2tls",
        help="which DTLS server the device and agent talk to",
    )
    demo.add_argument("--keep", metavar="DIR", help="keep PKI, logs and traces in DIR")
    demo.add_argument(
        "--fleet",
        type=int,
        metavar="N",
        help="run N server instances sharing a Redis session store behind a UDP load balancer",
    )
    _register_plugins(sub)
    return parser


#: Modules that add subcommands: each has ``register(subparsers)`` and sets a ``handler``
#: (``args -> exit status``) with ``set_defaults(handler=...)``. Keeps this file small.
COMMAND_MODULES = (
    "d2tls.prove.cli",
    "d2tls.bench.cli",
    "d2tls.conformance.cli",
)


def _register_plugins(sub: Any) -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        handler = getattr(args, "handler", None)
        if handler is not None:
            status: int = handler(args)
            return status
        if args.command == "server":
            return asyncio.run(run_server(args))
        if args.command == "client":
            result = asyncio.run(run_client(args))
            print_client_result(result, args.json)
            return 0 if result["ok"] else 1
        if args.command == "pki":
            if args.pki_command == "ocsp":
                return run_pki_ocsp(args)
            if args.pki_command == "revoke":
                return run_pki_revoke(args)
            return run_pki_init(args)
        if args.command == "agent":
            return asyncio.run(run_agent(args))
        if args.command == "device":
            device_result = asyncio.run(run_device(args))
            print_device_result(device_result, args.json)
            return 0 if device_result["ok"] else 1
        if args.command == "model":
            if args.model_command == "diagram":
                return run_model_diagram(args)
            return run_model_table(args)
        if args.command == "demo":
            return run_demo(args)
    except (D2TLSError, OSError) as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(exc), "alert": None}))
        else:
            print(f"d2tls: error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
