"""Shared helpers of the benchmarks: statistics, tables, progress bars, the PKI."""

from __future__ import annotations

import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import Store

from d2tls.core.pki.generate import PKIPaths, init_pki
from d2tls.core.pki.verify import (
    load_certificate_chain,
    load_private_key,
    load_psk_file,
    load_trust_store,
)

SERVER_NAME = "localhost"


# --------------------------------------------------------------------------- statistics
def summary(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """Median, interquartile range (Q1, Q3), mean, min, max and n of ``values``."""
    if not values:
        return {"n": 0, "median": None, "q1": None, "q3": None, "iqr": None}
    data = sorted(values)
    if len(data) >= 2:
        q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive")
    else:
        q1 = q3 = data[0]
    return {
        "n": len(data),
        "median": round(statistics.median(data), digits),
        "q1": round(q1, digits),
        "q3": round(q3, digits),
        "iqr": round(q3 - q1, digits),
        "mean": round(statistics.fmean(data), digits),
        "min": round(data[0], digits),
        "max": round(data[-1], digits),
    }


def ratio(numerator: float | None, denominator: float | None, digits: int = 4) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def time_op(
    op: Callable[[], object], repeat: int, clock: Callable[[], float] = time.thread_time
) -> float:
    """Median seconds of one ``op()`` call: ``repeat`` batches, batch size picked for ~2 ms."""
    op()  # warm up (lazy initialisation inside OpenSSL/cryptography)
    start = clock()
    op()
    single = max(clock() - start, 1e-7)
    batch = max(1, min(1000, int(0.002 / single)))
    samples = []
    for _ in range(max(3, repeat)):
        start = clock()
        for _ in range(batch):
            op()
        samples.append((clock() - start) / batch)
    return statistics.median(samples)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collect, then keep the cyclic GC off while measuring (it is turned back on after)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --------------------------------------------------------------------------- output
def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> str:
    """A plain-text table; numbers right-aligned, text left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    numeric = [
        all(_is_number(row[i]) for row in cells if i < len(row)) for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = []
        for i, value in enumerate(values):
            parts.append(value.rjust(widths[i]) if numeric[i] and i else value.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out.append(line(list(headers)))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.1f}"
        if magnitude >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _is_number(text: str) -> bool:
    stripped = text.replace(",", "").replace("x", "").replace("%", "").strip()
    try:
        float(stripped)
    except ValueError:
        return text == "-"
    return True


def print_json(result: dict[str, Any]) -> None:
    print(json.dumps(result, sort_keys=True, default=str))


def target_line(name: str, value: float | None, limit: float, unit: str = "") -> str:
    if value is None:
        return f"  {name}: n/a (target <= {limit}{unit})"
    verdict = "met" if value <= limit else "MISSED"
    return f"  {name}: {value:.3f}{unit} (target <= {limit}{unit}) {verdict}"


class Progress:
    """A tqdm progress bar on stderr (silent when stderr is not a terminal or when disabled)."""

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm is a dependency
                return
            self._bar = tqdm(
                total=total,
                desc=description,
                file=sys.stderr,
                disable=None,  # None: off when stderr is not a TTY
                leave=False,
                dynamic_ncols=True,
            )

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- PKI
@dataclass
class Materials:
    """A loaded test PKI for benchmarks (made in a temporary directory unless given)."""

    paths: PKIPaths
    store: Store
    server_chain: tuple[bytes, ...]
    server_key: ec.EllipticCurvePrivateKey
    device_chain: tuple[bytes, ...]
    device_key: ec.EllipticCurvePrivateKey
    psk_identity: bytes
    psk: bytes
    psk_keys: dict[bytes, bytes]

    @classmethod
    def load(cls, paths: PKIPaths) -> Materials:
        psk_keys = load_psk_file(paths.psk_file)
        identity, psk = next(iter(psk_keys.items()))
        device = paths.devices[0]
        return cls(
            paths=paths,
            store=load_trust_store(paths.ca_cert),
            server_chain=tuple(load_certificate_chain(paths.server_chain)),
            server_key=load_private_key(paths.server_key),
            device_chain=tuple(load_certificate_chain(device.cert)),
            device_key=load_private_key(device.key),
            psk_identity=identity,
            psk=psk,
            psk_keys=psk_keys,
        )

    @classmethod
    def create(cls, directory: Path | None = None) -> Materials:
        where = directory or Path(tempfile.mkdtemp(prefix="d2tls-bench-"))
        return cls.load(init_pki(where, server_name=SERVER_NAME, devices=1))


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    import os
    import platform

    import cryptography

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cryptography": cryptography.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
