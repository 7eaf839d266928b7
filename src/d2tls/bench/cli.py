"""``d2tls bench {device,latency,server,record,flood,auth}`` and ``d2tls overhead``.

Registered by :mod:`d2tls.cli`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from d2tls.bench.common import print_json


def _int_list(text: str) -> list[int]:
    try:
        return [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _common(parser: argparse.ArgumentParser, runs: int | None = 50) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON result to FILE")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    if runs is not None:
        parser.add_argument(
            "--runs", type=_positive, default=runs, help=f"measured runs (default {runs})"
        )


def _emit(args: argparse.Namespace, result: dict[str, Any], render: Any) -> int:
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=1, sort_keys=True, default=str))
    if args.json:
        print_json(result)
    else:
        print(render(result))
    return 0


# --------------------------------------------------------------------------- handlers
def _device(args: argparse.Namespace) -> int:
    from d2tls.bench import device

    result = device.run(
        runs=args.runs,
        warmup=args.warmup,
        progress=not args.no_progress,
        breakdown=not args.no_breakdown,
        profile_runs=args.pyinstrument,
        device_profile=args.profile,
    )
    return _emit(args, result, device.render)


def _latency(args: argparse.Namespace) -> int:
    from d2tls.bench import latency

    profiles = [
        latency.Profile(name, latency.PROFILES[name], args.jitter, args.loss, args.local_rtt)
        for name in (args.network or ([] if args.rtt else ["lan", "wan"]))
    ]
    for rtt in args.rtt or []:
        profiles.append(
            latency.Profile(f"rtt-{rtt:g}ms", rtt, args.jitter, args.loss, args.local_rtt)
        )
    result = latency.run(
        profiles,
        runs=args.runs,
        warmup=args.warmup,
        seed=args.seed,
        device_sign_ms=args.device_sign_ms,
        progress=not args.no_progress,
    )
    return _emit(args, result, latency.render)


def _server(args: argparse.Namespace) -> int:
    from d2tls.bench import server

    stores: list[str] | None = [] if args.no_stores else (args.store or None)
    result = server.run(
        concurrency=args.concurrency,
        duration=args.duration,
        cache_sizes=args.cache_sizes,
        cache_duration=args.cache_duration,
        store_urls=stores,
        store_n=args.store_n,
        progress=not args.no_progress,
        engine_handshakes=args.engine_handshakes,
    )
    return _emit(args, result, server.render)


def _record(args: argparse.Namespace) -> int:
    from d2tls.bench import record

    result = record.run(runs=args.runs, sizes=tuple(args.sizes), progress=not args.no_progress)
    return _emit(args, result, record.render)


def _overhead(args: argparse.Namespace) -> int:
    from d2tls.bench import overhead

    if args.from_json:
        delays = overhead.delays_from_bench(
            json.loads(Path(args.from_json).read_text()), args.from_profile, args.modelled
        )
    else:
        delays = overhead.Delays.preset(args.preset)
    if args.full_ms is not None or args.d2tls_ms is not None or args.resumption_ms is not None:
        delays = overhead.Delays(
            args.full_ms if args.full_ms is not None else delays.full,
            args.d2tls_ms if args.d2tls_ms is not None else delays.d2tls,
            args.resumption_ms if args.resumption_ms is not None else delays.resumption,
            "custom",
        )
    trace = None
    if args.trace:
        trace = overhead.read_trace(Path(args.trace))
    elif args.synthetic_trace is not None:
        trace = overhead.synthetic_trace(args.synthetic_trace)
    result = overhead.run(
        delays,
        frequencies=args.frequencies,
        lifetimes_h=args.lifetimes,
        per_day=args.sessions_per_day,
        figure9_lifetime_h=args.figure9_lifetime,
        trace=trace,
        threshold=args.threshold,
    )
    if args.synthetic_trace is not None and "trace" in result:
        result["trace"]["synthetic"] = True
    if args.plot_dir:
        directory = Path(args.plot_dir)
        directory.mkdir(parents=True, exist_ok=True)
        stem = args.plot_prefix
        plots = [
            overhead.plot_figure9(
                result["figure9"], directory / f"{stem}-figure9.{args.format}", delays
            ),
            overhead.plot_figure10(
                result["figure10"], directory / f"{stem}-figure10.{args.format}", delays
            ),
        ]
        if "trace" in result:
            plots += overhead.plot_trace(result["trace"], directory, args.format, f"{stem}-trace")
        result["plots"] = [str(p) for p in plots]
    return _emit(args, result, overhead.render)


def _auth(args: argparse.Namespace) -> int:
    from d2tls.bench import auth

    result = auth.run(
        runs=args.runs,
        topology=auth.Topology(args.near_rtt, args.far_rtt),
        dnssec_algorithm=args.dnssec_algorithm,
        plot_dir=Path(args.plot_dir) if args.plot_dir else None,
        progress=not args.no_progress,
    )
    _emit(args, result, auth.render)
    return 0


def _flood(args: argparse.Namespace) -> int:
    from d2tls.bench import flood

    config = flood.FloodConfig(
        ports_a=args.ports,
        rate_a=args.fragment_rate,
        rate_b=args.rate,
        duration_b=args.duration,
        source_ports_b=args.source_ports,
        max_connections=args.max_connections,
        half_open_c=args.half_open,
        established=args.established,
        idle_samples=args.samples,
    )
    result = flood.run(config)
    if args.markdown:
        print(flood.render_markdown(result))
        if args.save:
            Path(args.save).write_text(json.dumps(result, indent=1, sort_keys=True))
        return 0 if result["ok"] else 1
    _emit(args, result, flood.render)
    return 0 if result["ok"] else 1


def _channel(args: argparse.Namespace) -> int:
    from d2tls.bench import channel

    return _emit(args, channel.measure(args.runs), channel.render)


# --------------------------------------------------------------------------- parsers
def register(subparsers: Any) -> None:
    """Add ``bench`` (device, latency, server, record) and ``overhead`` to ``d2tls``."""
    bench = subparsers.add_parser(
        "bench", help="benchmarks (device, latency, server, record, flood, auth, channel)"
    )
    kinds = bench.add_subparsers(dest="bench_command", required=True)

    device = kinds.add_parser(
        "device", help="device cost per new session: D2TLS bound/blind vs standalone DTLS"
    )
    _common(device)
    device.add_argument("--warmup", type=int, default=3, help="unmeasured runs first (default 3)")
    device.add_argument(
        "--no-breakdown", action="store_true", help="skip the bytes-by-record-type pass"
    )
    device.add_argument(
        "--pyinstrument",
        type=int,
        default=0,
        metavar="N",
        help="profile N extra D2TLS sessions of the device thread with pyinstrument",
    )
    device.add_argument(
        "--profile",
        choices=("cc3200", "cc2538"),
        help="model the counted operations on a device of the D2TLS paper (Tables 2-7)",
    )
    device.set_defaults(handler=_device)

    latency = kinds.add_parser(
        "latency", help="device-perceived setup time through the impairment relay"
    )
    _common(latency)
    latency.add_argument(
        "--network",
        action="append",
        choices=sorted(["lan", "wan"]),
        help="the paper's profiles: lan = 1.366 ms RTT, wan = 167.888 ms RTT (default both)",
    )
    latency.add_argument(
        "--rtt", action="append", type=float, metavar="MS", help="a custom RTT (repeatable)"
    )
    latency.add_argument("--jitter", type=float, default=0.0, metavar="MS", help="per direction")
    latency.add_argument("--loss", type=float, default=0.0, help="per direction, 0..1")
    latency.add_argument(
        "--local-rtt", type=float, default=0.0, metavar="MS", help="device-agent link RTT"
    )
    latency.add_argument(
        "--seed", type=int, default=0, help="seed of the relay's jitter and loss (default 0)"
    )
    latency.add_argument("--warmup", type=int, default=2, help="unmeasured runs first (default 2)")
    latency.add_argument(
        "--device-sign-ms",
        type=float,
        metavar="MS",
        help="calibrated slow-device model: scale public-key ops so one signature takes MS "
        "(the paper's CC3200: 414)",
    )
    latency.set_defaults(handler=_latency)

    server = kinds.add_parser("server", help="server handshakes/s, resumptions/s, cache memory")
    _common(server, runs=None)
    server.add_argument(
        "--concurrency",
        type=_int_list,
        default=[10, 100, 1000],
        metavar="N,N,...",
        help="concurrent clients per level (default 10,100,1000)",
    )
    server.add_argument("--duration", type=float, default=5.0, help="seconds per level")
    server.add_argument(
        "--cache-sizes",
        type=_int_list,
        default=[10**3, 10**4, 10**5, 10**6],
        metavar="N,N,...",
        help="cached sessions to test resumption against (default 1e3,1e4,1e5,1e6)",
    )
    server.add_argument(
        "--cache-duration",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds of resumptions per cache size (default 3)",
    )
    server.add_argument(
        "--store",
        action="append",
        metavar="URL",
        help="session store to benchmark with d2tls.bench.store (default memory:// and sqlite)",
    )
    server.add_argument(
        "--store-n", type=int, default=1000, help="sessions per store benchmark (default 1000)"
    )
    server.add_argument("--no-stores", action="store_true", help="skip the store benchmarks")
    server.add_argument(
        "--engine-handshakes",
        type=int,
        default=300,
        metavar="N",
        help="handshakes of each kind through the sans-IO engines alone (default 300)",
    )
    server.set_defaults(handler=_server)

    record = kinds.add_parser("record", help="application-data record cost vs the raw AEAD")
    _common(record)
    record.add_argument(
        "--sizes",
        type=_int_list,
        default=[16, 64, 256, 1024, 1345],
        metavar="B,B,...",
        help="application-data sizes in bytes (default 16,64,256,1024,1345)",
    )
    record.set_defaults(handler=_record)

    channel = kinds.add_parser(
        "channel", help="device cost of one delegation-channel handshake: psk vs ecdhe-psk"
    )
    _common(channel, runs=200)
    channel.set_defaults(handler=_channel)

    flood = kinds.add_parser(
        "flood",
        help="a d2tls server and agent under pre-handshake floods (issue 19's targets)",
        description="Start a d2tls server and agent and flood them from many source ports on "
        "127.0.0.1: (a) never-completed ClientHello fragments, (b) ClientHellos without "
        "cookie, (c) half-open handshakes after the cookie; report RSS growth, CPU per "
        "datagram, pending state, HelloVerifyRequest amplification and a legitimate client's "
        "handshake latency against the idle server. Exit status 1 if a target is missed.",
    )
    flood.add_argument("--json", action="store_true", help="print one JSON object")
    flood.add_argument("--markdown", action="store_true", help="print Markdown tables")
    flood.add_argument("--save", metavar="FILE", help="also write the JSON result to FILE")
    flood.add_argument(
        "--ports", type=_positive, default=10_000, help="source ports in (a) (default 10000)"
    )
    flood.add_argument("--fragment-rate", type=_positive, default=2_000, help="fragments/s in (a)")
    flood.add_argument(
        "--rate", type=_positive, default=1_000, help="ClientHellos/s in (b) (default 1000)"
    )
    flood.add_argument("--duration", type=float, default=10.0, help="seconds of (b)")
    flood.add_argument("--source-ports", type=_positive, default=1_000, help="source ports in (b)")
    flood.add_argument(
        "--max-connections",
        type=_positive,
        default=1_000,
        help="the server's association limit, if it has --max-connections (default 1000)",
    )
    flood.add_argument(
        "--half-open",
        type=_positive,
        help="half-open handshakes in (c) (default: twice the association limit)",
    )
    flood.add_argument(
        "--established", type=_positive, default=20, help="established connections in (c)"
    )
    flood.add_argument(
        "--samples", type=_positive, default=20, help="idle handshake latency samples"
    )
    flood.set_defaults(handler=_flood)

    auth = kinds.add_parser(
        "auth",
        help="server authentication: PKI (CA + OCSP), DANE (DNSSEC + TLSA), TwinPeaks",
        description="Set up PKI (our CA + 'd2tls pki ocsp'), DANE (Knot DNS, DNSSEC-signed "
        "zones, TLSA 3 1 1) and TwinPeaks (key servers, resolver) on 127.0.0.1 with the "
        "dissertation's delays added by the relay; measure authentication delay (cold and "
        "warm caches), connection set-up and bytes; check the dissertation's claims "
        "(section 2.6.3) and plot Figs. 2.3-2.5 style PNGs.",
    )
    _common(auth, runs=10)
    auth.add_argument(
        "--near-rtt",
        type=float,
        default=1.366,
        metavar="MS",
        help="RTT within East Asia: web, OCSP, root and SLD servers (default 1.366)",
    )
    auth.add_argument(
        "--far-rtt",
        type=float,
        default=167.888,
        metavar="MS",
        help="RTT across the Pacific: TLD DNS and TLK key server (default 167.888)",
    )
    auth.add_argument(
        "--dnssec-algorithm",
        choices=["rsasha256", "ecdsap256sha256"],
        default="rsasha256",
        help="zone keys: rsasha256 = 4096-bit KSK, 2048-bit ZSK as in the dissertation "
        "(default), ecdsap256sha256 = P-256",
    )
    auth.add_argument("--plot-dir", metavar="DIR", help="write the Fig. 2.3/2.4/2.5 style PNGs")
    auth.set_defaults(handler=_auth)

    from d2tls.bench.overhead import FIGURE9_FREQUENCIES, FIGURE10_LIFETIMES_H, PRESETS

    over = subparsers.add_parser(
        "overhead", help="24-hour session-overhead model of the paper (Figs. 9-10)"
    )
    over.add_argument("--json", action="store_true", help="print one JSON object")
    over.add_argument("--save", metavar="FILE", help="also write the JSON result to FILE")
    over.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="cc3200-lan",
        help="the paper's delays (Tables 3-4; default cc3200-lan)",
    )
    over.add_argument("--full-ms", type=float, help="standalone DTLS full handshake (ms)")
    over.add_argument("--d2tls-ms", type=float, help="D2TLS delegated handshake (ms)")
    over.add_argument("--resumption-ms", type=float, help="session resumption (ms)")
    over.add_argument(
        "--from-json",
        metavar="FILE",
        help="take the delays from a 'bench latency/device --save' JSON",
    )
    over.add_argument("--from-profile", metavar="NAME", help="which latency profile (lan, wan)")
    over.add_argument(
        "--modelled",
        action="store_true",
        help="use the calibrated slow-device model of 'bench latency'",
    )
    over.add_argument("--sessions-per-day", type=int, default=100, help="for Figure 10")
    over.add_argument(
        "--frequencies",
        type=_int_list,
        default=list(FIGURE9_FREQUENCIES),
        metavar="N,N,...",
        help="sessions/day for Figure 9",
    )
    over.add_argument(
        "--lifetimes",
        type=_float_list,
        default=list(FIGURE10_LIFETIMES_H),
        metavar="H,H,...",
        help="context lifetimes in hours for Figure 10",
    )
    over.add_argument(
        "--figure9-lifetime",
        type=float,
        default=24.0,
        metavar="H",
        help="context lifetime in hours for Figure 9 (default 24)",
    )
    over.add_argument(
        "--trace",
        metavar="FILE",
        help="packet timestamps: CSV (seconds) or pcap; split into sessions",
    )
    over.add_argument(
        "--synthetic-trace",
        type=int,
        metavar="SEED",
        help="use a generated 24-hour trace (100 bursts) instead",
    )
    over.add_argument(
        "--threshold",
        type=float,
        default=60.0,
        metavar="S",
        help="inactivity that separates sessions (paper §3: 60 s)",
    )
    over.add_argument("--plot-dir", metavar="DIR", help="write Figure 9/10 (and trace) plots")
    over.add_argument(
        "--plot-prefix", default="overhead", help="file name prefix of the plots (default overhead)"
    )
    over.add_argument(
        "--format", choices=["png", "svg"], default="png", help="plot format (default png)"
    )
    over.set_defaults(handler=_overhead)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - d2tls.cli is the entry
    from d2tls.cli import main as d2tls_main

    return d2tls_main(argv if argv is not None else sys.argv[1:])
