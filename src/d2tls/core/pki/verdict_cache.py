"""A bounded cache of "this client chain verifies against this trust store" verdicts.

A resumed session carries no Certificate (RFC 5246 §7.3), so the server re-checks the chain
stored with the session against its current trust store before resuming it
(``ServerConnection.session_resumable``). Path validation (RFC 5280 §6) is the dearest part of
a resumption; its outcome only depends on the chain, the trust store and the time, so an
acceptance is cached:

* the key is a SHA-256 digest of the chain (length-prefixed DER of every certificate);
* the trust-store *version* is the ``Store`` object itself: a ``cryptography`` ``Store`` is
  immutable, so removing a CA means building a new one and assigning it to
  ``ServerConfig.trust_store``; the cache holds a reference to the store its entries were
  verified against and empties itself as soon as it is asked about another one;
* an entry expires at the earliest ``notAfter`` of the verified path (leaf, intermediates,
  trust anchor) and at most ``max_age`` seconds after it was verified;
* at most ``max_entries`` entries are kept, the least recently used dropped first;
* only acceptances are cached: a refused chain is verified again next time (its refusal ends
  the resumption anyway, and a full handshake follows).

Revocation is *not* part of the verdict: the caller checks it on every use
(:class:`d2tls.core.pki.revocation.ClientRevocations`), so a new CRL takes effect at the next
resumption whatever the cache holds.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.verification import Store

from d2tls.core.pki.verify import verify_client_path

#: Defaults of ``ServerConfig.verdict_cache_size`` and ``verdict_cache_max_age``.
DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_AGE = 300.0


def chain_digest(chain: Sequence[bytes]) -> bytes:
    """SHA-256 over the length-prefixed DER certificates: one key per exact chain."""
    digest = hashlib.sha256()
    for der in chain:
        digest.update(len(der).to_bytes(4, "big"))
        digest.update(der)
    return digest.digest()


class VerdictCache:
    """LRU cache of client-chain acceptances for one trust store at a time."""

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, max_age: float = DEFAULT_MAX_AGE
    ) -> None:
        if max_entries < 1 or max_age <= 0:
            raise ValueError("verdict cache bounds must be positive")
        self.max_entries = max_entries
        self.max_age = max_age
        #: chain digest -> (expiry in seconds since the epoch, verified path)
        self._entries: OrderedDict[bytes, tuple[float, tuple[x509.Certificate, ...]]] = (
            OrderedDict()
        )
        self._store: Store | None = None
        self.hits = 0
        self.misses = 0
        #: Times the cache was emptied because the trust store changed.
        self.store_changes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def verify(
        self, chain: Sequence[bytes], store: Store, now: float
    ) -> tuple[x509.Certificate, ...]:
        """The verified path of ``chain`` (leaf first) at ``now`` (seconds since the epoch).

        Raises :class:`~d2tls.core.errors.CertificateError` like
        :func:`~d2tls.core.pki.verify.verify_client_chain` when the chain is refused.
        """
        if store is not self._store:
            if self._store is not None:
                self.store_changes += 1
            self._entries.clear()
            self._store = store
        key = chain_digest(chain)
        entry = self._entries.get(key)
        if entry is not None:
            if now < entry[0]:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            del self._entries[key]
        self.misses += 1
        path = tuple(verify_client_path(chain, store, datetime.fromtimestamp(now, UTC)))
        earliest = min(c.not_valid_after_utc for c in path).timestamp()
        self._entries[key] = (min(earliest, now + self.max_age), path)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return path
