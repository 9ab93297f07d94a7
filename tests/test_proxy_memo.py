"""The hit path's bounded memo (`proxy._memo.Memo`): its bounds hold under any sequence of puts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tokencache.proxy._memo import Memo


def _cost(key: str, value: bytes | bytearray) -> int:
    return len(key) + len(value)


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "pop", "renew"]),
        st.sampled_from([f"k{i}" for i in range(20)]),
        st.binary(max_size=60),
    ),
    max_size=200,
)


@given(ops=_OPS, max_entries=st.integers(0, 12), max_bytes=st.integers(0, 300))
def test_bounds_and_accounting_hold(
    ops: list[tuple[str, str, bytes]], max_entries: int, max_bytes: int
) -> None:
    # Values are changed in place by "renew" (as the handler renews a ready record).
    memo: Memo[str, bytearray] = Memo(_cost, max_entries, max_bytes)
    for op, key, value in ops:
        if op == "put":
            kept = memo.put(key, bytearray(value))
            fits = max_entries > 0 and _cost(key, value) <= max_bytes
            assert kept == fits
            if fits:
                assert memo.entries[key] == value  # the newest entry is always kept...
                assert list(memo.entries)[-1] == key  # ...as the newest
        elif op == "renew":
            old = memo.entries.get(key)
            if old is None:
                continue
            grown = len(value) - len(old)
            old[:] = value
            memo.renewed(key, grown)
            if _cost(key, value) <= max_bytes:
                assert list(memo.entries)[-1] == key  # kept, as the newest
            else:
                assert key not in memo.entries
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


_SECTIONS = [
    [(b"Host", b"h")],
    [(b"Host", b"h"), (b"Accept", b"*/*")],
    [(b"host", b"h")],  # equal but for case: not the same section
    [(b"Host", b"other"), (b"X-Pad", b"p" * 300)],
]
_HEAD_OPS = st.lists(
    st.tuples(
        st.sampled_from(["remember", "pop"]),
        st.integers(0, 15),
        st.integers(0, 3),
        st.sampled_from([0, 1, 300]),  # target padding: heads of very different sizes
    ),
    max_size=120,
)


@given(ops=_HEAD_OPS, max_entries=st.integers(0, 10), max_bytes=st.integers(0, 6000))
def test_head_memo_counts_each_shared_section_once_while_it_is_used(
    ops: list[tuple[str, int, int, int]], max_entries: int, max_bytes: int
) -> None:
    from tokencache.proxy._head_memo import HeadMemo, head_cost, section_cost
    from tokencache.proxy._http_request import Request

    memo = HeadMemo(max_entries, max_bytes)
    for op, n, s, pad in ops:
        data = b"GET /%d%s HTTP/1.1\r\n" % (n, b"p" * (pad + n % 2 * pad))
        if op == "remember":
            # A fresh parse, as the listener makes it: its own list and map.
            req = Request("GET", f"/{n}", "1.1", list(_SECTIONS[s]), True)
            fits = max_entries > 0 and head_cost(data, req) + section_cost(req.headers) <= max_bytes
            kept = memo.remember(data, req)
            if fits:
                assert kept and memo.entries[data] is req
            if kept:
                assert list(memo.entries)[-1] == data and req.headers == _SECTIONS[s]
        else:
            memo.pop(data)
            assert data not in memo.entries
        used: dict[tuple[tuple[bytes, bytes], ...], list[tuple[bytes, bytes]]] = {}
        for req in memo.entries.values():
            # Equal sections are one object; a section is counted once, while it is used.
            assert used.setdefault(tuple(req.headers), req.headers) is req.headers
            assert req.hmap == {k.lower(): v for k, v in req.headers}
        expected = sum(head_cost(d, r) for d, r in memo.entries.items())
        expected += sum(section_cost(h) for h in used.values())
        assert memo.bytes == expected <= max_bytes
        assert memo.sections == len(used)
        assert len(memo.entries) <= max_entries


def test_a_head_whose_shared_section_leaves_it_no_room_is_not_kept() -> None:
    # (review finding) A head whose section is already counted needs room for itself alone;
    # evicting every other head still leaves the section counted while this head is pending,
    # so the put must fail rather than go over the budget.
    from tokencache.proxy._head_memo import HeadMemo, head_cost, section_cost
    from tokencache.proxy._http_request import Request

    def head(target: str) -> tuple[bytes, Request]:
        data = b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target.encode()
        return data, Request("GET", target, "1.1", [(b"Host", b"h")], True)

    small, large = head("/"), head("/" + "p" * 1500)
    budget = head_cost(*large) + 10  # the large head fits alone, not with its section
    assert head_cost(*small) + section_cost(small[1].headers) <= budget
    memo = HeadMemo(16, budget)
    assert memo.remember(*small)
    assert not memo.remember(*large)
    assert memo.bytes <= budget
    assert memo.bytes == sum(head_cost(d, r) for d, r in memo.entries.items()) + (
        section_cost(small[1].headers) if memo.entries else 0
    )
