"""``d2tls bench auth``: server authentication with PKI, DANE and TwinPeaks, side by side.

Section 2.6 of the dissertation (Figs. 2.3-2.5) compares the three schemes on a testbed
spanning East Asia and North America. This benchmark sets them up on 127.0.0.1 with real
components and the dissertation's delays added by our user-space relay:

* **DNS** (all schemes): three Knot DNS servers, one per level (``test.`` standing for the
  root, ``example.test.`` the TLD, ``iot.example.test.`` the second-level domain), every zone
  DNSSEC-signed by Knot (RSA 4096-bit KSK and 2048-bit ZSK as in section 2.6.3, or ECDSA
  P-256), resolved by an iterative validating resolver with dnspython from a configured
  trust anchor (``d2tls.lab.dnssec``), co-located with the client like the paper's local
  resolver. *DNS resolution* = the A lookup of the server name.
* **PKI**: our CA and the server's certificate, our OCSP responder (``d2tls pki ocsp``, a
  child process) behind a TCP delay proxy. The client's engine validates the chain; then,
  before its key exchange leaves, it asks the responder (cold) or uses the verified status
  it cached until nextUpdate (warm: the "w/o OCSP RTT" case of Fig. 2.3).
* **DANE**: the server authenticates with an RFC 7250 raw public key; the SLD zone holds a
  ``TLSA 3 1 1`` record for it (``_PORT._udp.www.iot.example.test``). The client looks the
  TLSA up (cold: one more query to the SLD server; warm: from its resolver's cache), checks
  its signature chain and compares SHA-256(SubjectPublicKeyInfo) with it.
* **TwinPeaks**: key resolution by the TwinPeaks resolver role from a root key server down
  (``d2tls.bench.auth_tp``: the project's key-server, member and resolver roles), cold and
  cached, then the TwinPeaks handshake of spec/twinpeaks.md §9 (raw key + extension).

Definitions (section 2.6.3): the *authentication delay* of PKI and DANE runs from the
ClientHello to the end of server authentication, before the client's key exchange is sent;
that of TwinPeaks is the key resolution, which takes the authentication out of the handshake.
*Connection set-up (except authentication)*, Fig. 2.4, is the rest of the handshake (for
TwinPeaks the whole of it). Bytes are UDP/TCP payload bytes: the DTLS handshake, the
authentication traffic (OCSP over HTTP, the TLSA query, the key requests) and the DNS lookup.

Delays: the dissertation's own measured RTTs, 1.366 ms (within East Asia: campus to its
servers) and 167.888 ms (East Asia to the US, across the Pacific), section 3.6. The client,
its resolver and key resolver are co-located (0); the root and second-level DNS and key
servers, the OCSP responder and the web server are in East Asia (``--near-rtt``); the TLD
DNS server and TLK key server in the US (``--far-rtt``), as in section 2.6.2.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509

from d2tls.bench.auth_lab import (
    SERVER_NAME,
    SLD,
    TLD,
    TOP,
    AuthBenchError,
    HandshakeTiming,
    OcspResponderProcess,
    TcpDelayProxy,
    dns_hierarchy,
    run_handshake,
    server_raw_key,
)
from d2tls.bench.auth_tp import KeyResolver, start_hierarchy
from d2tls.bench.auth_tp import close as tp_close
from d2tls.bench.common import Progress, environment, ratio, summary, table
from d2tls.bench.infra import LoopThread, RelayProcess, RelaySpec
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientAuth, ClientConfig, ServerConfig
from d2tls.core.dtls.rawpk import spki_of
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.dtls.twinpeaks import server_identity
from d2tls.core.pki.generate import init_pki
from d2tls.core.pki.verify import load_certificate_chain, load_private_key, load_trust_store
from d2tls.lab.dns import Dnssec, free_port
from d2tls.lab.dnssec import ValidatingResolver
from d2tls.net.ocsp import OCSPResult, OCSPStatus, check_ocsp
from d2tls.net.udp import ServerEndpoint

SCHEMES: Final = ("pki", "dane", "twinpeaks")
LABELS: Final = {"pki": "PKI (CA + OCSP)", "dane": "DANE (DNSSEC + TLSA)", "twinpeaks": "TwinPeaks"}
STATES: Final = ("cold", "warm")
#: The dissertation's measured RTTs (ms): within East Asia and across the Pacific (§3.6).
NEAR_RTT_MS: Final = 1.366
FAR_RTT_MS: Final = 167.888
#: Numbers the dissertation gives in its text (section 2.6.3), ms; hit = warm, miss = cold.
PAPER: Final[dict[str, Any]] = {
    "twinpeaks_key_resolution_ms": {"warm": 37.3, "cold": 470.9},
    "dns_resolution_ms": {"warm": 168.5, "cold": 1382.7},
    "twinpeaks_cold_bound_ms": 503.5,
}
DNSSEC_ALGORITHMS: Final = {
    "rsasha256": Dnssec("rsasha256", 4096, 2048),
    "ecdsap256sha256": Dnssec("ecdsap256sha256"),
}


@dataclass(frozen=True)
class Topology:
    """RTTs added by the relay (ms): ``near`` within East Asia, ``far`` across the Pacific."""

    near_rtt_ms: float = NEAR_RTT_MS
    far_rtt_ms: float = FAR_RTT_MS

    def to_dict(self) -> dict[str, Any]:
        return {
            "near_rtt_ms": self.near_rtt_ms,
            "far_rtt_ms": self.far_rtt_ms,
            "near": "web server, OCSP responder, root and SLD DNS and key servers",
            "far": "TLD DNS server and TLK key server",
            "co-located (0 ms)": "client, its validating resolver and its key resolver",
        }


@dataclass
class Sample:
    """One connection: delays in ms and bytes by kind."""

    dns_ms: float
    auth_ms: float
    setup_ms: float
    handshake_ms: float
    total_ms: float
    dtls_bytes: int
    auth_bytes: int
    dns_bytes: int


# --------------------------------------------------------------------------- the lab
@dataclass
class Lab:
    """Everything a connection needs, started by :func:`lab`."""

    trust_store: Any
    ca_cert: x509.Certificate
    ocsp_url: str
    ocsp_proxy: TcpDelayProxy
    servers: dict[str, tuple[str, int]]
    resolver: ValidatingResolver
    keys: KeyResolver
    dane_port: int
    pki_dir: Path
    ocsp_cache: OCSPResult | None = None

    def flush(self) -> None:
        """Cold caches: the DNS resolver's, the key resolver's and the OCSP status."""
        self.resolver.flush()
        self.keys.flush()
        self.ocsp_cache = None


async def _listen(config: ServerConfig) -> ServerEndpoint:
    endpoint = await ServerEndpoint.listen("127.0.0.1", 0, DTLSServer(config))
    assert endpoint.address is not None
    return endpoint


@contextmanager
def lab(directory: Path, topology: Topology, dnssec: Dnssec) -> Iterator[Lab]:
    """Start the key servers, DTLS servers, DNS hierarchy, OCSP responder and the relays."""
    near, far = topology.near_rtt_ms / 2000, topology.far_rtt_ms / 2000
    with ExitStack() as stack:
        paths = init_pki(directory / "pki", server_name=SERVER_NAME, devices=0)
        server_chain = load_certificate_chain(paths.server_chain)
        server_key = load_private_key(paths.server_key)
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        thread = stack.enter_context(LoopThread("d2tls-auth-servers"))

        # The key servers first: they publish the ports of the relays in front of them.
        real = {role: free_port() for role in ("top", "tld", "sld")}
        key_delays = {"top": near, "tld": far, "sld": near}
        key_relays = stack.enter_context(
            RelayProcess(
                [RelaySpec(("127.0.0.1", real[r]), key_delays[r], key_delays[r]) for r in real]
            )
        )
        published = {r: key_relays.addresses[i][1] for i, r in enumerate(real)}
        started = thread.run(start_hierarchy(SERVER_NAME, real, published), timeout=120)
        stack.callback(tp_close, started, thread.loop)
        member = started.member_key

        configs = {
            "pki": ServerConfig(
                certificate_chain=server_chain, private_key=server_key, client_auth=ClientAuth.NONE
            ),
            "dane": ServerConfig(raw_private_key=server_key, client_auth=ClientAuth.NONE),
            "twinpeaks": ServerConfig(
                raw_private_key=member.to_cryptography(),
                twinpeaks=server_identity(member),
                client_auth=ClientAuth.NONE,
            ),
        }
        endpoints = {name: thread.run(_listen(c), timeout=30) for name, c in configs.items()}
        for endpoint in endpoints.values():
            stack.callback(thread.loop.call_soon_threadsafe, endpoint.close)

        dns = stack.enter_context(dns_hierarchy(directory / "dns", dnssec))
        ocsp = stack.enter_context(OcspResponderProcess(paths.directory))
        targets: list[tuple[str, tuple[str, int], float]] = [
            *[(name, e.address, near) for name, e in endpoints.items() if e.address],
            ("dns:" + TOP, ("127.0.0.1", dns.ports[TOP]), near),
            ("dns:" + TLD, ("127.0.0.1", dns.ports[TLD]), far),
            ("dns:" + SLD, ("127.0.0.1", dns.ports[SLD]), near),
        ]
        relays = stack.enter_context(
            RelayProcess([RelaySpec(target, delay, delay) for _, target, delay in targets])
        )
        at = {name: relays.addresses[i] for i, (name, _, _) in enumerate(targets)}

        digest = hashlib.sha256(spki_of(server_key)).hexdigest()
        dane_port = at["dane"][1]
        anchor = dns.build([f"_{dane_port}._udp.www TLSA 3 1 1 {digest}"])
        dns.start()
        proxy = stack.enter_context(TcpDelayProxy(ocsp.address, near))
        book = {f"ns.{zone}.": at[f"dns:{zone}"] for zone in (TOP, TLD, SLD)}
        resolver = ValidatingResolver(TOP, anchor, at[f"dns:{TOP}"], book)

        def addresses(name: str) -> tuple[list[str], float]:
            rrset = resolver.resolve(name, "A")
            return [r.address for r in rrset], float(rrset.ttl)

        yield Lab(
            trust_store=load_trust_store(paths.ca_cert),
            ca_cert=ca_cert,
            ocsp_url=f"http://127.0.0.1:{proxy.address[1]}/",
            ocsp_proxy=proxy,
            servers={name: at[name] for name in SCHEMES},
            resolver=resolver,
            keys=KeyResolver([started.anchor], addresses),
            dane_port=dane_port,
            pki_dir=paths.directory,
        )


# --------------------------------------------------------------------------- one connection
def _ocsp_check(the_lab: Lab) -> Callable[[DTLSClient], None]:
    def check(client: DTLSClient) -> None:
        cached = the_lab.ocsp_cache
        fresh_until = cached.next_update if cached is not None else None
        if fresh_until is not None and fresh_until.timestamp() > time.time():
            return
        leaf = x509.load_der_x509_certificate(client.peer_certificates[0])
        result = asyncio.run(check_ocsp(leaf, the_lab.ca_cert, the_lab.ocsp_url))
        if result.status is not OCSPStatus.GOOD:
            raise AuthBenchError(f"OCSP says the server certificate is {result.status.value}")
        the_lab.ocsp_cache = result

    return check


def connect(the_lab: Lab, scheme: str) -> Sample:
    """One connection to the ``scheme`` server, with whatever the caches hold now."""
    resolver, keys = the_lab.resolver, the_lab.keys
    dns_before, keys_before, ocsp_before = (
        resolver.traffic.bytes,
        keys.bytes,
        the_lab.ocsp_proxy.bytes,
    )
    started = time.perf_counter()
    answer = resolver.resolve(SERVER_NAME, "A")
    resolved_at = time.perf_counter()
    dns_bytes = resolver.traffic.bytes - dns_before
    if not len(answer):
        raise AuthBenchError(f"{SERVER_NAME} has no address")
    server = the_lab.servers[scheme]
    timing: HandshakeTiming
    if scheme == "pki":
        config = ClientConfig(trust_store=the_lab.trust_store, server_name=SERVER_NAME)
        timing = run_handshake(config, server, on_authenticated=_ocsp_check(the_lab))
        auth_ms, setup_ms = timing.auth_part_ms, timing.after_auth_ms
    elif scheme == "dane":
        matched: dict[str, bytes] = {}
        owner = f"_{the_lab.dane_port}._udp.{SERVER_NAME}"

        def check(datagram: bytes) -> None:
            spki = server_raw_key(datagram)
            if spki is None or matched:
                return
            digest = hashlib.sha256(spki).digest()
            for tlsa in resolver.resolve(owner, "TLSA"):
                usage, selector, mtype = tlsa.usage, tlsa.selector, tlsa.mtype
                if (usage, selector, mtype) == (3, 1, 1) and tlsa.cert == digest:
                    matched["spki"] = spki

        config = ClientConfig(
            server_name=SERVER_NAME, server_key_lookup=lambda _name: matched.get("spki")
        )
        timing = run_handshake(config, server, before_datagram=check)
        auth_ms, setup_ms = timing.auth_part_ms, timing.after_auth_ms
    else:
        key = keys.resolve(SERVER_NAME)
        auth_ms = 1000 * (time.perf_counter() - resolved_at)
        config = ClientConfig(
            server_name=SERVER_NAME, server_key_lookup=lambda _name: key.spki, twinpeaks=key.hello
        )
        timing = run_handshake(config, server)
        setup_ms = timing.total_ms
    total_ms = 1000 * (time.perf_counter() - started)
    auth_bytes = (
        the_lab.ocsp_proxy.bytes - ocsp_before
        if scheme == "pki"
        else resolver.traffic.bytes - dns_before - dns_bytes
        if scheme == "dane"
        else keys.bytes - keys_before
    )
    return Sample(
        dns_ms=1000 * (resolved_at - started),
        auth_ms=auth_ms,
        setup_ms=setup_ms,
        handshake_ms=timing.total_ms,
        total_ms=total_ms,
        dtls_bytes=timing.bytes_sent + timing.bytes_received,
        auth_bytes=auth_bytes,
        dns_bytes=dns_bytes,
    )


# --------------------------------------------------------------------------- the run
def run(
    runs: int = 10,
    topology: Topology | None = None,
    dnssec_algorithm: str = "rsasha256",
    plot_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure ``runs`` cold and ``runs`` warm connections per scheme (interleaved)."""
    topology = topology or Topology()
    if dnssec_algorithm not in DNSSEC_ALGORITHMS:
        raise AuthBenchError(f"unknown DNSSEC algorithm {dnssec_algorithm!r}")
    dnssec = DNSSEC_ALGORITHMS[dnssec_algorithm]
    samples: dict[str, dict[str, list[Sample]]] = {s: {c: [] for c in STATES} for s in SCHEMES}
    with (
        tempfile.TemporaryDirectory(prefix="d2tls-bench-auth-") as tmp,
        lab(Path(tmp), topology, dnssec) as the_lab,
        Progress(2 * runs * len(SCHEMES), "bench auth", progress) as bar,
    ):
        for cache in STATES:
            for i in range(runs):
                for scheme in SCHEMES[i % 3 :] + SCHEMES[: i % 3]:
                    if cache == "cold":
                        the_lab.flush()
                    elif i == 0:
                        connect(the_lab, scheme)  # fill the caches, unmeasured
                    samples[scheme][cache].append(connect(the_lab, scheme))
                    bar.update()
    result = summarize(samples, runs, topology, dnssec)
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
        result["plots"] = [str(p) for p in plot(result, plot_dir)]
    return result


