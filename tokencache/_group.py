"""A group: one named, byte-bounded cache with its loader, and the load path.

The load path of ``get`` (invariants from DESIGN.md are numbered):

1. main cache, then hot cache: a live value is a hit, served without I/O or a span;
2. a per-key singleflight (``_gets``) so concurrent misses in this process make one attempt;
3. the ring names the owner. Someone else → fetch from it over the transport. If the fetch fails,
   times out or the owner declines, load locally and count a peer error (invariant 3: a peer never
   fails the caller). The owner's ``NotFound`` is final and reaches the caller.
4. This process owns the key (or could not reach the owner) → ``_load_local``: a second singleflight
   (``_loads``) shared with requests that arrive *from peers*. Peer requests only ever take this step:
   they are never forwarded again (invariant 2), so two processes whose rings disagree cannot wait
   on each other (mailgun/groupcache #72).

Why two singleflights: if peer requests joined ``_gets`` they could wait on a flight that is itself
forwarding to the asking peer, A→B→A. ``_loads`` never forwards, so waiting on it is always safe.

Values loaded here go to the main cache; values fetched from the owner may become hot copies until
the owner's remaining TTL ends (the wire carries remaining seconds, not a timestamp, so clocks need
not agree). Which ones is decided by a frequency sketch (``_admission``, TinyLFU): the hot cache
holds at most ``hot_fraction`` of ``max_bytes``; when full, a candidate displaces the least recently
used hot copy only if it is asked for more often. A loader's ``Entry(ttl<=0)`` reaches the current waiters and
is stored nowhere.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from opentelemetry import propagate, trace

from ._admission import HotAdmission
from ._context import MAX_CONTEXT_BYTES, _current
from ._errors import Declined, InvalidArgument, NotFound, PeerError
from ._fetched import Fetched
from ._lru import LRUCache, entry_size
from ._singleflight import SingleFlight
from ._stats import GroupStats

if TYPE_CHECKING:
    from ._workspace import Workspace


@dataclass(frozen=True, slots=True)
class Entry:
    """What a loader returns: the value and its lifetime in seconds.

    ``ttl=None`` never expires; ``ttl<=0`` is handed to the callers waiting now and stored nowhere.
    """

    value: bytes
    ttl: float | None = None


class Loader(Protocol):
    """Loads the value of a key when no cache in the cluster has it. A plain ``async def``."""

    def __call__(self, key: str, /) -> Awaitable[Entry]:
        """Return the entry for ``key``; raise ``NotFound`` or ``Declined`` to steer the caller."""
        ...


Result = tuple[bytes, float | None]
HOT_ENTRY_GUESS = 1024  # bytes per hot copy assumed when sizing the frequency sketch


def value_digest(value: bytes) -> str:
    """The digest compare-and-remove sends instead of the value itself."""
    return hashlib.sha256(value).hexdigest()


class Group:
    """A named cache whose misses are loaded once for the whole cluster. Made by ``Workspace.new_group``."""

    def __init__(
        self,
        workspace: Workspace,
        name: str,
        max_bytes: int,
        loader: Loader | Callable[[str], Awaitable[Entry]],
        *,
        hot_fraction: float,
        hot_probability: float,
        stale_window: float,
        rng: random.Random,
    ) -> None:
        self._ws = workspace
        self.name = name
        self.max_bytes = max_bytes
        self.loader = loader  # public: integrations find their own groups by it
        self._hot_fraction = hot_fraction
        self._hot_probability = hot_probability
        self._rng = rng
        clock = workspace.clock
        self._clock = clock
        self.main_cache = LRUCache(clock, stale_window)
        self.hot_cache = LRUCache(clock, stale_window)
        self._hot_budget = int(max_bytes * hot_fraction)
        self._admission = HotAdmission(self._hot_budget // HOT_ENTRY_GUESS, rng)
        self.stats = GroupStats()
        self._gets: SingleFlight[tuple[str, bool], Fetched] = SingleFlight()
        self._loads: SingleFlight[tuple[str, bool], Fetched] = SingleFlight()

    # -- synchronous lookups -------------------------------------------------------------------

    def peek(self, key: str) -> bytes | None:
        """The value of ``key`` if this process holds it live (main or hot); no I/O, no await.

        A hit counts as a get and a hit; a miss counts nothing (the ``get`` that follows counts it).
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

    def peek_stale(self, key: str) -> tuple[bytes, float] | None:
        """An expired value still within ``stale_window``, and how many seconds ago it expired."""
        return self.main_cache.peek_stale(key) or self.hot_cache.peek_stale(key)

    def _lookup(self, key: str, min_ttl: float) -> Result | None:
        found = self.main_cache.get(key, min_ttl)
        if found is None:
            found = self.hot_cache.get(key, min_ttl)
            if found is not None:
                self._admission.record(key)
        return found

    # -- the load path -------------------------------------------------------------------------

    async def get(self, key: str, *, min_ttl: float = 0.0, context: bytes | None = None) -> bytes:
        """The value of ``key``, from a cache or loaded once for the cluster.

        With ``min_ttl`` > 0 a cached value with less life left is reloaded by the owner and
        replaced (refresh-ahead). ``context`` reaches the loader that runs for this get, on
        whichever process owns the key (see :func:`tokencache.load_context`). Raises ``NotFound``
        or the loader's own error.
        """
        if min_ttl:
            return (await self.get_with_ttl(key, min_ttl=min_ttl, context=context))[0]
        # The hit path is peek's: two dict lookups and a few integer increments, no span, no task.
        value = self.peek(key)
        if value is not None:
            return value
        self.stats.gets += 1  # peek counts hits only
        return (await self._miss(key, 0.0, context)).value

    async def get_with_ttl(
        self, key: str, *, min_ttl: float = 0.0, context: bytes | None = None
    ) -> Result:
        """Like :meth:`get`, returning ``(value, remaining ttl or None)``."""
        fetched = await self.get_fetched(key, min_ttl=min_ttl, context=context)
        return fetched.value, fetched.ttl

    async def get_fetched(
        self, key: str, *, min_ttl: float = 0.0, context: bytes | None = None
    ) -> Fetched:
        """Like :meth:`get_with_ttl`, also saying whether a loader ran for this call."""
        self.stats.gets += 1
        found = self._lookup(key, min_ttl)
        if found is not None:
            self.stats.cache_hits += 1
            return Fetched(found[0], found[1])
        return await self._miss(key, min_ttl, context)

    async def _miss(self, key: str, min_ttl: float, context: bytes | None) -> Fetched:
        self._ws.check_key(key)
        if context is not None and len(context) > MAX_CONTEXT_BYTES:
            raise InvalidArgument(f"load context longer than {MAX_CONTEXT_BYTES} bytes")
        self.stats.loads += 1
        with self._ws.tracer.start_as_current_span(
            "tokencache.get", attributes={"tokencache.group": self.name}
        ):
            fetched, _ = await self._gets.do(
                (key, min_ttl > 0), lambda: self._load(key, min_ttl, context)
            )
            return fetched

    async def _load(self, key: str, min_ttl: float, context: bytes | None) -> Fetched:
        # Another flight may have filled the cache between our miss and this flight starting
        # (groupcache's double-check): look again before going anywhere.
        found = self._lookup(key, min_ttl)
        if found is not None:
            return Fetched(found[0], found[1])
        self.stats.loads_deduped += 1
        owner = self._ws.owner(key)
        if owner is not None:
            if not self._ws.peer_reachable(owner):
                # The owner was unreachable moments ago: load here at once instead of paying
                # the connect timeout again for every key it owns.
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
                if exc.unreachable:
                    self._ws.mark_unreachable(owner)
        return await self._load_local(key, min_ttl, context)

    async def _fetch_from_peer(
        self, owner: str, key: str, min_ttl: float, context: bytes | None
    ) -> Fetched:
        headers: dict[str, str] = {}
        with self._ws.tracer.start_as_current_span(
            "tokencache.peer.fetch",
            kind=trace.SpanKind.CLIENT,
            attributes={"tokencache.group": self.name, "tokencache.peer": owner},
        ):
            propagate.inject(headers)
            started = time.perf_counter()
            value, ttl, loaded = await self._ws.transport.fetch(
                owner, self.name, key, min_ttl=min_ttl, context=context, trace=headers
            )
            elapsed_ms = (time.perf_counter() - started) * 1000
        self.stats.peer_loads += 1
        if elapsed_ms > self.stats.get_from_peers_latency_slowest_ms:
            self.stats.get_from_peers_latency_slowest_ms = elapsed_ms
        if (ttl is None or ttl > 0) and self._rng.random() < self._hot_probability:
            self._offer_hot(key, value, ttl)
        return Fetched(value, ttl, loaded)

    def _offer_hot(self, key: str, value: bytes, ttl: float | None) -> None:
        """A value fetched from its owner becomes a hot copy if the admission policy lets it in."""
        self._admission.record(key)
        if self._admission.make_room(self.hot_cache, key, entry_size(key, value), self._hot_budget):
            self.stats.hot_admissions += 1
            self._store(self.hot_cache, key, value, ttl)
        else:
            self.stats.hot_rejections += 1

    async def _load_local(self, key: str, min_ttl: float, context: bytes | None) -> Fetched:
        fetched, _ = await self._loads.do(
            (key, min_ttl > 0), lambda: self._run_loader(key, min_ttl, context)
        )
        return fetched

    async def _run_loader(self, key: str, min_ttl: float, context: bytes | None) -> Fetched:
        found = self.main_cache.get(key, min_ttl)
        if found is not None:
            return Fetched(found[0], found[1])
        self.stats.local_loads += 1
        with self._ws.tracer.start_as_current_span(
            "tokencache.load", attributes={"tokencache.group": self.name}
        ):
            token = _current.set(context)
            try:
                entry = await self.loader(key)
            except NotFound:
                raise
            except BaseException:
                self.stats.local_load_errs += 1
                raise
            finally:
                _current.reset(token)
        checked: object = entry  # loaders are user code: check what the types promise
        if not isinstance(checked, Entry) or not isinstance(checked.value, bytes):
            self.stats.local_load_errs += 1
            raise InvalidArgument(f"loader of group {self.name!r} must return Entry(bytes, ttl)")
        if len(entry.value) > self._ws.max_value_bytes:
            self.stats.local_load_errs += 1
            raise InvalidArgument(f"value over {self._ws.max_value_bytes} bytes in {self.name!r}")
        ttl = entry.ttl
        if ttl is None or ttl > 0:
            self._store(self.main_cache, key, entry.value, ttl)
        return Fetched(entry.value, ttl, loaded=True)

    async def serve_peer(self, key: str, min_ttl: float, context: bytes | None = None) -> Fetched:
        """Answer a peer's get: from this process's caches or its own loader, never forwarded."""
        self.stats.server_requests += 1
        found = self._lookup(key, min_ttl)
        if found is not None:
            return Fetched(found[0], found[1])
        owner = self._ws.owner(key)
        if owner is not None:
            # Our ring says someone else owns it (rings out of sync during a rollout).
            self.stats.crosstalk_refusals += 1
        return await self._load_local(key, min_ttl, context)

    # -- storing and removing ------------------------------------------------------------------

    def _store(self, cache: LRUCache, key: str, value: bytes, ttl: float | None) -> None:
        if self.max_bytes <= 0:
            return
        cache.add(key, value, ttl)
        main, hot = self.main_cache, self.hot_cache
        # Evict until both fit: from hot while it holds more than its share of main (groupcache).
        while main.bytes + hot.bytes > self.max_bytes:
            victim = hot if hot.bytes > main.bytes * self._hot_fraction or not len(main) else main
            if not victim.evict_one():
                break

    def remove_local(self, key: str, if_digest: str | None = None) -> bool:
        """Drop ``key`` from this process's caches (where the value matches ``if_digest``)."""
        removed = False
        for cache in (self.main_cache, self.hot_cache):
            current = cache.value_of(key)
            if current is None:
                continue
            if if_digest is None or value_digest(current) == if_digest:
                removed = cache.remove(key) or removed
        return removed

    async def remove(self, key: str, *, if_value: bytes | None = None) -> None:
        """Remove ``key`` cluster-wide: the owner's copy first, then every peer's hot copy.

        With ``if_value``, only copies whose value still equals it are removed (compare-and-
        invalidate: a newer value someone already loaded survives). A peer that cannot be reached is
        counted as a peer error and skipped; its hot copy ends with its TTL.
        """
        self._ws.check_key(key)
        digest = None if if_value is None else value_digest(if_value)
        owner = self._ws.owner(key)
        transport = self._ws.transport
        if owner is not None:
            try:
                await transport.remove(owner, self.name, key, if_digest=digest)
            except PeerError:
                self.stats.peer_errors += 1
        others = [p for p in self._ws.peers if p not in (owner, self._ws.self_url)]
        for peer in others:
            try:
                await transport.remove(peer, self.name, key, if_digest=digest)
            except PeerError:
                self.stats.peer_errors += 1
        self.remove_local(key, digest)

    def purge_expired(self) -> int:
        """Drop expired entries (past the stale window) from both caches; return how many."""
        return self.main_cache.purge_expired() + self.hot_cache.purge_expired()
