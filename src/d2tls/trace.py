"""Per-connection JSON event traces (one JSON object per line, in the spirit of qlog)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from d2tls.core.trace import Tracer, tagged

__all__ = ["TraceFile", "Tracer", "read_trace", "tagged"]


class TraceFile:
    """Appends trace entries to a file as JSON lines, stamped with wall-clock time."""

    def __init__(self, path: Path) -> None:
        self._handle: TextIO = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, entry: dict[str, Any]) -> None:
        record = {"wall": time.time(), **entry}
        line = json.dumps(record, default=str, sort_keys=True)
        with self._lock:
            self._handle.write(line + "\n")
            self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def read_trace(path: Path) -> list[dict[str, Any]]:
    """Read a trace file; lines that are not JSON objects are skipped."""
    entries: list[dict[str, Any]] = []
    if not path.exists():
        return entries
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries
