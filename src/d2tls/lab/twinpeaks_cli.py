"""``d2tls twinpeaks``: key servers, resolver, lookup and the demo, on loopback.

Every role is the sans-IO role of :mod:`d2tls.core.twinpeaks` hosted by :class:`d2tls.net.pump.Pump`
on one UDP socket; DNS answers come from a real DNS server through dnspython
(:func:`d2tls.lab.twinpeaks.fetch_addresses`, run in an executor so the loop never blocks).

* ``keyserver --zone NAME [--parent HOST:PORT --parent-params FILE --psk ID:HEX] [--child
  ID:NAME:HEX ...] [--state-dir DIR]`` runs a root (no ``--parent``), TLK or SLK server. With
  ``--state-dir`` its master key, a root's own key and the keys it published survive a restart
  (:mod:`d2tls.lab.twinpeaks_state`); without, they are made at start and lost at exit. It
  writes its params (for its children) and, for a root, its trust anchor, to the files given.
* ``member --name NAME --parent HOST:PORT --parent-params FILE --psk ID:HEX --listen
  HOST:PORT`` registers a member and serves DTLS with its TwinPeaks key (an echo service).
* ``resolver --root FILE --dns HOST:PORT`` runs a key resolver service (tp-key-request and
  tp-invalidate from local clients).
* ``lookup NAME (--root FILE | --resolver HOST:PORT) --dns HOST:PORT [--json]`` runs one
  lookup in-process, or through a resolver service.
* ``connect NAME --port PORT (--root FILE | --resolver HOST:PORT) --dns HOST:PORT`` runs the
  relying client: lookup, key confirmation handshake, one retry after an outdated key.
* ``demo`` runs the whole demo hierarchy with Knot DNS and prints the timeline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from d2tls.core.errors import StateFileError
from d2tls.core.model.states import TwinPeaksClientState
from d2tls.core.twinpeaks.client import (
    ClientFailed,
    KeyInvalidated,
    TwinPeaksClient,
    TwinPeaksClientConfig,
)
from d2tls.core.twinpeaks.clpkc import MasterKey, Params, setup
from d2tls.core.twinpeaks.identity import normalize_zone
from d2tls.core.twinpeaks.keyserver import (
    Child,
    ChildRegistered,
    KeyServer,
    KeyServerConfig,
    OwnKeyFailed,
    Serving,
)
from d2tls.core.twinpeaks.member import (
    Member,
    MemberConfig,
    ParentLink,
    Registered,
    RegistrationError,
)
from d2tls.core.twinpeaks.resolver import (
    DnsQuery,
    LookupCompleted,
    LookupFailed,
    Resolver,
    ResolverConfig,
    dump_anchors,
    load_anchors,
)
from d2tls.core.twinpeaks.service import MemberService
from d2tls.core.twinpeaks.state import KeyServerState
from d2tls.lab import dns as dnslab
from d2tls.lab.twinpeaks import LOOPBACK, MEMBERS, answer_dns, fetch_addresses
from d2tls.lab.twinpeaks_live import (
    ClientRun,
    LiveHierarchy,
    answer_query,
    knot_dns,
    next_matching,
    run_client,
    serve_resolver,
)
from d2tls.lab.twinpeaks_state import load_state, save_state
from d2tls.net.pump import Pump

LOOPBACK_HOSTS = ("127.0.0.1", "::1")
EVENT_TIMEOUT = 20.0


def loopback_address(text: str) -> tuple[str, int]:
    """HOST:PORT on the loopback (argparse type)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or host not in LOOPBACK_HOSTS or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 127.0.0.1:PORT or [::1]:PORT")
    return host, int(port)


def _psk(text: str) -> tuple[bytes, bytes]:
    identity, sep, key = text.partition(":")
    try:
        value = bytes.fromhex(key)
    except ValueError:
        value = b""
    if not sep or not identity or len(value) < 16:
        raise argparse.ArgumentTypeError("expected IDENTITY:HEX with at least 16 key bytes")
    return identity.encode(), value


