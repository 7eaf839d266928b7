"""Sphinx configuration of the d2tls documentation.

Build (what tests/test_docs.py runs, warnings are errors):

    .venv/bin/python -m sphinx -W -n -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent / "src"))

project = "d2tls"
author = "the d2tls authors"
copyright = "the d2tls authors"
release = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "d2tls_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
# conformance/*.md are included by the generated _generated/reports/conformance.md.
exclude_patterns = ["_build", "_generated/*.md", "_generated/**/*.txt", "**/.*", "conformance/**"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = "d2tls"

# --- API reference ----------------------------------------------------------------------
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

nitpicky = True
# Types of the standard library and third-party packages: there is no intersphinx (the build
# must work offline), so references to them cannot resolve.
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(abc|asyncio|collections|enum|pathlib|typing|dataclasses|datetime|threading|ipaddress)\..*",
    ),
    (r"py:.*", r"(cryptography|transitions|cbor2|redis|sqlite3|socket|ssl)\..*"),
    # Internal modules, deliberately left out of the API reference, and the TwinPeaks
    # scheme, described on its own page (twinpeaks.md).
    (
        r"py:.*",
        r"d2tls\.(core\.(dtls\.(messages|record|keyschedule|fragments|buffer)|pki|trace|twinpeaks)"
        r"|net|trace)\..*",
    ),
]
# Names that annotations use unqualified (module-level aliases and imports under
# ``from __future__ import annotations``), which Sphinx cannot resolve to a documented object.
nitpick_ignore = [("py:obj", "d2tls.core.sansio.EventT_co")] + [
    ("py:class", name)
    for name in (
        "Address",
        "Session",
        "Tracer",
        "ClientEndpoint",
        "Pump",
        "DeviceEvent",
        "AgentEvent",
        "Datagram",
        "_Timer",
        "d2tls.sim.P",
        "d2tls.core.sansio.EventT_co",
        "VerdictCache",
        "DelegationMessage",
        "x509.Certificate",
        "ec.EllipticCurvePrivateKey",
        "StrEnum",
        # type variables of d2tls.core.model.machine (state Enum, payload, message, result)
        "S",
        "P",
        "M",
        "R",
    )
]
nitpick_ignore_regex.append((r"py:.*", r"d2tls\.core\.model\.machine\.[SPMR]"))
