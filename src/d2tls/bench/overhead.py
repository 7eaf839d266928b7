"""``d2tls overhead``: the 24-hour session-overhead model of the D2TLS paper (§6.5, Figs. 9-10).

A *session* is a burst of packets whose inter-packet gaps are below a threshold (paper §3; 60 s
by default). A *context* (DTLS session state, i.e. master secret + session ID) lives for a
*lifetime*. Every session needs a secure connection: if the device holds an unexpired context
it resumes (cost ``resumption``), else it creates a new context with a full handshake (cost
``full``: standalone DTLS) or a delegated handshake (cost ``d2tls``: the paper's D2TLS "full
handshake", which already includes the device's resumption). The 24-hour overhead is the sum
of these costs; the paper's Figure 9 varies the number of sessions a day at a 24 h lifetime,
Figure 10 the lifetime at 100 sessions a day, from the TI CC3200 LAN delays of Table 3:

* DTLS full handshake 2,920 ms, D2TLS 851 ms, session resumption 57 ms;
* at 6 h lifetime and 100 sessions/day: 4 contexts + 96 resumptions, so DTLS 17,152 ms and
  D2TLS 8,876 ms: 48.3% less ("approximately 48%", §6.5).

Without a trace, sessions are spread evenly over the day (session ``i`` at ``i*86400/f``).
With a trace (CSV of packet timestamps in seconds, or a pcap), sessions come from the trace and
the model walks them in time order.
"""

from __future__ import annotations

import csv
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DAY = 86400.0
#: The paper's measured delays in ms (Tables 3 and 4).
PRESETS: dict[str, dict[str, float]] = {
    "cc3200-lan": {"full": 2920.0, "d2tls": 851.0, "resumption": 57.0},
    "cc3200-wan": {"full": 3581.0, "d2tls": 1840.0, "resumption": 537.0},
    "cc2538-lan": {"full": 63161.0, "d2tls": 16748.0, "resumption": 3902.0},
}
#: Session-separation thresholds of the paper's §3 (IIS minimum/default, Apache, Tomcat).
THRESHOLDS = (60.0, 600.0, 1800.0, 3600.0)
FIGURE9_FREQUENCIES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
FIGURE10_LIFETIMES_H = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0)


@dataclass(frozen=True)
class Delays:
    """Costs in ms: standalone full handshake, D2TLS delegated handshake, resumption."""

    full: float
    d2tls: float
    resumption: float
    source: str = "custom"

    @classmethod
    def preset(cls, name: str) -> Delays:
        values = PRESETS[name]
        return cls(values["full"], values["d2tls"], values["resumption"], f"paper {name}")


@dataclass(frozen=True)
class Overhead:
    """The accumulated overhead of one scenario (ms)."""

    sessions: int
    contexts: int
    resumptions: int
    dtls_ms: float
    d2tls_ms: float

    @property
    def reduction(self) -> float:
        """1 - D2TLS/DTLS: the fraction of the overhead D2TLS saves."""
        return 1.0 - self.d2tls_ms / self.dtls_ms if self.dtls_ms else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "contexts": self.contexts,
            "resumptions": self.resumptions,
            "dtls_ms": round(self.dtls_ms, 3),
            "d2tls_ms": round(self.d2tls_ms, 3),
            "reduction": round(self.reduction, 4),
        }


def contexts_needed(session_starts: Iterable[float], lifetime: float) -> tuple[int, int]:
    """(new contexts, resumptions) when each session reuses an unexpired context.

    A context made at ``t`` serves sessions starting before ``t + lifetime`` (expired at
    ``>=``, like :meth:`d2tls.core.dtls.session.Session.expired`).
    """
    contexts = resumptions = 0
    expires = -math.inf
    for start in sorted(session_starts):
        if start >= expires:
            contexts += 1
            expires = start + lifetime
        else:
            resumptions += 1
    return contexts, resumptions


def overhead(session_starts: Sequence[float], lifetime: float, delays: Delays) -> Overhead:
    """The overhead of the given sessions with contexts of ``lifetime`` seconds."""
    contexts, resumptions = contexts_needed(session_starts, lifetime)
    return Overhead(
        sessions=len(session_starts),
        contexts=contexts,
        resumptions=resumptions,
        dtls_ms=contexts * delays.full + resumptions * delays.resumption,
        d2tls_ms=contexts * delays.d2tls + resumptions * delays.resumption,
    )


