"""A key server under two roots (spec/twinpeaks.md §8.8, §11.6): one key-service port per
root, each with the key its root issued, one master key and one set of registrations.

The ``test`` TLK is a member of roots A and B; a resolver pre-loading both anchors looks
``alice.example.test`` up down both chains (each referral names the port whose key that root
issued, and each record's signer ID names which root's params) and the answers agree; a
port answers with the key of its own root only.
"""

from __future__ import annotations

from typing import Any

import pytest

from d2tls.core.clock import FixedClock
from d2tls.core.errors import TwinPeaksError
from d2tls.core.twinpeaks import clpkc
from d2tls.core.twinpeaks.keyserver import Child, KeyServer, KeyServerConfig
from d2tls.core.twinpeaks.member import Member, MemberConfig, ParentLink
from d2tls.core.twinpeaks.resolver import LookupCompleted, LookupFailed, Resolver, ResolverConfig
from d2tls.lab.twinpeaks import MemoryNet, seeded

HOST = "127.0.0.1"
ADDR = {"A": 6201, "B": 6202, "test@A": 6203, "test@B": 6204, "example.test": 6205, "alice": 6206}
RESOLVER = (HOST, 6299)


class TwoRoots:
    def __init__(self) -> None:
        self.clock = clock = FixedClock(1_800_000_000)
        rng = seeded("two-roots")
        common: dict[str, Any] = {"wall_clock": clock, "randomness": rng}
        masters = {z: clpkc.setup(z, rng.random_bytes) for z in (".", "test", "example.test")}
        root_b_master = clpkc.setup(".", rng.random_bytes)
        psk = {k: bytes([i + 1]) * 32 for i, k in enumerate(("A", "B", "sld", "alice"))}
        self.roots = {
            name: KeyServer(
                KeyServerConfig(
                    ".",
                    f"root-{name.lower()}.keys",
                    HOST,
                    ADDR[name],
                    master,
                    children={b"test": Child("test", psk[name])},
                    **common,
                )
            )
            for name, master in (("A", masters["."]), ("B", root_b_master))
        }
        tld_config = {
            name: KeyServerConfig(
                "test",
                "test",
                HOST,
                ADDR[f"test@{name}"],
                masters["test"],
                children={b"example.test": Child("example.test", psk["sld"])}
                if name == "A"
                else {},
                parent=ParentLink(
                    (HOST, ADDR[name]), self.roots[name].config.params, b"test", psk[name]
                ),
                **common,
            )
            for name in ("A", "B")
        }
        tld_a = KeyServer(tld_config["A"])
        self.tlds = {"A": tld_a, "B": KeyServer(tld_config["B"], port_of=tld_a)}
        self.sld = KeyServer(
            KeyServerConfig(
                "example.test",
                "example.test",
                HOST,
                ADDR["example.test"],
                masters["example.test"],
                children={b"alice": Child("alice.example.test", psk["alice"])},
                parent=ParentLink(
                    (HOST, ADDR["test@A"]), masters["test"].params, b"example.test", psk["sld"]
                ),
                **common,
            )
        )
        self.alice = Member(
            MemberConfig(
                "alice.example.test",
                HOST,
                ParentLink(
                    (HOST, ADDR["example.test"]),
                    masters["example.test"].params,
                    b"alice",
                    psk["alice"],
                ),
                **common,
            )
        )
        nodes: dict[Any, Any] = {
            (HOST, ADDR["A"]): self.roots["A"],
            (HOST, ADDR["B"]): self.roots["B"],
            (HOST, ADDR["test@A"]): self.tlds["A"],
            (HOST, ADDR["test@B"]): self.tlds["B"],
            (HOST, ADDR["example.test"]): self.sld,
            (HOST, ADDR["alice"]): self.alice,
        }
        self.net = MemoryNet(nodes)
        for role in nodes.values():
            role.start(0.0)
        assert self.net.run(lambda: self.alice.state == "registered", 30)
        self.net.dns = lambda name: [HOST]

    def lookup(self, anchors: list[Any]) -> Any:
        resolver = Resolver(ResolverConfig(anchors, wall_clock=self.clock))
        self.net.add(RESOLVER, resolver)
        resolver.lookup("alice.example.test", self.net.now)
        events: list[Any] = []

        def done() -> bool:
            events.extend(self.net.take(RESOLVER))
            return any(isinstance(e, LookupCompleted | LookupFailed) for e in events)

        assert self.net.run(done, 30)
        return next(e for e in events if isinstance(e, LookupCompleted | LookupFailed))


@pytest.fixture(scope="module")
def world() -> TwoRoots:
    return TwoRoots()


def test_one_port_per_root_each_with_the_key_that_root_issued(world: TwoRoots) -> None:
    tld_a, tld_b = world.tlds["A"], world.tlds["B"]
    assert tld_a.key is not None and tld_b.key is not None
    assert tld_a.key.params == world.roots["A"].config.params
    assert tld_b.key.params == world.roots["B"].config.params
    assert tld_a.key.q != tld_b.key.q  # a fresh secret value per root (§5.2)
    assert tld_a.config.params == tld_b.config.params  # one master key, one params
    assert tld_b.registrations is tld_a.registrations  # the SLK registered once, on port A


def test_both_chains_answer_and_agree(world: TwoRoots) -> None:
    anchors = [world.roots["A"].trust_anchor(), world.roots["B"].trust_anchor()]
    event = world.lookup(anchors)
    assert isinstance(event, LookupCompleted), event
    assert event.result.roots == 2
    assert event.result.q == world.alice.key.q  # type: ignore[union-attr]
    servers = [line for line in event.timeline if "-> test key server" in line]
    assert len(servers) == 2
    assert f":{ADDR['test@A']}" in servers[0] and f":{ADDR['test@B']}" in servers[1]


def test_a_root_b_chain_alone_works_too(world: TwoRoots) -> None:
    event = world.lookup([world.roots["B"].trust_anchor()])
    assert isinstance(event, LookupCompleted) and event.result.roots == 1


def test_another_port_must_share_the_master_key(world: TwoRoots) -> None:
    other = KeyServerConfig(
        "test", "test", HOST, 6300, clpkc.setup("test", seeded("x").random_bytes)
    )
    with pytest.raises(TwinPeaksError, match="master key"):
        KeyServer(other, port_of=world.tlds["A"])


def test_a_port_answers_only_for_its_own_root(world: TwoRoots) -> None:
    """The record of port B is signed with root B's key for ``test``: a resolver that came
    down root A's chain (expecting the key root A issued) refuses it."""
    from d2tls.core.twinpeaks.errors import ResponseMismatch
    from d2tls.core.twinpeaks.messages import KeyRequest, KeyResponse, decode_message

    request = KeyRequest.of(b"12345678", "alice.example.test", HOST)
    tld_a, tld_b = world.tlds["A"], world.tlds["B"]
    tld_b.receive_datagram(request.encode(), (HOST, 50000), world.net.now)
    ((data, _),) = tld_b.datagrams_to_send(world.net.now)
    response = decode_message(data)
    assert isinstance(response, KeyResponse)
    assert response.record.signer == tld_b.key.identity  # type: ignore[union-attr]
    now = int(world.clock())
    assert tld_b.key is not None and tld_a.key is not None
    response.verify(request, tld_b.key.params, tld_b.key.public_key, now)
    with pytest.raises(ResponseMismatch):
        response.verify(request, tld_a.key.params, tld_a.key.public_key, now)
