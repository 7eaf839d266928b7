"""Trace entries as the protocol core emits them: a :data:`Tracer` is any callable that takes
one JSON-able entry; the tooling decides where entries go (:mod:`d2tls.trace` writes files)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Tracer = Callable[[dict[str, Any]], None]


def tagged(tracer: Tracer | None, **tags: str) -> Tracer | None:
    """A tracer that adds ``tags`` (e.g. party="agent", link="agent-server") to each entry."""
    if tracer is None:
        return None
    sink = tracer

    def trace(entry: dict[str, Any]) -> None:
        sink({**entry, **tags})

    return trace
