"""The session-overhead model of the D2TLS paper (§6.5, Figures 9-10) and trace handling."""

from __future__ import annotations

import io
import json
import struct
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from d2tls.bench import overhead
from d2tls.bench.overhead import Delays
from d2tls.cli import main

TABLE3 = Delays.preset("cc3200-lan")


def test_table3_inputs_reproduce_the_papers_48_percent() -> None:
    """§6.5: 'With 6 hours of session ID, the overhead of D2TLS is approximately 48% lower'."""
    assert (TABLE3.full, TABLE3.d2tls, TABLE3.resumption) == (2920.0, 851.0, 57.0)
    point = overhead.daily_overhead(100, 6.0, TABLE3)
    assert (point.contexts, point.resumptions) == (4, 96)
    assert point.dtls_ms == pytest.approx(4 * 2920 + 96 * 57)
    assert point.d2tls_ms == pytest.approx(4 * 851 + 96 * 57)
    assert point.reduction == pytest.approx(0.48, abs=0.01)


def test_one_session_a_day_is_the_single_handshake_reduction() -> None:
    """Table 3: the full handshake is 70.9% shorter with delegation."""
    row = overhead.figure9(TABLE3, frequencies=(1,))[0]
    assert row["reduction"] == pytest.approx(0.709, abs=0.001)


def test_figure_shapes_match_the_paper() -> None:
    """Fig. 9: the reduction shrinks as sessions get more frequent; Fig. 10: as lifetime grows."""
    fig9 = overhead.figure9(TABLE3)
    reductions = [r["reduction"] for r in fig9]
    assert reductions == sorted(reductions, reverse=True)
    assert all(r["contexts"] == 1 for r in fig9)  # 24 h lifetime: one context a day
    differences = {round(r["dtls_ms"] - r["d2tls_ms"], 6) for r in fig9}
    assert differences == {2920.0 - 851.0}  # the gap is one handshake, whatever the frequency
    fig10 = overhead.figure10(TABLE3)
    reductions = [r["reduction"] for r in fig10]
    assert reductions == sorted(reductions, reverse=True)
    assert [r["lifetime_h"] for r in fig10][:1] == [1.0]


def test_contexts_expire_exactly_at_the_lifetime() -> None:
    assert overhead.contexts_needed([0, 10, 20, 30], lifetime=10) == (4, 0)
    assert overhead.contexts_needed([0, 9.9, 10, 19.9], lifetime=10) == (2, 2)
    assert overhead.contexts_needed([], lifetime=10) == (0, 0)


def test_sessions_are_split_at_the_inactivity_threshold() -> None:
    times = [0, 1, 2, 100, 100.5, 300]
    assert overhead.split_sessions(times, 60) == [(0, 2), (100, 100.5), (300, 300)]
    assert len(overhead.split_sessions(times, 1000)) == 1
    analysis = overhead.trace_analysis(times, TABLE3, threshold=60)
    assert analysis["sessions"] == 3
    counts = [r["sessions"] for r in analysis["frequency_vs_threshold"]]
    assert counts == sorted(counts, reverse=True)


def test_csv_and_pcap_traces_are_read(tmp_path: Path) -> None:
    csv = tmp_path / "trace.csv"
    csv.write_text("time,length\n3.5,60\n1.25,60\n")
    assert overhead.read_trace(csv) == [1.25, 3.5]
    plain = tmp_path / "trace.txt"
    plain.write_text("10\n20.5\n")
    assert overhead.read_trace(plain) == [10.0, 20.5]
    pcap = tmp_path / "trace.pcap"
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    packets = b"".join(
        struct.pack("<IIII", sec, usec, 4, 4) + b"abcd" for sec, usec in ((100, 500000), (161, 0))
    )
    pcap.write_bytes(header + packets)
    assert overhead.read_trace(pcap) == [100.5, 161.0]


def test_delays_can_come_from_a_latency_benchmark() -> None:
    def variant(ms: float) -> dict[str, object]:
        return {"wall_ms": {"median": ms}}

    result = {
        "benchmark": "latency",
        "profiles": {
            "lan": {
                "variants": {
                    "standalone": variant(30.0),
                    "blind": variant(20.0),
                    "bound": variant(21.0),
                    "reuse": variant(5.0),
                }
            }
        },
    }
    delays = overhead.delays_from_bench(result)
    assert (delays.full, delays.d2tls, delays.resumption) == (30.0, 20.0, 5.0)
    with pytest.raises(ValueError):
        overhead.delays_from_bench({"benchmark": "record"})


def test_overhead_command_json_and_plots(tmp_path: Path) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(["overhead", "--json", "--synthetic-trace", "3", "--plot-dir", str(tmp_path)])
    assert status == 0
    result = json.loads(out.getvalue())
    assert result["paper_point"]["reduction"] == pytest.approx(0.4825, abs=0.001)
    assert result["trace"]["synthetic"] is True
    for path in result["plots"]:
        data = Path(path).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    assert {Path(p).name for p in result["plots"]} >= {
        "overhead-figure9.png",
        "overhead-figure10.png",
    }


def test_custom_delays_override_the_preset() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        main(["overhead", "--json", "--full-ms", "100", "--d2tls-ms", "50", "--lifetimes", "24"])
    result = json.loads(out.getvalue())
    assert result["delays_ms"]["full"] == 100 and result["delays_ms"]["resumption"] == 57
    assert len(result["figure10"]) == 1