def even_sessions(per_day: int, span: float = DAY) -> list[float]:
    """``per_day`` session start times spread evenly over ``span`` seconds."""
    return [i * span / per_day for i in range(per_day)]


def daily_overhead(per_day: int, lifetime_h: float, delays: Delays) -> Overhead:
    return overhead(even_sessions(per_day), lifetime_h * 3600.0, delays)


def figure9(
    delays: Delays, frequencies: Sequence[int] = FIGURE9_FREQUENCIES, lifetime_h: float = 24.0
) -> list[dict[str, Any]]:
    """Overhead vs sessions per day at a fixed lifetime (paper Figure 9: 24 h)."""
    return [
        {
            "sessions_per_day": f,
            "lifetime_h": lifetime_h,
            **daily_overhead(f, lifetime_h, delays).to_dict(),
        }
        for f in frequencies
    ]


def figure10(
    delays: Delays, lifetimes_h: Sequence[float] = FIGURE10_LIFETIMES_H, per_day: int = 100
) -> list[dict[str, Any]]:
    """Overhead vs context lifetime at a fixed session frequency (paper Figure 10: 100)."""
    return [
        {
            "sessions_per_day": per_day,
            "lifetime_h": h,
            **daily_overhead(per_day, h, delays).to_dict(),
        }
        for h in lifetimes_h
    ]


# --------------------------------------------------------------------------- traces
def read_trace(path: Path) -> list[float]:
    """Packet timestamps (s) from a pcap (classic libpcap) or a CSV/text file.

    CSV: the first column that parses as a number (a header row is skipped); or a column named
    ``time``, ``timestamp``, ``ts`` or ``frame.time_epoch`` if there is a header.
    """
    data = path.read_bytes()
    if data[:4] in (
        b"\xd4\xc3\xb2\xa1",
        b"\xa1\xb2\xc3\xd4",
        b"\x4d\x3c\xb2\xa1",
        b"\xa1\xb2\x3c\x4d",
    ):
        return _read_pcap(data)
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        raise ValueError("pcapng is not supported: convert with 'editcap -F pcap in out'")
    return _read_csv(data.decode("utf-8", errors="replace"))


def _read_pcap(data: bytes) -> list[float]:
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nanos = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    divisor = 1e9 if nanos else 1e6
    times = []
    pos = 24
    while pos + 16 <= len(data):
        seconds, fraction, captured, _ = struct.unpack(endian + "IIII", data[pos : pos + 16])
        times.append(seconds + fraction / divisor)
        pos += 16 + captured
    return times


def _read_csv(text: str) -> list[float]:
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    column = None
    header = [c.strip().lower() for c in rows[0]]
    for name in ("time", "timestamp", "ts", "frame.time_epoch", "frame.time_relative"):
        if name in header:
            column = header.index(name)
            rows = rows[1:]
            break
    times = []
    for row in rows:
        if column is not None:
            times.append(float(row[column]))
            continue
        for cell in row:
            try:
                times.append(float(cell))
                break
            except ValueError:
                continue
    return sorted(times)


def split_sessions(times: Sequence[float], threshold: float = 60.0) -> list[tuple[float, float]]:
    """(start, end) of each session: a gap of more than ``threshold`` s starts a new one."""
    sessions: list[tuple[float, float]] = []
    ordered = sorted(times)
    if not ordered:
        return sessions
    start = previous = ordered[0]
    for t in ordered[1:]:
        if t - previous > threshold:
            sessions.append((start, previous))
            start = t
        previous = t
    sessions.append((start, previous))
    return sessions


