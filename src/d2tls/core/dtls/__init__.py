"""Sans-IO DTLS 1.2 (RFC 6347 over RFC 5246)."""
