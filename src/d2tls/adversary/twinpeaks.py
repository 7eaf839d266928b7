"""Attacker worlds of TwinPeaks (section 2.5 of the dissertation; spec/twinpeaks.md §11.4).

Each world is the demo hierarchy (root, ``test``, ``example.test``, alice and bob) on the
in-memory network of :mod:`d2tls.lab.twinpeaks`, with the real sans-IO roles and seeded
randomness, plus an adversary who holds what a :class:`Compromise` gives it:

* ``dns``: the DNS answers alice's name with the attacker's address (a forged A record);
* ``key_server``: the attacker holds that key server's master and signing keys and serves a
  forged key for alice (``sld``: alice's own key server, which forges her key; ``tld`` or
  ``root``: an ancestor, which refers to a fake server below it that forges her key);
* ``roots``: the resolver pre-loads 1 or 2 roots and cross-checks them (a second root and a
  second instance of the ``test`` server registered with it);
* ``poison``: an on-path attacker injects forged key responses ahead of every genuine one:
  signed with a real key of a server that is not the one asked (a non-parent), claiming to be
  the one asked.

The attacker wins (impersonation) when the resolver returns a key whose private key the
attacker holds *and* the address the client will send to is the attacker's. The expected
rule (section 2.5.1): impersonation exactly when alice's DNS record and a key server on her
chain are both compromised, unless that key server is a root and a second root cross-checks.
``python -m d2tls.adversary.twinpeaks`` writes the outcome table into docs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d2tls.core.clock import FixedClock
from d2tls.core.model.states import TwinPeaksKeyServerState, TwinPeaksMemberState
from d2tls.core.sansio import Address
from d2tls.core.twinpeaks import clpkc
from d2tls.core.twinpeaks.clpkc import FullPrivateKey
from d2tls.core.twinpeaks.keyserver import Child, KeyServer, KeyServerConfig, Registration
from d2tls.core.twinpeaks.member import ParentLink
from d2tls.core.twinpeaks.messages import (
    KeyRecord,
    KeyRequest,
    KeyResponse,
    RecordType,
    Subject,
    decode_message,
)
from d2tls.core.twinpeaks.resolver import (
    Discarded,
    LookupCompleted,
    LookupFailed,
    Resolver,
    ResolverConfig,
)
from d2tls.lab.twinpeaks import LOOPBACK, Hierarchy, MemoryNet, build_hierarchy, seeded

ATTACKER_ADDRESS = "127.0.0.66"
TARGET = "alice.example.test"
DOC = Path("docs") / "twinpeaks-outcomes.md"
PORTS = {"root": 7001, "test": 7002, "example.test": 7003, "alice": 7004, "bob": 7005}
ROOT2_PORT, TLD2_PORT, FAKE_PORT, RESOLVER_PORT = 7011, 7012, 7066, 7099
KEY_SERVERS = ("none", "sld", "tld", "root")
EPOCH = 1_800_000_000


@dataclass(frozen=True)
class Compromise:
    """What the adversary controls in one world."""

    dns: bool = False
    key_server: str = "none"
    roots: int = 1
    poison: bool = False

    def label(self) -> str:
        parts = []
        if self.dns:
            parts.append("DNS record")
        if self.key_server != "none":
            parts.append(
                {"sld": "alice's key server", "tld": "TLK server", "root": "root"}[self.key_server]
            )
        if self.poison:
            parts.append("on-path forger (non-parent key)")
        return " + ".join(parts) or "nothing"


@dataclass
class Outcome:
    """What happened: ``verdict`` is one of impersonation, detected, prevented."""

    compromise: Compromise
    verdict: str
    how: str
    discarded: list[str] = field(default_factory=list)


def expected_impersonation(c: Compromise) -> bool:
    """Section 2.5.1's rule (see the module docstring)."""
    if not c.dns:
        return False
    return c.key_server in ("sld", "tld") or (c.key_server == "root" and c.roots == 1)


