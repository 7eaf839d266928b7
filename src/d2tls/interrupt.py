"""Clean exit on SIGINT and SIGTERM for every ``d2tls`` command.

:func:`install` makes both signals raise :class:`Interrupted` (a ``KeyboardInterrupt``, so
``except Exception`` never swallows it and asyncio re-raises it out of ``asyncio.run`` after
cancelling its tasks). The stack then unwinds through the commands' ``finally`` blocks and
context managers, which stop their child processes and close their sockets; ``d2tls``'s
``main`` turns the exception into the shell's usual status ``128 + signal number`` (130 for
SIGINT, 143 for SIGTERM) without a traceback. Only the first signal interrupts: a second one
during that clean-up is noted and ignored, so the clean-up itself is not cut short.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

#: The signals that stop a command.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The command was stopped by ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def exit_status(exc: BaseException) -> int:
    """The shell's status for a command stopped by ``exc`` (130 for a plain Ctrl-C)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def _stop(signum: int, frame: FrameType | None) -> None:
    for sig in STOP_SIGNALS:  # later signals must not cut the clean-up short
        signal.signal(sig, _already_stopping)
    raise Interrupted(signum)


def _already_stopping(signum: int, frame: FrameType | None) -> None:
    os.write(2, f"d2tls: {signal.Signals(signum).name} ignored: already stopping\n".encode())


def install() -> None:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` in the main thread."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """:func:`install` for the duration of the block, then restore the previous handlers.

    Outside the main thread (where Python cannot set signal handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    install()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
