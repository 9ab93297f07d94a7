"""Hot copies that stick: the TinyLFU-style admission policy, alone and inside a cluster of groups.

Unit tests drive the sketch and the hot cache with a fake clock and a seeded RNG: no sleeps. The
cluster tests wire three workspaces in-process and check what a user sees: a key asked for often
stays hot, a scan of one-off keys cannot push it out, ``remove`` still reaches every hot copy, and
a hot copy ends with the owner's remaining TTL.
"""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import example, given
from hypothesis import strategies as st

from tokencache import Entry, GroupcacheCollector, LRUCache, Workspace
from tokencache._admission import (
    LUCKY_ONE_IN,
    MAX_COUNT,
    FrequencySketch,
    HotAdmission,
)
from tokencache._lru import entry_size
from tokencache.testing import FakeClock, LocalTransport

URLS = ["http://a:1", "http://b:1", "http://c:1"]


class _NeverLucky(random.Random):
    """An RNG whose draws never grant the warm candidate's one-in-128 chance."""

    def randrange(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
        return 1


class _AlwaysLucky(random.Random):
    def randrange(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
        return 0


def test_sketch_counts_each_key_and_saturates_at_fifteen() -> None:
    sketch = FrequencySketch(1024)
    for _ in range(3):
        sketch.record("a")
    for _ in range(40):
        sketch.record("b")
    assert sketch.estimate("a") == 3
    assert sketch.estimate("b") == MAX_COUNT
    assert sketch.estimate("never-seen") == 0


def test_sketch_halves_every_counter_after_its_sample_size() -> None:
    sketch = FrequencySketch(256)  # width 256: halves after 2560 records
    for _ in range(12):
        sketch.record("popular")
    for i in range(2560 - 12 - 1):
        sketch.record(f"noise-{i % 2000}")
    assert sketch.resets == 0
    before = sketch.estimate("popular")
    assert before >= 12
    sketch.record("noise-x")
    assert sketch.resets == 1
    assert sketch.estimate("popular") == before // 2


def test_sketch_estimates_never_undercount_hostile_keys() -> None:
    # Many distinct keys (bytes-derived, unprintable) in a small sketch: collisions only add.
    sketch = FrequencySketch(256)
    truth: Counter[str] = Counter()
    rng = random.Random(7)
    for _ in range(2000):
        key = bytes(rng.randrange(256) for _ in range(8)).decode("latin-1")
        truth[key] += 1
        sketch.record(key)
    assert sketch.resets == 0
    assert all(sketch.estimate(k) >= min(n, MAX_COUNT) for k, n in truth.items())


def test_admit_prefers_the_more_frequent_key() -> None:
    policy = HotAdmission(1024, _NeverLucky())
    for _ in range(5):
        policy.record("frequent")
    policy.record("rare")
    assert policy.admit("frequent", "rare")
    assert not policy.admit("rare", "frequent")
    assert not policy.admit("rare", "rare")  # a tie keeps the incumbent


def test_a_warm_loser_wins_only_by_the_injected_chance() -> None:
    lucky = HotAdmission(1024, _AlwaysLucky())
    unlucky = HotAdmission(1024, _NeverLucky())
    for policy in (lucky, unlucky):
        for _ in range(10):
            policy.record("victim")
        for _ in range(6):
            policy.record("warm")
        policy.record("cold")
    assert lucky.admit("warm", "victim")
    assert not unlucky.admit("warm", "victim")
    assert not lucky.admit("cold", "victim")  # a cold candidate never gets the lucky draw
    seeded = HotAdmission(1024, random.Random(3))
    for _ in range(10):
        seeded.record("victim")
    for _ in range(6):
        seeded.record("warm")
    wins = sum(seeded.admit("warm", "victim") for _ in range(LUCKY_ONE_IN * 40))
    assert 10 <= wins <= 80  # about one in 128 of 5120 draws (40 expected)


def _fill(cache: LRUCache, keys: list[str], value: bytes, ttl: float | None) -> None:
    for key in keys:
        cache.add(key, value, ttl)


def test_make_room_evicts_victims_only_when_the_candidate_beats_them_all() -> None:
    clock = FakeClock()
    hot = LRUCache(clock)
    value = b"v" * 100
    size = entry_size("k0", value)
    _fill(hot, ["k0", "k1", "k2"], value, 60)
    budget = hot.bytes  # full
    policy = HotAdmission(1024, _NeverLucky())
    for _ in range(3):
        policy.record("new")
    policy.record("k0")
    for _ in range(5):
        policy.record("k1")
    # One victim needed: k0 (least recently used, frequency 1) loses to "new" (3).
    assert policy.make_room(hot, "new", size, budget)
    assert "k0" not in hot and hot.stats.evictions_nonexpired == 1
    # Two victims needed: k1 (5) beats "new" (3), so nothing is evicted at all.
    assert not policy.make_room(hot, "new", 2 * size + 1, budget)
    assert len(hot) == 2 and hot.stats.evictions == 1
    # A value bigger than the whole budget never gets in.
    assert not policy.make_room(hot, "huge", budget + 1, budget)


def test_make_room_takes_expired_entries_without_asking() -> None:
    clock = FakeClock()
    hot = LRUCache(clock)
    value = b"v" * 100
    _fill(hot, ["gone"], value, 5)
    _fill(hot, ["popular"], value, 60)
    policy = HotAdmission(1024, _NeverLucky())
    for _ in range(9):
        policy.record("gone")
        policy.record("popular")
    clock.advance(6)  # "gone" expired: it goes first, whatever its frequency
    assert policy.make_room(hot, "rare", entry_size("rare", value), hot.bytes)
    assert "gone" not in hot and "popular" in hot
    assert hot.stats.evictions_nonexpired == 0


class _Cluster:
    """Three workspaces in-process; ``max_bytes`` small enough that the hot copies' share (what
    they keep once main is full: hot_fraction / (1 + hot_fraction) of the group) is
    ``hot_entries``."""

    def __init__(
        self,
        *,
        hot_entries: int,
        ttl: float | None = 60,
        stale_window: float = 0.0,
        hot_fraction: float = 0.125,
    ) -> None:
        self.clock = FakeClock()
        self.transport = LocalTransport()
        self.loads: Counter[str] = Counter()
        self.ws: dict[str, Workspace] = {}
        self.value = b"x" * 200
        self.per_entry = per_entry = entry_size("key-000", self.value)
        self.share = hot_entries * per_entry
        self.max_bytes = max_bytes = round(self.share * (1 + hot_fraction) / hot_fraction)
        for url in URLS:
            ws = Workspace(url, clock=self.clock, transport=self.transport, rng=_NeverLucky(1))
            ws.set_peers(URLS)
            ws.new_group(
                "g",
                max_bytes,
                self._loader(ttl),
                hot_fraction=hot_fraction,
                stale_window=stale_window,
            )
            self.transport.register(url, ws)
            self.ws[url] = ws

    def _loader(self, ttl: float | None):  # type: ignore[no-untyped-def]
        async def load(key: str) -> Entry:
            self.loads[key] += 1
            return Entry(self.value, ttl)

        return load

    def group(self, url: str):  # type: ignore[no-untyped-def]
        group = self.ws[url].get_group("g")
        assert group is not None
        return group

    def remote_keys(self, n: int, prefix: str) -> list[str]:
        """``n`` keys of the form prefix-NNN that URLS[0] does not own."""
        keys = (f"{prefix}-{i:03d}" for i in range(10_000))
        return [k for k in keys if self.ws[URLS[0]].owner(k) is not None][:n]

    def own_keys(self, n: int, prefix: str) -> list[str]:
        """``n`` keys of the form prefix-NNN that URLS[0] owns."""
        keys = (f"{prefix}-{i:03d}" for i in range(10_000))
        return [k for k in keys if self.ws[URLS[0]].owner(k) is None][:n]

    async def fill_main(self) -> None:
        """Load keys URLS[0] owns until its main cache leaves the hot cache only its share, so
        hot copies cannot borrow room beyond it."""
        node = self.group(URLS[0])
        for key in self.own_keys(10_000, "own"):
            if node.main_cache.bytes + self.per_entry > self.max_bytes - self.share:
                break
            await node.get(key)


async def test_frequent_keys_stay_hot_through_a_scan_of_one_off_keys() -> None:
    cluster = _Cluster(hot_entries=4)
    await cluster.fill_main()
    node = cluster.group(URLS[0])
    popular = cluster.remote_keys(4, "pop")
    for _ in range(5):
        for key in popular:
            await node.get(key)
    assert all(key in node.hot_cache for key in popular)
    fetches_before = len(cluster.transport.fetches)
    for key in popular:  # served locally now: no fetch
        await node.get(key)
    assert len(cluster.transport.fetches) == fetches_before
    scan = cluster.remote_keys(200, "scan")
    for key in scan:
        await node.get(key)
    assert all(key in node.hot_cache for key in popular)
    assert node.stats.hot_rejections >= 190
    assert node.stats.hot_admissions == 4
    # Every key was still loaded once for the cluster, by its owner.
    assert set(cluster.loads.values()) == {1}


async def test_a_key_that_becomes_popular_replaces_one_that_is_no_longer_asked_for() -> None:
    cluster = _Cluster(hot_entries=2)
    await cluster.fill_main()
    node = cluster.group(URLS[0])
    old = cluster.remote_keys(2, "old")
    for _ in range(3):
        for key in old:
            await node.get(key)
    new = cluster.remote_keys(1, "new")[0]
    await node.get(new)
    assert new not in node.hot_cache  # asked for once: not yet worth a place
    for _ in range(4):
        await node.get(new)  # a miss each time until admitted: fetched from the owner again
    assert new in node.hot_cache
    assert sum(key in node.hot_cache for key in old) == 1


async def test_hot_copies_borrow_the_room_main_leaves_free_and_give_it_back_first() -> None:
    cluster = _Cluster(hot_entries=4)
    node = cluster.group(URLS[0])
    # Main is empty: hot copies may use the whole group, far beyond their share of 4 entries.
    remote = cluster.remote_keys(24, "far")
    for key in remote:
        await node.get(key)
    assert all(key in node.hot_cache for key in remote)
    assert node.stats.hot_admissions == 24 and node.stats.hot_rejections == 0
    # Main now loads the keys this node owns: hot copies go first, while they hold more than
    # their share of main; no owned key is evicted for them.
    own = cluster.own_keys(28, "myk")  # keys as long as the remote ones: entries of one size
    for key in own:
        await node.get(key)
    assert all(key in node.main_cache for key in own)
    assert node.main_cache.stats.evictions == 0
    assert node.main_cache.bytes + node.hot_cache.bytes <= cluster.max_bytes
    assert len(node.hot_cache) == 36 - 28  # what is left once main holds 28 of 36 entries
    # Full now: a new remote key must win its place from a copy asked for as often (it is not).
    extra = cluster.remote_keys(25, "far")[-1]
    await node.get(extra)
    assert extra not in node.hot_cache and node.stats.hot_rejections == 1


async def test_a_scan_cannot_flush_popular_hot_copies_once_main_is_full() -> None:
    # Main over-full (more owned keys than the group holds): hot copies keep only their share,
    # and a scan of one-off keys must neither be admitted for free nor push popular copies out
    # (at the proxy's hot fraction, where the share is a third of the group).
    cluster = _Cluster(hot_entries=4, hot_fraction=0.5)
    node = cluster.group(URLS[0])
    for key in cluster.own_keys(40, "own"):
        await node.get(key)
    popular = cluster.remote_keys(4, "pop")
    for _ in range(6):
        for key in popular:
            await node.get(key)
    held = [k for k in popular if k in node.hot_cache]
    assert len(held) >= 3
    admissions = node.stats.hot_admissions
    for key in cluster.remote_keys(200, "scn"):  # entries the size of the popular ones
        await node.get(key)
    assert all(k in node.hot_cache for k in held)
    assert node.stats.hot_admissions == admissions
    assert node.hot_cache.stats.evictions_nonexpired == 0


async def test_expired_entries_go_before_live_hot_copies_when_main_needs_room() -> None:
    # Kept past expiry for stale answers, owned entries that expired are still the first to go:
    # a live hot copy in borrowed room is not evicted while an expired entry remains.
    cluster = _Cluster(hot_entries=4, ttl=10, stale_window=300)
    node = cluster.group(URLS[0])
    for key in cluster.own_keys(16, "old"):
        await node.get(key)
    cluster.clock.advance(11)  # the 16 owned entries expired (kept for stale answers)
    remote = cluster.remote_keys(16, "hot")
    for key in remote:
        await node.get(key)  # fresh copies from their owners, in the room main leaves free
    assert all(key in node.hot_cache for key in remote)
    for key in cluster.own_keys(26, "new")[:10]:
        await node.get(key)
    assert all(key in node.hot_cache for key in remote)
    assert node.hot_cache.stats.evictions == 0 and node.main_cache.stats.evictions >= 6


async def test_a_hot_fraction_of_zero_keeps_no_copies_even_with_room_free() -> None:
    clock, transport = FakeClock(), LocalTransport()
    loads: Counter[str] = Counter()

    async def load(key: str) -> Entry:
        loads[key] += 1
        return Entry(b"v" * 100, 60)

    groups = []
    for url in URLS:
        ws = Workspace(url, clock=clock, transport=transport, rng=_NeverLucky(1))
        ws.set_peers(URLS)
        groups.append(ws.new_group("g", 1 << 20, load, hot_fraction=0))
        transport.register(url, ws)
    keys = [f"k{i}" for i in range(50)]
    remote = [k for k in keys if groups[0]._peers.owner(k) is not None]
    for key in remote:
        await groups[0].get(key)
        await groups[0].get(key)
    assert len(groups[0].hot_cache) == 0 and groups[0].stats.hot_admissions == 0
    assert groups[0].stats.hot_rejections == 0  # nothing offered: no copies, nothing turned away
    assert set(loads.values()) == {1}


async def test_remove_reaches_admitted_hot_copies_on_every_node() -> None:
    cluster = _Cluster(hot_entries=4)
    key = cluster.remote_keys(1, "rm")[0]
    others = [u for u in URLS if cluster.ws[u].owner(key) is not None]
    for url in others:
        await cluster.group(url).get(key)
        assert key in cluster.group(url).hot_cache
    await cluster.group(URLS[0]).remove(key)
    assert all(cluster.group(u).peek(key) is None for u in URLS)
    await cluster.group(others[0]).get(key)
    assert cluster.loads[key] == 2  # reloaded once, by the owner


async def test_hot_copy_carries_the_owners_remaining_ttl() -> None:
    cluster = _Cluster(hot_entries=4, ttl=10)
    key = cluster.remote_keys(1, "ttl")[0]
    owner = cluster.ws[URLS[0]].owner(key)
    assert owner is not None
    await cluster.group(owner).get(key)
    cluster.clock.advance(7)
    await cluster.group(URLS[0]).get(key)  # 3 s left at the owner
    assert key in cluster.group(URLS[0]).hot_cache
    cluster.clock.advance(3.01)
    assert cluster.group(URLS[0]).peek(key) is None


async def test_collector_exports_hot_admissions_and_hit_ratio() -> None:
    cluster = _Cluster(hot_entries=4)
    node = cluster.group(URLS[0])
    key = cluster.remote_keys(1, "m")[0]
    for _ in range(4):
        await node.get(key)  # one fetch + admission, then three hot hits
    families = {f.name: f for f in GroupcacheCollector(cluster.ws[URLS[0]]).collect()}
    admissions = families["groupcache_hot_admissions"].samples
    assert [s.value for s in admissions if s.name.endswith("_total")] == [1.0]
    ratio = families["groupcache_hot_hit_ratio"].samples[0].value
    hot = node.hot_cache.stats
    assert hot.hits == 3
    assert ratio == hot.hits / hot.gets and 0.5 <= ratio < 1


@given(
    runs=st.lists(
        st.tuples(st.integers(-1, 40), st.integers(1, 300)),  # (-1: the ticket's key; else another)
        max_size=40,
    )
)
@example(runs=[(-1, 300)] * 10)  # past a halving (every 2,560 accesses here) while saturated
@example(runs=[(-1, 20), (3, 300)] * 9)
def test_a_hot_tickets_hits_count_exactly_as_records(runs: list[tuple[int, int]]) -> None:
    # The ticket skips the counter updates once its key's counters are all at the maximum (until
    # the next halving): the sketch must end up exactly as if every hit had been recorded.
    from tokencache import GroupStats, HitTicket

    cache = LRUCache(FakeClock())
    cache.add("hot", b"v", None)
    item = cache.item("hot")
    assert item is not None
    ticketed, plain = FrequencySketch(256), FrequencySketch(256)
    ticket = HitTicket(cache, item, "hot", GroupStats(), ticketed)
    for key, repeat in runs:
        for _ in range(repeat):
            if key < 0:
                assert ticket.hit()
                plain.record("hot")
            else:
                ticketed.record(f"k{key}")
                plain.record(f"k{key}")
        assert ticketed._table == plain._table
        assert (ticketed._samples, ticketed.resets) == (plain._samples, plain.resets)


@given(
    keys=st.lists(st.text(max_size=8), min_size=1, max_size=60),
    width=st.sampled_from([256, 1024]),
)
def test_an_estimate_is_the_smallest_of_the_keys_four_counters(keys: list[str], width: int) -> None:
    # The unrolled estimate against the definition, counters saturated and halved included.
    sketch = FrequencySketch(width)
    for i, key in enumerate(keys * 12):
        sketch.record(key)
        if i % 7 == 0:
            for probe in keys[:5]:
                table = sketch._table
                counters = [(table[j >> 1] >> ((j & 1) << 2)) & 0xF for j in sketch.indexes(probe)]
                assert sketch.estimate(probe) == min(counters)
