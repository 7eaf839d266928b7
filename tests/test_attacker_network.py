"""Property: a hostile network cannot make a DTLS 1.2 connection deliver forged, modified,
replayed or old-epoch data, cannot crash an engine, and cannot stop a handshake from
completing once it stops interfering (DESIGN.md §3, network attacker; RFC 6347 §4.1.2).

The adversary holds every datagram between the client and the server and decides, step by
step, to deliver, drop, duplicate, delay, flip bytes in, truncate, replay (any datagram ever
seen, including those of its own legitimate connection, to any address, with any claimed
source) or inject records it builds with keys it knows (epoch 0, its own connection's keys).
Honest application data flows in both directions in between.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from d2tls.adversary import profiles
from d2tls.adversary.credentials import SERVER_NAME, credentials
from d2tls.adversary.forge import datagram, seal, write_keys
from d2tls.adversary.machines import Payloads, liveness_bound, stop_adversary
from d2tls.adversary.observer import Observer
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientAuth, ClientConfig, ServerConfig, TimerConfig
from d2tls.core.dtls.connection import Connection
from d2tls.core.dtls.constants import CipherSuite, ContentType
from d2tls.core.dtls.record import parse_datagram
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.randomness import Randomness, SeededRandomness
from d2tls.sim import Address, Network

SERVER: Address = ("203.0.113.10", 4433)
CLIENT: Address = ("198.51.100.7", 40000)
MALLORY: Address = ("192.0.2.66", 40000)
#: Virtual time the adversary may spend: leaves >= 2 retransmissions (RFC 6347 §4.2.4.1).
ADVERSARY_TIME = 20.0
TIMERS = TimerConfig(max_retransmissions=8)
PSK = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8

CONTENT = st.sampled_from(
    [
        ContentType.APPLICATION_DATA,
        ContentType.ALERT,
        ContentType.HANDSHAKE,
        ContentType.CHANGE_CIPHER_SPEC,
    ]
)
ENDPOINTS = st.sampled_from(["client", "server"])
INDEX = st.integers(0, 1 << 16)


def server_config(suite: str, randomness: Randomness) -> ServerConfig:
    creds = credentials()
    if suite == "psk":
        return ServerConfig(
            cipher_suites=(PSK,),
            psk_keys={creds.psk_identity: creds.psk, creds.mallory_psk_identity: creds.mallory_psk},
            timers=TIMERS,
            randomness=randomness,
        )
    return ServerConfig(
        certificate_chain=creds.server.chain,
        private_key=creds.server.key,
        trust_store=creds.store,
        client_auth=ClientAuth.REQUIRED,
        timers=TIMERS,
        randomness=randomness,
    )


def client_config(suite: str, randomness: Randomness, *, mallory: bool = False) -> ClientConfig:
    creds = credentials()
    if suite == "psk":
        return ClientConfig(
            cipher_suites=(PSK,),
            psk_identity=creds.mallory_psk_identity if mallory else creds.psk_identity,
            psk=creds.mallory_psk if mallory else creds.psk,
            timers=TIMERS,
            randomness=randomness,
        )
    identity = creds.mallory if mallory else creds.device
    return ClientConfig(
        trust_store=creds.store,
        server_name=SERVER_NAME,
        certificate_chain=identity.chain,
        private_key=identity.key,
        timers=TIMERS,
        randomness=randomness,
    )


class HostileNetwork(RuleBasedStateMachine):
    """One client, one server, and Mallory (a legitimate client of the same server)."""

    PROPERTY = "network/handshake+records"

    def __init__(self) -> None:
        super().__init__()
        self.net: Network | None = None

    @initialize(
        suite=st.sampled_from(["psk", "psk", "ecdhe"]),
        seed=st.integers(0, 1 << 16),
        established_first=st.booleans(),
    )
    def setup(self, suite: str, seed: int, established_first: bool) -> None:
        """Half the examples attack the handshake, half an established connection."""
        self.suite = suite
        self.attacking = not established_first

        def intercept(source: Address, destination: Address) -> bool:
            return self.attacking and MALLORY not in (source, destination)

        self.net = Network(seed=seed, intercept=intercept)
        self.observer = Observer(self.net)
        # Seeded engines (RFC 6979 signatures, randoms from the seed): hypothesis replays an
        # example by its choices, so the engines' bytes, and with them the sizes of signatures
        # and records the rules depend on, must be the same on every replay.
        self.server = DTLSServer(server_config(suite, SeededRandomness(f"server-{seed}")))
        self.net.add(self.server, SERVER)
        self.client = DTLSClient(
            client_config(suite, SeededRandomness(f"client-{seed}")), remote=SERVER
        )
        self.net.add(self.client, CLIENT)
        self.mallory = DTLSClient(
            client_config(suite, SeededRandomness(f"mallory-{seed}"), mallory=True), remote=SERVER
        )
        self.net.add(self.mallory, MALLORY)
        self.payloads = Payloads("app")
        self.client.connect(0.0)
        self.mallory.connect(0.0)
        self.net.flush()
        if established_first:
            self.net.run(lambda: self._both_established(), max_time=30.0)
            assert self._both_established()
            self.attacking = True

    # ------------------------------------------------------------------ helpers
    @property
    def n(self) -> Network:
        assert self.net is not None
        return self.net

    def server_conn(self) -> Connection | None:
        return self.server.connection(CLIENT)

    def address(self, name: str) -> Address:
        return CLIENT if name == "client" else SERVER

    def peer(self, name: str) -> Address:
        return SERVER if name == "client" else CLIENT

    def held(self) -> bool:
        return self.net is not None and bool(self.net.held)

    # ------------------------------------------------------------------ adversary
    @precondition(held)
    @rule(i=INDEX)
    def deliver(self, i: int) -> None:
        self.n.deliver(i)

    @precondition(held)
    @rule(n=st.integers(1, 8))
    def release(self, n: int) -> None:
        """Let the ``n`` oldest held datagrams through in order (progress between attacks)."""
        for _ in range(n):
            self.n.deliver(0)

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

    @rule(
        j=INDEX,
        to=st.sampled_from(["original", "client", "server"]),
        spoof=st.sampled_from(["original", "client", "server", "mallory"]),
    )
    def replay(self, j: int, to: str, spoof: str) -> None:
        destination = None if to == "original" else self.address(to)
        source = {"original": None, "client": CLIENT, "server": SERVER, "mallory": MALLORY}[spoof]
        self.n.replay(j, destination=destination, source=source)

    @rule(
        victim=ENDPOINTS,
        content=CONTENT,
        seq=st.integers(0, (1 << 48) - 1),
        body=st.binary(max_size=64),
    )
    def inject_epoch0(self, victim: str, content: int, seq: int, body: bytes) -> None:
        """A cleartext record (epoch 0 needs no key), as if from the peer."""
        record = seal(None, 0, seq, body, content)
        self.n.count("inject_epoch0")
        self.n.inject(self.peer(victim), self.address(victim), datagram(record), count=False)

    @precondition(lambda self: self.net is not None and bool(self.observer.sent))
    @rule(victim=ENDPOINTS, k=INDEX, seq=st.integers(0, 1 << 20))
    def inject_known_plaintext(self, victim: str, k: int, seq: int) -> None:
        """Epoch-0 application data carrying a plaintext the peer really sent (old epoch)."""
        book = self.observer.sent.get((self.peer(victim), self.address(victim)))
        if not book:
            return
        data = sorted(book.values())[k % len(book)]
        self.n.count("inject_old_epoch_copy")
        record = seal(None, 0, seq, data)
        self.n.inject(self.peer(victim), self.address(victim), datagram(record), count=False)

    @precondition(lambda self: self.net is not None and self.mallory.is_established)
    @rule(
        victim=ENDPOINTS,
        content=CONTENT,
        seq=st.integers(0, (1 << 48) - 1),
        epoch=st.integers(0, 3),
        body=st.binary(min_size=1, max_size=64),
    )
    def inject_with_own_keys(
        self, victim: str, content: int, seq: int, epoch: int, body: bytes
    ) -> None:
        """A record protected with Mallory's own connection keys, claiming the victim's link."""
        keys = write_keys(self.mallory)
        record = seal(keys.protection, epoch, seq, body, content)
        self.n.count("inject_own_keys")
        self.n.inject(self.peer(victim), self.address(victim), datagram(record), count=False)

    @precondition(lambda self: self.net is not None and self.n.now < ADVERSARY_TIME)
    @rule(seconds=st.floats(0.05, 3.0))
    def advance(self, seconds: float) -> None:
        """Time passes: timers fire, delayed datagrams arrive, retransmissions get held."""
        self.n.count("advance")
        self.n.advance(seconds)

    @precondition(lambda self: self.net is not None and bool(self.n.history))
    @rule(start=INDEX, n=st.integers(200, 500))
    def replay_burst(self, start: int, n: int) -> None:
        """BoGo-style: replay hundreds of recorded datagrams to where they first went."""
        history = list(self.n.history)
        self.n.count("replay_burst")
        for k in range(n):
            old = history[(start + k) % len(history)]
            self.n.inject(old.source, old.destination, old.data, count=False)
        self.n.count("replay", n)

    @precondition(lambda self: self.net is not None and self.client.is_established)
    @rule(
        sender=ENDPOINTS,
        seqs=st.lists(
            st.one_of(
                st.integers(0, 200),
                st.integers(0, (1 << 48) - 1),
                st.integers(-70, 70),
            ),
            min_size=1,
            max_size=40,
        ),
    )
    def bogo_sequences(self, sender: str, seqs: list[int]) -> None:
        """BoGo-style: the honest sender's own keys at chosen sequence numbers (large gaps,
        non-monotonic, repeated, just below the window) — the receiver must follow RFC 6347
        §4.1.2.6 exactly (the observer's reference window decides what is deliverable)."""
        conn = self.client if sender == "client" else self.server_conn()
        if conn is None or not conn.is_established:
            return
        keys = write_keys(conn)
        link = (self.address(sender), self.peer(sender))
        base = keys.next_seq
        self.n.count("bogo_sequences")
        for offset in seqs:
            seq = offset if offset > 200 else max(0, base + offset)
            data = self.payloads.next()
            record = seal(keys.protection, keys.epoch, seq, data)
            if (keys.epoch, record.sequence_number) in self.n.honest_records.get(link, {}):
                # a sequence number the sender already used: send a copy (a replay)
                self.n.count("replay")
                old = self.n.honest_records[link][(keys.epoch, record.sequence_number)]
                self.n.inject(*link, datagram(old), count=False)
                continue
            self.observer.register_sent(link, record, data)
            self.n.inject(*link, datagram(record), count=False)

    # ------------------------------------------------------------------ honest traffic
    @rule(direction=ENDPOINTS, size=st.integers(0, 600))
    def send(self, direction: str, size: int) -> None:
        data = self.payloads.next(size)
        if direction == "client":
            if self.client.is_established:
                self.client.send_application_data(data)
        else:
            conn = self.server_conn()
            if conn is not None and conn.is_established:
                conn.send_application_data(data)
        self.n.flush()

    # ------------------------------------------------------------------ invariants
    @invariant()
    def integrity_epochs_and_failures(self) -> None:
        if self.net is not None:
            self.observer.check()

    def teardown(self) -> None:
        if self.net is None:
            return
        net = self.net
        outcome = Counter(net.actions)
        outcome["(records delivered)"] += self.observer.stats["deliveries"]
        outcome["(records rejected)"] += self.observer.stats["rejected"]
        outcome["(established under attack)"] += int(self._both_established())
        profiles.count(self.PROPERTY, outcome)
        self.observer.check()
        stop_adversary(net)
        conns: list[Connection] = [self.client]
        if (conn := self.server_conn()) is not None:
            conns.append(conn)
        if any(c.is_closed for c in conns) or self.client.is_established:
            self.observer.check()
            return
        bound = liveness_bound(conns, net.now)
        stopped = net.now
        net.run(
            lambda: self._both_established() or self.client.is_closed,
            max_time=stopped + bound.seconds,
        )
        self.observer.check()
        forged = bool({CLIENT, SERVER} & self.observer.forged_handshake_at) or self._forged_epoch0()
        if forged and not self._both_established():
            # a forged epoch-0 record reached an endpoint (DTLS 1.2 cannot authenticate it; the
            # answer, e.g. the server's decode_error alert, may arrive after the adversary
            # stopped): failing is allowed, silently hanging is not (every termination has a
            # reason, checked by the observer)
            assert self.client.is_closed, (
                f"liveness: poisoned handshake neither completed nor ended ({self.client.state})"
            )
        elif bound.retransmissions_left >= 2:
            assert self._both_established(), (
                f"liveness: handshake not complete {net.now - stopped:.1f}s after the adversary "
                f"stopped (bound {bound.seconds:.1f}s); client {self.client.state}, server "
                f"{getattr(self.server_conn(), 'state', None)}"
            )
        else:  # the adversary used up the retransmissions: it must at least end cleanly
            assert self._both_established() or self.client.is_closed
        self._exchange_after_attack()

    def _exchange_after_attack(self) -> None:
        """Once the adversary stopped, fresh data flows both ways and is delivered once."""
        conn = self.server_conn()
        if not self._both_established() or conn is None:
            return
        net = self.n
        up, down = self.payloads.next(), self.payloads.next()
        before = len(self.observer.deliveries)
        self.client.send_application_data(up)
        conn.send_application_data(down)
        net.advance(1.0)
        self.observer.check()
        got = {d.data for d in self.observer.deliveries[before:]}
        # a sequence-number jump may push the receiver's window past the honest sender
        if write_keys(self.client).next_seq > self.observer_highest(CLIENT, SERVER):
            assert up in got, "liveness: fresh client data not delivered after the attack"

    def _forged_epoch0(self) -> bool:
        """Did the adversary deliver an epoch-0 record that is not its link's honest record?"""
        for sent in self.n.history:
            if sent.honest or sent.destination not in (CLIENT, SERVER):
                continue
            honest = self.n.honest_records.get((sent.source, sent.destination), {})
            for record in parse_datagram(sent.data)[0]:
                if record.epoch == 0 and honest.get((0, record.sequence_number)) != record:
                    return True
        return False

    def observer_highest(self, source: Address, destination: Address) -> int:
        """Highest sequence number of the sender's current epoch the adversary put on the link."""
        epoch = write_keys(self.client).epoch
        book = self.n.honest_records.get((source, destination), {})
        return max((seq for (e, seq) in book if e == epoch), default=-1) - 64

    def _both_established(self) -> bool:
        conn = self.server_conn()
        return self.client.is_established and conn is not None and conn.is_established


HostileNetwork.TestCase.settings = profiles.attacker_settings(examples=40, steps=30)
TestHostileNetwork = HostileNetwork.TestCase


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Any:
    yield
    if profiles.is_soak():
        print("\n" + profiles.report())


def test_spoofed_server_hello_before_hello_verify_request_is_forgotten() -> None:
    """Regression (found by HostileNetwork): a ServerHello of another connection, injected
    before the HelloVerifyRequest, was buffered as message 1 and later taken for the answer to
    ClientHello #2, so the handshake hung until its retransmissions ran out. Nothing buffered
    before ClientHello #2 leaves can answer it (RFC 6347 §4.2.1): the client now drops it."""
    machine = HostileNetwork()
    machine.setup(suite="psk", seed=0, established_first=False)
    net = machine.n
    net.advance(0.5)  # Mallory's handshake (not intercepted) runs; the client's is held
    foreign = [d for d in net.history if d.source == SERVER and d.destination == MALLORY]
    server_hello = next(d for d in foreign if b"\x02\x00\x00" in d.data[13:16])
    net.inject(SERVER, CLIENT, server_hello.data)
    assert machine.client.state == "wait_server_hello"
    stop_adversary(net)
    net.run(lambda: machine._both_established() or machine.client.is_closed, max_time=60.0)
    machine.observer.check()
    assert machine._both_established(), machine.client.state


def test_modified_client_hello_may_end_the_handshake_cleanly() -> None:
    """Soak finding: a ClientHello with a flipped length byte makes the server answer with a
    fatal alert that reaches the client only after the adversary stopped. DTLS 1.2 cannot
    authenticate epoch 0, so the handshake may fail, but with a reason, never by hanging."""
    machine = HostileNetwork()
    machine.setup(suite="psk", seed=0, established_first=False)
    machine.flip(i=0, mask=1, position=15)
    assert machine._forged_epoch0()
    machine.teardown()  # liveness: established, or ended with a reason
    assert machine.client.is_closed or machine._both_established()
    assert all(event.reason for _, event in machine.observer.terminations)
