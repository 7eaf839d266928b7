"""Conformance suite for third-party DTLS 1.2 servers (``d2tls conformance``).

Three suites run against one server: D2TLS readiness (:mod:`.readiness`), scripted RFC
scenarios (:mod:`.scenarios`) and state-machine learning with AALpy (:mod:`.learning`);
:mod:`.report` renders the results as a table, JSON, Markdown and HTML.
"""
