"""``d2tls twinpeaks``: key servers, resolver, lookup and the demo, on loopback.

Every role is the sans-IO role of :mod:`d2tls.twinpeaks` hosted by :class:`d2tls.net.pump.Pump`
on one UDP socket; DNS answers come from a real DNS server through dnspython
(:func:`d2tls.lab.twinpeaks.fetch_addresses`, run in an executor so the loop never blocks).

* ``keyserver --zone NAME [--parent HOST:PORT --parent-params FILE --psk ID:HEX] [--child
  ID:NAME:HEX ...]`` runs a root (no ``--parent``), TLK or SLK server. Its master key is made at
  start and not stored: it writes its params (for its children) and, for a root, its trust
  anchor, to the files given.
* ``resolver --root FILE --dns HOST:PORT`` runs a key resolver service (tp-key-request and
  tp-invalidate from local clients).
* ``lookup NAME --root FILE --dns HOST:PORT [--json]`` runs one lookup in-process.
* ``demo`` runs the whole demo hierarchy with Knot DNS and prints the lookup timeline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from d2tls.lab import dns as dnslab
from d2tls.lab.twinpeaks import (
    LOOPBACK,
    MEMBERS,
    answer_dns,
    build_hierarchy,
    fetch_addresses,
)
from d2tls.net.pump import Pump
from d2tls.twinpeaks.clpkc import Params, setup
from d2tls.twinpeaks.keyserver import Child, KeyServer, KeyServerConfig, OwnKeyFailed, Serving
from d2tls.twinpeaks.member import ParentLink, Registered, RegistrationError
from d2tls.twinpeaks.messages import UpdateReason
from d2tls.twinpeaks.resolver import (
    DnsQuery,
    LookupCompleted,
    LookupFailed,
    Resolver,
    ResolverConfig,
    dump_anchors,
    load_anchors,
)

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


async def _next(
    pump: Pump[Any], wanted: Callable[[Any], bool], timeout: float = EVENT_TIMEOUT
) -> Any:
    """The next event of ``pump`` that ``wanted`` accepts (others are dropped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        event = await pump.next_event(max(0.01, deadline - loop.time()))
        if wanted(event):
            return event


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


# --------------------------------------------------------------------------- commands
def run_keyserver(args: argparse.Namespace) -> int:
    return asyncio.run(_keyserver(args))


async def _keyserver(args: argparse.Namespace) -> int:
    zone = args.zone
    parent = None
    if args.parent is not None:
        params = Params.decode(Path(args.parent_params).read_bytes())
        identity, psk = args.psk
        parent = ParentLink(args.parent, params, identity, psk)
    host, port = args.listen
    server = KeyServer(
        KeyServerConfig(
            zone,
            args.name or (zone if parent is not None else "root.keys"),
            host,
            port,
            setup(zone),
            children=dict(args.child or []),
            parent=parent,
        )
    )
    pump: Pump[Any] = await Pump.open(server, args.listen)
    try:
        if args.params_out:
            Path(args.params_out).write_bytes(server.config.params.encode())
        server.start(pump.now)
        pump.poke()
        first = await _next(pump, lambda e: isinstance(e, Serving | OwnKeyFailed), 60.0)
        if isinstance(first, OwnKeyFailed):
            raise first.error
        if args.anchor_out:
            Path(args.anchor_out).write_bytes(dump_anchors([server.trust_anchor()]))
        print(f"key server for {zone} serving on {host}:{port}", flush=True)
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


def run_lookup(args: argparse.Namespace) -> int:
    return asyncio.run(_lookup(args))


async def _lookup(args: argparse.Namespace) -> int:
    anchors = load_anchors(Path(args.root).read_bytes())
    resolver = Resolver(ResolverConfig(anchors, cross_check=not args.no_cross_check))
    pump: Pump[Any] = await Pump.open(resolver, (LOOPBACK, 0))
    try:
        event = await _resolve(pump, resolver, dnslab.Resolver(*args.dns), args.name, args.address)
    finally:
        pump.close()
    out = _result_json(event)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print("\n".join(out["timeline"]))
        print(
            f"{args.name}: "
            + (f"key {out['q'][:32]}... serial {out['serial']}" if out["ok"] else out["error"])
        )
    return 0 if out["ok"] else 1


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
        names = ["root", "test", "example.test", *MEMBERS]
        ports = {name: dnslab.free_port() for name in names}
        h = build_hierarchy(ports)
        roles: dict[str, Any] = {"root": h.root, "test": h.tld, "example.test": h.sld, **h.members}
        pumps: dict[str, Pump[Any]] = {}
        try:
            for name in names:
                pumps[name] = await Pump.open(roles[name], (LOOPBACK, ports[name]))
            h.start(pumps["root"].now)
            for pump in pumps.values():
                pump.poke()
            for name in MEMBERS:
                event = await _next(
                    pumps[name], lambda e: isinstance(e, Registered | RegistrationError)
                )
                if isinstance(event, RegistrationError):
                    raise event.error
                say(
                    f"{name}.example.test registered with example.test over DTLS-PSK "
                    f"(serial {event.serial})"
                )
            resolver = Resolver(ResolverConfig([h.root.trust_anchor()]))
            pumps["resolver"] = await Pump.open(resolver, (LOOPBACK, 0))
            dns = knot.resolver()
            steps: list[dict[str, Any]] = []
            for title in ("cold lookup", "cached lookup"):
                event = await _resolve(pumps["resolver"], resolver, dns, "alice.example.test")
                steps.append({"step": title, **_result_json(event)})
            alice = h.members["alice"]
            alice.update_key(pumps["alice"].now, UpdateReason.ROLLOVER)
            pumps["alice"].poke()
            updated = await _next(
                pumps["alice"], lambda e: isinstance(e, Registered | RegistrationError)
            )
            if not isinstance(updated, Registered):
                raise updated.error
            say(f"alice.example.test updated its key (serial {updated.serial})")
            resolver.invalidate("alice.example.test", "127.0.0.1")
            event = await _resolve(pumps["resolver"], resolver, dns, "alice.example.test")
            steps.append(
                {"step": "lookup after key update and invalidation", **_result_json(event)}
            )
            for step in steps:
                say(f"\n== {step['step']} ==")
                for line in step["timeline"]:
                    say(line)
                say(
                    f"-> serial {step.get('serial')} from_cache={step.get('from_cache')}"
                    if step["ok"]
                    else f"-> {step['error']}"
                )
            ok = (
                all(s["ok"] for s in steps)
                and steps[1]["from_cache"]
                and not steps[0]["from_cache"]
                and steps[2]["serial"] == updated.serial
                and steps[2]["q"] == updated.key.q.encode().hex()
            )
            report["lookups"] = steps
        finally:
            for pump in pumps.values():
                pump.close()
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


# --------------------------------------------------------------------------- parser
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="print every event")


