"""Several workspaces in one process wired by the in-process transport (no sockets, no sleeps)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

import tokencache
from tokencache import Declined, Entry, InvalidArgument, NotFound, Workspace
from tokencache.testing import FakeClock, LocalTransport

URLS = ["http://a:1", "http://b:1", "http://c:1"]


class Cluster:
    def __init__(
        self, loader_factory=None, *, hot_probability: float = 0.0, ttl: float | None = 60
    ):
        self.clock = FakeClock()
        self.transport = LocalTransport()
        self.loads: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None
        self.ttl = ttl
        self.ws: dict[str, Workspace] = {}
        for url in URLS:
            ws = Workspace(url, clock=self.clock, transport=self.transport, rng=random.Random(1))
            ws.set_peers(URLS)
            loader = loader_factory(url) if loader_factory else self._loader(url)
            ws.new_group("g", 1 << 20, loader, hot_probability=hot_probability)
            self.transport.register(url, ws)
            self.ws[url] = ws

    def _loader(self, url: str):
        async def load(key: str) -> Entry:
            self.loads[url] += 1
            if self.gate is not None:
                await self.gate.wait()
            return Entry(f"{key}@{self.loads.total()}".encode(), self.ttl)

        return load

    def group(self, url: str) -> tokencache.Group:
        group = self.ws[url].get_group("g")
        assert group is not None
        return group

    def owner_of(self, key: str) -> str:
        return self.ws[URLS[0]].owner(key) or URLS[0]


async def test_one_load_for_the_whole_cluster_by_the_owner() -> None:
    cluster = Cluster()
    cluster.gate = asyncio.Event()
    key = "thumb/42?size=large"
    tasks = [asyncio.create_task(cluster.group(URLS[i % 3]).get(key)) for i in range(300)]
    await asyncio.sleep(0)
    cluster.gate.set()
    values = await asyncio.gather(*tasks)
    assert len(set(values)) == 1
    assert cluster.loads == Counter({cluster.owner_of(key): 1})
    non_owners = [u for u in URLS if u != cluster.owner_of(key)]
    for url in non_owners:
        assert cluster.group(url).stats.peer_loads == 1


async def test_expired_values_are_reloaded_once() -> None:
    cluster = Cluster(ttl=10)
    first = await cluster.group(URLS[0]).get("k")
    assert await cluster.group(URLS[1]).get("k") == first
    cluster.clock.advance(10.5)
    second = await cluster.group(URLS[2]).get("k")
    assert second != first
    assert cluster.loads.total() == 2


async def test_dead_owner_never_fails_the_caller() -> None:
    cluster = Cluster()
    key = next(k for k in (f"k{i}" for i in range(100)) if cluster.owner_of(k) == URLS[1])
    cluster.transport.down.add(URLS[1])
    value = await cluster.group(URLS[0]).get(key)
    assert value.startswith(key.encode())
    assert cluster.group(URLS[0]).stats.peer_errors == 1
    assert cluster.loads[URLS[0]] == 1


async def test_not_found_reaches_caller_and_is_not_retried_locally() -> None:
    def factory(url: str):
        async def load(key: str) -> Entry:
            calls[url] += 1
            raise NotFound(key)

        return load

    calls: Counter[str] = Counter()
    cluster = Cluster(factory)
    key = next(k for k in (f"k{i}" for i in range(100)) if cluster.owner_of(k) == URLS[2])
    with pytest.raises(NotFound):
        await cluster.group(URLS[0]).get(key)
    assert calls == Counter({URLS[2]: 1})


async def test_declined_owner_makes_the_caller_load_itself() -> None:
    def factory(url: str):
        async def load(key: str) -> Entry:
            calls[url] += 1
            if url == URLS[1]:
                raise Declined("no credentials here")
            return Entry(url.encode(), 60)

        return load

    calls: Counter[str] = Counter()
    cluster = Cluster(factory)
    key = next(k for k in (f"k{i}" for i in range(100)) if cluster.owner_of(k) == URLS[1])
    assert await cluster.group(URLS[0]).get(key) == URLS[0].encode()
    assert calls == Counter({URLS[1]: 1, URLS[0]: 1})
    assert cluster.group(URLS[0]).stats.peer_errors == 0


async def test_loader_error_reaches_every_waiter_and_is_not_cached() -> None:
    failing = True
    gate = asyncio.Event()

    def factory(url: str):
        async def load(key: str) -> Entry:
            calls[url] += 1
            await gate.wait()
            if failing:
                raise RuntimeError("backend down")
            return Entry(b"ok", 60)

        return load

    calls: Counter[str] = Counter()
    cluster = Cluster(factory)
    key = next(k for k in (f"k{i}" for i in range(100)) if cluster.owner_of(k) == URLS[0])
    tasks = [asyncio.create_task(cluster.group(URLS[0]).get(key)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert calls[URLS[0]] == 1
    assert cluster.group(URLS[0]).stats.local_load_errs == 1
    failing = False
    assert await cluster.group(URLS[0]).get(key) == b"ok"


async def test_rings_that_disagree_never_wait_on_each_other() -> None:
    cluster = Cluster()
    # a thinks b owns everything, b thinks a owns everything: requests from a peer are not forwarded.
    cluster.ws[URLS[0]].set_peers([URLS[1]])
    cluster.ws[URLS[1]].set_peers([URLS[0]])
    values = await asyncio.wait_for(
        asyncio.gather(*(cluster.group(URLS[i % 2]).get(f"k{i % 5}") for i in range(40))), timeout=5
    )
    assert len(values) == 40
    assert cluster.group(URLS[1]).stats.crosstalk_refusals >= 1


async def test_cancelled_caller_does_not_cancel_the_cluster_load() -> None:
    cluster = Cluster()
    cluster.gate = asyncio.Event()
    key = "k"
    first = asyncio.create_task(cluster.group(URLS[0]).get(key))
    second = asyncio.create_task(cluster.group(URLS[0]).get(key))
    await asyncio.sleep(0)
    first.cancel()
    cluster.gate.set()
    assert (await second).startswith(b"k@")
    assert cluster.loads.total() == 1


async def test_hot_copies_end_with_the_owners_remaining_ttl() -> None:
    cluster = Cluster(hot_probability=1.0, ttl=10)
    key = next(k for k in (f"k{i}" for i in range(100)) if cluster.owner_of(k) == URLS[1])
    await cluster.group(URLS[1]).get(key)
    cluster.clock.advance(6)
    await cluster.group(URLS[0]).get(key)  # fetched with 4 s left, kept hot
    assert cluster.group(URLS[0]).peek(key) is not None
    cluster.clock.advance(4.01)
    assert cluster.group(URLS[0]).peek(key) is None


async def test_ttl_zero_reaches_waiters_but_is_stored_nowhere() -> None:
    cluster = Cluster(ttl=0)
    await cluster.group(URLS[0]).get("k")
    await cluster.group(URLS[0]).get("k")
    assert cluster.loads.total() == 2
    assert all(cluster.group(u).peek("k") is None for u in URLS)


async def test_remove_owner_first_then_hot_copies_and_compare_and_invalidate() -> None:
    cluster = Cluster(hot_probability=1.0)
    key = next(k for k in (f"k{i}" for i in range(100)) if cluster.owner_of(k) == URLS[2])
    old = await cluster.group(URLS[0]).get(key)
    assert cluster.group(URLS[0]).peek(key) == old  # hot copy
    await cluster.group(URLS[1]).remove(key, if_value=b"not the value")
    assert cluster.group(URLS[2]).peek(key) == old
    await cluster.group(URLS[1]).remove(key, if_value=old)
    assert all(cluster.group(u).peek(key) is None for u in URLS)
    new = await cluster.group(URLS[0]).get(key)
    assert new != old
    await cluster.group(URLS[0]).remove(key)
    assert all(cluster.group(u).peek(key) is None for u in URLS)


async def test_min_ttl_reloads_once_on_the_owner() -> None:
    cluster = Cluster(ttl=100)
    first = await cluster.group(URLS[0]).get("tok")
    cluster.clock.advance(90)
    assert await cluster.group(URLS[1]).get("tok") == first  # 10 s left is fine for a plain get
    refreshed = await asyncio.gather(*(cluster.group(u).get("tok", min_ttl=20) for u in URLS * 5))
    assert len(set(refreshed)) == 1 and refreshed[0] != first
    assert cluster.loads.total() == 2
    assert await cluster.group(URLS[2]).get("tok") == refreshed[0]


async def test_bad_keys_and_groups_are_refused_clearly() -> None:
    cluster = Cluster()
    ws = cluster.ws[URLS[0]]
    with pytest.raises(InvalidArgument):
        await cluster.group(URLS[0]).get("x" * (ws.max_key_bytes + 1))
    with pytest.raises(InvalidArgument):
        await cluster.group(URLS[0]).get("\ud800")
    with pytest.raises(InvalidArgument):
        ws.new_group("g", 1, cluster._loader(URLS[0]))
    with pytest.raises(InvalidArgument):
        ws.new_group("bad/name", 1, cluster._loader(URLS[0]))
    assert await cluster.group(URLS[0]).get("") is not None  # the empty key is a key


async def test_byte_budget_bounds_main_plus_hot() -> None:
    clock = FakeClock()
    ws = Workspace("", clock=clock)

    async def load(key: str) -> Entry:
        return Entry(b"x" * 1000, None)

    group = ws.new_group("g", 50_000, load)
    for i in range(500):
        await group.get(f"k{i}")
    assert group.main_cache.bytes + group.hot_cache.bytes <= 50_000
    assert group.main_cache.stats.evictions > 0
    assert group.peek("k499") is not None


async def test_unreachable_owner_is_skipped_for_a_while_then_tried_again() -> None:
    cluster = Cluster()
    keys = [k for k in (f"k{i}" for i in range(200)) if cluster.owner_of(k) == URLS[1]][:5]
    cluster.transport.down.add(URLS[1])
    caller = cluster.group(URLS[0])
    for key in keys:
        await caller.get(key)
    # only the first key paid for trying the dead owner; the rest loaded locally at once
    assert [p for p, _, _ in cluster.transport.fetches] == [URLS[1]]
    assert caller.stats.peer_errors == len(keys)
    assert cluster.loads[URLS[0]] == len(keys)
    cluster.transport.down.discard(URLS[1])
    cluster.clock.advance(cluster.ws[URLS[0]].unreachable_backoff)
    fresh = next(k for k in (f"n{i}" for i in range(200)) if cluster.owner_of(k) == URLS[1])
    await caller.get(fresh)
    assert cluster.loads[URLS[1]] == 1  # back in use once the back-off ended


async def test_an_owner_that_answers_with_an_error_is_not_skipped() -> None:
    def factory(url: str):
        async def load(key: str) -> Entry:
            if url == URLS[1] and key.startswith("bad"):
                raise RuntimeError("backend down on the owner")
            return Entry(url.encode(), 60)

        return load

    cluster = Cluster(factory)
    bad = next(k for k in (f"bad{i}" for i in range(200)) if cluster.owner_of(k) == URLS[1])
    good = next(k for k in (f"good{i}" for i in range(200)) if cluster.owner_of(k) == URLS[1])
    assert await cluster.group(URLS[0]).get(bad) == URLS[0].encode()  # loaded locally
    assert await cluster.group(URLS[0]).get(good) == URLS[1].encode()  # the owner still asked


async def test_get_fetched_says_whether_a_loader_ran_anywhere_for_the_call() -> None:
    cluster = Cluster()
    key = next(k for k in (f"k{i}" for i in range(100)) if cluster.owner_of(k) == URLS[2])
    first = await cluster.group(URLS[0]).get_fetched(key)  # the owner loads for this call
    assert first.loaded
    second = await cluster.group(URLS[1]).get_fetched(key)  # the owner's cache answers
    assert not second.loaded
    assert second.value == first.value
    local = await cluster.group(URLS[2]).get_fetched(key)  # a hit on the owner itself
    assert not local.loaded


async def test_load_context_reaches_the_owners_loader_and_is_not_part_of_the_key() -> None:
    seen: list[tuple[str, bytes | None]] = []

    def factory(url: str):
        async def load(key: str) -> Entry:
            seen.append((url, tokencache.load_context()))
            return Entry(key.encode(), 60)

        return load

    cluster = Cluster(factory)
    key = "ctx-key"
    owner = cluster.owner_of(key)
    caller = next(u for u in URLS if u != owner)
    assert await cluster.group(caller).get(key, context=b"client headers") == b"ctx-key"
    assert seen == [(owner, b"client headers")]
    # Cached now: another context gets the same value and runs no loader.
    assert await cluster.group(owner).get(key, context=b"other") == b"ctx-key"
    assert len(seen) == 1
    assert tokencache.load_context() is None  # set only around the loader call
    with pytest.raises(InvalidArgument):
        await cluster.group(caller).get("k2", context=b"x" * (64 << 10 + 1))


async def test_an_owners_answer_from_the_hit_path_is_not_asked_for_again() -> None:
    # fetch_soon's answer that was not a value goes to get_fetched(owner_answered=...): a failed
    # or declined load there loads here at once, a NotFound is raised; the owner is not asked.
    cluster = Cluster()
    key = "asked-once"
    owner = cluster.owner_of(key)
    here = next(u for u in URLS if u != owner)
    asked = len(cluster.transport.fetches)
    failed = tokencache.PeerError(owner, "load failed")
    fetched = await cluster.group(here).get_fetched(key, owner_answered=failed)
    assert fetched.loaded and cluster.loads == Counter({here: 1})
    assert len(cluster.transport.fetches) == asked
    missing = next(k for k in (f"missing-{i}" for i in range(100)) if cluster.owner_of(k) != here)
    with pytest.raises(tokencache.NotFound):
        await cluster.group(here).get_fetched(missing, owner_answered=tokencache.NotFound(missing))
    assert len(cluster.transport.fetches) == asked
    assert cluster.loads == Counter({here: 1})


async def test_a_hit_ticket_counts_like_a_peek_and_dies_with_its_entry() -> None:
    cluster = Cluster(hot_probability=1.0)
    owner = cluster.owner_of("t")
    caller = cluster.group(next(u for u in URLS if u != owner))
    main = cluster.group(owner)
    value = await main.get("t")
    ticket = main.ticket("t", value)
    assert ticket is not None and ticket.expires_at == cluster.clock.now() + 60
    assert (
        main.ticket("t", bytes(bytearray(value))) is None
    )  # an equal value is not the entry's object
    before = (main.stats.gets, main.stats.cache_hits, main.main_cache.stats.hits)
    assert ticket.hit() and ticket.hit()
    assert (main.stats.gets, main.stats.cache_hits, main.main_cache.stats.hits) == tuple(
        n + 2 for n in before
    )
    main.remove_local("t")
    assert not ticket.hit()  # removed: nothing counted
    assert main.main_cache.stats.hits == before[2] + 2
    # A hot copy: its hits are frequency for the hot admission, as a peek's are.
    copy = await caller.get("t")
    hot = caller.ticket("t", copy)
    assert hot is not None and "t" in caller.hot_cache
    sketch = caller._admission.sketch
    seen = sketch.estimate("t")
    assert hot.hit() and sketch.estimate("t") == seen + 1
    # Replaced (a newer value stored under the key): the old ticket is dead.
    caller.hot_cache.add("t", b"newer", 60)
    assert not hot.hit()
    # Evicted to make room.
    again = caller.ticket("t", caller.peek("t") or b"")
    assert again is not None
    caller.hot_cache.evict_one()
    assert not again.hit()


async def test_a_hot_tickets_hit_counts_every_counter_a_peek_counts() -> None:
    # A peek of a hot copy first misses the main cache (a get counted there), then hits the hot
    # cache: a ticket's hit on that copy must move every counter the same way.
    cluster = Cluster(hot_probability=1.0)
    owner = cluster.owner_of("t")
    caller = cluster.group(next(u for u in URLS if u != owner))
    copy = await caller.get("t")
    assert "t" in caller.hot_cache and "t" not in caller.main_cache
    ticket = caller.ticket("t", copy)
    assert ticket is not None

    def counters() -> tuple[int, ...]:
        main, hot = caller.main_cache.stats, caller.hot_cache.stats
        return (
            caller.stats.gets,
            caller.stats.cache_hits,
            main.gets,
            main.hits,
            hot.gets,
            hot.hits,
            caller._admission.sketch.estimate("t"),
        )

    before = counters()
    assert caller.peek_with_ttl("t") is not None
    peeked = counters()
    assert ticket.hit()
    hit = counters()
    assert [b - a for a, b in zip(peeked, hit, strict=True)] == [
        b - a for a, b in zip(before, peeked, strict=True)
    ]


async def test_a_hot_ticket_gives_way_to_a_main_entry_of_its_key() -> None:
    # A peek looks in the main cache first: once the key has an entry there (this node became
    # its owner and loaded or was handed it), the hot copy's ticket no longer names the answer.
    cluster = Cluster(hot_probability=1.0)
    owner = cluster.owner_of("t")
    caller = cluster.group(next(u for u in URLS if u != owner))
    copy = await caller.get("t")
    ticket = caller.ticket("t", copy)
    assert ticket is not None and "t" in caller.hot_cache
    caller.main_cache.add("t", b"newer", 60)
    assert caller.peek("t") == b"newer"
    assert not ticket.hit()
