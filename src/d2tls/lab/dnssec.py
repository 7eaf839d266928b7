"""A small iterative, DNSSEC-validating resolver for the lab (RFC 4033-4035), with dnspython.

It stands for the paper's local validating resolver, co-located with the client: it starts at
a configured trust anchor (the DS records of the top zone, RFC 4033 §5, the role the root
KSK plays on the Internet), asks each zone's server itself (no recursion), follows referrals,
validates every DNSKEY set against the DS its parent signed (RFC 4035 §5.2) and every answer
against its zone's keys (RFC 4035 §5.3, ``dns.dnssec.validate``), and caches the validated
answers and zone keys.

Lab addressing: the servers all listen on 127.0.0.1, each on its own port (often a delay
relay in front of a Knot server), and a referral's glue carries an address but no port. So the
resolver takes an *address book*, name server host name -> (127.0.0.1, port); it follows the
NS name of a referral through the book and refuses a name server it does not know. Negative
answers (NSEC/NSEC3) are not validated: any answer other than the signed RRset asked for is an
error here.
"""

from __future__ import annotations

import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DS
import dns.rrset
from cryptography.utils import CryptographyDeprecationWarning

from d2tls.lab.dns import DnsLabError

with warnings.catch_warnings():
    # dnspython's DNSSEC module imports DSA support, which cryptography deprecates; we never
    # use DSA (RFC 8624 §3.1: MUST NOT), so the warning says nothing about this code.
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import dns.dnssec

Address = tuple[str, int]

#: EDNS payload we advertise (RFC 6891 §6.2.5): RSA-signed DNSKEY sets exceed 1232 bytes.
EDNS_PAYLOAD: Final = 4096
#: Most referrals followed for one name (a loop guard).
MAX_REFERRALS: Final = 16


class ValidationFailed(DnsLabError):
    """A DNSSEC check failed: missing or bad signature, DS/DNSKEY mismatch, insecure referral."""


@dataclass
class _Cut:
    """A zone the resolver knows: its server, the DS that authenticates its KSK, its keys."""

    name: dns.name.Name
    server: Address
    ds: dns.rrset.RRset
    keys: dns.rrset.RRset | None = None


@dataclass
class Traffic:
    """What the resolver sent and received (DNS messages on the wire, UDP payload bytes)."""

    queries: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    validations: int = 0

    @property
    def bytes(self) -> int:
        return self.bytes_sent + self.bytes_received