# --------------------------------------------------------------------------- the world
class World:
    def __init__(self, compromise: Compromise, seed: str = "tp-world") -> None:
        self.c = compromise
        self.clock = FixedClock(EPOCH)
        self.randomness = seeded(seed)
        self.h: Hierarchy = build_hierarchy(
            PORTS, randomness=self.randomness, wall_clock=self.clock
        )
        self.net = MemoryNet(self.h.roles())
        self.extra: list[KeyServer] = []
        self.attacker_keys: set[bytes] = set()

    def _common(self) -> dict[str, Any]:
        return {"wall_clock": self.clock, "randomness": self.randomness}

    def start(self) -> None:
        self.h.start(0.0)
        if self.c.roots == 2:
            self._second_root()
        for server in self.extra:
            server.start(self.net.now)
        registered = self.net.run(
            lambda: (
                all(m.state == TwinPeaksMemberState.REGISTERED for m in self.h.members.values())
                and all(
                    s.state == TwinPeaksKeyServerState.SERVING
                    for s in [self.h.tld, self.h.sld, *self.extra]
                )
            ),
            30,
        )
        if not registered:
            raise RuntimeError("the world's hierarchy did not come up")

    def _second_root(self) -> None:
        """Root 2 and a second instance of the ``test`` server (same master key, same
        registrations), registered with root 2 with a fresh secret value (§8.8)."""
        tld = self.h.tld.config
        psk = self.randomness.random_bytes(32)
        root2 = KeyServer(
            KeyServerConfig(
                ".",
                "root2.keys",
                LOOPBACK,
                ROOT2_PORT,
                clpkc.setup(".", self.randomness.random_bytes),
                children={b"test": Child("test", psk)},
                **self._common(),
            )
        )
        tld2 = KeyServer(
            KeyServerConfig(
                "test",
                "test",
                LOOPBACK,
                TLD2_PORT,
                tld.master,
                children=tld.children,
                parent=ParentLink((LOOPBACK, ROOT2_PORT), root2.config.params, b"test", psk),
                **self._common(),
            )
        )
        tld2.registrations = self.h.tld.registrations  # one zone database, two instances
        self.net.add((LOOPBACK, ROOT2_PORT), root2)
        self.net.add((LOOPBACK, TLD2_PORT), tld2)
        self.extra += [root2, tld2]

    # ------------------------------------------------------------------ compromises
    def _forged_key(self, issuer: KeyServer, name: str, address: str) -> FullPrivateKey:
        """A key for (name, address) that the attacker holds, extracted with the issuer's
        master key (which the attacker holds: the issuer is compromised)."""
        params = issuer.config.params
        identity = params.identity(name, address)
        rng = self.randomness.random_bytes
        secret = clpkc.set_secret_value(params, identity, rng)
        partial = clpkc.extract_partial_private_key(issuer.config.master, secret.request(), rng)
        key = clpkc.set_private_key(params, secret, partial)
        self.attacker_keys.add(key.q.encode())
        return key

    def _publish(self, server: KeyServer, key: FullPrivateKey, child: KeyServer | None) -> None:
        subject = Subject(
            key.identity,
            key.x_point,
            key.q,
            99,
            EPOCH - 60,
            EPOCH + 86400,
            child.config.params if child is not None else None,
            child.config.port if child is not None else None,
        )
        for k in [k for k in server.registrations if k[0] == key.identity.name]:
            del server.registrations[k]
        server.registrations[(key.identity.name, key.identity.address)] = Registration(subject)

    def compromise_key_server(self, dns_address: str) -> None:
        kind = self.c.key_server
        if kind == "none":
            return
        if kind == "sld":
            self._publish(self.h.sld, self._forged_key(self.h.sld, TARGET, dns_address), None)
            return
        # An ancestor refers to a fake server for the zone below it, which forges alice's key.
        ancestor, child_zone = (
            (self.h.tld, "example.test")
            if kind == "tld"
            else (
                self.h.root,
                "test",
            )
        )
        fake = KeyServer(
            KeyServerConfig(
                child_zone,
                child_zone,
                ATTACKER_ADDRESS,
                FAKE_PORT,
                clpkc.setup(child_zone, self.randomness.random_bytes),
                **self._common(),
            )
        )
        fake.start(self.net.now)  # serving with a self-issued key ...
        fake.key = self._forged_key(ancestor, child_zone, ATTACKER_ADDRESS)  # ... replaced
        self._publish(ancestor, fake.key, fake)
        self._publish(fake, self._forged_key(fake, TARGET, dns_address), None)
        self.net.add((ATTACKER_ADDRESS, FAKE_PORT), fake)

    def poison(
        self, data: bytes, source: Address, destination: Address
    ) -> Iterable[tuple[bytes, Address, Address]]:
        """On path: ahead of each key request's answer, a forged response with the right
        request ID, claiming the server asked, signed by the TLK server's genuine key."""
        forged: list[tuple[bytes, Address, Address]] = []
        if source == (LOOPBACK, RESOLVER_PORT):
            try:
                message = decode_message(data)
            except Exception:
                message = None
            server = self.net.nodes.get(destination)
            if isinstance(message, KeyRequest) and isinstance(server, KeyServer):
                forged.append((self._forgery(message, server), destination, source))
        return (
            [(data, source, destination), *forged][::-1]
            if forged
            else [(data, source, destination)]
        )

    def _forgery(self, request: KeyRequest, server: KeyServer) -> bytes:
        non_parent = self.h.tld.key if server is not self.h.tld else self.h.sld.key
        assert non_parent is not None and server.key is not None
        mine = self._forged_key(server, request.name, ATTACKER_ADDRESS)
        subject = Subject(mine.identity, mine.x_point, mine.q, 1, EPOCH - 60, EPOCH + 3600)
        if request.address.compressed != ATTACKER_ADDRESS:
            subject = Subject(
                server.config.params.identity(request.name, request.address),
                mine.x_point,
                mine.q,
                1,
                EPOCH - 60,
                EPOCH + 3600,
            )
        record = KeyRecord(
            RecordType.ANSWER,
            request.name,
            request.address,
            server.key.identity,  # claims to be the server asked
            server.config.params,
            EPOCH,
            300,
            subject=subject,
        )
        signature = clpkc.sign(non_parent, record.signed_bytes())
        return KeyResponse(request.request_id, record, signature).encode()

    # ------------------------------------------------------------------ the run
    def run(self) -> Outcome:
        self.start()
        address = ATTACKER_ADDRESS if self.c.dns else LOOPBACK
        self.compromise_key_server(address)
        self.net.dns = lambda name: [address] if name == TARGET else [LOOPBACK]
        anchors = [self.h.root.trust_anchor()] + [
            s.trust_anchor() for s in self.extra if s.config.zone == "."
        ]
        if self.c.key_server == "root" and self.c.roots == 2:
            anchors = anchors[::-1]  # the compromised root is not necessarily asked first
        resolver = Resolver(
            ResolverConfig(anchors, wall_clock=self.clock, randomness=self.randomness)
        )
        self.net.add((LOOPBACK, RESOLVER_PORT), resolver)
        if self.c.poison:
            self.net.interceptor = self.poison
        resolver.lookup(TARGET, self.net.now)
        events: list[Any] = []

        def finished() -> bool:
            events.extend(self.net.take((LOOPBACK, RESOLVER_PORT)))
            return any(isinstance(e, LookupCompleted | LookupFailed) for e in events)

        self.net.run(finished, 30)
        discarded = [e.reason for e in events if isinstance(e, Discarded)]
        return self._judge(events, address, discarded)

    def _judge(self, events: list[Any], address: str, discarded: list[str]) -> Outcome:
        c = self.c
        for event in events:
            if isinstance(event, LookupFailed):
                how = f"lookup fails: {type(event.error).__name__} ({event.error})"
                return Outcome(c, "detected", how, discarded)
            if isinstance(event, LookupCompleted):
                forged = event.result.q.encode() in self.attacker_keys
                to_attacker = event.result.address.compressed == ATTACKER_ADDRESS
                if forged and to_attacker:
                    how = "the resolver returns the attacker's key at the attacker's address"
                    return Outcome(c, "impersonation", how, discarded)
                if forged:
                    how = (
                        "a forged key, but bound to alice's real address: the attacker gets no "
                        "traffic, alice cannot prove possession (key confirmation fails)"
                    )
                    return Outcome(c, "detected", how, discarded)
                how = "the resolver returns alice's genuine key"
                if discarded:
                    how += f"; {len(discarded)} forged response(s) discarded"
                return Outcome(c, "prevented", how, discarded)
        return Outcome(c, "detected", "no answer (timeout)", discarded)