def summarize(
    samples: dict[str, dict[str, list[Sample]]], runs: int, topology: Topology, dnssec: Dnssec
) -> dict[str, Any]:
    schemes: dict[str, Any] = {}
    for scheme in SCHEMES:
        schemes[scheme] = {}
        for state in STATES:
            rows = samples[scheme][state]
            schemes[scheme][state] = {
                "auth_ms": summary([s.auth_ms for s in rows]),
                "setup_ms": summary([s.setup_ms for s in rows]),
                "handshake_ms": summary([s.handshake_ms for s in rows]),
                "total_ms": summary([s.total_ms for s in rows]),
                "dns_ms": summary([s.dns_ms for s in rows]),
                "bytes": {
                    "dtls": max(s.dtls_bytes for s in rows),
                    "auth": max(s.auth_bytes for s in rows),
                    "dns": max(s.dns_bytes for s in rows),
                },
            }
    dns = {
        state: summary([s.dns_ms for scheme in SCHEMES for s in samples[scheme][state]])
        for state in STATES
    }
    result: dict[str, Any] = {
        "benchmark": "auth",
        "runs": runs,
        "topology": topology.to_dict(),
        "dnssec": {
            "algorithm": dnssec.algorithm,
            "ksk_bits": dnssec.ksk_size,
            "zsk_bits": dnssec.zsk_size,
        },
        "dtls": "ECDHE-ECDSA P-256 (128-bit security; our stack supports no other level)",
        "twinpeaks_lookup": "d2tls.core.twinpeaks roles: KeyServer x3 (DTLS-PSK registration), "
        "Member, Resolver (no cross-check: one root)",
        "environment": environment(),
        "dns": dns,
        "schemes": schemes,
        "paper": PAPER,
    }
    result["ratios"] = _ratios(result)
    result["claims"] = claims(result)
    return result


