"""``d2tls conformance HOST:PORT`` and ``d2tls conformance-peers``.

Registered by :mod:`d2tls.cli`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from d2tls.conformance.report import SUITES


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if not (host.startswith("127.") or host == "::1" or host == "localhost"):
        raise argparse.ArgumentTypeError(f"{host} is not a loopback address")
    return ("127.0.0.1" if host == "localhost" else host), int(port)


def _psk(text: str) -> tuple[bytes, bytes]:
    identity, sep, key = text.partition(":")
    try:
        secret = bytes.fromhex(key)
    except ValueError:
        secret = b""
    if not sep or not identity or not secret:
        raise argparse.ArgumentTypeError(f"expected ID:HEX, got {text!r}")
    return identity.encode(), secret


def register(sub: Any) -> None:
    """Add the subcommands to ``d2tls``'s parser."""
    parser = sub.add_parser(
        "conformance",
        help="D2TLS readiness, scripted RFC scenarios and state-machine learning of a server",
    )
    parser.add_argument(
        "target", type=_address, metavar="HOST:PORT", help="the server under test (loopback)"
    )
    parser.add_argument("--ca", required=True, help="CA of the server and client certificates")
    parser.add_argument("--cert", required=True, help="client (device) certificate chain (PEM)")
    parser.add_argument("--key", required=True, help="client (device) private key (PEM)")
    parser.add_argument("--server-name", default="localhost", help="SNI (default localhost)")
    parser.add_argument("--psk", type=_psk, metavar="ID:HEX", help="PSK for PSK-AES128-CCM8")
    parser.add_argument("--only", nargs="+", choices=SUITES, metavar="SUITE", help=str(SUITES))
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument("--html", metavar="FILE", help="write the report as HTML")
    parser.add_argument("--markdown", metavar="FILE", help="write the report as Markdown")
    parser.add_argument("--machines", metavar="DIR", help="where learned machines go (.dot/.png)")
    parser.add_argument("--name", help="name of the server in the report")
    parser.add_argument(
        "--inputs",
        choices=["full", "small"],
        default="full",
        help="input alphabet for state-machine learning (default full)",
    )
    parser.add_argument("--wait", type=float, default=0.4, help="answer timeout (s)")
    parser.add_argument("--learn-wait", type=float, default=0.15, help="timeout while learning")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(handler=run)

    peers = sub.add_parser(
        "conformance-peers",
        help="start OpenSSL, GnuTLS, mbedTLS, wolfSSL and d2tls servers on loopback and test each",
    )
    peers.add_argument("--out", default="docs/conformance", help="report directory")
    peers.add_argument(
        "--peers",
        nargs="+",
        default=None,
        metavar="PEER",
        help="d2tls openssl gnutls mbedtls wolfssl",
    )
    peers.add_argument(
        "--only", nargs="+", choices=SUITES, metavar="SUITE", help=f"run only these: {SUITES}"
    )
    peers.add_argument(
        "--inputs",
        choices=["full", "small"],
        default="full",
        help="input alphabet for state-machine learning (default full)",
    )
    peers.add_argument("--wait", type=float, default=0.4, help="answer timeout (s)")
    peers.set_defaults(handler=run_peers)


def run(args: argparse.Namespace) -> int:
    from d2tls.conformance.probe import ClientCredentials
    from d2tls.conformance.report import markdown as to_markdown
    from d2tls.conformance.report import summary_table, write_html, write_json
    from d2tls.conformance.runner import INPUT_SETS, report_ok, run_conformance
    from d2tls.core.pki.verify import load_certificate_chain, load_private_key, load_trust_store

    credentials = ClientCredentials(
        chain=tuple(load_certificate_chain(Path(args.cert))),
        key=load_private_key(Path(args.key)),
        server_name=args.server_name,
    )
    machines = Path(args.machines) if args.machines else None
    if machines is None:
        written = args.json or args.html or args.markdown
        machines = Path(written).parent if written else None
    report = run_conformance(
        args.target,
        credentials,
        name=args.name or f"{args.target[0]}:{args.target[1]}",
        command=["d2tls", *sys.argv[1:]],
        suites=args.only or SUITES,
        trust_store=load_trust_store(Path(args.ca)),
        psk=args.psk,
        inputs=INPUT_SETS[args.inputs],
        wait=args.wait,
        learn_wait=args.learn_wait,
        machines=machines,
        stream=None if args.quiet else sys.stderr,
    )
    if args.json:
        write_json(report, Path(args.json))
    if args.markdown:
        Path(args.markdown).write_text(to_markdown(report), encoding="utf-8")
    if args.html:
        write_html(report, Path(args.html), machines)
    print(summary_table(report))
    return 0 if report_ok(report) else 1


def run_peers(args: argparse.Namespace) -> int:
    from d2tls.conformance.peers import PEERS, run_all_peers

    return run_all_peers(
        Path(args.out),
        peers=args.peers or list(PEERS),
        suites=args.only or SUITES,
        inputs=args.inputs,
        wait=args.wait,
    )
