"""The consistent-hash ring: balance, stability under membership change, determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tokencache import Ring


def _peers(rng: random.Random, n: int) -> list[str]:
    return [
        f"http://10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}:5000"
        for _ in range(n)
    ]


KEYS = [f"key-{i}" for i in range(10_000)]


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("seed", range(8))
def test_keys_spread_within_15_percent_of_even(n: int, seed: int) -> None:
    ring = Ring(_peers(random.Random(seed), n))  # defaults: 50 replicas
    counts = Counter(ring.owner(k) for k in KEYS)
    even = len(KEYS) / n
    assert set(counts) == set(ring.peers)
    for peer, count in counts.items():
        assert abs(count - even) / even <= 0.15, (peer, count, even)


@pytest.mark.parametrize("seed", range(5))
def test_adding_a_peer_moves_only_about_one_nth_and_only_to_it(seed: int) -> None:
    peers = _peers(random.Random(seed), 4)
    before = Ring(peers)
    newcomer = "http://192.0.2.10:5000"
    after = Ring([*peers, newcomer])
    moved = [k for k in KEYS if before.owner(k) != after.owner(k)]
    assert all(after.owner(k) == newcomer for k in moved)
    share = len(moved) / len(KEYS)
    assert 0.5 / 5 <= share <= 1.5 / 5


def test_removing_a_peer_moves_only_its_keys() -> None:
    peers = _peers(random.Random(99), 5)
    before = Ring(peers)
    gone = peers[2]
    after = Ring([p for p in peers if p != gone])
    for k in KEYS[:3000]:
        if before.owner(k) != gone:
            assert after.owner(k) == before.owner(k)


def test_same_list_same_owners_in_any_order() -> None:
    peers = _peers(random.Random(7), 6)
    a, b = Ring(peers), Ring(list(reversed(peers)))
    assert all(a.owner(k) == b.owner(k) for k in KEYS[:2000])


def test_edge_cases() -> None:
    assert Ring([]).owner("x") is None
    assert Ring(["only"]).owner("anything") == "only"
    assert Ring(["a", "b"]).owner("") in {"a", "b"}
    assert Ring(["a", "b"]).owner("ünïcode ✓") in {"a", "b"}
    with pytest.raises(ValueError, match="replicas"):
        Ring(["a"], replicas=0)
    with pytest.raises(ValueError, match="probes"):
        Ring(["a"], probes=9)


def test_the_owner_memo_stays_bounded_keeps_its_newest_keys_and_never_changes_an_answer() -> None:
    from tokencache import _ring

    ring = Ring(["http://a:1", "http://b:1", "http://c:1"])
    fresh = Ring(ring.peers)
    keys = [f"k{i}" for i in range(_ring.MEMO_ENTRIES + 3000)]
    for key in keys:
        assert ring.owner(key) == fresh._hashed_owner(key)
        assert len(ring._memo) <= _ring.MEMO_ENTRIES
    # Full: the oldest eighth went, the newest keys are still remembered (not the whole memo).
    assert keys[-1] in ring._memo and keys[-_ring.MEMO_ENTRIES // 2] in ring._memo
    assert keys[0] not in ring._memo
    assert all(ring.owner(k) == fresh._hashed_owner(k) for k in keys[::97])
    long_key = "x" * (_ring.MEMO_KEY_CHARS + 1)
    assert ring.owner(long_key) == fresh._hashed_owner(long_key) and long_key not in ring._memo


def test_threads_sharing_a_ring_get_answers_while_its_memo_evicts() -> None:
    import sys
    import threading

    from tokencache import _ring

    ring = Ring(["http://a:1", "http://b:1", "http://c:1"])
    errors: list[BaseException] = []

    def look(thread: int) -> None:
        try:
            for i in range(3 * _ring.MEMO_ENTRIES):
                ring.owner(f"{thread}-{i}")
        except Exception as exc:  # what the test counts
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: evictions overlap
    try:
        threads = [threading.Thread(target=look, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(ring._memo) <= _ring.MEMO_ENTRIES
