"""A key server's state directory (``d2tls twinpeaks keyserver --state-dir DIR``).

The state (:class:`~d2tls.core.twinpeaks.state.KeyServerState`: master key, a root's own key, the
published keys, the serials) lives in ``DIR/keyserver.state``. It holds secrets, so the
directory is created 0700 and the file written 0600, atomically (a temporary file in the same
directory, fsync, rename, fsync of the directory): a crash leaves the old state or the new one,
never half of one. A file that others may read, or that does not parse, stops the server
with a :class:`~d2tls.core.errors.StateFileError` naming the file and the defect.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Final

from d2tls.core.errors import StateFileError
from d2tls.core.twinpeaks.state import MAX_STATE_SIZE, KeyServerState

STATE_FILE: Final = "keyserver.state"


def state_path(directory: Path) -> Path:
    return directory / STATE_FILE


def load_state(directory: Path) -> KeyServerState | None:
    """The saved state, or None when there is none yet (the directory is created, 0700)."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateFileError(f"cannot create the state directory {directory}: {exc}") from None
    path = state_path(directory)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise StateFileError(f"{path} is not a regular file")
        if mode & 0o077:
            raise StateFileError(
                f"{path} holds a master key but has mode {stat.S_IMODE(mode):04o}: "
                "make it 0600 (chmod 600) or remove it"
            )
        data = handle.read(MAX_STATE_SIZE + 1)
    try:
        return KeyServerState.decode(data)
    except StateFileError as exc:
        raise StateFileError(f"{path}: {exc}; refusing to start") from None


def save_state(directory: Path, state: KeyServerState) -> None:
    """Write ``state`` atomically, 0600."""
    data = state.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, state_path(directory))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


__all__ = ["STATE_FILE", "load_state", "save_state", "state_path"]