def _child(text: str) -> tuple[bytes, Child]:
    identity, sep, rest = text.partition(":")
    name, sep2, key = rest.partition(":")
    if not (sep and sep2):
        raise argparse.ArgumentTypeError("expected IDENTITY:NAME:HEX")
    _, value = _psk(f"{identity}:{key}")
    return identity.encode(), Child(name, value)


# --------------------------------------------------------------------------- hosting
async def _serve_dns(
    pump: Pump[Any], resolver: Resolver, dns: dnslab.Resolver, query: DnsQuery
) -> None:
    loop = asyncio.get_running_loop()
    found = await loop.run_in_executor(None, fetch_addresses, dns, query.name)
    answer_dns(resolver, query, found, pump.now)
    pump.poke()


async def _resolve(
    pump: Pump[Any], resolver: Resolver, dns: dnslab.Resolver, name: str, address: str | None = None
) -> LookupCompleted | LookupFailed:
    """One lookup through the pump, answering its DNS queries from ``dns``."""
    lookup_id = resolver.lookup(name, pump.now, address)
    pump.poke()
    while True:
        event = await pump.next_event(EVENT_TIMEOUT)
        if isinstance(event, DnsQuery):
            await _serve_dns(pump, resolver, dns, event)
        elif isinstance(event, LookupCompleted | LookupFailed) and event.lookup_id == lookup_id:
            return event


def _result_json(event: LookupCompleted | LookupFailed) -> dict[str, Any]:
    if isinstance(event, LookupFailed):
        return {
            "ok": False,
            "name": event.name,
            "error": str(event.error),
            "error_type": type(event.error).__name__,
            "timeline": list(event.timeline),
        }
    result = event.result
    subject = result.record.subject
    assert subject is not None
    return {
        "ok": True,
        "name": result.name,
        "address": result.address.compressed,
        "key_server": result.record.signer.name,
        "zone": result.params.zone,
        "serial": subject.serial,
        "q": result.q.encode().hex(),
        "x": subject.x_point.encode().hex(),
        "params_sha256": result.params.digest().hex(),
        "from_cache": result.from_cache,
        "roots": result.roots,
        "timeline": list(event.timeline),
    }


def _client_json(client: TwinPeaksClient, run: ClientRun | None = None) -> dict[str, Any]:
    """The result of a lookup through a resolver service, or of a connection."""
    failed = run.failed if run is not None else None
    if failed is None and run is None:
        failed = next((e for e in _drain(client) if isinstance(e, ClientFailed)), None)
    out: dict[str, Any] = {"name": client.name, "timeline": list(client.timeline)}
    if failed is not None or client.record is None or client.state == TwinPeaksClientState.FAILED:
        error = failed.error if failed is not None else None
        return out | {
            "ok": False,
            "error": str(error) if error else f"ended in state {client.state}",
            "error_type": type(error).__name__ if error else "TwinPeaksError",
        }
    record, subject = client.record, client.record.subject
    assert subject is not None and client.key is not None
    out |= {
        "ok": True,
        "address": record.address.compressed,
        "key_server": record.signer.name,
        "zone": record.issuer_params.zone,
        "serial": subject.serial,
        "q": subject.q.encode().hex(),
        "x": subject.x_point.encode().hex(),
        "params_sha256": record.issuer_params.digest().hex(),
    }
    if run is not None:
        connected = run.connected
        assert connected is not None
        out |= {
            "connected": True,
            "peer": f"{connected.peer[0]}:{connected.peer[1]}",
            "attempts": connected.attempts,
            "outdated_key_recovered": any(isinstance(e, KeyInvalidated) for e in run.events),
            "echo": run.echoed.decode(errors="replace") if run.echoed is not None else None,
        }
    return out


def _drain(client: TwinPeaksClient) -> list[Any]:
    events = []
    while (event := client.next_event()) is not None:
        events.append(event)
    return events


def _print_result(out: dict[str, Any], as_json: bool, what: str) -> int:
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        print("\n".join(out["timeline"]))
        print(
            f"{out['name']}: "
            + (
                f"{what}key {out['q'][:32]}... serial {out['serial']}"
                if out["ok"]
                else out["error"]
            )
        )
    return 0 if out["ok"] else 1


