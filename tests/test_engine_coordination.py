"""Engine guarantees under change (issue 12), in-process: removes that stick, slow is not dead,
black holes, health checks, leave + hand-off, previous-owner lookup, typed records, singleflight.

Several workspaces are wired by `LocalTransport` on one `FakeClock`: every interleaving is forced
with events (gates, black holes), never with sleeps.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

import tokencache
from tokencache import Entry, HealthChecker, Kind, NotAValue, SingleFlight, Workspace
from tokencache.testing import FakeClock, LocalTransport

URLS = ["http://a:1", "http://b:1", "http://c:1"]
A, B, C = URLS


class Cluster:
    """Three workspaces, one group "g" each; loads counted per process; loaders can be gated."""

    def __init__(self, *, hot_probability: float = 0.0, ttl: float | None = 60) -> None:
        self.clock = FakeClock()
        self.transport = LocalTransport()
        self.loads: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None
        self.version = 0
        self.ttl = ttl
        self.hot_probability = hot_probability
        self.ws: dict[str, Workspace] = {}
        for url in URLS:
            self.start(url)
        self.clock.advance(3600)  # past the start-up hand-off window: a settled cluster

    def start(self, url: str) -> Workspace:
        ws = Workspace(
            url, clock=self.clock, transport=self.transport, rng=random.Random(1), handoff_window=60
        )
        ws.new_group("g", 1 << 20, self._loader(url), hot_probability=self.hot_probability)
        ws.set_peers(URLS)
        self.transport.register(url, ws)
        self.ws[url] = ws
        return ws

    def _loader(self, url: str):
        async def load(key: str) -> Entry:
            self.loads[url] += 1
            self.version += 1
            version = self.version
            if self.gate is not None:
                await self.gate.wait()
            return Entry(f"{key}@v{version}".encode(), self.ttl)

        return load

    def group(self, url: str) -> tokencache.Group:
        group = self.ws[url].get_group("g")
        assert group is not None
        return group

    def key_owned_by(self, url: str, avoid: tuple[str, ...] = ()) -> str:
        ring = self.ws[A].membership
        for i in range(1000):
            key = f"k{i}"
            if (ring.owner(key) or A) == url and key not in avoid:
                return key
        raise AssertionError("no key")


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


# -- removes stick ---------------------------------------------------------------------------


async def test_remove_racing_a_load_on_the_owner_wins() -> None:
    cluster = Cluster()
    key = cluster.key_owned_by(A)
    cluster.gate = asyncio.Event()
    early = asyncio.create_task(cluster.group(A).get(key))  # v1 is being loaded
    await settle()
    await cluster.group(A).remove(key)  # returns while v1's load is still in flight
    cluster.gate.set()
    assert await early == f"{key}@v1".encode()  # its own waiters get it...
    assert cluster.group(A).peek(key) is None  # ...but it is stored nowhere
    cluster.gate = None
    assert await cluster.group(B).get(key) == f"{key}@v2".encode()
    assert cluster.loads[A] == 2


async def test_a_get_after_remove_does_not_join_the_older_load() -> None:
    cluster = Cluster()
    key = cluster.key_owned_by(A)
    cluster.gate = asyncio.Event()
    early = asyncio.create_task(cluster.group(A).get(key))
    await settle()
    await cluster.group(A).remove(key)
    late = asyncio.create_task(cluster.group(A).get(key))
    await settle()
    cluster.gate.set()
    assert await early == f"{key}@v1".encode()
    assert await late == f"{key}@v2".encode()
    assert cluster.group(A).peek(key) == f"{key}@v2".encode()


async def test_remove_racing_a_load_on_a_non_owner_keeps_no_hot_copy() -> None:
    cluster = Cluster(hot_probability=1.0)
    key = cluster.key_owned_by(C)
    cluster.gate = asyncio.Event()
    fetching = asyncio.create_task(cluster.group(A).get(key))  # A asks C; C loads v1
    await settle()
    await cluster.group(B).remove(key)
    cluster.gate.set()
    assert await fetching == f"{key}@v1".encode()
    for url in URLS:
        assert cluster.group(url).peek(key) is None, url
    cluster.gate = None
    assert await cluster.group(A).get(key) == f"{key}@v2".encode()


async def test_owner_initiated_remove_clears_its_own_copy_before_the_peers() -> None:
    cluster = Cluster(hot_probability=1.0)
    key = cluster.key_owned_by(C)
    old = await cluster.group(A).get(key)  # C holds v1 in main, A a hot copy
    cluster.transport.gates[A] = asyncio.Event()  # the remove to A is slow
    removing = asyncio.create_task(cluster.group(C).remove(key))
    await settle()
    # B asks the owner in between: the owner's copy is already gone, B gets a fresh value.
    fresh = await cluster.group(B).get(key)
    assert fresh != old
    assert cluster.group(B).peek(key) == fresh
    cluster.transport.gates[A].set()
    await removing
    assert cluster.group(A).peek(key) is None


async def test_remove_reaches_every_peer_in_parallel_within_one_timeout() -> None:
    cluster = Cluster()
    for url in URLS:
        cluster.ws[url].control_timeout = 2.0
    key = cluster.key_owned_by(A)
    cluster.transport.gates[B] = asyncio.Event()
    cluster.transport.gates[C] = asyncio.Event()
    removing = asyncio.create_task(cluster.group(A).remove(key))
    await settle()
    # Both removes are on their way before either answered: not one after the other.
    assert sorted(op for op in cluster.transport.calls if op[0] == "remove") == [
        ("remove", B),
        ("remove", C),
    ]
    cluster.transport.gates[B].set()
    cluster.transport.gates[C].set()
    await removing


async def test_remove_says_which_peers_it_could_not_reach() -> None:
    # An owner that cannot be reached keeps its copy (and serves it) until the TTL ends: the
    # caller must be able to tell, since remove itself never raises for a peer.
    cluster = Cluster(hot_probability=1.0)
    key = cluster.key_owned_by(A)
    old = await cluster.group(B).get(key)  # A holds it in main, B a hot copy
    assert await cluster.group(C).remove(key) == ()
    old = await cluster.group(B).get(key)
    cluster.transport.down.add(A)
    assert await cluster.group(C).remove(key) == (A,)
    assert cluster.group(B).peek(key) is None  # the copies it reached are gone
    assert cluster.group(A).peek(key) == old  # the owner's is not
    cluster.transport.down.discard(A)
    cluster.transport.black_hole(B)
    removing = asyncio.create_task(cluster.group(A).remove(key))
    await settle()
    cluster.transport.expire_liveness(B)
    assert await removing == (B,)


async def test_compare_and_invalidate_leaves_a_newer_value_and_its_load_alone() -> None:
    cluster = Cluster()
    key = cluster.key_owned_by(A)
    v1 = await cluster.group(A).get(key)
    await cluster.group(B).remove(key, if_value=b"something else")
    assert cluster.group(A).peek(key) == v1
    await cluster.group(B).remove(key, if_value=v1)
    assert cluster.group(A).peek(key) is None


# -- slow is not dead; black holes -----------------------------------------------------------


async def test_a_slow_owner_is_waited_for_and_never_marked_unreachable() -> None:
    cluster = Cluster()
    key = cluster.key_owned_by(C)
    other = cluster.key_owned_by(C, avoid=(key,))
    cluster.gate = asyncio.Event()  # C's load is slow (a backend waiting on Retry-After)
    waiters = [asyncio.create_task(cluster.group(u).get(key)) for u in (A, B, A, B)]
    await settle()
    cluster.clock.advance(30)
    assert cluster.ws[A].peer_reachable(C)
    cluster.gate.set()
    assert len(set(await asyncio.gather(*waiters))) == 1
    assert cluster.loads == Counter({C: 1})  # one load, not one per caller
    await cluster.group(A).get(other)
    assert cluster.loads == Counter({C: 2})  # its other keys still go to it


async def test_a_dead_owner_is_skipped_for_the_back_off() -> None:
    cluster = Cluster()
    key = cluster.key_owned_by(C)
    other = cluster.key_owned_by(C, avoid=(key,))
    cluster.transport.down.add(C)
    await cluster.group(A).get(key)
    assert not cluster.ws[A].peer_reachable(C)
    fetches = len(cluster.transport.fetches)
    await cluster.group(A).get(other)
    assert len(cluster.transport.fetches) == fetches  # not asked again during the back-off
    assert cluster.loads == Counter({A: 2})


async def test_a_black_holed_owner_releases_its_callers_at_the_liveness_timeout() -> None:
    cluster = Cluster()
    key = cluster.key_owned_by(C)
    cluster.transport.black_hole(C)  # C froze under a pooled connection
    waiters = [asyncio.create_task(cluster.group(A).get(key)) for _ in range(5)]
    await settle()
    assert not any(w.done() for w in waiters)
    cluster.transport.expire_liveness(C)
    values = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert len(set(values)) == 1
    assert cluster.loads == Counter({A: 1})
    assert not cluster.ws[A].peer_reachable(C)


# -- static peers: health checks -------------------------------------------------------------


async def test_a_static_peer_failing_health_checks_leaves_every_ring_and_rejoins() -> None:
    cluster = Cluster()
    checkers = {u: HealthChecker(cluster.ws[u].membership, cluster.transport) for u in (A, B)}
    key = cluster.key_owned_by(C)
    cluster.transport.down.add(C)
    for _ in range(2):
        await asyncio.gather(*(c.check_once() for c in checkers.values()))
    assert cluster.ws[A].peers == cluster.ws[B].peers == (A, B)
    new_owner = cluster.ws[A].owner(key) or A
    assert (cluster.ws[B].owner(key) or B) == new_owner
    assert cluster.ws[A].membership.stats.exclusions["unhealthy"] == 1
    await cluster.group(A).get(key)
    assert cluster.loads == Counter({new_owner: 1})  # no connect attempt per key to the dead one
    cluster.transport.down.discard(C)
    await asyncio.gather(*(c.check_once() for c in checkers.values()))
    assert cluster.ws[A].peers == cluster.ws[B].peers == tuple(URLS)
    assert cluster.ws[A].membership.stats.rejoins == 1


async def test_one_failed_ping_is_not_enough_to_leave_the_ring() -> None:
    cluster = Cluster()
    checker = HealthChecker(cluster.ws[A].membership, cluster.transport, failures=2)
    cluster.transport.down.add(C)
    await checker.check_once()
    cluster.transport.down.discard(C)
    await checker.check_once()
    cluster.transport.down.add(C)
    await checker.check_once()
    assert cluster.ws[A].peers == tuple(URLS)


# -- leave, hand-off, previous owners --------------------------------------------------------


async def test_leave_drops_the_member_at_once_and_hands_its_keys_to_the_new_owners() -> None:
    cluster = Cluster()
    keys = [f"h{i}" for i in range(60)]
    owned_by_c = [k for k in keys if cluster.ws[A].owner(k) == C]
    assert owned_by_c
    await asyncio.gather(*(cluster.group(A).get(k) for k in keys))
    before = cluster.loads.copy()
    report = await cluster.ws[C].leave(within=5)
    assert report.peers_told == 2
    assert report.entries_sent == len(owned_by_c)
    assert cluster.ws[A].peers == cluster.ws[B].peers == (A, B)
    cluster.transport.down.add(C)  # gone
    values = await asyncio.gather(*(cluster.group(u).get(k) for k in keys for u in (A, B)))
    assert all(v.startswith(b"h") for v in values)
    assert cluster.loads == before  # not one key loaded again


async def test_a_leaving_member_refuses_pings_so_it_cannot_rejoin_while_it_drains() -> None:
    cluster = Cluster()
    checker = HealthChecker(cluster.ws[A].membership, cluster.transport)
    await cluster.ws[C].leave(within=5)
    await checker.check_once()
    assert C not in cluster.ws[A].peers
    cluster.start(C)  # restarted: answers pings again
    await checker.check_once()
    assert C in cluster.ws[A].peers


async def test_a_new_owner_asks_the_previous_owner_before_loading() -> None:
    cluster = Cluster()
    key = cluster.key_owned_by(C)
    value = await cluster.group(A).get(key)
    assert cluster.loads == Counter({C: 1})
    for url in (A, B):
        cluster.ws[url].serve_leave(C)  # C said it leaves; no hand-off arrived (yet)
    new_owner = cluster.ws[A].owner(key) or A
    assert await cluster.group(B).get(key) == value
    assert cluster.loads == Counter({C: 1})
    assert cluster.group(new_owner).stats.handoff_hits == 1


async def test_without_the_previous_owner_a_hot_copy_is_asked() -> None:
    cluster = Cluster(hot_probability=1.0)
    key = cluster.key_owned_by(C)
    value = await cluster.group(A).get(key)  # A keeps a hot copy
    await cluster.group(B).get(key)  # so does B
    for url in (A, B):
        cluster.ws[url].serve_leave(C)
    cluster.transport.down.add(C)  # and it is gone
    new_owner = cluster.ws[A].owner(key) or A
    cluster.group(new_owner).hot_cache.remove(key)  # only the other one has a copy
    assert await cluster.group(new_owner).get(key) == value
    assert cluster.loads == Counter({C: 1})


async def test_a_returning_node_asks_before_loading() -> None:
    cluster = Cluster()
    key = cluster.key_owned_by(C)
    await cluster.ws[C].leave(within=5)  # hands its keys to A or B
    cluster.transport.down.add(C)
    value = await cluster.group(A).get(key)
    before = cluster.loads.copy()
    cluster.transport.down.discard(C)
    cluster.start(C)  # back, empty
    for url in (A, B):
        cluster.ws[url].membership.include(C)
    assert await cluster.group(A).get(key) == value  # A asks C; C asks its previous owner
    assert await cluster.group(C).get(key) == value
    assert cluster.loads == before


async def test_the_handoff_window_ends() -> None:
    cluster = Cluster()
    key = cluster.key_owned_by(C)
    await cluster.group(A).get(key)
    for url in (A, B):
        cluster.ws[url].serve_leave(C)
    cluster.clock.advance(61)
    new_owner = cluster.ws[A].owner(key) or A
    await cluster.group(new_owner).get(key)
    assert cluster.loads[new_owner] == 1  # a stale ring is not asked for ever


# -- typed records ---------------------------------------------------------------------------


async def test_markers_are_stored_but_never_served_as_values() -> None:
    ws = Workspace("", clock=FakeClock())

    async def load(key: str) -> Entry:
        return Entry(b"TCP1no-store", 60, Kind.MARKER)

    group = ws.new_group("g", 1 << 20, load)
    fetched = await group.get_fetched("k")
    assert fetched.kind is Kind.MARKER
    assert (await group.get_fetched("k")) == (b"TCP1no-store", 60.0, False, Kind.MARKER)
    assert group.peek("k") is None
    assert group.peek_with_ttl("k") is None
    with pytest.raises(NotAValue):
        await group.get("k")
    assert group.stats.local_loads == 0  # a control record is not a successful load
    assert group.stats.local_load_markers == 1
    assert group.stats.local_load_errs == 0


async def test_transient_records_reach_the_waiters_only_and_count_as_load_errors() -> None:
    ws = Workspace("", clock=FakeClock())
    calls = 0

    async def load(key: str) -> Entry:
        nonlocal calls
        calls += 1
        return Entry(b"TCE1backend down", 60, Kind.TRANSIENT)  # even with a TTL

    group = ws.new_group("g", 1 << 20, load)
    assert (await group.get_fetched("k")).kind is Kind.TRANSIENT
    assert (await group.get_fetched("k")).kind is Kind.TRANSIENT
    assert calls == 2
    assert len(group.main_cache) == 0
    assert group.stats.local_load_errs == 2


async def test_kinds_travel_to_peers_and_markers_are_not_peer_loads() -> None:
    cluster = Cluster(hot_probability=1.0)
    key = cluster.key_owned_by(C)

    async def load(key: str) -> Entry:
        return Entry(b"pass", 60, Kind.MARKER)

    cluster.group(C).loader = load
    fetched = await cluster.group(A).get_fetched(key)
    assert fetched.kind is Kind.MARKER
    assert cluster.group(A).stats.peer_loads == 0
    assert cluster.group(A).peek(key) is None  # the hot copy is a marker too
    assert (await cluster.group(A).get_fetched(key)).kind is Kind.MARKER


# -- singleflight ----------------------------------------------------------------------------


async def test_callers_with_different_min_ttl_do_not_share_a_flight() -> None:
    ws = Workspace("", clock=FakeClock())
    gate = asyncio.Event()
    calls = 0

    async def load(key: str) -> Entry:
        nonlocal calls
        calls += 1
        await gate.wait()
        return Entry(b"v", 60)

    group = ws.new_group("g", 1 << 20, load)
    tasks = [asyncio.create_task(group.get_fetched("k", min_ttl=t)) for t in (0.0, 5.0, 5.0, 30.0)]
    await settle()
    gate.set()
    await asyncio.gather(*tasks)
    assert calls == 3


async def test_a_caller_after_a_failed_flight_never_gets_its_old_exception() -> None:
    flight: SingleFlight[str, str] = SingleFlight()

    async def fail() -> str:
        raise RuntimeError("old")

    async def ok() -> str:
        return "new"

    first = asyncio.create_task(flight.do("k", fail))
    await settle()  # the task is done; its done-callback may not have run yet
    task = flight._calls.get("k")
    if task is None:  # the callback already ran: force the window by hand
        broken: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        broken.set_exception(RuntimeError("old"))
        flight._calls["k"] = broken  # type: ignore[assignment]
    assert await flight.do("k", ok) == ("new", False)
    with pytest.raises(RuntimeError):
        await first


async def test_a_cancelled_load_is_not_a_load_error() -> None:
    ws = Workspace("", clock=FakeClock())
    started = asyncio.Event()

    async def load(key: str) -> Entry:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    group = ws.new_group("g", 1 << 20, load)
    task = asyncio.ensure_future(group._run_loader("k", 0.0, None))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # groupcache's meanings: local_loads counts loads that succeeded, local_load_errs those that
    # failed; a cancelled load did neither.
    assert group.stats.local_loads == 0
    assert group.stats.local_load_errs == 0


async def test_a_hand_off_racing_a_remove_does_not_bring_the_old_value_back() -> None:
    cluster = Cluster()
    key = cluster.key_owned_by(A)
    await cluster.group(A).get(key)
    old = cluster.group(A).peek(key)
    assert old is not None
    await cluster.group(B).remove(key)  # reaches A (and C) ...
    cluster.ws[A].serve_put("g", key, old, 50.0)  # ... before a put that was already on its way
    assert cluster.group(A).peek(key) is None
    cluster.clock.advance(11)
    cluster.ws[A].serve_put("g", key, b"later hand-off", 50.0)
    assert cluster.group(A).peek(key) == b"later hand-off"


async def test_a_silent_peer_does_not_hold_up_the_hand_off_to_the_others() -> None:
    cluster = Cluster()
    keys = [f"h{i}" for i in range(60)]
    await asyncio.gather(*(cluster.group(A).get(k) for k in keys))
    without_c = cluster.ws[C].membership.ring_without(C)
    to_a = [k for k in keys if cluster.ws[A].owner(k) == C and without_c.owner(k) == A]
    to_b = [k for k in keys if cluster.ws[A].owner(k) == C and without_c.owner(k) == B]
    assert to_a and to_b
    cluster.transport.black_hole(B)  # B froze
    leaving = asyncio.create_task(cluster.ws[C].leave(within=30))
    await settle()
    assert cluster.group(A).stats.handoffs_received == len(to_a)  # A got its keys meanwhile
    assert not leaving.done()
    for _ in range(10):
        cluster.transport.expire_liveness(B)
        await settle()
        if leaving.done():
            break
    report = await leaving
    assert report.peers_told == 1
    assert report.entries_sent == len(to_a)
    assert report.entries_failed == len(to_b)
    assert C not in cluster.ws[A].peers