def register(sub: Any) -> None:
    tp = sub.add_parser(
        "twinpeaks", help="TwinPeaks key servers, resolver, lookup and demo on loopback"
    ).add_subparsers(dest="twinpeaks_command", required=True)

    ks = tp.add_parser("keyserver", help="run a root, TLK or SLK key server")
    ks.add_argument("--zone", required=True, help='the zone served: "." for a root, else a name')
    ks.add_argument("--name", help="the server's own name (a root's; others use the zone)")
    ks.add_argument("--listen", type=loopback_address, required=True, help="HOST:PORT to bind")
    ks.add_argument("--parent", type=loopback_address, help="the parent key server's HOST:PORT")
    ks.add_argument("--parent-params", metavar="FILE", help="the parent's params (--params-out)")
    ks.add_argument("--psk", type=_psk, help="IDENTITY:HEX of the association with the parent")
    ks.add_argument(
        "--child", type=_child, action="append", help="IDENTITY:NAME:HEX of a child (repeatable)"
    )
    ks.add_argument("--params-out", metavar="FILE", help="write this server's params here")
    ks.add_argument("--anchor-out", metavar="FILE", help="write this server's trust anchor here")
    _common(ks)
    ks.set_defaults(handler=run_keyserver, check=_check_keyserver)

    rs = tp.add_parser("resolver", help="run a key resolver service")
    rs.add_argument("--root", required=True, metavar="FILE", help="trust-anchor file (roots)")
    rs.add_argument("--dns", type=loopback_address, required=True, help="DNS server HOST:PORT")
    rs.add_argument("--listen", type=loopback_address, required=True, help="HOST:PORT to bind")
    _common(rs)
    rs.set_defaults(handler=run_resolver)

    lk = tp.add_parser("lookup", help="look a name's key up (in-process resolver)")
    lk.add_argument("name", help="the domain name to look up")
    lk.add_argument("--root", required=True, metavar="FILE", help="trust-anchor file (roots)")
    lk.add_argument("--dns", type=loopback_address, required=True, help="DNS server HOST:PORT")
    lk.add_argument("--address", help="the address to use (must be one the DNS gives)")
    lk.add_argument("--no-cross-check", action="store_true", help="ask only the first root")
    lk.add_argument("--json", action="store_true", help="print the result as JSON")
    lk.set_defaults(handler=run_lookup)

    demo = tp.add_parser("demo", help="the whole hierarchy with Knot DNS, lookups and attacks")
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    demo.add_argument("--keep", metavar="DIR", help="keep the DNS server's files in DIR")
    demo.set_defaults(handler=run_demo)


def _check_keyserver(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    below_root = [args.parent, args.parent_params, args.psk]
    if any(v is not None for v in below_root) and not all(v is not None for v in below_root):
        parser.error("--parent, --parent-params and --psk come together (a TLK or SLK server)")


__all__ = ["register"]
