"""The TwinPeaks relying client (spec/twinpeaks.md §9.4, §11.5; machine ``client``).

On real UDP sockets (d2tls.net.pump) against the demo hierarchy, whose members serve DTLS with
their TwinPeaks keys: a lookup then the key confirmation handshake connects; a wrong name and a
wrong address get their alerts as typed errors; after a key update the stale cached key is
refused as outdated, and the client invalidates, looks up again and connects by itself, through
its own resolver and through a resolver service (tp-invalidate). Hostile datagrams to the
client give no exception.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2tls.core.clock import FixedClock
from d2tls.core.dtls.twinpeaks import OutdatedPublicKey, WrongServerAddress, WrongServerName
from d2tls.core.model.spec import load_spec
from d2tls.core.twinpeaks.client import (
    ClientFailed,
    Connected,
    KeyInvalidated,
    TwinPeaksClient,
    TwinPeaksClientConfig,
)
from d2tls.core.twinpeaks.errors import AddressMismatch, KeyDenied, TwinPeaksError
from d2tls.core.twinpeaks.messages import UpdateReason
from d2tls.core.twinpeaks.resolver import Resolver, ResolverConfig
from d2tls.lab.twinpeaks import LOOPBACK, MemoryNet, build_hierarchy, seeded
from d2tls.lab.twinpeaks_live import LiveHierarchy, run_client, serve_resolver, static_dns
from d2tls.net.pump import Pump

DNS = static_dns({f"{name}.example.test": ["127.0.0.1"] for name in ("alice", "bob", "carol")})
ALICE, BOB = "alice.example.test", "bob.example.test"


def own(h: LiveHierarchy, resolver: Resolver | None = None) -> TwinPeaksClient:
    return TwinPeaksClient(
        TwinPeaksClientConfig(resolver=resolver or Resolver(ResolverConfig(h.anchors())))
    )


def test_client_machine_is_in_the_spec() -> None:
    role = load_spec("twinpeaks").role("client")
    guards = {g for t in role.transitions for g in t.guards}
    assert {"outdated_key", "retry_left", "service_answer_valid"} <= guards
    assert {"connected", "failed", "invalidating"} <= set(role.states)


def test_lookup_then_key_confirmation_handshake_then_data() -> None:
    async def scenario() -> Any:
        async with LiveHierarchy() as h:
            client = own(h)
            run = await run_client(client, ALICE, h.ports["alice"], DNS, payload=b"hello")
            return run, h.h.members["alice"].key

    run, key = asyncio.run(scenario())
    assert run.failed is None, run.failed
    connected = run.connected
    assert isinstance(connected, Connected) and connected.attempts == 1
    assert run.echoed == b"hello"
    assert connected.key.key == key.public_key  # the member's key, as the hierarchy gave it
    assert any("signed answer for alice.example.test" in line for line in run.timeline)
    assert any("proved possession" in line for line in run.timeline)


def test_wrong_name_gets_unrecognized_name() -> None:
    """The client looked bob up but reaches alice's server: alice refuses the name."""

    async def scenario() -> Any:
        async with LiveHierarchy() as h:
            return await run_client(own(h), BOB, h.ports["alice"], DNS)

    run = asyncio.run(scenario())
    assert run.connected is None and run.failed is not None
    assert isinstance(run.failed.error, WrongServerName), run.failed.error
    assert not any(isinstance(e, KeyInvalidated) for e in run.events)  # no retry for a name


def test_wrong_address_gets_illegal_parameter() -> None:
    """Bob moved (a key update for a new address, dissertation 2.4.3) but the client's cache
    and the DNS still give the old one: bob's server refuses the address."""

    async def scenario() -> Any:
        async with LiveHierarchy() as h:
            resolver = Resolver(ResolverConfig(h.anchors()))
            first = await run_client(own(h, resolver), BOB, h.ports["bob"], DNS)
            await h.update_key("bob", UpdateReason.ADDRESS_CHANGED, "127.0.0.2")
            second = await run_client(own(h, resolver), BOB, h.ports["bob"], DNS)
            return first, second

    first, second = asyncio.run(scenario())
    assert first.connected is not None
    assert second.failed is not None
    assert isinstance(second.failed.error, WrongServerAddress), second.failed.error


def test_stale_key_after_a_key_update_recovers_after_a_fresh_lookup() -> None:
    """Issue 22's "done when": the cached key is outdated after alice's key update; her
    server says so; the client invalidates, looks up again and connects, by itself."""

    async def scenario() -> Any:
        async with LiveHierarchy() as h:
            resolver = Resolver(ResolverConfig(h.anchors()))
            first = await run_client(own(h, resolver), ALICE, h.ports["alice"], DNS)
            updated = await h.update_key("alice")
            second = await run_client(
                own(h, resolver), ALICE, h.ports["alice"], DNS, payload=b"again"
            )
            return first, updated, second

    first, updated, second = asyncio.run(scenario())
    assert first.connected is not None and first.connected.serial == 1
    (invalidated,) = [e for e in second.events if isinstance(e, KeyInvalidated)]
    assert isinstance(invalidated.error, OutdatedPublicKey)
    connected = second.connected
    assert connected is not None, second.failed
    assert connected.attempts == 2 and connected.serial == updated.serial == 2
    assert connected.key.key == updated.key.public_key
    assert second.echoed == b"again"
    assert any("from the cache" in line for line in second.timeline)  # the stale one
    assert any("invalidating the cached key" in line for line in second.timeline)


