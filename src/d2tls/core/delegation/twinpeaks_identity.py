"""The agent's side of TwinPeaks server keys (spec/twinpeaks.md §9.5): settings of its client.

When the host has looked the requested server_name up through TwinPeaks (IO, done by the host:
:mod:`d2tls.lab.twinpeaks_keys`), the agent's handshake offers RFC 7250 raw public keys for the
server, accepts only the key the hierarchy serves for that name, and carries the TwinPeaks
ClientHello extension (§9.1, §9.2). Without a key for the name, the client is unchanged
(X.509 chain, and OCSP when configured).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from d2tls.core.dtls.twinpeaks import ResolvedKey

#: ``server_name -> the key TwinPeaks serves for it`` (None: not a TwinPeaks server).
ServerKeys = Callable[[str], ResolvedKey | None]


def twinpeaks_client_settings(server_name: str, resolved: ResolvedKey | None) -> dict[str, Any]:
    """``ClientConfig`` fields for a handshake with ``server_name`` (empty without a key)."""
    if resolved is None:
        return {}
    spki = resolved.spki

    def expected(name: str | None) -> bytes | None:
        return spki if name == server_name else None

    return {"server_key_lookup": expected, "twinpeaks": resolved.hello}