def trace_analysis(
    times: Sequence[float],
    delays: Delays,
    threshold: float = 60.0,
    lifetimes_h: Sequence[float] = FIGURE10_LIFETIMES_H,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, Any]:
    """Session frequency vs threshold (Figs. 3/6), lengths (Figs. 4/7), overhead per lifetime."""
    span = (max(times) - min(times)) if times else 0.0
    days = max(span / DAY, 1e-9)
    sessions = split_sessions(times, threshold)
    lengths = sorted(end - start for start, end in sessions)
    starts = [start for start, _ in sessions]
    return {
        "packets": len(times),
        "span_s": round(span, 3),
        "threshold_s": threshold,
        "sessions": len(sessions),
        "sessions_per_day": round(len(sessions) / days, 2) if span >= DAY / 2 else None,
        "frequency_vs_threshold": [
            {"threshold_s": t, "sessions": len(split_sessions(times, t))} for t in thresholds
        ],
        "session_lengths_s": [round(x, 6) for x in lengths],
        "mean_session_length_s": round(sum(lengths) / len(lengths), 4) if lengths else None,
        "overhead_vs_lifetime": [
            {"lifetime_h": h, **overhead(starts, h * 3600.0, delays).to_dict()} for h in lifetimes_h
        ],
    }


def synthetic_trace(seed: int = 0, sessions: int = 100, span: float = DAY) -> list[float]:
    """A reproducible stand-in for a sensor's 24-hour capture (labelled synthetic wherever used).

    ``sessions`` bursts at random times; each burst has 1-8 packets 0.01-2 s apart.
    """
    import random

    rng = random.Random(seed)
    times: list[float] = []
    for _ in range(sessions):
        t = rng.uniform(0, span)
        for _ in range(rng.randint(1, 8)):
            times.append(t)
            t += rng.uniform(0.01, 2.0)
    return sorted(times)


# --------------------------------------------------------------------------- delays from a bench
def delays_from_bench(
    result: dict[str, Any], profile: str | None = None, modelled: bool = False
) -> Delays:
    """Take the medians of a ``d2tls bench latency --json`` (or ``bench device``) result."""
    if result.get("benchmark") == "latency":
        profiles = result["profiles"]
        name = profile or next(iter(profiles))
        entry = profiles[name]
        if modelled and "emulation" in entry:
            variants = entry["emulation"]["variants"]
            pick = {v: variants[v]["median"] for v in variants}
            source = f"bench latency {name} (calibrated model)"
        else:
            pick = {v: entry["variants"][v]["wall_ms"]["median"] for v in entry["variants"]}
            source = f"bench latency {name} (measured wall)"
    elif result.get("benchmark") == "device":
        pick = {v: result["variants"][v]["wall_ms"]["median"] for v in result["variants"]}
        source = "bench device (loopback wall)"
    else:
        raise ValueError("expected the JSON of 'd2tls bench latency' or 'd2tls bench device'")
    return Delays(pick["standalone"], pick["blind"], pick["reuse"], source)


