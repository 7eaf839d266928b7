"""TwinPeaks: certificateless public-key distribution through a key-server hierarchy.

TwinPeaks replaces certificates and certification authorities by a DNS-like hierarchy of key
servers handing out certificateless public keys bound to a name and an IP address ("A New
Certificateless Public Key Distribution and Lightweight Secure Communication", Eunsang Cho,
Seoul National University, Chapter 2). The protocol rules are in ``spec/twinpeaks.md``.

Modules:

* :mod:`d2tls.core.twinpeaks.clpkc`: the certificateless scheme (section 2.3 of the dissertation),
  over P-256, whose key pairs are ordinary P-256 keys;
* :mod:`d2tls.core.twinpeaks.identity`: the identity ``ID = domain-name || IP-address || h(params)``
  (section 2.4.2) and its byte encoding;
* :mod:`d2tls.core.twinpeaks.curve` and :mod:`d2tls.core.twinpeaks.hashing`: the primitives;
* :mod:`d2tls.core.twinpeaks.messages`: the hierarchy messages (CBOR codecs, signing, checks);
* :mod:`d2tls.core.twinpeaks.member`, :mod:`d2tls.core.twinpeaks.keyserver`,
  :mod:`d2tls.core.twinpeaks.resolver`: the sans-IO roles of ``spec/twinpeaks.yaml`` (a member's
  registration over DTLS-PSK, the root/TLK/SLK key server, the key resolver with its cache
  and its DNS interface);
* :mod:`d2tls.core.twinpeaks.errors`: the typed errors.

This package is protocol core: sans-IO, randomness injected, no tooling imports.
"""
