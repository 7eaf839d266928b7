"""TwinPeaks roles (spec/twinpeaks.yaml), sans-IO, on the in-memory network.

Registration over DTLS-PSK down the demo hierarchy, lookups cold and cached, a key update
that the parent publishes and the resolver picks up after an invalidation, refusals of the
parent (§8.2), and hostile input to every endpoint: typed events, never an exception.
The same roles on real UDP with a real DNS server are in tests/test_twinpeaks_cli.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2tls.core.clock import FixedClock
from d2tls.core.model.spec import load_spec
from d2tls.core.sansio import SansIOProtocol
from d2tls.core.twinpeaks import clpkc
from d2tls.core.twinpeaks.errors import AddressMismatch, KeyDenied, LookupTimeout
from d2tls.core.twinpeaks.keyserver import Dropped, Refused
from d2tls.core.twinpeaks.member import (
    Member,
    MemberConfig,
    ParentLink,
    Registered,
    RegistrationError,
)
from d2tls.core.twinpeaks.messages import (
    KeyRequest,
    RegistrationRequest,
    Status,
    StatusCode,
    UpdateReason,
    decode_message,
)
from d2tls.core.twinpeaks.resolver import (
    Discarded,
    LookupCompleted,
    LookupFailed,
    Resolver,
    ResolverConfig,
    dump_anchors,
    load_anchors,
)
from d2tls.lab.twinpeaks import Hierarchy, MemoryNet, build_hierarchy, seeded

PORTS = {"root": 6001, "test": 6002, "example.test": 6003, "alice": 6004, "bob": 6005}
RESOLVER = ("127.0.0.1", 6099)
EPOCH = 1_800_000_000


class Demo:
    def __init__(self, seed: str = "roles") -> None:
        self.clock = FixedClock(EPOCH)
        self.h: Hierarchy = build_hierarchy(PORTS, randomness=seeded(seed), wall_clock=self.clock)
        self.net = MemoryNet(self.h.roles())
        self.h.start(0.0)
        assert self.net.run(
            lambda: all(m.state == "registered" for m in self.h.members.values()), 30
        )
        self.dns: dict[str, list[str]] = {}
        self.net.dns = lambda name: self.dns.get(name, ["127.0.0.1"])
        self.resolver = Resolver(
            ResolverConfig(
                [self.h.root.trust_anchor()], wall_clock=self.clock, randomness=seeded("r")
            )
        )
        self.net.add(RESOLVER, self.resolver)

    def lookup(self, name: str, address: str | None = None) -> Any:
        self.resolver.lookup(name, self.net.now, address)
        events: list[Any] = []

        def done() -> bool:
            events.extend(self.net.take(RESOLVER))
            return any(isinstance(e, LookupCompleted | LookupFailed) for e in events)

        assert self.net.run(done, 60)
        return next(e for e in events if isinstance(e, LookupCompleted | LookupFailed))


@pytest.fixture(scope="module")
def demo() -> Demo:
    return Demo()


def test_every_role_has_the_five_methods(demo: Demo) -> None:
    for role in [demo.h.root, demo.h.tld, demo.h.sld, *demo.h.members.values(), demo.resolver]:
        assert isinstance(role, SansIOProtocol)


def test_spec_roles_load_and_draw() -> None:
    from d2tls.lab.diagram import to_dot

    spec = load_spec("twinpeaks")
    assert set(spec.roles) == {"member", "key_server", "resolver", "client"}
    for role in spec.roles.values():
        assert "digraph" in to_dot(role)


def test_registration_gives_each_member_a_checked_key(demo: Demo) -> None:
    alice = demo.h.members["alice"]
    assert alice.key is not None and alice.serial == 1
    params = demo.h.sld.config.params
    assert alice.key.identity == params.identity("alice.example.test", "127.0.0.1")
    assert clpkc.public_point(params, alice.key.public_key) == alice.key.q
    # the child key servers got their own keys from their parents
    assert demo.h.sld.key is not None and demo.h.sld.key.params == demo.h.tld.config.params


def test_cold_then_cached_lookup(demo: Demo) -> None:
    cold = demo.lookup("alice.example.test")
    assert isinstance(cold, LookupCompleted) and not cold.result.from_cache
    assert cold.result.q == demo.h.members["alice"].key.q  # type: ignore[union-attr]
    assert sum("key request" in line for line in cold.timeline) == 3  # root, test, example.test
    sent = demo.net.delivered
    cached = demo.lookup("alice.example.test")
    assert isinstance(cached, LookupCompleted) and cached.result.from_cache
    assert demo.net.delivered == sent  # not one datagram


def test_sibling_lookup_starts_at_the_cached_referral(demo: Demo) -> None:
    event = demo.lookup("bob.example.test")
    assert isinstance(event, LookupCompleted)
    assert sum("key request" in line for line in event.timeline) == 1


def test_unknown_name_and_wrong_address_are_signed_denials(demo: Demo) -> None:
    assert isinstance(demo.lookup("carol.example.test").error, KeyDenied)
    demo.dns["dave.example.test"] = ["127.0.0.9"]
    event = demo.lookup("alice.example.test", "127.0.0.9")
    assert isinstance(event, LookupFailed) and isinstance(event.error, AddressMismatch)


def test_key_update_then_invalidation_gives_the_new_key() -> None:
    demo = Demo("update")
    first = demo.lookup("alice.example.test")
    alice = demo.h.members["alice"]
    old_q = alice.key.q  # type: ignore[union-attr]
    alice.update_key(demo.net.now, UpdateReason.ROLLOVER)
    assert demo.net.run(lambda: alice.state == "registered" and alice.serial == 2, 10)
    assert alice.key is not None and alice.key.q != old_q
    stale = demo.lookup("alice.example.test")
    assert stale.result.from_cache and stale.result.q == old_q  # cached until invalidated
    demo.resolver.invalidate("alice.example.test", "127.0.0.1")
    fresh = demo.lookup("alice.example.test")
    assert not fresh.result.from_cache and fresh.result.q == alice.key.q
    assert fresh.result.record.subject.serial == 2  # type: ignore[union-attr]
    assert first.result.q == old_q


def test_invalidate_message_from_a_client_is_answered(demo: Demo) -> None:
    from d2tls.core.twinpeaks.identity import parse_address
    from d2tls.core.twinpeaks.messages import Invalidate

    message = Invalidate(b"12345678", "alice.example.test", parse_address("127.0.0.1"))
    demo.resolver.receive_datagram(message.encode(), ("127.0.0.1", 40000), demo.net.now)
    ((data, peer),) = demo.resolver.datagrams_to_send(demo.net.now)
    reply = decode_message(data)
    assert peer == ("127.0.0.1", 40000) and isinstance(reply, Status)
    assert reply.code == StatusCode.OK


def test_key_request_from_a_client_gets_the_signed_record(demo: Demo) -> None:
    client = ("127.0.0.1", 40001)
    demo.net.add(client, _Sink())
    request = KeyRequest.of(b"abcdefgh", "bob.example.test", "127.0.0.1")
    demo.resolver.receive_datagram(request.encode(), client, demo.net.now)
    sink = demo.net.nodes[client]
    assert demo.net.run(lambda: bool(sink.received), 10)
    response = decode_message(sink.received[0])
    assert response.request_id == b"abcdefgh"  # type: ignore[union-attr]


class _Sink:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        self.received.append(data)

    def datagrams_to_send(self, now: float) -> list[Any]:
        return []

    def next_timer(self) -> None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def next_event(self) -> None:
        return None


def test_a_member_with_the_wrong_psk_identity_is_refused() -> None:
    """§8.2: the association must be bound to the name in the ID (status unauthorised)."""
    demo = Demo("refuse")
    sld = demo.h.sld
    psk = sld.config.children[b"bob.example.test"].psk
    mallory = Member(
        MemberConfig(
            "alice.example.test",
            "127.0.0.1",
            ParentLink(
                ("127.0.0.1", PORTS["example.test"]), sld.config.params, b"bob.example.test", psk
            ),
            wall_clock=demo.clock,
            randomness=seeded("m"),
        )
    )
    demo.net.add(("127.0.0.1", 6050), mallory)
    mallory.start(demo.net.now)
    events: list[Any] = []

    def done() -> bool:
        while (e := mallory.next_event()) is not None:
            events.append(e)
        return bool(events)

    assert demo.net.run(done, 20)
    (event,) = events
    assert isinstance(event, RegistrationError) and event.final
    assert "unauthorised" in str(event.error)
    assert mallory.state == "failed" and mallory.key is None


def test_resolver_times_out_without_key_servers() -> None:
    clock = FixedClock(EPOCH)
    demo = Demo("timeout")
    anchors = [demo.h.root.trust_anchor()]
    resolver = Resolver(ResolverConfig(anchors, wall_clock=clock, randomness=seeded("t")))
    net = MemoryNet({RESOLVER: resolver})
    net.dns = lambda name: ["127.0.0.1"]
    resolver.lookup("alice.example.test", 0.0)
    events: list[Any] = []
    assert net.run(
        lambda: (
            bool([e for e in net.take(RESOLVER) if events.append(e) or True])
            and any(isinstance(e, LookupFailed) for e in events)
        ),
        60,
    )
    failed = next(e for e in events if isinstance(e, LookupFailed))
    assert isinstance(failed.error, LookupTimeout)


def test_anchor_file_round_trip(demo: Demo) -> None:
    anchors = [demo.h.root.trust_anchor()]
    assert load_anchors(dump_anchors(anchors)) == anchors


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), which=st.sampled_from(["root", "sld", "alice", "resolver"]))
def test_hostile_datagrams_never_raise(demo: Demo, data: bytes, which: str) -> None:
    role: Any = {
        "root": demo.h.root,
        "sld": demo.h.sld,
        "alice": demo.h.members["alice"],
        "resolver": demo.resolver,
    }[which]
    peer = ("127.0.0.1", PORTS["example.test"]) if which == "alice" else ("127.0.0.1", 50000)
    while role.next_event() is not None:  # earlier events of the shared demo
        pass
    role.receive_datagram(data, peer, demo.net.now)
    role.datagrams_to_send(demo.net.now)
    while (event := role.next_event()) is not None:
        assert isinstance(event, Dropped | Refused | Discarded | Registered | RegistrationError)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=200))
def test_hostile_cbor_service_messages_get_a_typed_answer(demo: Demo, data: bytes) -> None:
    """Any datagram starting with a CBOR map header is a service message: dropped with a
    reason or answered with a status; a registration on the open port is refused."""
    root = demo.h.root
    root.receive_datagram(bytes([0xA0 | (data[0] & 0x1F)]) + data[1:], ("127.0.0.1", 50001), 0)
    for reply, _ in root.datagrams_to_send(0):
        assert isinstance(decode_message(reply), Status)


def test_registration_on_the_open_port_is_refused(demo: Demo) -> None:
    params = demo.h.root.config.params
    secret = clpkc.set_secret_value(
        params, params.identity("evil.test", "127.0.0.1"), seeded("e").random_bytes
    )
    request = RegistrationRequest.for_secret(b"evilevil", secret)
    demo.h.root.receive_datagram(request.encode(), ("127.0.0.1", 50002), 0)
    ((reply, _),) = demo.h.root.datagrams_to_send(0)
    status = decode_message(reply)
    assert isinstance(status, Status) and status.code == StatusCode.MALFORMED


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=400))
def test_hostile_anchor_files_raise_typed_errors(data: bytes) -> None:
    from d2tls.core.twinpeaks.errors import TwinPeaksError

    try:
        anchors = load_anchors(data)
    except TwinPeaksError:
        return
    assert anchors and dump_anchors(anchors) == data  # accepted only in canonical form