# --------------------------------------------------------------------------- plots
def plot_figure9(rows: list[dict[str, Any]], path: Path, delays: Delays) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["sessions_per_day"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(x, [r["dtls_ms"] for r in rows], "o-", label="DTLS")
    ax.plot(x, [r["d2tls_ms"] for r in rows], "s-", label="D2TLS")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sessions per day")
    ax.set_ylabel("session overhead in 24 h (ms)")
    ax.set_title(f"Fig. 9: overhead vs session frequency ({rows[0]['lifetime_h']:g} h lifetime)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title=delays.source, fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_figure10(rows: list[dict[str, Any]], path: Path, delays: Delays) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['lifetime_h']:g}" for r in rows]
    positions = range(len(rows))
    width = 0.4
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.bar([p - width / 2 for p in positions], [r["dtls_ms"] for r in rows], width, label="DTLS")
    ax.bar([p + width / 2 for p in positions], [r["d2tls_ms"] for r in rows], width, label="D2TLS")
    for p, r in zip(positions, rows, strict=True):
        ax.annotate(
            f"-{100 * r['reduction']:.0f}%",
            (p + width / 2, r["d2tls_ms"]),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(list(positions), labels)
    ax.set_xlabel("DTLS context lifetime (h)")
    ax.set_ylabel("session overhead in 24 h (ms)")
    ax.set_title(f"Fig. 10: overhead vs context lifetime ({rows[0]['sessions_per_day']}/day)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(title=delays.source, fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_trace(analysis: dict[str, Any], directory: Path, suffix: str, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = analysis["frequency_vs_threshold"]
    ax.bar([f"{r['threshold_s']:g}" for r in rows], [r["sessions"] for r in rows])
    ax.set_xlabel("session-separation threshold (s)")
    ax.set_ylabel("sessions")
    ax.set_title("Session frequency vs threshold (cf. paper Figs. 3, 6)")
    fig.tight_layout()
    path = directory / f"{stem}-frequency.{suffix}"
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
    lengths = analysis["session_lengths_s"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if lengths:
        ax.step(lengths, [(i + 1) / len(lengths) for i in range(len(lengths))], where="post")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("session length (s)")
    ax.set_ylabel("CDF")
    ax.set_title(f"Session lengths, threshold {analysis['threshold_s']:g} s (cf. Figs. 4, 7)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = directory / f"{stem}-lengths.{suffix}"
    fig.savefig(path)
    plt.close(fig)
    paths.append(path)
    return paths


# --------------------------------------------------------------------------- command
def run(
    delays: Delays,
    frequencies: Sequence[int] = FIGURE9_FREQUENCIES,
    lifetimes_h: Sequence[float] = FIGURE10_LIFETIMES_H,
    per_day: int = 100,
    figure9_lifetime_h: float = 24.0,
    trace: Sequence[float] | None = None,
    threshold: float = 60.0,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "overhead",
        "delays_ms": {
            "full": delays.full,
            "d2tls": delays.d2tls,
            "resumption": delays.resumption,
            "source": delays.source,
        },
        "figure9": figure9(delays, frequencies, figure9_lifetime_h),
        "figure10": figure10(delays, lifetimes_h, per_day),
        "paper_point": {
            "sessions_per_day": 100,
            "lifetime_h": 6.0,
            **daily_overhead(100, 6.0, delays).to_dict(),
            "paper_reduction": 0.48,
        },
    }
    if trace is not None:
        result["trace"] = trace_analysis(trace, delays, threshold, lifetimes_h)
    return result


def render(result: dict[str, Any]) -> str:
    from d2tls.bench.common import table

    d = result["delays_ms"]
    out = [
        f"Delays ({d['source']}): DTLS full {d['full']:g} ms, D2TLS {d['d2tls']:g} ms, "
        f"resumption {d['resumption']:g} ms\n"
    ]
    for key, title in (
        ("figure9", "Figure 9: 24-hour overhead vs sessions/day"),
        ("figure10", "Figure 10: 24-hour overhead vs context lifetime"),
    ):
        out.append(
            table(
                [
                    "sessions/day",
                    "lifetime h",
                    "contexts",
                    "resumptions",
                    "DTLS ms",
                    "D2TLS ms",
                    "reduction",
                ],
                [
                    [
                        r["sessions_per_day"],
                        r["lifetime_h"],
                        r["contexts"],
                        r["resumptions"],
                        r["dtls_ms"],
                        r["d2tls_ms"],
                        f"{100 * r['reduction']:.1f}%",
                    ]
                    for r in result[key]
                ],
                title=title,
            )
        )
        out.append("")
    p = result["paper_point"]
    out.append(
        f"At 6 h lifetime and 100 sessions/day: DTLS {p['dtls_ms']:,.0f} ms, D2TLS "
        f"{p['d2tls_ms']:,.0f} ms, reduction {100 * p['reduction']:.1f}% (paper: ~48%)"
    )
    if "trace" in result:
        t = result["trace"]
        out.append(
            f"\nTrace: {t['packets']} packets over {t['span_s']:.0f} s; threshold "
            f"{t['threshold_s']:g} s gives {t['sessions']} sessions, mean length "
            f"{t['mean_session_length_s']} s"
        )
        out.append(
            table(
                ["threshold s", "sessions"],
                [[r["threshold_s"], r["sessions"]] for r in t["frequency_vs_threshold"]],
            )
        )
        out.append(
            table(
                ["lifetime h", "contexts", "resumptions", "DTLS ms", "D2TLS ms", "reduction"],
                [
                    [
                        r["lifetime_h"],
                        r["contexts"],
                        r["resumptions"],
                        r["dtls_ms"],
                        r["d2tls_ms"],
                        f"{100 * r['reduction']:.1f}%",
                    ]
                    for r in t["overhead_vs_lifetime"]
                ],
                title="Overhead of the trace's sessions",
            )
        )
    if result.get("plots"):
        out.append("\nplots: " + ", ".join(result["plots"]))
    return "\n".join(out)