def test_resolver_service_path_with_invalidation() -> None:
    """The same through a local resolver service: tp-key-request, then tp-invalidate after
    the outdated key, then a fresh tp-key-request."""

    async def scenario() -> Any:
        async with LiveHierarchy() as h:
            resolver = Resolver(ResolverConfig(h.anchors()))
            service_pump: Pump[Any] = await Pump.open(resolver, (LOOPBACK, 0))
            task = asyncio.create_task(serve_resolver(service_pump, resolver, DNS))
            try:
                config = TwinPeaksClientConfig(resolver_service=service_pump.local_address)
                first = await run_client(TwinPeaksClient(config), ALICE, h.ports["alice"], DNS)
                await h.update_key("alice")
                second = await run_client(
                    TwinPeaksClient(config), ALICE, h.ports["alice"], DNS, payload=b"svc"
                )
                denied = await run_client(TwinPeaksClient(config), "carol.example.test", 9, DNS)
                return first, second, denied, dict(resolver.counters)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                service_pump.close()

    first, second, denied, counters = asyncio.run(scenario())
    assert first.connected is not None
    assert second.connected is not None and second.connected.attempts == 2
    assert second.echoed == b"svc"
    assert any("-> resolver service" in line for line in second.timeline)
    assert counters["cache_hits"] >= 1  # the stale answer came from the service's cache
    assert denied.failed is not None and isinstance(denied.failed.error, KeyDenied)


def test_dns_without_the_address_fails_before_any_handshake() -> None:
    async def scenario() -> Any:
        async with LiveHierarchy() as h:
            return await run_client(own(h), ALICE, h.ports["alice"], static_dns({}))

    run = asyncio.run(scenario())
    assert run.failed is not None and isinstance(run.failed.error, AddressMismatch)


def test_config_needs_exactly_one_resolver() -> None:
    with pytest.raises(TwinPeaksError):
        TwinPeaksClientConfig()


# --------------------------------------------------------------------------- in memory
class MemoryWorld:
    def __init__(self) -> None:
        ports = {"root": 6001, "test": 6002, "example.test": 6003, "alice": 6004, "bob": 6005}
        clock = FixedClock(1_800_000_000)
        self.h = build_hierarchy(ports, randomness=seeded("client"), wall_clock=clock)
        self.net = MemoryNet(self.h.roles())
        self.h.start(0.0)
        assert self.net.run(lambda: all(m.state == "registered" for m in self.h.members.values()))
        self.net.dns = lambda name: ["127.0.0.1"]
        self.client = TwinPeaksClient(
            TwinPeaksClientConfig(
                ResolverConfig([self.h.root.trust_anchor()], wall_clock=clock),
                wall_clock=clock,
                randomness=seeded("c"),
            )
        )
        self.net.add((LOOPBACK, 7000), self.client)
        #: A client of a resolver service that never answers: it stays in ``resolving``.
        self.stub = TwinPeaksClient(
            TwinPeaksClientConfig(resolver_service=(LOOPBACK, 6999), wall_clock=clock)
        )
        self.net.add((LOOPBACK, 7001), self.stub)


@pytest.fixture(scope="module")
def world() -> MemoryWorld:
    return MemoryWorld()


def test_memory_client_connects(world: MemoryWorld) -> None:
    world.client.connect(ALICE, 6004, world.net.now)
    assert world.net.run(lambda: world.client.state == "connected", 30)
    world.stub.connect(ALICE, 6004, world.net.now)
    world.net.run(lambda: False, 0.1)
    assert world.stub.state == "resolving"


@settings(max_examples=120, deadline=None)
@given(
    data=st.binary(max_size=300),
    cbor=st.booleans(),
    source=st.sampled_from([(LOOPBACK, 6004), (LOOPBACK, 6001), (LOOPBACK, 6999), (LOOPBACK, 9)]),
    which=st.sampled_from(["client", "stub"]),
)
def test_hostile_datagrams_to_the_client_never_raise(
    world: MemoryWorld, data: bytes, cbor: bool, source: tuple[str, int], which: str
) -> None:
    """Random datagrams (DTLS-looking or key-service-looking) from the server, a key server,
    the resolver service or a stranger: dropped or a typed event, never an exception."""
    if cbor and data:
        data = bytes([0xA0 | (data[0] & 0x1F)]) + data[1:]
    client = world.client if which == "client" else world.stub
    while client.next_event() is not None:  # earlier events of the shared world
        pass
    client.receive_datagram(data, source, world.net.now)
    client.datagrams_to_send(world.net.now)
    while (event := client.next_event()) is not None:
        assert not isinstance(event, ClientFailed | Connected)


