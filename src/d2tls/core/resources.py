"""Where the data files the package reads at run time are: the protocol spec and the theories.

Both ship inside the package, as ``d2tls/data/spec`` (``dtls.yaml``, ``d2tls.yaml``,
``delegation.md``) and ``d2tls/data/proofs`` (the Tamarin theories and ``expected.toml``), and
are found with ``importlib.resources``, so a wheel installed anywhere finds them. In the
repository the top-level ``spec/`` and ``proofs/`` are symbolic links to those two directories.

For development, ``D2TLS_SPEC_DIR`` and ``D2TLS_PROOFS_DIR`` name another directory to use
instead; a variable that names no directory is an error, never a silent fallback.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from d2tls.core.errors import ConfigurationError

SPEC_ENV = "D2TLS_SPEC_DIR"
PROOFS_ENV = "D2TLS_PROOFS_DIR"


class ResourceError(ConfigurationError):
    """A data directory is missing: a broken install or a wrong override variable."""


def spec_dir() -> Path:
    """The spec directory: ``$D2TLS_SPEC_DIR`` if set, else the installed ``d2tls/data/spec``."""
    return _directory(SPEC_ENV, "spec")


def proofs_dir() -> Path:
    """The theories' directory: ``$D2TLS_PROOFS_DIR`` if set, else ``d2tls/data/proofs``."""
    return _directory(PROOFS_ENV, "proofs")


def _directory(variable: str, name: str) -> Path:
    override = os.environ.get(variable)
    if override:
        path = Path(override)
        if not path.is_dir():
            raise ResourceError(f"{variable}={override}: no such directory")
        return path
    resource = files("d2tls") / "data" / name
    # A wheel installed by pip is unpacked on disk; Tamarin and the spec loader need real
    # files, so a zipped install (zipimport) is refused with a clear message.
    if not isinstance(resource, Path):
        raise ResourceError(f"d2tls data directory {resource} is not on the file system")
    if not resource.is_dir():
        raise ResourceError(
            f"{resource}: missing from the d2tls installation (reinstall the package, "
            f"or set {variable} to a directory)"
        )
    return resource
