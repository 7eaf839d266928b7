"""Benchmarks of d2tls (``d2tls bench ...``) and the paper's session-overhead model.

* :mod:`d2tls.bench.device` – device cost per new session: D2TLS bound/blind vs standalone;
* :mod:`d2tls.bench.latency` – device-perceived setup time through the impairment relay;
* :mod:`d2tls.bench.server` – server handshakes/s, resumptions/s, session-cache memory;
* :mod:`d2tls.bench.record` – application-data record cost against the raw AEAD;
* :mod:`d2tls.bench.auth` – server authentication with PKI, DANE and TwinPeaks (dissertation
  §2.6), on Knot DNS, our OCSP responder and the TwinPeaks roles (:mod:`d2tls.bench.auth_lab`,
  :mod:`d2tls.bench.auth_tp`);
* :mod:`d2tls.bench.overhead` – the 24-hour session-overhead model of the paper's §6.5;
* :mod:`d2tls.bench.floor` – the ``cryptography`` work each of them is compared with.

Results are plain dicts (``--json``); ratios are always computed from one run.
"""
