"""Lab tooling: real third-party servers started on loopback for tests and demos.

Tooling, not protocol core: nothing under ``d2tls.core.twinpeaks``, ``d2tls.core.dtls`` or the
other core
packages imports it.

* :mod:`d2tls.lab.dns`: an authoritative DNS server (Knot DNS) with generated zones for the
  TwinPeaks demo hierarchy, and a dnspython resolver for it (spec/twinpeaks.md §9).
"""