@dataclass
class ValidatingResolver:
    """Iterative DNSSEC-validating resolution from ``anchor_zone`` (whose DS lines are the
    trust anchor) at ``anchor_server``; ``servers`` is the lab address book of name servers.

    :meth:`resolve` returns a validated RRset, from the cache when it holds one (a hit makes
    no query); :meth:`flush` empties the cache (a cold resolver)."""

    anchor_zone: str
    anchor_ds: Sequence[str]
    anchor_server: Address
    servers: Mapping[str, Address]
    timeout: float = 2.0
    retries: int = 3
    traffic: Traffic = field(default_factory=Traffic)

    def __post_init__(self) -> None:
        zone = dns.name.from_text(self.anchor_zone)
        lines = [
            line.split(None, 2)[2] if " DS " in f" {line} " else line for line in self.anchor_ds
        ]
        try:
            ds = dns.rrset.from_text_list(zone, 3600, "IN", "DS", lines)
        except (dns.exception.DNSException, ValueError) as exc:
            raise DnsLabError(f"bad trust anchor DS for {zone}: {exc}") from exc
        self._anchor = _Cut(zone, self.anchor_server, ds)
        self._book = {dns.name.from_text(k): v for k, v in self.servers.items()}
        self.flush()

    def flush(self) -> None:
        """Forget every cached answer, zone cut and key (the trust anchor stays)."""
        self._answers: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        self._cuts: dict[dns.name.Name, _Cut] = {
            self._anchor.name: _Cut(self._anchor.name, self._anchor.server, self._anchor.ds)
        }

    # ------------------------------------------------------------------ the wire
    def _query(
        self, server: Address, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> dns.message.Message:
        request = dns.message.make_query(
            qname, rdtype, want_dnssec=True, use_edns=0, payload=EDNS_PAYLOAD
        )
        request.flags &= ~dns.flags.RD  # iterative: the servers are authoritative only
        wire = request.to_wire()
        last: Exception | None = None
        for _ in range(self.retries):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(self.timeout)
                try:
                    sock.connect(server)
                    sock.send(wire)
                    self.traffic.queries += 1
                    self.traffic.bytes_sent += len(wire)
                    deadline = time.monotonic() + self.timeout
                    while True:
                        sock.settimeout(max(0.001, deadline - time.monotonic()))
                        data = sock.recv(65535)
                        self.traffic.bytes_received += len(data)
                        try:
                            response = dns.message.from_wire(data)
                        except dns.exception.DNSException:
                            continue
                        if request.is_response(response):
                            break
                except (TimeoutError, OSError) as exc:
                    last = exc
                    continue
            if response.flags & dns.flags.TC:
                raise DnsLabError(f"{qname} {dns.rdatatype.to_text(rdtype)}: truncated answer")
            code = response.rcode()
            if code != dns.rcode.NOERROR:
                raise DnsLabError(
                    f"{qname} {dns.rdatatype.to_text(rdtype)}: {dns.rcode.to_text(code)}"
                )
            return response
        raise DnsLabError(f"no answer from {server[0]}:{server[1]} for {qname}: {last}")

    # ------------------------------------------------------------------ validation
    def _validate(
        self,
        rrset: dns.rrset.RRset,
        section: Sequence[dns.rrset.RRset],
        zone: dns.name.Name,
        keys: dns.rrset.RRset,
    ) -> None:
        """Check ``rrset`` against one of its RRSIGs in ``section`` under ``keys``."""
        sigs = [
            r
            for r in section
            if r.rdtype == dns.rdatatype.RRSIG and r.name == rrset.name and r.covers == rrset.rdtype
        ]
        if not sigs:
            raise ValidationFailed(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} unsigned")
        try:
            dns.dnssec.validate(rrset, sigs[0], {zone: keys})
        except dns.exception.ValidationFailure as exc:
            raise ValidationFailed(
                f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}: {exc}"
            ) from exc
        self.traffic.validations += 1

    def _keys(self, cut: _Cut) -> dns.rrset.RRset:
        """The zone's DNSKEY set, validated by a KSK that matches its DS (RFC 4035 §5.2)."""
        if cut.keys is not None:
            return cut.keys
        response = self._query(cut.server, cut.name, dns.rdatatype.DNSKEY)
        keys = _find(response.answer, cut.name, dns.rdatatype.DNSKEY)
        if keys is None:
            raise ValidationFailed(f"{cut.name} has no DNSKEY")
        for ds in cut.ds:
            assert isinstance(ds, dns.rdtypes.ANY.DS.DS)
            for key in keys:
                if dns.dnssec.key_id(key) != ds.key_tag:
                    continue
                try:
                    digest = dns.dnssec.make_ds(cut.name, key, ds.digest_type)
                except (dns.exception.UnsupportedAlgorithm, ValueError):
                    continue
                if digest != ds:
                    continue
                ksk = dns.rrset.from_rdata(cut.name, keys.ttl, key)
                self._validate(keys, response.answer, cut.name, ksk)
                cut.keys = keys
                return keys
        raise ValidationFailed(f"no DNSKEY of {cut.name} matches its DS")

    # ------------------------------------------------------------------ resolution
    def _closest_cut(self, qname: dns.name.Name) -> _Cut:
        best: _Cut | None = None
        for name, cut in self._cuts.items():
            if qname.is_subdomain(name) and (best is None or len(name) > len(best.name)):
                best = cut
        if best is None:
            raise DnsLabError(f"{qname} is not under the trust anchor {self._anchor.name}")
        return best

    def resolve(self, name: str, rdtype: str) -> dns.rrset.RRset:
        """The validated RRset ``name``/``rdtype``; cached answers are returned as they are."""
        qname = dns.name.from_text(name)
        kind = dns.rdatatype.from_text(rdtype)
        cached = self._answers.get((qname, kind))
        if cached is not None:
            return cached
        cut = self._closest_cut(qname)
        for _ in range(MAX_REFERRALS):
            keys = self._keys(cut)
            response = self._query(cut.server, qname, kind)
            answer = _find(response.answer, qname, kind)
            if answer is not None:
                self._validate(answer, response.answer, cut.name, keys)
                self._answers[(qname, kind)] = answer
                return answer
            cut = self._referral(cut, keys, qname, response)
        raise DnsLabError(f"{name}: more than {MAX_REFERRALS} referrals")

    def _referral(
        self, cut: _Cut, keys: dns.rrset.RRset, qname: dns.name.Name, response: dns.message.Message
    ) -> _Cut:
        ns = next(
            (
                r
                for r in response.authority
                if r.rdtype == dns.rdatatype.NS
                and r.name != cut.name
                and r.name.is_subdomain(cut.name)
                and qname.is_subdomain(r.name)
            ),
            None,
        )
        if ns is None:
            raise DnsLabError(f"{qname}: neither an answer nor a referral from {cut.name}")
        ds = _find(response.authority, ns.name, dns.rdatatype.DS)
        if ds is None:
            raise ValidationFailed(f"insecure delegation to {ns.name} (no DS)")
        self._validate(ds, response.authority, cut.name, keys)
        for target in ns:
            server = self._book.get(target.target)
            if server is not None:
                child = _Cut(ns.name, server, ds)
                self._cuts[ns.name] = child
                return child
        raise DnsLabError(f"no name server of {ns.name} is in the lab address book")


def _find(
    section: Sequence[dns.rrset.RRset], name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.rrset.RRset | None:
    for rrset in section:
        if rrset.name == name and rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN:
            return rrset
    return None


__all__ = ["Traffic", "ValidatingResolver", "ValidationFailed"]
