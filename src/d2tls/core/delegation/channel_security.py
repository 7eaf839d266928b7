"""Which DTLS suites protect the device-agent delegation channel (issue 23, item 1).

* ``psk`` — TLS_PSK_WITH_AES_128_CCM_8 (RFC 4279, RFC 6655): cheapest for the device, but
  the channel keys follow from the PSK alone, so an agent compromised later (it still holds
  the PSK) decrypts a recorded channel and every SessionContext sent over it: the agent's
  wipe protects nothing against a recorded channel (docs/security.md).
* ``ecdhe-psk`` — TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256 (RFC 5489 §2, RFC 7905): a
  fresh ECDH key pair on each side per channel handshake, mixed with the PSK; once the
  ephemeral keys are gone, the PSK no longer opens a recorded channel (forward secrecy of
  handed-over contexts).

The device offers exactly the suite of its choice. The agent's ``psk`` choice accepts both
(the device decides); its ``ecdhe-psk`` choice requires ECDHE-PSK, refusing a plain-PSK device
with handshake_failure (RFC 5246 §7.4.1.3: no suite in common).
"""

from __future__ import annotations

from typing import Literal, get_args

from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.errors import ConfigurationError

Channel = Literal["psk", "ecdhe-psk"]
#: The choices, default first (``--channel`` on ``d2tls agent`` and ``d2tls device``).
CHANNELS: tuple[Channel, ...] = get_args(Channel)

#: Standing channel defaults (spec/delegation.md §3.1): idle timeout below the 2-minute floor
#: of a NAT's UDP mapping timer (RFC 4787 REQ-5), so no keep-alive is needed; rekey interval.
CHANNEL_IDLE_TIMEOUT = 60.0
CHANNEL_REKEY_DELEGATIONS = 100
CHANNEL_REKEY_SECONDS = 3600.0

PSK = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
ECDHE_PSK = CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256


def _check(channel: str) -> None:
    if channel not in CHANNELS:
        raise ConfigurationError(
            f"unknown channel {channel!r}; choose one of {', '.join(CHANNELS)}"
        )


def device_channel_suites(channel: Channel) -> tuple[CipherSuite, ...]:
    """The one suite a device offers the agent for ``channel``."""
    _check(channel)
    return (ECDHE_PSK,) if channel == "ecdhe-psk" else (PSK,)


def agent_channel_suites(channel: Channel) -> tuple[CipherSuite, ...]:
    """The suites an agent accepts, preferred first: ``ecdhe-psk`` requires ECDHE-PSK."""
    _check(channel)
    return (ECDHE_PSK,) if channel == "ecdhe-psk" else (ECDHE_PSK, PSK)
