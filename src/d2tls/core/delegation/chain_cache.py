"""The agent's cache of device certificate chains, and the device's memory of it.

A device sends its certificate chain once; later DelegationRequests carry only its
certificate_chain_hash (spec/delegation.md §5.2, §6). The agent keeps, per PSK identity, the
last few chains that passed its policy, keyed by that hash; a hash it does not hold is answered
with DelegationError UNKNOWN_CHAIN and the device sends the full chain again. Memory is bounded:
:data:`CHAINS_PER_IDENTITY` chains per identity, :data:`MAX_IDENTITIES` identities, least
recently used first out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from d2tls.core.delegation.messages import chain_hash

CHAINS_PER_IDENTITY: Final = 4
"""Chains the agent keeps per PSK identity."""
MAX_IDENTITIES: Final = 4096
"""PSK identities the agent keeps chains for."""


class AgentChainCache:
    """PSK identity -> {certificate_chain_hash: chain}, both levels LRU-bounded."""

    def __init__(
        self, per_identity: int = CHAINS_PER_IDENTITY, identities: int = MAX_IDENTITIES
    ) -> None:
        if per_identity < 1 or identities < 1:
            raise ValueError("cache bounds must be positive")
        self._per_identity = per_identity
        self._identities = identities
        self._chains: OrderedDict[bytes, OrderedDict[bytes, tuple[bytes, ...]]] = OrderedDict()

    def put(self, identity: bytes, chain: Sequence[bytes]) -> bytes:
        """Remember ``chain`` (one that passed the policy) for ``identity``; its hash."""
        digest = chain_hash(chain)
        chains = self._chains.get(identity)
        if chains is None:
            chains = self._chains[identity] = OrderedDict()
            while len(self._chains) > self._identities:
                self._chains.popitem(last=False)
        self._chains.move_to_end(identity)
        chains[digest] = tuple(chain)
        chains.move_to_end(digest)
        while len(chains) > self._per_identity:
            chains.popitem(last=False)
        return digest

    def get(self, identity: bytes, digest: bytes) -> tuple[bytes, ...] | None:
        """The chain of ``identity`` with this hash, or None if the cache does not hold it."""
        chains = self._chains.get(identity)
        if chains is None or digest not in chains:
            return None
        self._chains.move_to_end(identity)
        chains.move_to_end(digest)
        return chains[digest]

    def forget(self, identity: bytes) -> None:
        """Drop every chain of ``identity`` (e.g. its PSK or binding changed)."""
        self._chains.pop(identity, None)

    def __len__(self) -> int:
        return sum(len(chains) for chains in self._chains.values())


@dataclass
class DeviceChainMemo:
    """What the device remembers to send fewer bytes (spec/delegation.md §5.2, §6).

    ``held``: its agent holds its chain (set when the agent accepted a request carrying the
    full chain, i.e. a SignRequest came back; cleared by UNKNOWN_CHAIN). ``server_certificate``:
    (server_name, body of the server Certificate message) of the last bound transcript the
    device checked and signed; its hash lets the agent leave that message out next time.
    """

    held: bool = False
    #: Off: always send the full chain and never a server_certificate_hash.
    enabled: bool = True
    server_certificate: tuple[str, bytes] | None = None

    def server_certificate_for(self, server_name: str) -> bytes | None:
        held = self.server_certificate
        if not self.enabled or held is None or held[0] != server_name:
            return None
        return held[1]

    def use_hash(self) -> bool:
        return self.enabled and self.held