def run_world(compromise: Compromise, seed: str = "tp-world") -> Outcome:
    return World(compromise, seed).run()


# --------------------------------------------------------------------------- the table
CASES: tuple[Compromise, ...] = (
    Compromise(),
    Compromise(dns=True),
    Compromise(key_server="sld"),
    Compromise(dns=True, key_server="sld"),
    Compromise(key_server="tld"),
    Compromise(dns=True, key_server="tld"),
    Compromise(key_server="root"),
    Compromise(dns=True, key_server="root"),
    Compromise(dns=True, key_server="root", roots=2),
    Compromise(key_server="root", roots=2),
    Compromise(poison=True),
    Compromise(dns=True, poison=True),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(outcomes: Iterable[Outcome]) -> str:
    lines = [
        "# TwinPeaks attacker outcomes",
        "",
        "<!-- Generated by `python -m d2tls.adversary.twinpeaks`; tests/test_twinpeaks_attacks.py",
        "     checks that this file is up to date. Do not edit by hand. -->",
        "",
        "Section 2.5 of the dissertation, observed: each row is one world of",
        "`d2tls.adversary.twinpeaks` (the real sans-IO key servers, members and resolver on an",
        "in-memory network, seeded), in which the adversary controls what the first column says",
        "and tries to make the resolver give the client a key for `alice.example.test` that the",
        "adversary holds, at an address where the adversary receives the traffic.",
        "",
        "| Compromised | Roots | Expected | Observed | How |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        expected = "impersonation" if expected_impersonation(o.compromise) else "no impersonation"
        lines.append(
            f"| {_cell(o.compromise.label())} | {o.compromise.roots} | {expected} | "
            f"{o.verdict} | {_cell(o.how)} |"
        )
    lines += [
        "",
        "Impersonation needs both the member's DNS record and a key server on its chain; a",
        "compromised root alone is caught when a second root cross-checks (CrossCheckError),",
        "and forged responses signed by a key server that is not the one asked are discarded",
        "by the signature check of spec/twinpeaks.md §8.5 without ending the lookup.",
        "",
    ]
    return "\n".join(lines)


def outcomes() -> list[Outcome]:
    return [run_world(c) for c in CASES]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else DOC
    target.write_text(render(outcomes()), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
