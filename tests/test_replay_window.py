"""Anti-replay window (RFC 6347 §4.1.2.6) against a set-based reference model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2tls.core.dtls.constants import MAX_SEQUENCE
from d2tls.core.dtls.record import ReplayWindow


class ModelWindow:
    """Reference: acceptable iff a valid 48-bit number, never marked, and > max - size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.max = -1

    def is_acceptable(self, seq: int) -> bool:
        in_range = 0 <= seq <= MAX_SEQUENCE
        return in_range and seq not in self.seen and seq > self.max - self.size

    def mark(self, seq: int) -> None:
        self.seen.add(seq)
        self.max = max(self.max, seq)


# One step: how to pick the next sequence number relative to the model's state, and whether
# the record authenticates (only authenticated records are marked).
steps = st.tuples(
    st.sampled_from(["next", "gap", "jump", "replay", "edge", "anywhere"]),
    st.integers(0, 2**48),
    st.booleans(),
)


def _pick(kind: str, r: int, model: ModelWindow, history: list[int]) -> int:
    top = max(model.max, 0)
    if kind == "next":
        return min(top + 1 + r % 3, MAX_SEQUENCE)
    if kind == "gap":
        return max(0, min(top + (r % 200) - 100, MAX_SEQUENCE))
    if kind == "jump":
        return min(top + r % 2**40, MAX_SEQUENCE)
    if kind == "replay" and history:
        return history[r % len(history)]
    if kind == "edge":
        return top - model.size + (r % 5) - 2  # around the left edge (may leave 0..2^48-1)
    return r % (MAX_SEQUENCE + 1)


@pytest.mark.parametrize("size", [64, 32, 1, 100])
@settings(max_examples=60, deadline=None)
@given(ops=st.lists(steps, min_size=200, max_size=500))
def test_window_matches_reference_model(size: int, ops: list[tuple[str, int, bool]]) -> None:
    window, model = ReplayWindow(size), ModelWindow(size)
    history: list[int] = []
    for kind, r, authentic in ops:
        seq = _pick(kind, r, model, history)
        expected = model.is_acceptable(seq)
        assert window.is_acceptable(seq) is expected, (kind, seq, model.max)
        if expected and authentic:
            window.mark(seq)
            model.mark(seq)
            history.append(seq)
            assert window.highest == model.max
        # The window never accepts what the model has seen, whatever was skipped.
        for old in history[-5:]:
            assert not window.is_acceptable(old)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2000), min_size=200, max_size=500))
def test_dense_reordering_matches_model(seqs: list[int]) -> None:
    window, model = ReplayWindow(), ModelWindow(64)
    for seq in seqs:
        ok = window.is_acceptable(seq)
        assert ok is model.is_acceptable(seq)
        if ok:
            window.mark(seq)
            model.mark(seq)


def test_fresh_window_accepts_everything_in_range() -> None:
    w = ReplayWindow()
    assert w.highest == -1
    for seq in (0, 1, 63, 64, 10**9, MAX_SEQUENCE):
        assert w.is_acceptable(seq)
    for seq in (-1, MAX_SEQUENCE + 1):
        assert not w.is_acceptable(seq)


def test_duplicates_and_left_edge() -> None:
    """RFC 6347 §4.1.2.6: duplicates rejected; left of the window rejected; right advances."""
    w = ReplayWindow()
    w.mark(100)
    assert w.highest == 100
    assert not w.is_acceptable(100)
    assert w.is_acceptable(37)  # 100 - 63: last slot of a 64-entry window
    assert not w.is_acceptable(36)  # 100 - 64: left of the window
    assert w.is_acceptable(99)
    assert w.is_acceptable(101)
    w.mark(37)
    assert not w.is_acceptable(37)
    assert w.highest == 100  # marking inside the window does not move it
    w.mark(101)
    assert not w.is_acceptable(37)  # slid out to the left
    assert w.is_acceptable(38)
    assert not w.is_acceptable(100) and not w.is_acceptable(101)


def test_shift_by_exactly_the_window_size() -> None:
    w = ReplayWindow()
    w.mark(0)
    w.mark(64)
    assert not w.is_acceptable(0)
    assert all(w.is_acceptable(s) for s in range(1, 64))
    assert not w.is_acceptable(64)


def test_large_jump_clears_the_bitmap() -> None:
    w = ReplayWindow()
    for seq in range(64):
        w.mark(seq)
    w.mark(2**40)
    assert all(not w.is_acceptable(s) for s in range(64))
    assert w.is_acceptable(2**40 - 1)
    assert w.is_acceptable(2**40 - 63)
    assert not w.is_acceptable(2**40 - 64)
    assert not w.is_acceptable(2**40)


def test_window_bits_survive_partial_shift() -> None:
    w = ReplayWindow()
    for seq in (10, 12, 14):
        w.mark(seq)
    w.mark(20)
    assert [s for s in range(0, 22) if w.is_acceptable(s)] == [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 15, 16, 17, 18, 19, 21,
    ]  # fmt: skip


def test_top_of_sequence_space() -> None:
    w = ReplayWindow()
    w.mark(MAX_SEQUENCE)
    assert not w.is_acceptable(MAX_SEQUENCE)
    assert w.is_acceptable(MAX_SEQUENCE - 1)
    assert not w.is_acceptable(MAX_SEQUENCE + 1)


def test_is_acceptable_is_pure() -> None:
    w = ReplayWindow()
    w.mark(5)
    for _ in range(3):
        assert w.is_acceptable(6)
        assert not w.is_acceptable(5)
    assert w.highest == 5


def test_reset_forgets() -> None:
    w = ReplayWindow()
    for seq in (1, 2, 500):
        w.mark(seq)
    w.reset()
    assert w.highest == -1
    assert all(w.is_acceptable(s) for s in (0, 1, 2, 500))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(0)
    w = ReplayWindow()
    with pytest.raises(ValueError):
        w.mark(-1)
    with pytest.raises(ValueError):
        w.mark(MAX_SEQUENCE + 1)


def test_custom_size() -> None:
    w = ReplayWindow(size=128)
    w.mark(200)
    assert w.is_acceptable(73)
    assert not w.is_acceptable(72)
