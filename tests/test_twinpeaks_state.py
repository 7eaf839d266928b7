"""A key server's durable state (spec/twinpeaks.md §11.2; d2tls.core.twinpeaks.state and
d2tls.lab.twinpeaks_state): a restarted server keeps its master key, a root keeps its
self-issued key (the anchor clients hold) and every server keeps publishing the keys it
issued; the file is 0600 and written atomically; a corrupt, foreign or world-readable file
stops the server with a StateFileError naming the cause. The restart of a real key-server
process is in tests/test_twinpeaks_cli.py.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2tls.core.clock import FixedClock
from d2tls.core.errors import StateFileError
from d2tls.core.twinpeaks import clpkc
from d2tls.core.twinpeaks.keyserver import KeyServer
from d2tls.core.twinpeaks.resolver import LookupCompleted, Resolver, ResolverConfig
from d2tls.core.twinpeaks.state import KeyServerState
from d2tls.lab.twinpeaks import MemoryNet, build_hierarchy, seeded
from d2tls.lab.twinpeaks_state import STATE_FILE, load_state, save_state

PORTS = {"root": 6101, "test": 6102, "example.test": 6103, "alice": 6104, "bob": 6105}
RESOLVER = ("127.0.0.1", 6199)


class World:
    def __init__(self) -> None:
        self.clock = FixedClock(1_800_000_000)
        self.h = build_hierarchy(PORTS, randomness=seeded("state"), wall_clock=self.clock)
        self.net = MemoryNet(self.h.roles())
        self.h.start(0.0)
        assert self.net.run(lambda: all(m.state == "registered" for m in self.h.members.values()))
        self.net.dns = lambda name: ["127.0.0.1"]

    def lookup(self, anchors: list[object], name: str = "alice.example.test") -> object:
        resolver = Resolver(ResolverConfig(anchors, wall_clock=self.clock))  # type: ignore[arg-type]
        self.net.add(RESOLVER, resolver)
        resolver.lookup(name, self.net.now)
        events: list[object] = []

        def done() -> bool:
            events.extend(self.net.take(RESOLVER))
            return any(isinstance(e, LookupCompleted) or hasattr(e, "error") for e in events)

        assert self.net.run(done, 30)
        return next(e for e in events if isinstance(e, LookupCompleted) or hasattr(e, "error"))


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def restart(world: World, role: str, port: int | None = None) -> KeyServer:
    """Replace a key server by a new one built from its exported state (a restart), on
    another ``port`` if given (which it then registers with its parent)."""
    old: KeyServer = getattr(world.h, role)
    saved = KeyServerState.decode(old.export_state().encode())
    config = replace(old.config, port=port) if port is not None else old.config
    new = KeyServer(config, saved)
    setattr(world.h, role, new)
    world.net.add(("127.0.0.1", config.port), new)
    new.start(world.net.now)
    return new


def test_state_round_trips_and_restarted_servers_keep_every_key(world: World) -> None:
    anchors = [world.h.root.trust_anchor()]
    before = world.lookup(anchors)
    assert isinstance(before, LookupCompleted)
    root = restart(world, "root")
    # A new port: on the same address and port, the parent's close_notify of the old
    # association reaches the new handshake, and the DTLS client replays it as a record of
    # the next epoch, which fails (RFC 6347 §4.1.2.7 would discard it): a limit of the engine.
    sld = restart(world, "sld", port=6113)
    assert root.trust_anchor() == anchors[0]  # the root's own key survived: same anchor
    assert sld.registrations.keys() == {
        ("alice.example.test", world.h.members["alice"].key.identity.address),  # type: ignore[union-attr]
        ("bob.example.test", world.h.members["bob"].key.identity.address),  # type: ignore[union-attr]
    }
    # The restarted SLK registers again with its parent (a fresh key of its own) and still
    # publishes alice's key, issued under the master key it kept.
    assert world.net.run(lambda: sld.state == "serving", 30)
    after = world.lookup(anchors)
    assert isinstance(after, LookupCompleted) and not after.result.from_cache
    assert after.result.q == before.result.q == world.h.members["alice"].key.q  # type: ignore[union-attr]
    # Serials continue: the next issue for alice is 2, not 1 again.
    assert sld.export_state().serials["alice.example.test"] == 1


def test_a_state_for_another_server_is_refused(world: World) -> None:
    other = KeyServerState(clpkc.setup("example.test", seeded("other").random_bytes))
    with pytest.raises(StateFileError, match="another master key"):
        KeyServer(world.h.sld.config, other)
    root_state = world.h.root.export_state()
    with pytest.raises(StateFileError):
        KeyServer(world.h.sld.config, root_state)


def test_file_is_0600_atomic_and_reloads(world: World, tmp_path: Path) -> None:
    directory = tmp_path / "state"
    assert load_state(directory) is None
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    state = world.h.sld.export_state()
    save_state(directory, state)
    save_state(directory, state)
    path = directory / STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == [STATE_FILE]  # no temporary left
    assert load_state(directory) == state


def test_corrupt_or_readable_file_stops_the_server(world: World, tmp_path: Path) -> None:
    save_state(tmp_path, world.h.root.export_state())
    path = tmp_path / STATE_FILE
    os.chmod(path, 0o644)
    with pytest.raises(StateFileError, match="chmod 600"):
        load_state(tmp_path)
    os.chmod(path, 0o600)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(StateFileError, match=f"{STATE_FILE}.*refusing to start"):
        load_state(tmp_path)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600))
def test_hostile_state_bytes_are_a_state_file_error(data: bytes) -> None:
    try:
        state = KeyServerState.decode(data)
    except StateFileError:
        return
    assert state.encode() == data


@settings(max_examples=80, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_flipped_bits_in_a_real_state_are_refused_or_canonical(
    world: World, position: int, bit: int
) -> None:
    """Any one flipped bit: a StateFileError, or a state that re-encodes to the same bytes
    (e.g. another serial); never another exception, never a key that does not check."""
    data = bytearray(world.h.sld.export_state().encode())
    data[position % len(data)] ^= 1 << bit
    try:
        state = KeyServerState.decode(bytes(data))
    except StateFileError:
        return
    assert state.encode() == bytes(data)
    for subject in state.subjects:
        clpkc.check_binding(state.master.params, subject.public_key, subject.q)
