"""The hit path's bounded memo (`proxy._memo.Memo`): its bounds hold under any sequence of puts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tokencache.proxy._memo import Memo


def _cost(key: str, value: bytes) -> int:
    return len(key) + len(value)


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "pop"]),
        st.sampled_from([f"k{i}" for i in range(20)]),
        st.binary(max_size=60),
    ),
    max_size=200,
)


@given(ops=_OPS, max_entries=st.integers(0, 12), max_bytes=st.integers(0, 300))
def test_bounds_and_accounting_hold(
    ops: list[tuple[str, str, bytes]], max_entries: int, max_bytes: int
) -> None:
    memo: Memo[str, bytes] = Memo(_cost, max_entries, max_bytes)
    for op, key, value in ops:
        if op == "put":
            kept = memo.put(key, value)
            fits = max_entries > 0 and _cost(key, value) <= max_bytes
            assert kept == fits
            if fits:
                assert memo.entries[key] == value  # the newest entry is always kept...
                assert list(memo.entries)[-1] == key  # ...as the newest
        else:
            memo.pop(key)
            assert key not in memo.entries
        assert len(memo.entries) <= max_entries
        assert memo.bytes == sum(_cost(k, v) for k, v in memo.entries.items()) <= max_bytes


def test_the_oldest_eighth_goes_first() -> None:
    memo: Memo[str, bytes] = Memo(_cost, 16, 1 << 20)
    for i in range(16):
        memo.put(f"{i:02}", b"")
    memo.put("01", b"")  # a replaced entry becomes the newest
    memo.put("new", b"")
    assert list(memo.entries) == [f"{i:02}" for i in range(3, 16) if i != 1] + ["01", "new"]


def test_a_put_that_cannot_fit_forgets_the_old_value() -> None:
    memo: Memo[str, bytes] = Memo(_cost, 4, 10)
    assert memo.put("k", b"old")
    assert not memo.put("k", b"far too large a value")
    assert "k" not in memo.entries and memo.bytes == 0


def test_a_ready_record_counts_its_key() -> None:
    # A long target with a small response: the key is most of what the record keeps alive.
    from tokencache.proxy._handler import _Ready, _ready_cost

    key = "GET /" + "a" * 8000
    fields = (b"v" * 100, 200, 0, 60.0, 60.0, 0, 10, 60, 0, b"d" * 150, None, 0.0, None)
    ready = _Ready(*fields)  # type: ignore[arg-type]
    assert _ready_cost(key, ready) >= len(key) + 250