# --------------------------------------------------------------------------- commands
def run_keyserver(args: argparse.Namespace) -> int:
    return asyncio.run(_keyserver(args))


def _master_and_state(args: argparse.Namespace) -> tuple[MasterKey, KeyServerState | None]:
    """The master key: from ``--state-dir`` when it holds one (StateFileError when it is
    corrupt or for another zone), else a fresh one (saved there at once)."""
    if args.state_dir is None:
        return setup(args.zone), None
    directory = Path(args.state_dir)
    saved = load_state(directory)
    if saved is None:
        master = setup(args.zone)
        save_state(directory, KeyServerState(master))
        return master, None
    if saved.master.params.zone != normalize_zone(args.zone):
        raise StateFileError(
            f"{directory} holds the state of zone {saved.master.params.zone!r}, not {args.zone!r}"
        )
    return saved.master, saved


async def _keyserver(args: argparse.Namespace) -> int:
    zone = args.zone
    parent = None
    if args.parent is not None:
        params = Params.decode(Path(args.parent_params).read_bytes())
        identity, psk = args.psk
        parent = ParentLink(args.parent, params, identity, psk)
    host, port = args.listen
    master, saved = _master_and_state(args)
    server = KeyServer(
        KeyServerConfig(
            zone,
            args.name or (zone if parent is not None else "root.keys"),
            host,
            port,
            master,
            children=dict(args.child or []),
            parent=parent,
        ),
        saved,
    )

    def persist() -> None:
        if args.state_dir is not None:
            save_state(Path(args.state_dir), server.export_state())

    pump: Pump[Any] = await Pump.open(server, args.listen)
    try:
        if args.params_out:
            Path(args.params_out).write_bytes(server.config.params.encode())
        server.start(pump.now)
        pump.poke()
        first = await next_matching(pump, lambda e: isinstance(e, Serving | OwnKeyFailed), 60.0)
        if isinstance(first, OwnKeyFailed):
            raise first.error
        persist()
        if args.anchor_out:
            Path(args.anchor_out).write_bytes(dump_anchors([server.trust_anchor()]))
        restored = f", {len(server.registrations)} keys restored" if saved is not None else ""
        print(f"key server for {zone} serving on {host}:{port}{restored}", flush=True)
        while True:
            event = await pump.next_event()
            if isinstance(event, ChildRegistered):
                persist()
            if args.verbose:
                print(event, flush=True)
    finally:
        pump.close()


def run_member(args: argparse.Namespace) -> int:
    return asyncio.run(_member(args))


async def _member(args: argparse.Namespace) -> int:
    params = Params.decode(Path(args.parent_params).read_bytes())
    identity, psk = args.psk
    host, port = args.listen
    member = Member(
        MemberConfig(
            args.name, args.address or host, ParentLink(args.parent, params, identity, psk)
        )
    )
    service = MemberService(member, echo=True)
    pump: Pump[Any] = await Pump.open(service, args.listen)
    try:
        member.start(pump.now)
        pump.poke()
        event = await next_matching(
            pump, lambda e: isinstance(e, Registered | RegistrationError), 60.0
        )
        if isinstance(event, RegistrationError):
            raise event.error
        print(
            f"member {member.config.name} registered (serial {event.serial}); DTLS with its "
            f"TwinPeaks key on {host}:{port}",
            flush=True,
        )
        while True:
            event = await pump.next_event()
            if args.verbose:
                print(event, flush=True)
    finally:
        pump.close()


def run_resolver(args: argparse.Namespace) -> int:
    return asyncio.run(_resolver_service(args))


async def _resolver_service(args: argparse.Namespace) -> int:
    anchors = load_anchors(Path(args.root).read_bytes())
    resolver = Resolver(ResolverConfig(anchors))
    dns = dnslab.Resolver(*args.dns)
    pump: Pump[Any] = await Pump.open(resolver, args.listen)
    print(f"key resolver on {args.listen[0]}:{args.listen[1]}", flush=True)
    try:
        while True:
            event = await pump.next_event()
            if isinstance(event, DnsQuery):
                await _serve_dns(pump, resolver, dns, event)
            elif args.verbose:
                print(event, flush=True)
    finally:
        pump.close()


