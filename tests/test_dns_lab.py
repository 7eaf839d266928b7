"""The DNS half of TwinPeaks (spec/twinpeaks.md §9) against a real Knot DNS started by the
test on 127.0.0.1: the demo zones answer A and AAAA for the members and NXDOMAIN for unknown
names, a zone update is served after a reload, and no server process is left behind."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from pathlib import Path

import pytest

from d2tls.core.twinpeaks import clpkc
from d2tls.lab import dns as lab

V4 = ipaddress.IPv4Address("127.0.0.1")
V6 = ipaddress.IPv6Address("::1")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    return state != "Z"


@pytest.fixture
def server(tmp_path: Path) -> lab.KnotServer:
    with lab.running(lab.demo_zones(), tmp_path / "dns") as started:
        yield started  # type: ignore[misc]
    assert not started.running


def test_members_resolve_and_unknown_names_do_not(server: lab.KnotServer) -> None:
    resolver = server.resolver()
    assert resolver.addresses("alice.example.test") == [V4, V6]
    assert resolver.addresses("BOB.example.test.") == [V4, V6]
    assert resolver.nameservers("example.test") == ["ns.example.test."]
    with pytest.raises(lab.NameNotFound):
        resolver.addresses("carol.example.test")
    with pytest.raises(lab.NameNotFound):
        resolver.addresses("nothing.test")
    # The delegation of example.test. in test. is real zone data (NS with glue).
    zone_text = (server.directory / "test.zone").read_text()
    assert "example.test. NS ns.example.test." in zone_text
    # The server listens on the loopback only, on its own port.
    assert server.config.read_text().count(f"listen: [ 127.0.0.1@{server.port} ]") == 1


def test_an_address_change_is_served_after_a_reload(server: lab.KnotServer) -> None:
    """Section 2.4.3 of the dissertation: a member's address changes, so its ID and key do;
    the DNS must give the new address, which the key lookup then carries."""
    resolver = server.resolver()
    zone = server.zones["example.test."]
    moved = ipaddress.IPv4Address("127.0.0.2")  # zone data only: nothing connects to it
    server.update(zone.with_hosts({"alice": [moved], "bob": [V4, V6]}))
    assert resolver.soa_serial("example.test") == zone.serial + 1
    assert resolver.addresses("alice.example.test") == [moved]
    assert resolver.addresses("bob.example.test") == [V4, V6]
    # The key bound to the old address is not the key for the new one (ID includes the IP).
    params = clpkc.setup("example.test").params
    before = params.identity("alice.example.test", V4)
    after = params.identity("alice.example.test", resolver.addresses("alice.example.test")[0])
    assert before != after
    with pytest.raises(lab.DnsLabError, match="higher SOA serial"):
        server.update(zone)


def test_the_server_is_stopped_and_leaves_no_process(tmp_path: Path) -> None:
    server = lab.KnotServer(lab.demo_zones(), tmp_path / "dns")
    with server:
        assert server.process is not None
        pid = server.process.pid
        assert alive(pid)
        assert server.resolver().soa_serial("test") == 1
    assert not server.running and not alive(pid)
    with pytest.raises(lab.DnsLabError):
        lab.Resolver("127.0.0.1", server.port, timeout=0.2, retries=1).query("test", "SOA")
    # An exception inside the block still stops it.
    failing = lab.KnotServer(lab.demo_zones(), tmp_path / "dns2")
    with pytest.raises(RuntimeError), failing:
        assert failing.process is not None
        pid = failing.process.pid
        raise RuntimeError("test body failed")
    assert not alive(pid)


def test_a_bad_zone_is_a_clear_error_and_no_process(tmp_path: Path) -> None:
    zone = lab.Zone("example.test", hosts={"alice.example.org.": [V4]})
    with pytest.raises(lab.DnsLabError, match="not in zone"):
        zone.render()
    before = subprocess.run(["pgrep", "-x", "knotd"], capture_output=True, text=True).stdout
    broken = lab.KnotServer([lab.Zone("example.test")], tmp_path / "dns")
    broken.directory.mkdir()
    # Occupy the port so that knotd cannot serve: start fails with the log, nothing stays.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", broken.port))
        with pytest.raises(lab.DnsLabError, match="knotd"):
            broken.start()
    assert not broken.running
    after = subprocess.run(["pgrep", "-x", "knotd"], capture_output=True, text=True).stdout
    assert set(after.split()) <= set(before.split())
