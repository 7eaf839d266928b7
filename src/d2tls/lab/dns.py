"""The DNS half of TwinPeaks in the lab: Knot DNS on loopback, with generated zones.

Section 2.4.1 of "A New Certificateless Public Key Distribution and Lightweight Secure
Communication" (Eunsang Cho, Seoul National University): a client learns a name's address from
the legacy DNS and its key from the key servers (spec/twinpeaks.md §9). Here the DNS is a real
authoritative server, Knot DNS (``knotd``, Debian package ``knot``, installed by
``scripts/setup.sh``), started as a subprocess on 127.0.0.1 and a free port, with its
configuration, zone files, control socket, PID file and database in a directory of the
caller's. One server serves every zone of the lab: ``test.`` delegates ``example.test.`` with
NS and glue records (RFC 1034 §4.2.1), and ``example.test.`` holds the members.

Addresses in zone data are loopback values (127.0.0.1, ::1, and 127.0.0.x when a test needs
two different addresses): nothing ever connects to them, and the server itself listens on
127.0.0.1 only. Queries go straight to that server with dnspython (:class:`Resolver`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Final, TypeAlias

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from d2tls.core.errors import D2TLSError

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

LISTEN_ADDRESS: Final = "127.0.0.1"
_LOOPBACK_V4: Final = ipaddress.IPv4Address(LISTEN_ADDRESS)
DEFAULT_TTL: Final = 60
START_TIMEOUT: Final = 15.0
STOP_TIMEOUT: Final = 10.0
QUERY_TIMEOUT: Final = 2.0


class DnsLabError(D2TLSError):
    """The lab DNS server could not be started, reloaded or queried."""


class NameNotFound(DnsLabError):
    """The server answered NXDOMAIN (RFC 1035 §4.1.1, RCODE 3)."""


def _absolute(name: str) -> str:
    name = name.strip().lower()
    if not name or name == ".":
        raise DnsLabError("a zone or host name must not be empty or the root here")
    return name if name.endswith(".") else name + "."


@dataclass(frozen=True)
class Zone:
    """One zone: its origin, its members' addresses (relative or absolute names) and the
    child zones it delegates, each with the address of its name server (glue)."""

    origin: str
    hosts: Mapping[str, Sequence[IPAddress]] = field(default_factory=dict)
    delegations: Mapping[str, IPAddress] = field(default_factory=dict)
    serial: int = 1
    ns_address: IPAddress = _LOOPBACK_V4
    ttl: int = DEFAULT_TTL
    #: Further records in master-file format (RFC 1035 §5.1), e.g. DS or TLSA lines.
    records: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return _absolute(self.origin)

    def _owner(self, host: str) -> str:
        owner = _absolute(host) if host.endswith(".") or "." in host else f"{host}.{self.name}"
        if owner != self.name and not owner.endswith("." + self.name):
            raise DnsLabError(f"{owner} is not in zone {self.name}")
        return owner

    def render(self) -> str:
        """The zone in master-file format (RFC 1035 §5)."""
        ns = f"ns.{self.name}"
        lines = [
            f"$ORIGIN {self.name}",
            f"$TTL {self.ttl}",
            f"@ SOA {ns} hostmaster.{self.name} {self.serial} 3600 600 86400 {self.ttl}",
            f"@ NS {ns}",
            f"{ns} {_rdtype(self.ns_address)} {self.ns_address}",
        ]
        for child, glue in sorted(self.delegations.items()):
            owner = self._owner(child)
            lines += [f"{owner} NS ns.{owner}", f"ns.{owner} {_rdtype(glue)} {glue}"]
        for host, addresses in sorted(self.hosts.items()):
            owner = self._owner(host)
            lines += [f"{owner} {_rdtype(a)} {a}" for a in addresses]
        lines += list(self.records)
        return "\n".join(lines) + "\n"

    def with_records(self, *records: str) -> Zone:
        """The zone with ``records`` added (master-file lines) and the next SOA serial."""
        return replace(self, records=(*self.records, *records), serial=self.serial + 1)

    def with_hosts(self, hosts: Mapping[str, Sequence[str | IPAddress]]) -> Zone:
        """The zone with other host records (addresses as text or objects) and the next SOA
        serial (for a reload)."""
        parsed = {
            host: [ipaddress.ip_address(a) for a in addresses] for host, addresses in hosts.items()
        }
        return replace(self, hosts=parsed, serial=self.serial + 1)


def _rdtype(address: IPAddress) -> str:
    return "A" if address.version == 4 else "AAAA"


def demo_zones() -> list[Zone]:
    """The DNS of the TwinPeaks demo hierarchy: ``test.`` delegating ``example.test.``, whose
    members ``alice`` and ``bob`` have an IPv4 and an IPv6 loopback address each."""
    v4, v6 = ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")
    return [
        Zone("test", delegations={"example": v4}),
        Zone("example.test", hosts={"alice": [v4, v6], "bob": [v4, v6]}),
    ]


def free_port(address: str = LISTEN_ADDRESS) -> int:
    """A UDP port that is free on ``address`` now (and whose TCP twin is free too)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((address, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((address, port))
                except OSError:
                    continue
            return port
    raise DnsLabError("no free port found on the loopback")


def knotd_path() -> str:
    """The ``knotd`` binary (in /usr/sbin, which a non-root PATH may lack)."""
    found = shutil.which("knotd") or shutil.which("knotd", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise DnsLabError("knotd not found: install Knot DNS (scripts/setup.sh installs 'knot')")
    return found


def keymgr_path() -> str:
    found = shutil.which("keymgr") or shutil.which("keymgr", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise DnsLabError("keymgr not found: install Knot DNS (package 'knot')")
    return found


@dataclass(frozen=True)
class Dnssec:
    """How Knot signs the zones (RFC 4033-4035): a KSK and a ZSK per zone, generated with
    ``keymgr`` before the server starts and used as they are (Knot's ``manual: on`` policy),
    so that the caller can put each zone's DS record into its parent (RFC 4034 §5) and give
    clients a trust anchor. ``algorithm`` is a Knot name: ``rsasha256`` (RFC 5702; sizes
    apply) or ``ecdsap256sha256`` (RFC 6605)."""

    algorithm: str = "ecdsap256sha256"
    ksk_size: int | None = None
    zsk_size: int | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in {"rsasha256", "rsasha512", "ecdsap256sha256", "ed25519"}:
            raise DnsLabError(f"unsupported DNSSEC algorithm {self.algorithm!r}")

    def generate_arguments(self, ksk: bool) -> list[str]:
        size = self.ksk_size if ksk else self.zsk_size
        out = [f"algorithm={self.algorithm}", f"ksk={'yes' if ksk else 'no'}"]
        out.append(f"zsk={'no' if ksk else 'yes'}")
        if size is not None and self.algorithm.startswith("rsa"):
            out.append(f"size={size}")
        return out


def knotc_path() -> str:
    found = shutil.which("knotc") or shutil.which("knotc", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise DnsLabError("knotc not found: install Knot DNS (package 'knot')")
    return found


class KnotServer:
    """Knot DNS serving ``zones`` on 127.0.0.1 and a free port, as a child process.

    Use as a context manager; :meth:`stop` ends the process (SIGTERM, then SIGKILL after
    :data:`STOP_TIMEOUT`) and waits for it, so none is left behind. Every file the server
    writes is under ``directory``."""

    def __init__(
        self,
        zones: Sequence[Zone],
        directory: Path | str,
        port: int | None = None,
        *,
        dnssec: Dnssec | None = None,
    ) -> None:
        if not zones:
            raise DnsLabError("a server needs at least one zone")
        self.zones: dict[str, Zone] = {zone.name: zone for zone in zones}
        self.directory = Path(directory).resolve()
        self.port = port if port is not None else free_port()
        self.dnssec = dnssec
        self.process: subprocess.Popen[bytes] | None = None
        self.config = self.directory / "knot.conf"
        self.log = self.directory / "knotd.log"

    # ------------------------------------------------------------------ files
    def _write_config(self) -> None:
        d = self.directory
        zones = "".join(f"  - domain: {name}\n" for name in self.zones)
        policy = signing = ""
        if self.dnssec is not None:
            policy = (
                f"policy:\n  - id: lab\n    manual: on\n    algorithm: {self.dnssec.algorithm}\n"
            )
            signing = "    dnssec-signing: on\n    dnssec-policy: lab\n    zonefile-sync: -1\n"
        # Signed answers with RSA keys exceed the 1232-byte default; loopback has no
        # fragmentation trouble and a UDP-only relay in front cannot fall back to TCP.
        payload = "    udp-max-payload: 4096\n" if self.dnssec is not None else ""
        self.config.write_text(
            "server:\n"
            f'    rundir: "{d}"\n'
            f'    pidfile: "{d / "knotd.pid"}"\n'
            f"    listen: [ {LISTEN_ADDRESS}@{self.port} ]\n"
            "    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n"
            f"{payload}"
            "log:\n  - target: stderr\n    any: info\n"
            "database:\n"
            f'    storage: "{d / "db"}"\n'
            f"{policy}"
            "template:\n  - id: default\n"
            f'    storage: "{d}"\n'
            '    file: "%s.zone"\n'
            "    zonefile-load: whole\n"
            "    journal-content: none\n"
            f"{signing}"
            f"zone:\n{zones}",
            encoding="utf-8",
        )

    def _write_zone(self, zone: Zone) -> None:
        (self.directory / f"{zone.name[:-1]}.zone").write_text(zone.render(), encoding="utf-8")

    # ------------------------------------------------------------------ DNSSEC keys
    def _keymgr(self, zone: str, *arguments: str) -> str:
        done = subprocess.run(
            [keymgr_path(), "-c", str(self.config), zone, *arguments],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise DnsLabError(
                f"keymgr {zone} {' '.join(arguments)} failed: "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
        return done.stdout.decode()

    def generate_keys(self) -> None:
        """Write the configuration and give every zone a KSK and a ZSK (once; a no-op for an
        unsigned server). Called by :meth:`start`; call it earlier to read :meth:`ds`."""
        if self.dnssec is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "db").mkdir(exist_ok=True)
        self._write_config()
        for name in self.zones:
            if "KSK" in self._keymgr(name, "list"):
                continue
            self._keymgr(name, "generate", *self.dnssec.generate_arguments(ksk=True))
            self._keymgr(name, "generate", *self.dnssec.generate_arguments(ksk=False))

    def ds(self, zone: str) -> list[str]:
        """The DS records (SHA-256 digest, RFC 4509) of ``zone``'s KSK, as master-file lines
        for the parent zone."""
        name = _absolute(zone)
        if self.dnssec is None or name not in self.zones:
            raise DnsLabError(f"{name} is not a signed zone of this server")
        self.generate_keys()
        lines = [line.split() for line in self._keymgr(name, "ds").splitlines()]
        return [" ".join(f) for f in lines if len(f) == 6 and f[1] == "DS" and f[4] == "2"]

    # ------------------------------------------------------------------ life cycle
    def start(self) -> KnotServer:
        """Write the files, start ``knotd`` and wait until every zone answers its SOA."""
        if self.process is not None:
            raise DnsLabError("the server is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "db").mkdir(exist_ok=True)
        self.generate_keys()
        self._write_config()
        for zone in self.zones.values():
            self._write_zone(zone)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [knotd_path(), "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            for zone in self.zones.values():
                self._wait_for_serial(zone)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_serial(self, zone: Zone) -> None:
        resolver = Resolver(LISTEN_ADDRESS, self.port, timeout=0.2, retries=1)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process is None or self.process.poll() is not None:
                raise DnsLabError(f"knotd exited; its log:\n{self._log_tail()}")
            try:
                served = resolver.soa_serial(zone.name)
                # A signing server increments the serial of what it signed (Knot's default
                # serial-policy), so the served serial may be above the file's.
                if served == zone.serial or (self.dnssec is not None and served > zone.serial):
                    return
            except DnsLabError:
                pass
            if time.monotonic() > deadline:
                raise DnsLabError(
                    f"zone {zone.name} serial {zone.serial} not served after "
                    f"{START_TIMEOUT} s; knotd log:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server and wait for it (clean: knotd exits on SIGTERM)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> KnotServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ changes
    def update(self, zone: Zone) -> None:
        """Replace a zone's file, reload it (``knotc zone-reload``) and wait until the new
        serial is served; ``zone.serial`` must be higher than the served one."""
        if zone.name not in self.zones:
            raise DnsLabError(f"{zone.name} is not a zone of this server")
        if zone.serial <= self.zones[zone.name].serial:
            raise DnsLabError("a zone update needs a higher SOA serial (RFC 1982)")
        if not self.running:
            raise DnsLabError("the server is not running")
        self.zones[zone.name] = zone
        self._write_zone(zone)
        control = str(self.directory / "knot.sock")
        done = subprocess.run(
            [knotc_path(), "-c", str(self.config), "-s", control, "zone-reload", zone.name],
            capture_output=True,
            timeout=STOP_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise DnsLabError(f"knotc zone-reload failed: {done.stderr.decode(errors='replace')}")
        self._wait_for_serial(zone)

    def resolver(self) -> Resolver:
        return Resolver(LISTEN_ADDRESS, self.port)


@dataclass(frozen=True)
class Resolver:
    """Direct queries to one server with dnspython (UDP, then TCP if truncated)."""

    address: str
    port: int
    timeout: float = QUERY_TIMEOUT
    retries: int = 3

    def query(self, name: str, rdtype: str) -> dns.message.Message:
        """One query; raises NameNotFound on NXDOMAIN and DnsLabError on other failures."""
        request = dns.message.make_query(_absolute(name), dns.rdatatype.from_text(rdtype))
        last: Exception | None = None
        for _ in range(self.retries):
            try:
                response, _tcp = dns.query.udp_with_fallback(
                    request, self.address, timeout=self.timeout, port=self.port
                )
                break
            except (dns.exception.DNSException, OSError) as exc:
                last = exc
        else:
            raise DnsLabError(f"no answer for {name} {rdtype}: {last}")
        code = response.rcode()
        if code == dns.rcode.NXDOMAIN:
            raise NameNotFound(f"{name}: NXDOMAIN")
        if code != dns.rcode.NOERROR:
            raise DnsLabError(f"{name} {rdtype}: {dns.rcode.to_text(code)}")
        return response

    def _records(self, name: str, rdtype: str) -> list[str]:
        response = self.query(name, rdtype)
        wanted = dns.rdatatype.from_text(rdtype)
        return [r.to_text() for rrset in response.answer if rrset.rdtype == wanted for r in rrset]

    def addresses(self, name: str) -> list[IPAddress]:
        """The A and AAAA records of ``name`` (empty if it has none)."""
        found = self._records(name, "A") + self._records(name, "AAAA")
        return [ipaddress.ip_address(text) for text in found]

    def soa_serial(self, zone: str) -> int:
        for rrset in self.query(zone, "SOA").answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return int(rrset[0].serial)
        raise DnsLabError(f"no SOA for {zone}")

    def nameservers(self, zone: str) -> list[str]:
        return self._records(zone, "NS")


@contextlib.contextmanager
def running(zones: Sequence[Zone], directory: Path | str) -> Iterator[KnotServer]:
    """``with running(demo_zones(), tmp) as server:`` a started server, stopped at the end."""
    server = KnotServer(zones, directory)
    with server:
        yield server


__all__ = [
    "DnsLabError",
    "Dnssec",
    "KnotServer",
    "NameNotFound",
    "Resolver",
    "Zone",
    "demo_zones",
    "free_port",
    "running",
]
