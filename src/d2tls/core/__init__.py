"""The protocol core of d2tls: everything that decides, nothing that waits.

The spec loader and its machines (:mod:`d2tls.core.model`), the DTLS 1.2 engine
(:mod:`d2tls.core.dtls`), the delegation messages and policies (:mod:`d2tls.core.delegation`),
the D2TLS roles (:mod:`d2tls.core.roles`), TwinPeaks (:mod:`d2tls.core.twinpeaks`), the PKI checks
(:mod:`d2tls.core.pki`) and the session stores (:mod:`d2tls.core.store`). Every role has the
five methods of :class:`d2tls.core.sansio.SansIOProtocol` and takes ``now`` and its randomness
from its caller. The core imports nothing of the tooling beside it (``d2tls.net`` hosts and
pumps, ``d2tls.sim``, conformance, bench, adversary, prove, lab, the CLI) and does no I/O of its
own; tests/test_layout.py enforces both.
"""
