"""LRU + TTL with an injected fake clock: expiry, order, byte accounting, eviction preference."""

from __future__ import annotations

from tokencache import LRUCache
from tokencache._lru import entry_size
from tokencache.testing import FakeClock


def test_expired_entries_are_never_served() -> None:
    clock = FakeClock()
    cache = LRUCache(clock)
    cache.add("k", b"v", ttl=10)
    assert cache.get_value("k") == b"v"
    assert cache.get("k") == (b"v", 10)
    clock.advance(9.999)
    assert cache.get_value("k") == b"v"
    clock.advance(0.001)
    assert cache.get_value("k") is None
    assert cache.get("k") is None


def test_no_ttl_never_expires_and_min_ttl_filters() -> None:
    clock = FakeClock()
    cache = LRUCache(clock)
    cache.add("forever", b"x", ttl=None)
    cache.add("short", b"y", ttl=5)
    clock.advance(10**6 - 5)
    assert cache.get("forever") == (b"x", None)
    cache.add("short", b"y", ttl=5)
    assert cache.get("short", min_ttl=4) is not None
    assert cache.get("short", min_ttl=6) is None
    assert cache.get("forever", min_ttl=10**9) == (b"x", None)


def test_byte_accounting_tracks_adds_replacements_and_removals() -> None:
    cache = LRUCache(FakeClock())
    cache.add("a", b"1" * 100, ttl=None)
    cache.add("b", b"2" * 50, ttl=None)
    assert cache.bytes == entry_size("a", b"1" * 100) + entry_size("b", b"2" * 50)
    cache.add("a", b"3", ttl=None)
    assert cache.bytes == entry_size("a", b"3") + entry_size("b", b"2" * 50)
    assert cache.remove("b")
    assert not cache.remove("b")
    assert cache.bytes == entry_size("a", b"3")
    assert len(cache) == 1


def test_lru_order_and_expired_go_first() -> None:
    clock = FakeClock()
    cache = LRUCache(clock)
    cache.add("old", b"1", ttl=None)
    cache.add("mid", b"2", ttl=None)
    cache.add("expiring", b"3", ttl=1)
    cache.get_value("old")  # now most recently used
    clock.advance(2)
    assert cache.evict_one()  # the expired one goes first even though it is newest
    assert "expiring" not in cache
    assert cache.stats.evictions == 1
    assert cache.stats.evictions_nonexpired == 0
    assert cache.evict_one()  # then least recently used: "mid"
    assert "mid" not in cache and "old" in cache
    assert cache.stats.evictions_nonexpired == 1


def test_purge_and_stale_window() -> None:
    clock = FakeClock()
    cache = LRUCache(clock, stale_window=30)
    for i in range(10):
        cache.add(f"k{i}", b"v", ttl=5)
    cache.add("live", b"v", ttl=100)
    clock.advance(10)
    assert cache.get_value("k1") is None
    assert cache.peek_stale("k1") == (b"v", 5)
    assert cache.peek_stale("live") is None
    assert cache.purge_expired() == 0  # still inside the stale window
    clock.advance(30)
    assert cache.peek_stale("k1") is None
    assert cache.purge_expired() == 10
    assert len(cache) == 1 and "live" in cache


def test_heap_does_not_grow_without_bound_under_rewrites() -> None:
    cache = LRUCache(FakeClock())
    for i in range(10_000):
        cache.add("same", str(i).encode(), ttl=100)
    assert len(cache) == 1
    assert len(cache._heap) <= 2 * len(cache) + 64 + 1


def test_stats_count_gets_and_hits() -> None:
    cache = LRUCache(FakeClock())
    cache.add("a", b"1", ttl=None)
    cache.get_value("a")
    cache.get_value("b")
    cache.get("a")
    assert (cache.stats.gets, cache.stats.hits) == (3, 2)