def _median(result: dict[str, Any], scheme: str, state: str, what: str) -> float:
    value: float = result["schemes"][scheme][state][what]["median"]
    return value


def _ratios(result: dict[str, Any]) -> dict[str, float | None]:
    tp = PAPER["twinpeaks_key_resolution_ms"]
    dns = PAPER["dns_resolution_ms"]
    return {
        "twinpeaks_cold/warm": ratio(
            _median(result, "twinpeaks", "cold", "auth_ms"),
            _median(result, "twinpeaks", "warm", "auth_ms"),
        ),
        "paper:twinpeaks_cold/warm": ratio(tp["cold"], tp["warm"]),
        "dns_cold/warm": ratio(result["dns"]["cold"]["median"], result["dns"]["warm"]["median"]),
        "paper:dns_cold/warm": ratio(dns["cold"], dns["warm"]),
        **{
            f"auth_{state}:{scheme}/twinpeaks": ratio(
                _median(result, scheme, state, "auth_ms"),
                _median(result, "twinpeaks", state, "auth_ms"),
            )
            for state in STATES
            for scheme in ("pki", "dane")
        },
    }


def claims(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The dissertation's statements of section 2.6.3, checked on this run's medians.

    ``claimed`` is False for an ordering the dissertation does *not* state (TwinPeaks with a
    cache miss is "comparable" to PKI with an OCSP round trip, not shorter); it is checked
    and reported beside the claims, so that the cold case is not left out."""
    out: list[dict[str, Any]] = []
    schemes = result["schemes"]

    def shortest(what: str, state: str, claim: str, claimed: bool = True) -> None:
        values = {s: _median(result, s, state, what) for s in SCHEMES}
        others = min(values[s] for s in ("pki", "dane"))
        out.append(
            {
                "claim": claim,
                "claimed": claimed,
                "values_ms": values,
                "met": values["twinpeaks"] < others,
            }
        )

    shortest(
        "auth_ms", "warm", "TwinPeaks has the shortest authentication delay, warm caches (Fig. 2.3)"
    )
    shortest(
        "auth_ms",
        "cold",
        "TwinPeaks has the shortest authentication delay, cold caches (not claimed)",
        claimed=False,
    )
    shortest("setup_ms", "warm", "TwinPeaks has the shortest set-up except authentication (2.4)")
    traffic = {
        s: schemes[s]["warm"]["bytes"]["dtls"] + schemes[s]["warm"]["bytes"]["auth"]
        for s in SCHEMES
    }
    out.append(
        {
            "claim": "TwinPeaks has the least set-up traffic, handshake + authentication (2.5)",
            "claimed": True,
            "values_bytes": traffic,
            "met": traffic["twinpeaks"] < min(traffic["pki"], traffic["dane"]),
        }
    )
    cold_tp = _median(result, "twinpeaks", "cold", "auth_ms")
    bound = PAPER["twinpeaks_cold_bound_ms"]
    out.append(
        {
            "claim": f"TwinPeaks key resolution below {bound} ms even with cache misses",
            "claimed": True,
            "values_ms": {"twinpeaks": cold_tp},
            "met": cold_tp < bound,
        }
    )
    for key, what, paper in (
        ("twinpeaks_cold/warm", "a key-resolver cache hit is faster than a miss", 12.6),
        ("dns_cold/warm", "a DNS cache hit is faster than a miss", 8.2),
    ):
        speedup = result["ratios"][key]
        out.append(
            {
                "claim": f"{what} (paper: {paper}x)",
                "claimed": True,
                "ratio": speedup,
                "met": speedup is not None and speedup > 1,
            }
        )
    return out


# --------------------------------------------------------------------------- output
def render(result: dict[str, Any]) -> str:
    topo = result["topology"]
    sec = result["dnssec"]
    sizes = f" KSK {sec['ksk_bits']}/ZSK {sec['zsk_bits']} bits" if sec["ksk_bits"] else ""
    rows = []
    for scheme in SCHEMES:
        for state in STATES:
            data = result["schemes"][scheme][state]
            b = data["bytes"]
            rows.append(
                [
                    LABELS[scheme],
                    state,
                    data["auth_ms"]["median"],
                    data["setup_ms"]["median"],
                    data["handshake_ms"]["median"],
                    data["total_ms"]["median"],
                    b["dtls"],
                    b["auth"],
                    b["dns"],
                ]
            )
    out = [
        table(
            [
                "scheme",
                "caches",
                "auth ms",
                "set-up ms",
                "handshake ms",
                "total ms",
                "DTLS B",
                "auth B",
                "DNS B",
            ],
            rows,
            title=(
                f"Authentication and connection set-up, median of {result['runs']} runs "
                f"(+{topo['near_rtt_ms']} ms RTT near, +{topo['far_rtt_ms']} ms far; "
                f"DNSSEC {sec['algorithm']}{sizes})"
            ),
        ),
        "",
    ]
    paper = result["paper"]
    tp, dns = paper["twinpeaks_key_resolution_ms"], paper["dns_resolution_ms"]
    out.append(
        table(
            ["", "ours cold", "ours warm", "paper miss", "paper hit"],
            [
                [
                    "TwinPeaks key resolution ms",
                    _median(result, "twinpeaks", "cold", "auth_ms"),
                    _median(result, "twinpeaks", "warm", "auth_ms"),
                    tp["cold"],
                    tp["warm"],
                ],
                [
                    "DNS resolution ms",
                    result["dns"]["cold"]["median"],
                    result["dns"]["warm"]["median"],
                    dns["cold"],
                    dns["warm"],
                ],
            ],
        )
    )
    out.append("")
    out.append("Claims of the dissertation (section 2.6.3), this run:")
    for claim in result["claims"]:
        if claim["claimed"]:
            verdict = "met" if claim["met"] else "MISSED"
        else:
            verdict = "holds" if claim["met"] else "does not hold"
        detail = claim.get("values_ms") or claim.get("values_bytes")
        if "ratio" in claim:
            detail = "ours " + (f"{claim['ratio']:.1f}x" if claim["ratio"] is not None else "n/a")
        elif isinstance(detail, dict):
            detail = ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in detail.items()
            )
        out.append(f"  {claim['claim']}: {verdict} ({detail})")
    if "plots" in result:
        out.append("")
        out.append("plots: " + ", ".join(result["plots"]))
    return "\n".join(out)


def plot(result: dict[str, Any], directory: Path) -> list[Path]:
    """Figures 2.3 (authentication delay, with the paper's key and DNS resolution numbers),
    2.4 (set-up except authentication) and 2.5 (bytes), as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [LABELS[s] for s in SCHEMES]
    width = 0.38
    x = range(len(SCHEMES))
    paths = []

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    for k, state in enumerate(STATES):
        values = [_median(result, s, state, "auth_ms") for s in SCHEMES]
        bars = ax.bar([i + (k - 0.5) * width for i in x], values, width, label=f"ours, {state}")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    paper_tp = PAPER["twinpeaks_key_resolution_ms"]
    ax.scatter([2 - width / 2, 2 + width / 2], [paper_tp["cold"], paper_tp["warm"]],
               marker="_", s=600, color="black", zorder=3, label="paper (TwinPeaks)")  # fmt: skip
    for state, dx in (("cold", -width / 2), ("warm", width / 2)):
        ax.annotate(f"paper {paper_tp[state]:g}", (2 + dx, paper_tp[state]), fontsize=7,
                    ha="center", va="bottom")  # fmt: skip
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("authentication delay (ms, log)")
    ax.set_title("Fig. 2.3 style: authentication delay")
    ax.legend(fontsize=8)
    dns_ours = [result["dns"][s]["median"] for s in STATES]
    dns_paper = [PAPER["dns_resolution_ms"][s] for s in STATES]
    bars = ax2.bar([i - width / 2 for i in range(2)], dns_ours, width, label="ours")
    ax2.bar_label(bars, fmt="%.2f", fontsize=7)
    bars = ax2.bar([i + width / 2 for i in range(2)], dns_paper, width, label="paper")
    ax2.bar_label(bars, fmt="%.1f", fontsize=7)
    ax2.set_xticks([0, 1], ["cold (miss)", "warm (hit)"])
    ax2.set_yscale("log")
    ax2.set_ylabel("DNS resolution (ms, log)")
    ax2.set_title("DNS resolution (DNSSEC-validated A)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    paths.append(directory / "auth-figure2.3.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    for name, key, ylabel, title in (
        ("auth-figure2.4.png", "setup_ms", "set-up except authentication (ms)",
         "Fig. 2.4 style: connection set-up except authentication"),
        ("auth-figure2.5.png", "bytes", "bytes (DTLS + authentication)",
         "Fig. 2.5 style: traffic of the connection set-up"),
    ):  # fmt: skip
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for k, state in enumerate(STATES):
            if key == "bytes":
                values = [
                    result["schemes"][s][state]["bytes"]["dtls"]
                    + result["schemes"][s][state]["bytes"]["auth"]
                    for s in SCHEMES
                ]
            else:
                values = [_median(result, s, state, key) for s in SCHEMES]
            bars = ax.bar([i + (k - 0.5) * width for i in x], values, width, label=state)
            ax.bar_label(bars, fmt="%.1f" if key != "bytes" else "%d", fontsize=7)
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(directory / name)
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths


__all__ = ["PAPER", "SCHEMES", "Topology", "claims", "connect", "lab", "plot", "render", "run"]
