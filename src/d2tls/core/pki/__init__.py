"""Test PKI generation (ECDSA P-256) and certificate/PSK loading and verification."""

from d2tls.core.pki.generate import (
    DevicePaths,
    PKIPaths,
    create_ca,
    generate_key,
    init_pki,
    issue_certificate,
    write_pem_certificate,
    write_pem_private_key,
)
from d2tls.core.pki.verify import (
    certificate_subject,
    load_certificate_chain,
    load_private_key,
    load_psk_file,
    load_trust_store,
    parse_psk,
    verify_client_chain,
    verify_server_chain,
)

__all__ = [
    "DevicePaths",
    "PKIPaths",
    "certificate_subject",
    "create_ca",
    "generate_key",
    "init_pki",
    "issue_certificate",
    "load_certificate_chain",
    "load_private_key",
    "load_psk_file",
    "load_trust_store",
    "parse_psk",
    "verify_client_chain",
    "verify_server_chain",
    "write_pem_certificate",
    "write_pem_private_key",
]