def test_silent_resolver_service_times_out_after_three_sends() -> None:
    """A resolver service that never answers: the tp-key-request is sent 3 times (after 1
    and 2 seconds) and the client fails with a typed LookupTimeout."""
    from d2tls.core.twinpeaks.errors import LookupTimeout
    from d2tls.core.twinpeaks.messages import KeyRequest, decode_message

    client = TwinPeaksClient(TwinPeaksClientConfig(resolver_service=(LOOPBACK, 6999)))
    client.connect(ALICE, 6004, 0.0)
    (query,) = [e for e in iter(client.next_event, None)]
    client.dns_answer(query.query_id, ["127.0.0.1"], 60.0, 0.0)
    sent: list[float] = []
    now = 0.0
    events: list[Any] = []
    while client.state == "resolving":
        for data, peer in client.datagrams_to_send(now):
            assert peer == (LOOPBACK, 6999) and isinstance(decode_message(data), KeyRequest)
            sent.append(now)
        timer = client.next_timer()
        assert timer is not None
        now = timer
        client.handle_timer(now)
        events += list(iter(client.next_event, None))
    assert sent == [0.0, 1.0, 3.0] and client.state == "failed"
    (failed,) = [e for e in events if isinstance(e, ClientFailed)]
    assert isinstance(failed.error, LookupTimeout)


@settings(max_examples=120, deadline=None)
@given(data=st.binary(max_size=300), peer_port=st.sampled_from([6003, 40000]))
def test_hostile_datagrams_to_a_member_service_never_raise(
    world: MemoryWorld, data: bytes, peer_port: int
) -> None:
    """Random datagrams from the parent's address (to the member's association) or from a
    stranger (to its DTLS server): typed events only, never an exception."""
    from d2tls.core.dtls.events import Event
    from d2tls.core.twinpeaks.member import Registered, RegistrationError
    from d2tls.core.twinpeaks.service import ServingKey

    service = world.h.services["bob"]
    while service.next_event() is not None:
        pass
    service.receive_datagram(data, (LOOPBACK, peer_port), world.net.now)
    service.datagrams_to_send(world.net.now)
    while (event := service.next_event()) is not None:
        assert isinstance(event, Event | Registered | RegistrationError | ServingKey)
    assert service.dtls is not None and service.dtls.counters().internal_errors == 0


class StaleService:
    """A resolver service that keeps serving one (genuine, signed) old record: it stands
    beside the real service tests above, to show that the retry happens once only."""

    def __init__(self, record: Any, signature: bytes) -> None:
        self.record, self.signature = record, signature
        self.out: list[tuple[bytes, tuple[str, int]]] = []
        self.invalidations = 0

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        from d2tls.core.twinpeaks.messages import (
            Invalidate,
            KeyRequest,
            KeyResponse,
            Status,
            StatusCode,
            decode_message,
        )

        message = decode_message(data)
        if isinstance(message, KeyRequest):
            reply = KeyResponse(message.request_id, self.record, self.signature).encode()
        else:
            assert isinstance(message, Invalidate)
            self.invalidations += 1
            reply = Status(message.request_id, StatusCode.OK).encode()
        self.out.append((reply, addr))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        out, self.out = self.out, []
        return out

    def next_timer(self) -> None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def next_event(self) -> None:
        return None


def test_a_second_outdated_key_refusal_is_final() -> None:
    """dissertation 2.4.4 / spec §9.4: one invalidation and one retry; if the fresh lookup
    still gives a key the server calls outdated, the client gives up with the typed error."""
    world = MemoryWorld()
    world.client.connect(ALICE, 6004, world.net.now)
    assert world.net.run(lambda: world.client.state == "connected", 30)
    assert world.client.resolver is not None
    ((record, signature), _) = next(iter(world.client.resolver.answers.items.values()))
    alice = world.h.members["alice"]
    alice.update_key(world.net.now)
    assert world.net.run(lambda: alice.serial == 2, 30)
    stale = StaleService(record, signature)
    world.net.add((LOOPBACK, 6998), stale)
    client = TwinPeaksClient(
        TwinPeaksClientConfig(
            resolver_service=(LOOPBACK, 6998), wall_clock=world.client.config.wall_clock
        )
    )
    world.net.add((LOOPBACK, 7002), client)
    client.connect(ALICE, 6004, world.net.now)
    assert world.net.run(lambda: client.state == "failed", 30)
    events = world.net.take((LOOPBACK, 7002)) + list(iter(client.next_event, None))
    assert len([e for e in events if isinstance(e, KeyInvalidated)]) == 1
    assert stale.invalidations == 1
    (failed,) = [e for e in events if isinstance(e, ClientFailed)]
    assert isinstance(failed.error, OutdatedPublicKey)
