"""A group: one named, byte-bounded cache with its loader, and the load path.

The load path of ``get`` (the engine's invariants are numbered):

1. main cache, then hot cache: a live value is a hit, served without I/O or a span;
2. a per-key singleflight (``_gets``) so concurrent misses in this process make one attempt; only
   callers with the same ``min_ttl`` share a flight (a flight for ``min_ttl=0`` may answer with a
   value a ``min_ttl=60`` caller must not accept);
3. the ring names the owner. Someone else → fetch from it over the transport. If the fetch fails
   or the owner declines, load locally and count a peer error (invariant 3: a peer never fails the
   caller). Only ``PeerError(unreachable=True)`` (the transport could not reach the peer or its
   liveness timeout passed) makes the engine skip the owner for a back-off; a slow owner that is
   still loading is waited for, so one slow load never becomes N. The owner's ``NotFound`` is final.
4. This process owns the key (or could not reach the owner) → ``_load_local``: a second singleflight
   (``_loads``) shared with requests that arrive *from peers*. Peer requests only ever take this step:
   they are never forwarded again (invariant 2), so two processes whose rings disagree cannot wait
   on each other (mailgun/groupcache #72).
5. Before running the loader, a key whose owner changed recently is asked of its previous owners
   (``lookup``: their caches only, never a load), then of a few other peers' hot copies; a found
   copy is stored with its remaining TTL. This is how a ring change costs no loads.

Removes stick: every load takes a generation ticket when it starts, and stores its result (main
or hot) only if the key was not removed since (:mod:`tokencache._generations`); a remove also
detaches the key's flights so callers after it start a fresh load.

Values loaded here go to the main cache; values fetched from the owner may become hot copies until
the owner's remaining TTL ends (the wire carries remaining seconds, not a timestamp, so clocks need
not agree). Which ones is decided by a frequency sketch (``_admission``, TinyLFU): the hot cache
holds its share (at most ``hot_fraction`` of main's bytes once the group is full, so
``hot_fraction / (1 + hot_fraction)`` of ``max_bytes``), or what main leaves free when that is
more; when full, a candidate displaces the least recently used hot copy only if it is asked for
more often. A ``Kind.TRANSIENT`` result, or a TTL <= 0, reaches the current waiters and is stored
nowhere.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator

from opentelemetry import trace

from . import _propagation
from ._admission import HotAdmission
from ._clock import Clock
from ._context import MAX_CONTEXT_BYTES, _current
from ._copies import find_moved_copy
from ._entry import Entry, Loader, Result, check_key, value_digest
from ._errors import Declined, InvalidArgument, NotAValue, NotFound, PeerError
from ._fetched import Fetched, Kind
from ._generations import Generations
from ._lru import LRUCache, entry_size
from ._membership import PeerPicker
from ._singleflight import SingleFlight
from ._spans import Spans
from ._stats import GroupStats
from ._ticket import HitTicket

# A handed-over entry for a key removed this recently is refused: the put may have been on its
# way while the remove ran (a leave's hand-off is bounded to a few seconds).
_PUT_TOMBSTONE_SECONDS = 10.0


def _stores(ttl: float | None, kind: Kind) -> bool:
    return kind is not Kind.TRANSIENT and (ttl is None or ttl > 0)


HOT_ENTRY_GUESS = 1024  # bytes per hot copy assumed when sizing the frequency sketch


class Group:
    """A named cache whose misses are loaded once for the whole cluster. Made by ``Workspace.new_group``."""

    def __init__(
        self,
        peers: PeerPicker,
        name: str,
        max_bytes: int,
        loader: Loader | Callable[[str], Awaitable[Entry]],
        *,
        clock: Clock,
        spans: Spans,
        max_key_bytes: int,
        max_value_bytes: int,
        control_timeout: float,
        lookup_timeout: float,
        hot_fraction: float,
        hot_probability: float,
        stale_window: float,
        rng: random.Random,
    ) -> None:
        self._peers = peers
        self.name = name
        self.max_bytes = max_bytes
        self.loader = loader  # public: integrations find their own groups by it
        self._spans = spans
        self._max_key_bytes = max_key_bytes
        self._max_value_bytes = max_value_bytes
        self._control_timeout = control_timeout
        self._lookup_timeout = lookup_timeout
        self._hot_fraction = hot_fraction
        self._hot_probability = hot_probability
        self._rng = rng
        self._clock = clock
        self.main_cache = LRUCache(clock, stale_window)
        self.hot_cache = LRUCache(clock, stale_window)
        # Hot copies' share: what `_store` lets them keep once the group is full (hot <=
        # hot_fraction x main). Admitting past it would only make `_store` evict the least
        # recently used hot copy at once, unchecked by the sketch (a scan would flush popular
        # copies).
        self._hot_budget = int(max_bytes * hot_fraction / (1 + hot_fraction))
        self._admission = HotAdmission(self._hot_budget // HOT_ENTRY_GUESS, rng)
        self.stats = GroupStats()
        self._generations = Generations()
        self._gets: SingleFlight[tuple[str, float], Fetched] = SingleFlight()
        self._loads: SingleFlight[tuple[str, float], Fetched] = SingleFlight()

    @property
    def clock(self) -> Clock:
        """The clock entries expire on (`HitTicket.expires_at` is on it)."""
        return self._clock

    # -- synchronous lookups -------------------------------------------------------------------

    def peek(self, key: str) -> bytes | None:
        """The value of ``key`` if this process holds it live (main or hot); no I/O, no await.

        A hit counts as a get and a hit; a miss counts nothing (the ``get`` that follows counts it).
        Markers are not values: they are never returned here.
        """
        value = self.main_cache.get_value(key)
        if value is None:
            value = self.hot_cache.get_value(key)
            if value is None:
                return None
            self._admission.record(key)
        self.stats.gets += 1
        self.stats.cache_hits += 1
        return value

    def peek_with_ttl(self, key: str) -> Result | None:
        """Like :meth:`peek`, with the remaining TTL (``None``: no expiry)."""
        # A server's hit path: kept flat on purpose (no helper calls).
        found = self.main_cache.get(key)
        if found is None:
            found = self.hot_cache.get(key)
            if found is None:
                return None
            self._admission.record(key)
        stats = self.stats
        stats.gets += 1
        stats.cache_hits += 1
        return found

    def ticket(self, key: str, value: bytes) -> HitTicket | None:
        """A `HitTicket` for the entry of ``key`` that holds exactly ``value`` (the object a peek
        just returned), or None when it is no longer there. Counts nothing."""
        main, hot = self.main_cache, self.hot_cache
        caches = ((main, None, None), (hot, self._admission.sketch, main))
        for cache, sketch, missed in caches:
            item = cache.item(key)
            if item is not None and item.live and item.value is value and not item.marker:
                return HitTicket(cache, item, key, self.stats, sketch, missed)
        return None

    def peek_stale(self, key: str) -> tuple[bytes, float] | None:
        """An expired value still within ``stale_window``, and how many seconds ago it expired."""
        return self.main_cache.peek_stale(key) or self.hot_cache.peek_stale(key)

    def _lookup(self, key: str, min_ttl: float) -> Fetched | None:
        found = self.main_cache.lookup(key, min_ttl)
        if found is None:
            found = self.hot_cache.lookup(key, min_ttl)
            if found is None:
                return None
            self._admission.record(key)
        value, ttl, marker = found
        return Fetched(value, ttl, False, Kind.MARKER if marker else Kind.VALUE)

    # -- the load path -------------------------------------------------------------------------

    async def get(self, key: str, *, min_ttl: float = 0.0, context: bytes | None = None) -> bytes:
        """The value of ``key``, from a cache or loaded once for the cluster.

        With ``min_ttl`` > 0 a cached value with less life left is reloaded by the owner and
        replaced (refresh-ahead). ``context`` reaches the loader that runs for this get, on
        whichever process owns the key (see :func:`tokencache.load_context`). Raises ``NotFound``,
        ``NotAValue`` (the loader produced a marker or transient record: use ``get_fetched``) or
        the loader's own error.
        """
        if min_ttl:
            return (await self.get_with_ttl(key, min_ttl=min_ttl, context=context))[0]
        # The hit path is peek's: two dict lookups and a few integer increments, no span, no task.
        value = self.peek(key)
        if value is not None:
            return value
        self.stats.gets += 1  # peek counts hits only
        return _value_of(await self._miss(key, 0.0, context)).value

    async def get_with_ttl(
        self, key: str, *, min_ttl: float = 0.0, context: bytes | None = None
    ) -> Result:
        """Like :meth:`get`, returning ``(value, remaining ttl or None)``."""
        fetched = _value_of(await self.get_fetched(key, min_ttl=min_ttl, context=context))
        return fetched.value, fetched.ttl

    async def get_fetched(
        self,
        key: str,
        *,
        min_ttl: float = 0.0,
        context: bytes | None = None,
        owner_answered: BaseException | None = None,
    ) -> Fetched:
        """Like :meth:`get_with_ttl`, also saying whether a loader ran for this call and what kind
        of result it is (markers and transient records come back here, never from ``get``).

        ``owner_answered``: what the owner just answered to :meth:`fetch_soon` for ``key``
        instead of a value; the owner is not asked again (``NotFound`` is raised, anything else
        loads here, as after the same answer on this path).
        """
        self.stats.gets += 1
        found = self._lookup(key, min_ttl)
        if found is not None:
            self.stats.cache_hits += 1
            return found
        return await self._miss(key, min_ttl, context, owner_answered)

    async def _miss(
        self,
        key: str,
        min_ttl: float,
        context: bytes | None,
        owner_answered: BaseException | None = None,
    ) -> Fetched:
        check_key(key, self._max_key_bytes)
        if context is not None and len(context) > MAX_CONTEXT_BYTES:
            raise InvalidArgument(f"load context longer than {MAX_CONTEXT_BYTES} bytes")
        self.stats.loads += 1
        with self._spans.span("tokencache.get", attributes={"tokencache.group": self.name}):
            fetched, _ = await self._gets.do(
                (key, min_ttl), lambda: self._load(key, min_ttl, context, owner_answered)
            )
            return fetched

    async def _load(
        self,
        key: str,
        min_ttl: float,
        context: bytes | None,
        owner_answered: BaseException | None = None,
    ) -> Fetched:
        # Another flight may have filled the cache between our miss and this flight starting
        # (groupcache's double-check): look again before going anywhere.
        found = self._lookup(key, min_ttl)
        if found is not None:
            return found
        self.stats.loads_deduped += 1
        owner = self._peers.owner(key)
        if owner is not None and owner_answered is not None:
            if isinstance(owner_answered, NotFound):
                raise owner_answered
            owner = None  # the owner could not give a value just now: load here
        if owner is not None:
            if not self._peers.peer_reachable(owner):
                # The owner could not be reached moments ago: load here at once instead of
                # paying the connect timeout again for every key it owns.
                self.stats.peer_errors += 1
                return await self._load_local(key, min_ttl, context)
            try:
                return await self._fetch_from_peer(owner, key, min_ttl, context)
            except NotFound:
                raise
            except Declined:
                pass  # the owner cannot load it (e.g. no credentials there): load here
            except PeerError as exc:
                self.stats.peer_errors += 1
                # Only a peer that could not be reached (or went silent past the transport's
                # liveness timeout) is skipped; a slow or failing answer is not "dead".
                if exc.unreachable:
                    self._peers.mark_unreachable(owner)
        return await self._load_local(key, min_ttl, context)

    def fetch_soon(
        self,
        key: str,
        context: bytes | None,
        done: Callable[[Fetched | BaseException], None],
    ) -> bool:
        """Start fetching ``key`` from its owner without a task, for a server's hit path.

        Applies when another process owns ``key``, is not in its back-off, no spans are being
        made, and the transport can send at once (``start_fetch``, an open connection): then
        True, and ``done`` later gets the owner's answer, handled as :meth:`get_fetched` handles
        it (hot admission under the same generation rule, the same counters), or the exception
        the owner's answer was — the caller then takes :meth:`get_fetched` with it as
        ``owner_answered``, which loads here or raises without asking the owner again. False:
        nothing was sent. No singleflight: the owner's own loads are deduplicated, so the
        one-load-per-key guarantee is unchanged.
        """
        peers = self._peers
        start = getattr(peers.transport, "start_fetch", None)
        if start is None or self._spans.on:
            return False
        owner = peers.owner(key)
        if owner is None or not peers.peer_reachable(owner):
            return False
        if context is not None and len(context) > MAX_CONTEXT_BYTES:
            return False
        try:
            check_key(key, self._max_key_bytes)
        except InvalidArgument:
            return False
        ticket = self._generations.begin()
        started = time.perf_counter()

        def answered(result: Fetched | BaseException) -> None:
            try:
                if isinstance(result, BaseException):
                    if isinstance(result, PeerError):
                        self.stats.peer_errors += 1
                        if result.unreachable:
                            peers.mark_unreachable(owner)
                else:
                    # What get_fetched's miss path counts before it reaches the owner.
                    stats = self.stats
                    stats.gets += 1
                    stats.loads += 1
                    stats.loads_deduped += 1
                    self._took_from_peer(key, result, ticket, started)
            finally:
                self._generations.end(ticket)
                done(result)  # always: the caller holds a client's request until then

        if not start(owner, self.name, key, context=context, done=answered):
            self._generations.end(ticket)
            return False
        return True

    def _took_from_peer(self, key: str, fetched: Fetched, ticket: int, started: float) -> None:
        """What a value from the owner (fetched since `started`, under generation `ticket`) is
        counted as, and whether it becomes a hot copy: the one rule for both ways of asking."""
        stats = self.stats
        if fetched.kind is Kind.VALUE:
            stats.peer_loads += 1
        elapsed_ms = (time.perf_counter() - started) * 1000
        if elapsed_ms > stats.get_from_peers_latency_slowest_ms:
            stats.get_from_peers_latency_slowest_ms = elapsed_ms
        if (
            self._hot_budget > 0  # a share that rounds to 0 bytes keeps hot copies off
            and _stores(fetched.ttl, fetched.kind)
            and self._rng.random() < self._hot_probability
            and self._generations.may_store(key, ticket)
        ):
            self._offer_hot(key, fetched)

    async def _fetch_from_peer(
        self, owner: str, key: str, min_ttl: float, context: bytes | None
    ) -> Fetched:
        headers: dict[str, str] = {}
        ticket = self._generations.begin()
        try:
            spans = self._spans
            with spans.span(
                "tokencache.peer.fetch",
                kind=trace.SpanKind.CLIENT,
                attributes={"tokencache.group": self.name, "tokencache.peer": owner},
            ):
                if spans.on:
                    _propagation.inject(headers)
                started = time.perf_counter()
                fetched = await self._peers.transport.fetch(
                    owner, self.name, key, min_ttl=min_ttl, context=context, trace=headers
                )
            self._took_from_peer(key, fetched, ticket, started)
            return fetched
        finally:
            self._generations.end(ticket)

    def _hot_room(self) -> int:
        """The bytes the hot cache may hold now: its share (`_hot_budget`), or all that main
        leaves free when that is more. Memory main does not use would otherwise sit idle while
        requests pay peer hops; it is lent, not given: when main needs room, hot copies go first
        while they hold more than ``hot_fraction`` of main's bytes (`_store`)."""
        return max(self._hot_budget, self.max_bytes - self.main_cache.bytes)

    def _offer_hot(self, key: str, fetched: Fetched) -> None:
        """A copy fetched from its owner becomes a hot copy if the admission policy lets it in."""
        self._admission.record(key)
        size = entry_size(key, fetched.value)
        if self._admission.make_room(self.hot_cache, key, size, self._hot_room()):
            self.stats.hot_admissions += 1
            marker = fetched.kind is Kind.MARKER
            self._store(self.hot_cache, key, fetched.value, fetched.ttl, marker)
        else:
            self.stats.hot_rejections += 1

    async def _load_local(self, key: str, min_ttl: float, context: bytes | None) -> Fetched:
        fetched, _ = await self._loads.do(
            (key, min_ttl), lambda: self._run_loader(key, min_ttl, context)
        )
        return fetched

    async def _run_loader(self, key: str, min_ttl: float, context: bytes | None) -> Fetched:
        found = self.main_cache.lookup(key, min_ttl)
        if found is not None:
            return Fetched(found[0], found[1], False, Kind.MARKER if found[2] else Kind.VALUE)
        ticket = self._generations.begin()
        try:
            copy = await self._ask_others(key, min_ttl)
            if copy is not None:
                if self._generations.may_store(key, ticket):
                    self._store(
                        self.main_cache, key, copy.value, copy.ttl, copy.kind is Kind.MARKER
                    )
                return copy
            entry = await self._call_loader(key, context)
            if _stores(entry.ttl, entry.kind) and self._generations.may_store(key, ticket):
                self._store(self.main_cache, key, entry.value, entry.ttl, entry.kind is Kind.MARKER)
            return Fetched(entry.value, entry.ttl, True, entry.kind)
        finally:
            self._generations.end(ticket)

    async def _call_loader(self, key: str, context: bytes | None) -> Entry:
        # groupcache's counters: local_loads counts loads that produced a value, local_load_errs
        # those that failed (an exception, a broken promise of the loader, or a transient answer
        # describing a failed load); a marker (a control record) counts in local_load_markers
        # only. Cancellation is none of them.
        with self._spans.span("tokencache.load", attributes={"tokencache.group": self.name}):
            token = _current.set(context)
            try:
                entry = await self.loader(key)
            except NotFound:
                raise
            except Exception:  # cancellation is not a load error: it is not counted
                self.stats.local_load_errs += 1
                raise
            finally:
                _current.reset(token)
        checked: object = entry  # loaders are user code: check what the types promise
        if (
            not isinstance(checked, Entry)
            or not isinstance(checked.value, bytes)
            or not isinstance(checked.kind, Kind)
        ):
            self.stats.local_load_errs += 1
            raise InvalidArgument(f"loader of group {self.name!r} must return Entry(bytes, ttl)")
        if len(entry.value) > self._max_value_bytes:
            self.stats.local_load_errs += 1
            raise InvalidArgument(f"value over {self._max_value_bytes} bytes in {self.name!r}")
        if entry.kind is Kind.TRANSIENT:
            self.stats.local_load_errs += 1  # a control answer for a failed load, not a value
        elif entry.kind is Kind.MARKER:
            self.stats.local_load_markers += 1  # a control record: stored, but not a value
        else:
            self.stats.local_loads += 1
        return entry

    async def _ask_others(self, key: str, min_ttl: float) -> Fetched | None:
        found = await find_moved_copy(
            self._peers, self.name, key, min_ttl, self._lookup_timeout, self.stats
        )
        if found is not None:
            self.stats.handoff_hits += 1
        return found

    def serve_cached(self, key: str, min_ttl: float) -> Fetched | None:
        """Answer a peer's get from this process's caches only (the peer port's no-task path);
        ``None`` means the caller goes on with :meth:`serve_peer`, which counts the request."""
        found = self._lookup(key, min_ttl)
        if found is not None:
            self.stats.server_requests += 1
        return found

    async def serve_peer(self, key: str, min_ttl: float, context: bytes | None = None) -> Fetched:
        """Answer a peer's get: from this process's caches or its own loader, never forwarded."""
        self.stats.server_requests += 1
        found = self._lookup(key, min_ttl)
        if found is not None:
            return found
        if self._peers.owner(key) is not None:
            # Our ring says someone else owns it (rings out of sync during a rollout).
            self.stats.crosstalk_refusals += 1
        return await self._load_local(key, min_ttl, context)

    def serve_lookup(self, key: str) -> Fetched | None:
        """This process's cached copy of ``key`` (main, then hot), if any; never loads."""
        self.stats.lookups_served += 1
        return self._lookup(key, 0.0)

    def accept(self, key: str, value: bytes, ttl: float | None, kind: Kind) -> bool:
        """Store an entry handed over by a leaving peer; True when it was stored.

        A live copy already held here wins (it is at least as new); transient records, values
        over the size limit and keys removed here moments ago are refused.
        """
        if not _stores(ttl, kind) or len(value) > self._max_value_bytes:
            return False
        if self.main_cache.lookup(key) is not None:
            return False
        if self._generations.removed_since(key, self._clock.now() - _PUT_TOMBSTONE_SECONDS):
            return False
        self._store(self.main_cache, key, value, ttl, kind is Kind.MARKER)
        self.stats.handoffs_received += 1
        return True

    def handoff_entries(self) -> Iterator[tuple[str, bytes, float | None, Kind]]:
        """The main cache's live entries, most recently used first (what a leaving process hands
        to the keys' new owners)."""
        for key, value, ttl, marker in self.main_cache.live_entries():
            yield key, value, ttl, Kind.MARKER if marker else Kind.VALUE

    # -- storing and removing ------------------------------------------------------------------

    def _store(
        self, cache: LRUCache, key: str, value: bytes, ttl: float | None, marker: bool = False
    ) -> None:
        if self.max_bytes <= 0:
            return
        cache.add(key, value, ttl, marker=marker)
        main, hot = self.main_cache, self.hot_cache
        # Evict until both fit: expired entries of either cache first, then from hot while it
        # holds more than its share of main (groupcache), else main's least recently used.
        while main.bytes + hot.bytes > self.max_bytes:
            if main.evict_expired_one() or hot.evict_expired_one():
                continue
            victim = hot if hot.bytes > main.bytes * self._hot_fraction or not len(main) else main
            if not victim.evict_one():
                break

    def remove_local(self, key: str, if_digest: str | None = None) -> bool:
        """Drop ``key`` from this process's caches (where the value matches ``if_digest``).

        Loads of ``key`` in flight here may no longer store their result, and later callers do
        not join them: unless a newer value than ``if_digest`` is held (compare-and-invalidate
        leaves a newer value and the loads that may produce it alone).
        """
        removed = False
        newer = False
        for cache in (self.main_cache, self.hot_cache):
            current = cache.value_of(key)
            if current is None:
                continue
            if if_digest is None or value_digest(current) == if_digest:
                removed = cache.remove(key) or removed
            else:
                newer = True
        if not newer:
            self._generations.removed(key, self._clock.now())
            self._gets.forget(lambda k: k[0] == key)
            self._loads.forget(lambda k: k[0] == key)
        return removed

    async def remove(self, key: str, *, if_value: bytes | None = None) -> tuple[str, ...]:
        """Remove ``key`` cluster-wide: the owner's copy first, then every other copy in parallel.

        With ``if_value``, only copies whose value still equals it are removed (compare-and-
        invalidate: a newer value someone already loaded survives). After ``remove`` returns, no
        load that began before it stores its result on a process it reached. A peer that cannot
        be reached within the control timeout is counted as a peer error and skipped; its copy
        ends with its TTL (when it is the owner, it keeps serving that copy to the cluster).
        Returns the peers that could not be reached (empty: every process was told).
        """
        check_key(key, self._max_key_bytes)
        digest = None if if_value is None else value_digest(if_value)
        owner = self._peers.owner(key)
        missed: list[str] = []
        if owner is None:
            self.remove_local(key, digest)
        else:
            if not await self._remove_at(owner, key, digest):
                missed.append(owner)
            self.remove_local(key, digest)
        others = [p for p in self._peers.peers if p not in (owner, self._peers.self_url)]
        if others:
            told = await asyncio.gather(*(self._remove_at(p, key, digest) for p in others))
            missed.extend(p for p, ok in zip(others, told, strict=True) if not ok)
        return tuple(missed)

    async def _remove_at(self, peer: str, key: str, digest: str | None) -> bool:
        try:
            async with asyncio.timeout(self._control_timeout):
                await self._peers.transport.remove(peer, self.name, key, if_digest=digest)
        except (PeerError, TimeoutError):
            self.stats.peer_errors += 1
            return False
        return True

    def purge_expired(self) -> int:
        """Drop expired entries (past the stale window) from both caches; return how many."""
        return self.main_cache.purge_expired() + self.hot_cache.purge_expired()


def _value_of(fetched: Fetched) -> Fetched:
    if fetched.kind is not Kind.VALUE:
        raise NotAValue(fetched.kind)
    return fetched
