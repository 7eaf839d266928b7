"""A compromised security agent on a real UDP socket, for tests/test_strict_e2e.py.

It is ``d2tls agent`` (the same :class:`~d2tls.core.roles.agent.Agent`, policy and PSK file) with
one session behaviour changed, the way an adversary who controls the agent would:

* ``--steer HOST:PORT:NAME`` runs every delegated handshake with the server at HOST:PORT,
  verified for NAME, whatever server the device asked for (the attacker model's
  ``other-server`` case, spec/delegation.md §9);
* ``--swap-share`` puts an ECDHE share of its own into the ServerKeyExchange of the
  transcript it asks the device to sign, leaving the server's signature as it was (what only
  a strict device notices, RFC 8422 §5.4).

usage: steered_agent.py --listen HOST:PORT --psk-file FILE --ca FILE --allow-server RULE
                        [--steer HOST:PORT:NAME] [--swap-share]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from d2tls.core.delegation.messages import DelegationRequest
from d2tls.core.delegation.policy import AgentPolicy, load_agent_psk_file
from d2tls.core.dtls.constants import HandshakeType
from d2tls.core.dtls.fragments import parse_handshake_fragments
from d2tls.core.dtls.messages import ServerKeyExchangeECDHE
from d2tls.core.pki.verify import load_trust_store
from d2tls.core.roles.agent import AgentConfig, AgentProtocol, AgentSession
from d2tls.net.agent_host import Agent


class SteeredSession(AgentSession):
    """An agent session that goes to ``steer`` and/or swaps the server's ECDHE share."""

    steer: tuple[str, int, str] | None = None
    swap_share = False

    def _start_server_handshake(self, request: DelegationRequest) -> None:
        if self.steer is not None:
            host, port, name = self.steer
            request = replace(request, server_host=host, server_port=port, server_name=name)
        super()._start_server_handshake(request)

    def _build_sign_request(self) -> None:
        asked = self._signature_request
        if self.swap_share and asked is not None:
            [body] = [
                m.body
                for m in parse_handshake_fragments(asked.transcript)
                if m.msg_type == HandshakeType.SERVER_KEY_EXCHANGE
            ]
            point = ServerKeyExchangeECDHE.decode(body).public_point
            own = (
                ec.generate_private_key(ec.SECP256R1())
                .public_key()
                .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
            )
            transcript = asked.transcript.replace(point, own)
            self._signature_request = replace(
                asked, transcript=transcript, digest=hashlib.sha256(transcript).digest()
            )
        super()._build_sign_request()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main(args: argparse.Namespace) -> None:
    policy = AgentPolicy.build(
        load_agent_psk_file(Path(args.psk_file)), args.allow_server, allow_unbound=False
    )
    config = AgentConfig(
        psk_keys=policy.psk_keys, trust_store=load_trust_store(Path(args.ca)), policy=policy
    )
    if args.steer:
        host, port, name = args.steer.split(":")
        SteeredSession.steer = (host, int(port), name)
    SteeredSession.swap_share = args.swap_share
    agent = Agent(config)
    agent.protocol = AgentProtocol(config, session_factory=SteeredSession)
    agent.engine = agent.protocol.server
    host, port = await agent.start(*_address(args.listen))
    print(f"agent listening on {host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        agent.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--psk-file", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--allow-server", action="append", required=True)
    parser.add_argument("--steer")
    parser.add_argument("--swap-share", action="store_true")
    asyncio.run(main(parser.parse_args()))