def _client_config(args: argparse.Namespace) -> TwinPeaksClientConfig:
    if args.resolver is not None:
        return TwinPeaksClientConfig(resolver_service=args.resolver)
    anchors = load_anchors(Path(args.root).read_bytes())
    return TwinPeaksClientConfig(ResolverConfig(anchors, cross_check=not args.no_cross_check))


def run_lookup(args: argparse.Namespace) -> int:
    return asyncio.run(_lookup(args))


async def _lookup(args: argparse.Namespace) -> int:
    if args.resolver is not None:
        return _print_result(await _service_lookup(args), args.json, "")
    anchors = load_anchors(Path(args.root).read_bytes())
    resolver = Resolver(ResolverConfig(anchors, cross_check=not args.no_cross_check))
    pump: Pump[Any] = await Pump.open(resolver, (LOOPBACK, 0))
    try:
        event = await _resolve(pump, resolver, dnslab.Resolver(*args.dns), args.name, args.address)
    finally:
        pump.close()
    return _print_result(_result_json(event), args.json, "")


async def _service_lookup(args: argparse.Namespace) -> dict[str, Any]:
    """A lookup through a resolver service: the client's DNS step, then tp-key-request."""
    client = TwinPeaksClient(TwinPeaksClientConfig(resolver_service=args.resolver))
    dns = knot_dns(dnslab.Resolver(*args.dns))
    async with await Pump.open(client, (LOOPBACK, 0)) as pump:
        client.lookup(args.name, pump.now, args.address)
        pump.poke()
        while client.state not in (TwinPeaksClientState.RESOLVED, TwinPeaksClientState.FAILED):
            event = await pump.next_event(EVENT_TIMEOUT)
            if isinstance(event, DnsQuery):
                await answer_query(pump, client, dns, event)
            elif isinstance(event, ClientFailed):
                return _client_json(client, ClientRun(failed=event))
    return _client_json(client)


def run_connect(args: argparse.Namespace) -> int:
    return asyncio.run(_connect(args))


async def _connect(args: argparse.Namespace) -> int:
    client = TwinPeaksClient(_client_config(args))
    dns = knot_dns(dnslab.Resolver(*args.dns))
    payload = args.send.encode() if args.send else b""
    run = await run_client(client, args.name, args.port, dns, address=args.address, payload=payload)
    out = _client_json(client, run)
    return _print_result(out, args.json, "connected, server proved its ")


# --------------------------------------------------------------------------- demo
def run_demo(args: argparse.Namespace) -> int:
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        return asyncio.run(_demo(Path(args.keep), args.json))
    with tempfile.TemporaryDirectory(prefix="d2tls-twinpeaks-") as tmp:
        return asyncio.run(_demo(Path(tmp), args.json))


