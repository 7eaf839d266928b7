"""Generate ``d2tls.core.model.states`` (one Enum of states per role) from the spec, and lint the
spec against the code built from it.

The Enums are generated into a checked-in module so that type checkers see every member;
``d2tls model lint`` (and the test suite) regenerates them and fails when the file differs,
so a state renamed in ``spec/*.yaml`` can never silently disagree with the code.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from d2tls.core.errors import SpecError
from d2tls.core.model.machine import HandlerNames, table_problems
from d2tls.core.model.spec import RoleSpec, load_spec

#: Spec files that define roles, in the order their Enums are written.
SPEC_FILES = ("dtls", "d2tls", "twinpeaks")
#: The generated module, located through the package (an installed copy included).
STATES_MODULE = Path(str(resources.files("d2tls.core.model").joinpath("states.py")))


def enum_name(role: str, spec: str = "d2tls") -> str:
    """``dtls_client`` -> ``ClientState``, ``device`` -> ``DeviceState``; the TwinPeaks roles
    carry their system's name (``client`` in spec/twinpeaks.yaml -> ``TwinPeaksClientState``)."""
    prefix = "TwinPeaks" if spec == "twinpeaks" else ""
    return prefix + "".join(p.title() for p in role.removeprefix("dtls_").split("_")) + "State"


def member_name(state: str) -> str:
    return state.upper()


def _roles() -> list[tuple[str, RoleSpec]]:
    return [(name, role) for name in SPEC_FILES for role in load_spec(name).roles.values()]


def render_states() -> str:
    """The source of ``d2tls/core/model/states.py`` for the current spec."""
    lines = [
        '"""States of every role, generated from ``spec/*.yaml`` by ``d2tls model states``.',
        "",
        "Do not edit: ``d2tls model lint`` and tests/test_spec_states.py fail when this file and",
        "the spec disagree. Members are strings (``StrEnum``), so a state prints as its spec name.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from enum import StrEnum",
        "",
    ]
    names: list[str] = []
    for spec_name, role in _roles():
        cls = enum_name(role.name, spec_name)
        names.append(cls)
        lines += ["", f"class {cls}(StrEnum):"]
        lines.append(f'    """States of ``{role.name}`` (spec/{spec_name}.yaml)."""')
        lines.append("")
        for state in role.states:
            lines.append(f'    {member_name(state)} = "{state}"')
        lines.append("")
    lines += [
        "",
        "#: The Enum of each role, by role name.",
        "ROLE_STATES: dict[str, type[StrEnum]] = {",
    ]
    for spec_name, role in _roles():
        lines.append(f'    "{role.name}": {enum_name(role.name, spec_name)},')
    lines.append("}")
    lines += [
        "",
        "__all__ = [",
        *(f'    "{n}",' for n in ["ROLE_STATES", *sorted(names)]),
        "]",
    ]
    return "\n".join(lines) + "\n"


def lint() -> list[str]:
    """Every disagreement between the spec and the code built from it (empty: all agree).

    Loading a spec already checks its schema, references and reachability (SpecError); this
    adds what needs the code: the generated Enums and the handler tables of the DTLS engines,
    of the D2TLS delegation roles and of the TwinPeaks roles.
    """
    problems: list[str] = []
    try:
        current = STATES_MODULE.read_text(encoding="utf-8")
    except OSError:
        current = ""
    if current != render_states():
        problems.append(
            f"{STATES_MODULE.name} is out of date with spec/*.yaml: run `d2tls model states`"
        )
    for spec_name, tables in (
        ("dtls", _engine_tables),
        ("d2tls", _delegation_tables),
        ("twinpeaks", _twinpeaks_tables),
    ):
        try:
            found = tables()
        except SpecError as exc:  # a machine refuses a table that disagrees when it is made
            problems.append(str(exc))
            continue
        for role_name, names in found:
            problems += table_problems(load_spec(spec_name).role(role_name), names)
    return problems


def _engine_tables() -> list[tuple[str, HandlerNames]]:
    """The handler tables of the DTLS engines, from minimal PSK engines (making one already
    checks its table; a SpecError is reported as a problem by the caller's caller)."""
    from d2tls.core.dtls.client import DTLSClient
    from d2tls.core.dtls.config import ClientConfig, ServerConfig
    from d2tls.core.dtls.constants import CipherSuite
    from d2tls.core.dtls.server import CookieJar, ServerConnection

    suites = (CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,)
    client = DTLSClient(ClientConfig(cipher_suites=suites, psk=b"k" * 16, psk_identity=b"lint"))
    server = ServerConnection(
        ServerConfig(cipher_suites=suites, psk_keys={b"lint": b"k" * 16}),
        ("127.0.0.1", 0),
        CookieJar(rotation=60.0),
    )
    return [
        (client.ROLE, client._table.names()),
        (server.ROLE, server._table.names()),
    ]


def _delegation_tables() -> list[tuple[str, HandlerNames]]:
    """The handler tables of the two delegation roles (spec/d2tls.yaml): a device's attempt
    and an agent's session, from minimal configurations (making each checks its table)."""
    from cryptography.x509.verification import Store

    from d2tls.core.pki.generate import create_ca
    from d2tls.core.roles.agent import AgentConfig, AgentSession
    from d2tls.core.roles.device import DelegationAttempt, DeviceConfig
    from d2tls.core.roles.signer import DeviceSigner

    ca, key = create_ca("lint")
    device = DeviceConfig(
        agent=("127.0.0.1", 1),
        psk_identity=b"lint",
        psk=b"k" * 16,
        server=("127.0.0.1", 2),
        server_name="lint",
        certificate_chain=(),
        signer=DeviceSigner(key),
    )
    attempt = DelegationAttempt(device, context=None, first_request_id=1)
    session = AgentSession(AgentConfig(psk_keys={}, trust_store=Store([ca])))
    return [
        (attempt.ROLE, attempt._table.names()),
        (session.ROLE, session._table.names()),
    ]


def _twinpeaks_tables() -> list[tuple[str, HandlerNames]]:
    """The handler tables of the four TwinPeaks roles (spec/twinpeaks.yaml), from minimal
    objects: a root key server, a member of it, a lookup from it and a client of a resolver
    service (making each already checks its table)."""
    from d2tls.core.twinpeaks.client import TwinPeaksClient, TwinPeaksClientConfig
    from d2tls.core.twinpeaks.clpkc import setup
    from d2tls.core.twinpeaks.keyserver import KeyServer, KeyServerConfig
    from d2tls.core.twinpeaks.member import Member, MemberConfig, ParentLink
    from d2tls.core.twinpeaks.resolver import Lookup, Resolver, ResolverConfig

    master = setup("lint.")
    root = KeyServer(KeyServerConfig("lint.", "lint.", "127.0.0.1", 1, master))
    root.start(0.0)
    link = ParentLink(("127.0.0.1", 1), master.params, b"lint", b"k" * 16)
    member = Member(MemberConfig("host.lint.", "127.0.0.1", link))
    resolver = Resolver(ResolverConfig([root.trust_anchor()]))
    lookup = Lookup(resolver, 0, "host.lint.", None, 0.0, None)
    client = TwinPeaksClient(TwinPeaksClientConfig(resolver_service=("127.0.0.1", 1)))
    return [
        (root.ROLE, root._table.names()),
        (member.ROLE, member._table.names()),
        (lookup.ROLE, lookup._table.names()),
        (client.ROLE, client._table.names()),
    ]
