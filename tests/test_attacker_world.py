"""Properties of the whole D2TLS flow (device, agent, server) on a hostile network.

The adversary holds every datagram on every link (device<->agent PSK channel, agent<->server
full handshake, device<->server resumption) and drops, duplicates, delays, modifies, replays
(one datagram or a BoGo-style burst of 200-500, to any address) and injects them, while the
device delegates, resumes and exchanges data. After every step: integrity, anti-replay and
epoch discipline hold on every connection, no engine raised, every failure has a reason, and
the device never signs more than once per DelegationRequest it sent (DESIGN.md §2-3,
RFC 6347 §4.1.2.6). Once the adversary stops, the device connects; with 30% random loss and
no adversary the full D2TLS flow completes (paper §4.2: the device delegates again).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from d2tls.adversary import profiles
from d2tls.adversary.machines import Payloads, stop_adversary
from d2tls.adversary.world import D2TLSWorld, WorldOptions
from d2tls.core.delegation.messages import DelegationMode, DelegationRequest
from d2tls.core.dtls.config import TimerConfig
from d2tls.sim import Address, Impairments, Network

INDEX = st.integers(0, 1 << 16)
MODES = st.sampled_from([DelegationMode.BOUND, DelegationMode.BLIND])
#: The device retries ``connect`` like an application would (each attempt: fresh engines).
ATTEMPTS = 1000
#: After the adversary stops: one device timeout, one agent timeout, a few handshakes.
RECOVERY_SECONDS = 240.0


def check_roles(world: D2TLSWorld) -> None:
    """Failures are reported with reasons; one signature per request (DESIGN.md §2)."""
    requests = sum(isinstance(m, DelegationRequest) for m in world.device.sent_messages)
    assert world.signer.signatures <= requests, (
        f"{world.signer.signatures} signatures for {requests} DelegationRequests"
    )
    for state, error in world.device.outcomes:
        assert state == "connected" or error, f"device attempt ended {state} without a reason"
    for session in world.agent.history:
        assert session.state != "failed" or session.error, "agent session failed silently"


class HostileD2TLS(RuleBasedStateMachine):
    """The D2TLS flow with the adversary on all three links."""

    PROPERTY = "world/d2tls-flow"

    def __init__(self) -> None:
        super().__init__()
        self.world: D2TLSWorld | None = None

    @initialize(mode=MODES, seed=st.integers(0, 1 << 16), phase=st.sampled_from(["all", "data"]))
    def setup(self, mode: DelegationMode, seed: int, phase: str) -> None:
        """``all``: attack from the first datagram; ``data``: from the resumed connection on."""
        self.attacking = phase == "all"

        def intercept(source: Address, destination: Address) -> bool:
            return self.attacking

        self.world = world = D2TLSWorld(
            WorldOptions(
                mode=mode,
                seed=seed,
                intercept=intercept,
                timers=TimerConfig(max_retransmissions=6),
                device_timeout=20.0,
                agent_handshake_timeout=20.0,
            )
        )
        self.payloads = Payloads("d2tls")
        world.device.keep_trying(ATTEMPTS)
        if not self.attacking:
            world.run(lambda: world.device.connected, max_time=60.0)
            assert world.device.connected, world.device.outcomes
            self.attacking = True

    @property
    def w(self) -> D2TLSWorld:
        assert self.world is not None
        return self.world

    @property
    def n(self) -> Network:
        return self.w.net

    def held(self) -> bool:
        return self.world is not None and bool(self.world.net.held)

    # ------------------------------------------------------------------ adversary
    @precondition(held)
    @rule(n=st.integers(1, 10))
    def release(self, n: int) -> None:
        for _ in range(n):
            self.n.deliver(0)

    @precondition(held)
    @rule(i=INDEX)
    def deliver(self, i: int) -> None:
        self.n.deliver(i)

    @precondition(held)
    @rule(i=INDEX, delay=st.floats(0.01, 5.0))
    def delay(self, i: int, delay: float) -> None:
        self.n.deliver(i, delay=delay)

    @precondition(held)
    @rule(i=INDEX)
    def drop(self, i: int) -> None:
        self.n.drop(i)

    @precondition(held)
    @rule(i=INDEX)
    def duplicate(self, i: int) -> None:
        self.n.duplicate(i)

    @precondition(held)
    @rule(i=INDEX, position=st.integers(0, 1 << 16), mask=st.integers(1, 255))
    def flip(self, i: int, position: int, mask: int) -> None:
        self.n.flip(i, position, mask)

    @precondition(held)
    @rule(i=INDEX, keep=st.integers(0, 1 << 16))
    def truncate(self, i: int, keep: int) -> None:
        self.n.truncate(i, keep)

    @precondition(lambda self: self.world is not None and bool(self.world.net.history))
    @rule(j=INDEX, k=INDEX)
    def replay(self, j: int, k: int) -> None:
        """Any datagram ever seen, to any endpoint address, with any claimed source."""
        addresses = sorted(self.n.nodes)
        destination = addresses[k % len(addresses)]
        old = self.n.history[j % len(self.n.history)]
        source = old.source if k % 2 else addresses[(k // 2) % len(addresses)]
        self.n.replay(j, destination=destination, source=source)

    @precondition(lambda self: self.world is not None and bool(self.world.net.history))
    @rule(start=INDEX, n=st.integers(200, 500))
    def replay_burst(self, start: int, n: int) -> None:
        history = list(self.n.history)
        self.n.count("replay_burst")
        for k in range(n):
            old = history[(start + k) % len(history)]
            self.n.inject(old.source, old.destination, old.data, count=False)
        self.n.count("replay", n)

    @rule(seconds=st.floats(0.05, 5.0))
    def advance(self, seconds: float) -> None:
        self.n.count("advance")
        self.n.advance(seconds)

    # ------------------------------------------------------------------ honest traffic
    @rule(up=st.booleans(), size=st.integers(0, 300))
    def send(self, up: bool, size: int) -> None:
        device = self.w.device
        conn = device.connection
        if not device.connected or conn is None or not conn.is_established:
            return
        data = self.payloads.next(size)
        if up:
            device.send(data)
            return
        assert device.connection_address is not None
        server_conn = self.w.server.engine.connection(device.connection_address)
        if server_conn is not None and server_conn.is_established:
            server_conn.send_application_data(data)
            self.n.flush()

    # ------------------------------------------------------------------ invariants
    @invariant()
    def safety(self) -> None:
        if self.world is not None:
            assert self.world.observer is not None
            self.world.observer.check()
            check_roles(self.world)

    def teardown(self) -> None:
        if self.world is None:
            return
        world, net = self.world, self.n
        assert world.observer is not None
        outcome = Counter(net.actions)
        outcome["(records delivered)"] += world.observer.stats["deliveries"]
        outcome["(connected under attack)"] += int(world.device.connected)
        outcome["(device attempts)"] += world.device.attempts
        profiles.count(self.PROPERTY, outcome)
        stop_adversary(net)
        stopped = net.now

        def live() -> bool:
            conn = world.device.connection
            return world.device.connected and conn is not None and conn.is_established

        for _ in range(3):
            world.run(lambda: world.device.finished, max_time=stopped + RECOVERY_SECONDS)
            if world.device.connected and not live():
                # the attack ended the resumed connection (e.g. a forged epoch-0 alert, which
                # DTLS 1.2 cannot authenticate): the application connects again
                world.device.start()
                continue
            world.run(live, max_time=stopped + RECOVERY_SECONDS)
            if live():
                break
        world.observer.check()
        check_roles(world)
        assert live(), (
            f"liveness: device not connected {net.now - stopped:.0f}s after the adversary "
            f"stopped: {world.device.state}, outcomes {world.device.outcomes[-3:]}"
        )
        data = self.payloads.next()
        world.device.send(data)
        net.advance(1.0)
        world.observer.check()
        assert world.device.connection_address is not None
        assert (world.device.connection_address, data) in world.server.received
        assert world.device.received.count(data) == 1  # the server echoes, exactly once


HostileD2TLS.TestCase.settings = profiles.attacker_settings(examples=25, steps=25)
TestHostileD2TLS = HostileD2TLS.TestCase


@profiles.attacker_settings(examples=15)
@given(seed=st.integers(0, 1 << 32), mode=MODES)
def test_full_flow_completes_with_30_percent_loss(seed: int, mode: DelegationMode) -> None:
    """No adversary, 30% random loss on every link: delegation, resumption and data complete."""
    world = D2TLSWorld(WorldOptions(mode=mode, seed=seed, impairments=Impairments(loss=0.3)))
    world.device.keep_trying(50)
    assert world.observer is not None
    echoed = False
    for _ in range(10):  # the application: connect, send until echoed, else reconnect
        world.run(lambda: world.device.connected, max_time=world.net.now + 3600.0)
        assert world.device.connected, world.device.outcomes[-3:]
        for i in range(30):
            world.device.send(f"after-loss-{world.net.now}-{i}".encode())
            world.net.advance(2.0)
            if world.device.received:
                echoed = True
                break
        if echoed:
            break
        # the server gave up on the resumption (its last flight was lost): try again
        world.device.start()
    world.observer.check()
    check_roles(world)
    assert echoed, world.device.outcomes[-3:]
    counts: Counter[str] = Counter(
        {"(device attempts)": world.device.attempts, "(datagrams)": len(world.net.history)}
    )
    profiles.count("world/30%-loss", counts)


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Any:
    yield
    if profiles.is_soak():
        print("\n" + profiles.report())


def test_agent_failures_carry_a_reason() -> None:
    """Regression (found by the 30%-loss property): an agent session ended by the device's
    channel closing, or by the device's DelegationError, failed with an empty reason."""
    world = D2TLSWorld(WorldOptions(intercept=lambda s, d: s[1] == 4433 or d[1] == 4433))
    world.device.start()
    world.run(lambda: bool(world.agent.history) and world.agent.history[0].state != "", 5.0)
    world.run(max_time=world.net.now + 60.0)  # the server never answers: everything times out
    assert world.agent.history
    for session in world.agent.history:
        assert session.is_final
        assert session.error, session.state
    check_roles(world)