async def _demo(directory: Path, as_json: bool) -> int:
    report: dict[str, Any] = {"ok": False}
    say: Callable[[str], None] = (lambda _: None) if as_json else (lambda t: print(t, flush=True))
    with dnslab.KnotServer(dnslab.demo_zones(), directory / "knot") as knot:
        say(f"Knot DNS on 127.0.0.1:{knot.port} (zones test., example.test.)")
        async with LiveHierarchy() as live:
            for name in MEMBERS:
                say(
                    f"{name}.example.test registered with example.test over DTLS-PSK "
                    f"(serial {live.registered[name].serial}); DTLS with its TwinPeaks key on "
                    f"127.0.0.1:{live.ports[name]}"
                )
            ok, steps, connections = await _demo_steps(live, knot, say)
        report["lookups"] = steps
        report["connections"] = connections
    from d2tls.adversary.twinpeaks import CASES, expected_impersonation, run_world

    say("\n== attacker models (dissertation 2.5) ==")
    attacks = []
    for case in CASES:
        outcome = run_world(case)
        match = (outcome.verdict == "impersonation") == expected_impersonation(case)
        ok = ok and match
        attacks.append(
            {
                "compromised": case.label(),
                "roots": case.roots,
                "verdict": outcome.verdict,
                "as_expected": match,
            }
        )
        say(
            f"{case.label():55} roots={case.roots}  {outcome.verdict}"
            + ("" if match else "  (UNEXPECTED)")
        )
    report["attacks"] = attacks
    report["ok"] = ok
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print("\ndemo " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


async def _demo_steps(
    live: LiveHierarchy, knot: dnslab.KnotServer, say: Callable[[str], None]
) -> tuple[bool, list[dict[str, Any]], list[dict[str, Any]]]:
    """Lookups (cold, cached, after a key update), a resolver service, and connections by
    the relying client: success, wrong name, and a stale key that recovers by itself."""
    alice, port = "alice.example.test", live.ports["alice"]
    dns = knot.resolver()
    fetch = knot_dns(dns)
    resolver = Resolver(ResolverConfig(live.anchors()))
    service = Resolver(ResolverConfig(live.anchors()))
    pump: Pump[Any] = await Pump.open(resolver, (LOOPBACK, 0))
    service_pump: Pump[Any] = await Pump.open(service, (LOOPBACK, 0))
    task = asyncio.create_task(serve_resolver(service_pump, service, fetch))
    via_service = TwinPeaksClientConfig(resolver_service=service_pump.local_address)
    steps: list[dict[str, Any]] = []
    connections: list[dict[str, Any]] = []

    async def connect(title: str, config: TwinPeaksClientConfig, name: str = alice) -> None:
        client = TwinPeaksClient(config)
        run = await run_client(client, name, port, fetch, payload=b"hello alice")
        order = len(steps) + len(connections)
        connections.append({"step": title, "order": order, **_client_json(client, run)})

    try:
        for title in ("cold lookup", "cached lookup"):
            event = await _resolve(pump, resolver, dns, alice)
            steps.append({"step": title, "order": len(steps), **_result_json(event)})
        await connect(
            "connect alice (own resolver: cold)",
            TwinPeaksClientConfig(ResolverConfig(live.anchors())),
        )
        await connect("connect alice through the resolver service", via_service)
        await connect(
            "connect bob.example.test at alice's port (wrong name)",
            TwinPeaksClientConfig(ResolverConfig(live.anchors())),
            "bob.example.test",
        )
        updated = await live.update_key("alice")
        say(f"alice.example.test updated its key (serial {updated.serial})")
        await connect(
            "connect alice after her key update (service holds the stale key)", via_service
        )
        resolver.invalidate(alice, "127.0.0.1")
        event = await _resolve(pump, resolver, dns, alice)
        steps.append(
            {
                "step": "lookup after key update and invalidation",
                "order": len(steps) + len(connections),
                **_result_json(event),
            }
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        pump.close()
        service_pump.close()
    for step in sorted(steps + connections, key=lambda s: int(s["order"])):
        say(f"\n== {step['step']} ==")
        say("\n".join(step["timeline"]))
        if any(step is c for c in connections):
            say(
                f"-> connected to {step['peer']} (serial {step['serial']}, attempts "
                f"{step['attempts']}), echo {step['echo']!r}"
                if step["ok"]
                else f"-> {step['error_type']}: {step['error']}"
            )
        else:
            say(
                f"-> serial {step.get('serial')} from_cache={step.get('from_cache')}"
                if step["ok"]
                else f"-> {step['error']}"
            )
    cold, cached, fresh = steps
    first, served, wrong, recovered = connections
    ok = (
        all(s["ok"] for s in steps)
        and cached["from_cache"]
        and not cold["from_cache"]
        and fresh["serial"] == updated.serial
        and fresh["q"] == updated.key.q.encode().hex()
        and first["ok"]
        and served["ok"]
        and not wrong["ok"]
        and wrong["error_type"] == "WrongServerName"
        and recovered["ok"]
        and recovered["attempts"] == 2
        and recovered["serial"] == updated.serial
    )
    return bool(ok), steps, connections


# --------------------------------------------------------------------------- parser
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="print every event")


def _resolution(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--root", metavar="FILE", help="trust-anchor file (an own resolver)")
    where.add_argument("--resolver", type=loopback_address, help="a resolver service's HOST:PORT")
    parser.add_argument("--dns", type=loopback_address, required=True, help="DNS server HOST:PORT")
    parser.add_argument("--address", help="the address to use (must be one the DNS gives)")
    parser.add_argument("--no-cross-check", action="store_true", help="ask only the first root")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _parent(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parent", type=loopback_address, help="the parent key server's HOST:PORT")
    parser.add_argument(
        "--parent-params", metavar="FILE", help="the parent's params (--params-out)"
    )
    parser.add_argument("--psk", type=_psk, help="IDENTITY:HEX of the association with the parent")


def register(sub: Any) -> None:
    tp = sub.add_parser(
        "twinpeaks", help="TwinPeaks key servers, resolver, lookup, connect and demo on loopback"
    ).add_subparsers(dest="twinpeaks_command", required=True)

    ks = tp.add_parser("keyserver", help="run a root, TLK or SLK key server")
    ks.add_argument("--zone", required=True, help='the zone served: "." for a root, else a name')
    ks.add_argument("--name", help="the server's own name (a root's; others use the zone)")
    ks.add_argument("--listen", type=loopback_address, required=True, help="HOST:PORT to bind")
    _parent(ks)
    ks.add_argument(
        "--child", type=_child, action="append", help="IDENTITY:NAME:HEX of a child (repeatable)"
    )
    ks.add_argument("--params-out", metavar="FILE", help="write this server's params here")
    ks.add_argument("--anchor-out", metavar="FILE", help="write this server's trust anchor here")
    ks.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep the master key, a root's key and the published keys here (0600) across restarts",
    )
    _common(ks)
    ks.set_defaults(handler=run_keyserver, check=_check_keyserver)

    mb = tp.add_parser("member", help="register a member and serve DTLS with its TwinPeaks key")
    mb.add_argument("--name", required=True, help="the member's domain name")
    mb.add_argument("--address", help="the address in its ID (default: the --listen host)")
    mb.add_argument("--listen", type=loopback_address, required=True, help="HOST:PORT to bind")
    _parent(mb)
    _common(mb)
    mb.set_defaults(handler=run_member, check=_check_member)

    rs = tp.add_parser("resolver", help="run a key resolver service")
    rs.add_argument("--root", required=True, metavar="FILE", help="trust-anchor file (roots)")
    rs.add_argument("--dns", type=loopback_address, required=True, help="DNS server HOST:PORT")
    rs.add_argument("--listen", type=loopback_address, required=True, help="HOST:PORT to bind")
    _common(rs)
    rs.set_defaults(handler=run_resolver)

    lk = tp.add_parser("lookup", help="look a name's key up (own resolver or a resolver service)")
    lk.add_argument("name", help="the domain name to look up")
    _resolution(lk)
    lk.set_defaults(handler=run_lookup)

    cn = tp.add_parser(
        "connect", help="look a name up and run the TwinPeaks DTLS handshake with it"
    )
    cn.add_argument("name", help="the domain name to connect to")
    cn.add_argument("--port", type=int, required=True, help="the name's DTLS service port")
    cn.add_argument("--send", help="send this text once connected and wait for its echo")
    _resolution(cn)
    cn.set_defaults(handler=run_connect)

    demo = tp.add_parser("demo", help="the whole hierarchy with Knot DNS, lookups and attacks")
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    demo.add_argument("--keep", metavar="DIR", help="keep the DNS server's files in DIR")
    demo.set_defaults(handler=run_demo)


def _check_keyserver(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    below_root = [args.parent, args.parent_params, args.psk]
    if any(v is not None for v in below_root) and not all(v is not None for v in below_root):
        parser.error("--parent, --parent-params and --psk come together (a TLK or SLK server)")


def _check_member(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.parent is None or args.parent_params is None or args.psk is None:
        parser.error("a member needs --parent, --parent-params and --psk")


__all__ = ["register"]
