"""``d2tls bench auth`` at tiny size, with the real components: Knot DNS serving DNSSEC-signed
zones (validated with dnspython), our OCSP responder (``d2tls pki ocsp``), the TwinPeaks key
servers and resolver, our DTLS engine, all through the delay relay on 127.0.0.1.

Not timing tests: they check that each scheme really authenticates (a revoked certificate, a
key that is not in the TLSA record and a wrong trust anchor are refused), that warm caches
make no authentication or DNS traffic, that the relay's delays are on the path, and that the
command's output and figures are produced.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from d2tls.bench import auth
from d2tls.bench.auth_lab import SERVER_NAME, TLD, TOP, AuthBenchError, dns_hierarchy
from d2tls.lab.dns import Dnssec
from d2tls.lab.dnssec import ValidatingResolver, ValidationFailed
from d2tls.net.ocsp import revoke_certificate

NEAR_RTT_MS = 1.366
FAR_RTT_MS = 10.0


@pytest.fixture(scope="module")
def the_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[auth.Lab]:
    directory = tmp_path_factory.mktemp("bench-auth")
    with auth.lab(
        directory, auth.Topology(NEAR_RTT_MS, FAR_RTT_MS), Dnssec("ecdsap256sha256")
    ) as lab:
        yield lab


@pytest.mark.parametrize("scheme", auth.SCHEMES)
def test_each_scheme_authenticates_cold_then_warm(the_lab: auth.Lab, scheme: str) -> None:
    the_lab.flush()
    cold = auth.connect(the_lab, scheme)
    warm = auth.connect(the_lab, scheme)
    # Cold: the DNS lookup walks three levels, one behind the far relay (+10 ms RTT).
    assert cold.dns_bytes > 0 and cold.dns_ms >= FAR_RTT_MS
    assert cold.auth_bytes > 0 and cold.dtls_bytes > 0
    # Warm: everything comes from the caches, no authentication or DNS traffic.
    assert warm.dns_bytes == 0 and warm.auth_bytes == 0
    assert warm.dtls_bytes > 0
    if scheme == "twinpeaks":
        # The key resolution asks the TLK server, behind the far relay; a hit asks no one.
        assert cold.auth_ms >= FAR_RTT_MS > warm.auth_ms
        assert cold.setup_ms == pytest.approx(cold.handshake_ms)
    else:
        # Authentication inside the handshake: ClientHello, cookie, server flight (2 RTTs).
        for sample in (cold, warm):
            assert sample.auth_ms >= 2 * NEAR_RTT_MS
            assert sample.handshake_ms == pytest.approx(sample.auth_ms + sample.setup_ms)


def test_dane_refuses_a_key_the_tlsa_record_does_not_name(the_lab: auth.Lab) -> None:
    real = the_lab.servers["dane"]
    # The TwinPeaks server presents another raw public key than the one in TLSA.
    the_lab.servers["dane"] = the_lab.servers["twinpeaks"]
    try:
        with pytest.raises(AuthBenchError, match="not trusted"):
            auth.connect(the_lab, "dane")
    finally:
        the_lab.servers["dane"] = real


def test_validating_resolver_refuses_a_wrong_trust_anchor(the_lab: auth.Lab) -> None:
    good = the_lab.resolver
    fields = good.anchor_ds[0].split()
    fields[-1] = ("0" if fields[-1][0] != "0" else "1") + fields[-1][1:]
    wrong = ValidatingResolver(TOP, [" ".join(fields)], good.anchor_server, good.servers)
    with pytest.raises(ValidationFailed, match="matches its DS"):
        wrong.resolve(SERVER_NAME, "A")


def test_validating_resolver_refuses_a_wrong_ds_in_the_parent(tmp_path: Path) -> None:
    with dns_hierarchy(tmp_path, Dnssec("ecdsap256sha256")) as hierarchy:
        anchor = hierarchy.build([])
        top = hierarchy.servers[TOP]
        zone = top.zones[f"{TOP}."]
        bogus = []
        for line in zone.records:
            owner, kind, tag, algorithm, digest_type, digest = line.split()
            flipped = ("0" if digest[0] != "0" else "1") + digest[1:]
            bogus.append(" ".join((owner, kind, tag, algorithm, digest_type, flipped)))
        top.zones[f"{TOP}."] = zone.__class__(
            zone.origin, zone.hosts, zone.delegations, records=tuple(bogus)
        )
        hierarchy.start()
        ports = hierarchy.ports
        book = {f"ns.{z}.": ("127.0.0.1", p) for z, p in ports.items()}
        resolver = ValidatingResolver(TOP, anchor, ("127.0.0.1", ports[TOP]), book)
        with pytest.raises(ValidationFailed, match=f"DNSKEY of {TLD}. matches its DS"):
            resolver.resolve(SERVER_NAME, "A")


def test_pki_refuses_a_revoked_certificate(the_lab: auth.Lab) -> None:
    the_lab.flush()
    auth.connect(the_lab, "pki")
    revoke_certificate(the_lab.pki_dir, the_lab.pki_dir / "server.pem")
    # Warm: the status cached until nextUpdate still says good (what a caching client does).
    auth.connect(the_lab, "pki")
    the_lab.flush()
    with pytest.raises(AuthBenchError, match="revoked"):
        auth.connect(the_lab, "pki")


def _cli(*argv: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", "bench", "auth", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def test_bench_auth_command_reports_table_claims_and_figures(tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    result = _cli(
        "--runs", "1", "--far-rtt", str(FAR_RTT_MS), "--dnssec-algorithm", "ecdsap256sha256",
        "--plot-dir", str(plots), "--no-progress", "--json", "--save", str(tmp_path / "a.json"),
    )  # fmt: skip
    assert result["benchmark"] == "auth" and result["runs"] == 1
    assert json.loads((tmp_path / "a.json").read_text())["schemes"] == result["schemes"]
    for scheme in auth.SCHEMES:
        for state in auth.STATES:
            entry = result["schemes"][scheme][state]
            for key in ("auth_ms", "setup_ms", "handshake_ms", "total_ms", "dns_ms"):
                assert entry[key]["n"] == 1 and entry[key]["median"] > 0
            assert entry["bytes"]["dtls"] > 0
        assert result["schemes"][scheme]["cold"]["bytes"]["auth"] > 0
        assert result["schemes"][scheme]["warm"]["bytes"]["auth"] == 0
    assert result["dns"]["cold"]["median"] > result["dns"]["warm"]["median"]
    assert result["paper"]["twinpeaks_key_resolution_ms"] == {"warm": 37.3, "cold": 470.9}
    assert result["paper"]["dns_resolution_ms"] == {"warm": 168.5, "cold": 1382.7}
    claims = result["claims"]
    assert len(claims) == 7 and all(isinstance(c["met"], bool) for c in claims)
    assert [c["claimed"] for c in claims] == [True, False, True, True, True, True, True]
    warm_claim = claims[0]
    values = warm_claim["values_ms"]
    assert warm_claim["met"] == (values["twinpeaks"] < min(values["pki"], values["dane"]))
    names = sorted(Path(p).name for p in result["plots"])
    assert names == ["auth-figure2.3.png", "auth-figure2.4.png", "auth-figure2.5.png"]
    for path in result["plots"]:
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
