"""What a key server keeps across restarts (spec/twinpeaks.md §11.2): its state, as bytes.

A key server that forgot its master key would issue keys under new params, so every member's
ID (which names h(params)) and key would become invalid; one that forgot its registrations
would deny its members. :class:`KeyServerState` holds the master key, a root's self-issued
key (the trust anchor clients pre-load), the published subjects and the serial counters, in
deterministic CBOR. Decoding treats the bytes as hostile (a corrupt or foreign file): any
defect is a :class:`~d2tls.core.errors.StateFileError` naming it. Writing the file is the host's
job (0600, atomically: :mod:`d2tls.lab.twinpeaks_state`); this module only encodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import cbor2

from d2tls.core.errors import StateFileError
from d2tls.core.twinpeaks import clpkc, curve
from d2tls.core.twinpeaks.clpkc import FullPrivateKey, MasterKey, Params, PublicKey
from d2tls.core.twinpeaks.errors import TwinPeaksError
from d2tls.core.twinpeaks.identity import Identity, normalize_name
from d2tls.core.twinpeaks.messages import MAX_UINT32, Subject, subject_from_map

FORMAT: Final = "d2tls-twinpeaks-keyserver-state/1"
MAX_STATE_SIZE: Final = 16 * 1024 * 1024
"""Largest state accepted (10,000 children at about 600 bytes each fit easily)."""
MAX_SUBJECTS: Final = 10_000


@dataclass(frozen=True)
class KeyServerState:
    """A key server's durable state: ``{0: FORMAT, 1: params, 2: s, ?3: own key,
    4: [subject, ...], 5: {name: serial}}``."""

    master: MasterKey
    own_key: FullPrivateKey | None = None
    subjects: tuple[Subject, ...] = ()
    serials: dict[str, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        fields: dict[int, Any] = {
            0: FORMAT,
            1: self.master.params.encode(),
            2: curve.encode_scalar(self.master.secret),
            4: [s.fields() for s in self.subjects],
            5: dict(self.serials),
        }
        if self.own_key is not None:
            key = self.own_key
            fields[3] = {
                1: key.params.encode(),
                2: key.identity.encode(),
                3: key.x_point.encode(),
                4: curve.encode_scalar(key.scalar),
            }
        return bytes(cbor2.dumps(fields, canonical=True))

    @classmethod
    def decode(cls, data: bytes) -> KeyServerState:
        """Parse a state; StateFileError names the first defect."""
        try:
            return _decode(data)
        except StateFileError:
            raise
        except TwinPeaksError as exc:
            raise StateFileError(f"corrupt key-server state: {exc}") from None


def _fail(text: str) -> StateFileError:
    return StateFileError(f"corrupt key-server state: {text}")


def _bytes(items: dict[Any, Any], key: int, what: str) -> bytes:
    value = items.get(key)
    if type(value) is not bytes:
        raise _fail(f"{what} is missing or not a byte string")
    return value


def _decode(data: bytes) -> KeyServerState:
    if len(data) > MAX_STATE_SIZE:
        raise _fail(f"longer than {MAX_STATE_SIZE} bytes")
    try:
        items = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on malformed input
        raise _fail(f"undecodable CBOR ({type(exc).__name__})") from None
    if type(items) is not dict or items.get(0) != FORMAT:
        raise _fail(f"not a {FORMAT} map")
    if not set(items) <= {0, 1, 2, 3, 4, 5} or not {0, 1, 2, 4, 5} <= set(items):
        raise _fail("unknown or missing fields")
    params = Params.decode(_bytes(items, 1, "the params"))
    master = MasterKey(params, curve.decode_scalar(_bytes(items, 2, "the master secret")))
    own_key = _own_key(items[3]) if 3 in items else None
    raw_subjects, raw_serials = items[4], items[5]
    if type(raw_subjects) is not list or len(raw_subjects) > MAX_SUBJECTS:
        raise _fail(f"the subjects are not a list of at most {MAX_SUBJECTS}")
    subjects = tuple(subject_from_map(s, "state subject") for s in raw_subjects)
    for subject in subjects:
        clpkc.check_binding(params, subject.public_key, subject.q)
    if type(raw_serials) is not dict or len(raw_serials) > MAX_SUBJECTS:
        raise _fail("the serials are not a map")
    serials: dict[str, int] = {}
    for name, serial in raw_serials.items():
        if type(name) is not str or normalize_name(name) != name:
            raise _fail(f"serial for {name!r}: not a normalised name")
        if type(serial) is not int or not 0 < serial <= MAX_UINT32:
            raise _fail(f"serial for {name}: not a 32-bit serial")
        serials[name] = serial
    state = KeyServerState(master, own_key, subjects, serials)
    if state.encode() != bytes(data):
        raise _fail("not the deterministic encoding of its contents")
    return state


def _own_key(value: Any) -> FullPrivateKey:
    if type(value) is not dict or set(value) != {1, 2, 3, 4}:
        raise _fail("the own key is not a map of fields 1 to 4")
    params = Params.decode(_bytes(value, 1, "the own key's params"))
    identity = Identity.decode(_bytes(value, 2, "the own key's ID"))
    x_point = curve.decode_point(_bytes(value, 3, "the own key's X"))
    scalar = curve.decode_scalar(_bytes(value, 4, "the own key's secret"))
    q = clpkc.public_point(params, PublicKey(identity, x_point))
    return FullPrivateKey(params, identity, x_point, scalar, q)


__all__ = ["FORMAT", "KeyServerState"]
