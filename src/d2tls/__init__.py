"""d2tls: delegation-based DTLS 1.2 (D2TLS) for cloud-connected IoT devices."""

__version__ = "0.1.0"
