"""The token group of one workspace: loader, credential registry, local copies, cooldown, refresh.

Theory of operation. One :class:`TokenCache` exists per (workspace, group name); every
``ClientCredentialsAuth`` built on that workspace registers its credentials here (one registration
per key, shared by every auth whose fetch options are equal; one with other options is refused). The engine's group
(created with ``hot_probability=1``, so every process keeps a copy of what its owner sent) makes a
token load happen once for the cluster: the owner of a key runs :meth:`TokenCache._load` with the
credentials registered *in its own process*, or raises ``Declined`` when it has none, and the asking
process then loads with its own.

In front of the group sits a small per-process table of :class:`Held` tokens that threads read
without taking a lock (a dict lookup is atomic) and that only changes under ``_lock``; it is what makes
a cached token cost a dict lookup and a clock read per request, from any thread or loop.

The persistent-401 rule (an API that rejects every token: wrong audience, clock skew, a revoked
client). After a 401 the flow renews once: it compare-and-invalidates the rejected token and asks
the cluster for the current one with the load context :data:`AFTER_401`. Two guards then keep the
token endpoint quiet for ``unauthorized_cooldown`` seconds:

- in this process, once a renewal did not help (the retry got a 401 again, or the cluster had no
  other token), :meth:`renew` stops invalidating: it hands back the token it holds (the caller gets
  its 401), without I/O;
- at the key's owner (so for the whole cluster): when the token it fetched because of a 401 is
  itself rejected within the window (the renewal did not help, whichever process saw it), the
  load returns that token instead of fetching again; and a load after a 401 while the fetch
  another renewal of the same rejected token started is in flight joins that fetch (the second
  renewal's compare-and-invalidate found no copy, so the group did not let it join the first
  load). Hence at most one token request per window per credential, cluster-wide, however many
  processes or threads see 401s at once.

Invariants:
- a failed fetch is never cached; for ``cooldown`` seconds (longer when a 429 asked for it) callers in
  this process get that error at once instead of calling the endpoint again;
- at most one background refresh per key per process is in flight (``_refreshing``), and a finished
  one is not followed by another for ``_REFRESH_PAUSE`` of the window (an endpoint that keeps
  granting short tokens is not hammered);
- a local copy is dropped when its value is compare-and-invalidated here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass

import tokencache
from tokencache.plugin._errors import ConfigurationError, TokenError, TokenThrottledError
from tokencache.plugin._fetch import TokenFetcher
from tokencache.plugin._key import Credentials
from tokencache.plugin._metrics import TokenStats
from tokencache.plugin._token import Token, cache_ttl

_log = logging.getLogger("tokencache.plugin.oauth2")
#: The load context of a reload caused by a 401 (tokencache.load_context at the owner), followed by
#: a digest of the rejected token so the owner can tell whether its last token was the one refused.
AFTER_401 = b"plugin/oauth2:after-401:"


def _after_401_context(rejected: bytes) -> bytes:
    return AFTER_401 + hashlib.sha256(rejected).digest()[:16]


_LAST_OPTIONS = 4096  # closed registrations whose options are remembered (see register)
_REFRESH_PAUSE = 0.1  # share of the refresh window to wait after one refresh before another


@dataclass(frozen=True, slots=True)
class Held:
    """A token as this process holds it: cached bytes, decoded token, local expiry and refresh time."""

    value: bytes
    token: Token
    expires_at: float
    refresh_at: float
    window: float


@dataclass(frozen=True, slots=True)
class Policy:
    """Per-credentials timing: leeway before expiry, refresh-ahead share, failure cooldown."""

    leeway: float | None = None
    refresh_fraction: float = 0.2
    cooldown: float = 2.0
    max_cooldown: float = 60.0
    unauthorized_cooldown: float = 30.0


class Same:
    """A registration option compared by identity (an ``ssl.SSLContext``, a transport, a test
    hook): objects without value equality. ``Same(None) == Same(None)``."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


class SameOrEqual:
    """A registration option equal to another when it is the same object or, for two objects, when
    their settings (``value``, read at construction) are equal: an ``ssl.SSLContext`` or a plain
    httpx transport. The same object is always equal to itself even when what it shows changed
    since (a context loading trust anchors from a ``capath`` lazily, at its first handshake)."""

    __slots__ = ("obj", "value")

    def __init__(self, obj: object, value: object) -> None:
        self.obj, self.value = obj, value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SameOrEqual) and (
            other.obj is self.obj or other.value == self.value
        )

    def __hash__(self) -> int:
        return 0  # equality is by identity or by value: only a constant hash agrees with both


#: ``(name, value)`` pairs of everything that changes how a token is fetched or accepted.
Options = tuple[tuple[str, object], ...]


@dataclass
class _Registered:
    creds: Credentials
    fetcher: TokenFetcher
    policy: Policy
    options: Options = ()
    users: int = 1


class TokenCache:
    """The OAuth2 token group of one workspace. Use :meth:`for_workspace` to get it."""

    def __init__(
        self, workspace: tokencache.Workspace, group_name: str = "oauth2", max_bytes: int = 1 << 20
    ) -> None:
        self.workspace = workspace
        self.name = group_name
        self.stats = TokenStats()
        self._clock = workspace.clock
        self._lock = threading.Lock()  # guards every dict/set below except lock-free memo reads
        self._registry: dict[str, _Registered] = {}
        self._memo: dict[str, Held] = {}
        self._failures: dict[str, tuple[float, TokenError]] = {}
        self._refreshing: set[str] = set()
        self._refresh_not_before: dict[str, float] = {}
        self._background: set[Future[None]] = set()
        self._unauthorized_until: dict[str, float] = {}  # this process: 401 cooldown end
        self._after_401: dict[str, tuple[float, bytes, float]] = {}  # owner: (at, value, expiry)
        # Owner, engine loop: the fetch a 401 started, per key: (load context, its outcome).
        self._after_401_flights: dict[str, tuple[bytes, asyncio.Future[tuple[bytes, float]]]] = {}
        # The options of the last registration of a key no auth uses any more, and the keys whose
        # cached token was fetched under other options than the current registration's.
        self._last_options: OrderedDict[str, Options] = OrderedDict()
        self._distrusted: set[str] = set()
        # Registrations of auth objects collected without close(), queued by their finalizer
        # (a deque: appending takes no lock) until reap() drops them.
        self._released: deque[tuple[str, asyncio.AbstractEventLoop | None]] = deque()
        # Fetchers reaped whose token client is being closed (close_senders waits for them too).
        self._closing: set[TokenFetcher] = set()
        self.group = workspace.new_group(
            group_name, max_bytes=max_bytes, loader=self._load, hot_probability=1.0
        )

    @classmethod
    def for_workspace(
        cls, workspace: tokencache.Workspace, group_name: str = "oauth2"
    ) -> TokenCache:
        """The workspace's token cache for ``group_name``, created on first use."""
        for _ in range(2):
            group = workspace.get_group(group_name)
            if group is None:
                try:
                    return cls(workspace, group_name)
                except tokencache.InvalidArgument:
                    continue  # another thread created it between our look and our create
            loader = group.loader
            owner = getattr(loader, "__self__", None)
            if isinstance(owner, TokenCache):
                return owner
            break
        raise ConfigurationError(f"group {group_name!r} exists and is not an OAuth2 token group")

    # -- registry -------------------------------------------------------------------------------

    def register(
        self, creds: Credentials, fetcher: TokenFetcher, policy: Policy, options: Options = ()
    ) -> str:
        """Make ``creds`` loadable by this process; return the cache key.

        A second registration of the same key shares the first one (its fetcher and policy) and
        must come with equal ``options``, else :class:`ConfigurationError` (see
        :meth:`check_options`).
        """
        key = creds.key
        self.reap()
        with self._lock:
            reg = self._registry.get(key)
            if reg is None:
                self._registry[key] = _Registered(creds, fetcher, policy, options)
                last = self._last_options.pop(key, None)
                if last is not None and last != options:
                    # A token still in the group was fetched (and accepted) under the options of
                    # a closed registration: this one does not use it (dropped at the next get),
                    # nor that registration's cooldowns (its failures were under other options).
                    self._distrusted.add(key)
                    self._unauthorized_until.pop(key, None)
                    self._after_401.pop(key, None)
                    self._failures.pop(key, None)
            else:
                self._refuse_other_options(reg, creds, options)
                reg.users += 1
        return key

    def check_options(self, creds: Credentials, options: Options) -> None:
        """Raise :class:`ConfigurationError` when ``creds`` are registered here with options
        other than ``options`` (the names of the differing options, never their values)."""
        self.reap()
        reg = self._registry.get(creds.key)
        if reg is not None:
            self._refuse_other_options(reg, creds, options)

    def _refuse_other_options(self, reg: _Registered, creds: Credentials, options: Options) -> None:
        if reg.options == options:
            return
        mine, theirs = dict(options), dict(reg.options)
        names = sorted(n for n in mine.keys() | theirs.keys() if mine.get(n) != theirs.get(n))
        raise ConfigurationError(
            f"client {creds.client_id!r} at {creds.endpoint} is already in use in this process "
            f"(token group {self.name!r}) with another {', '.join(names)}: auth objects with the "
            "same credentials share one token cache and token client, so they must be built with "
            "equal options (or pass another group_name=)"
        )

    def unregister(self, key: str) -> TokenFetcher | None:
        """Drop one registration; return the fetcher when it was the last one (to close it).

        The last one leaves the token in the group and the cooldowns running (failure, 401): an
        auth built again with equal options, as one per request is, reuses the token and stays
        quiet at the endpoint as one long-lived auth would; one with other options uses neither
        (:meth:`register`)."""
        with self._lock:
            reg = self._registry.get(key)
            if reg is None:
                return None
            reg.users -= 1
            if reg.users > 0:
                return None
            del self._registry[key]
            self._last_options[key] = reg.options
            self._last_options.move_to_end(key)
            while len(self._last_options) > _LAST_OPTIONS:
                self._last_options.popitem(last=False)
            self._memo.pop(key, None)
            return reg.fetcher

    def release_soon(self, key: str, loop: asyncio.AbstractEventLoop | None) -> None:
        """From an auth's finalizer (inside the collector, any thread): queue the release of one
        registration of ``key``; ``loop`` is the engine loop its token client runs on.

        Takes no lock and does no I/O: the queue is a deque, and the loop is only woken to run
        :meth:`reap`. Without a loop, the next registration or option check reaps."""
        self._released.append((key, loop))
        if loop is not None:
            # A closed loop raises: then the next register() or check_options() reaps.
            with contextlib.suppress(Exception):
                loop.call_soon_threadsafe(self.reap)

    def reap(self) -> None:
        """Drop the registrations queued by :meth:`release_soon`; a token client no auth uses
        any more is closed on its engine loop (scheduled, never awaited here)."""
        while True:
            try:
                key, loop = self._released.popleft()
            except IndexError:
                return
            fetcher = self.unregister(key)
            if fetcher is None:
                continue
            if loop is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    continue  # no loop to close it on: never used on one here
            if loop.is_closed() or not loop.is_running():
                continue
            with self._lock:
                self._closing.add(fetcher)
            future = asyncio.run_coroutine_threadsafe(self._close_fetcher(fetcher), loop)
            self._background.add(future)
            future.add_done_callback(self._background.discard)

    async def _close_fetcher(self, fetcher: TokenFetcher) -> None:
        try:
            await fetcher.sender.aclose()
        finally:
            with self._lock:
                self._closing.discard(fetcher)

    async def close_senders(self) -> None:
        """Engine loop: close the token clients of every registration, and of the ones reaped and
        still closing (the engine is closing: its pending tasks are cancelled next)."""
        self.reap()
        with self._lock:
            fetchers = [reg.fetcher for reg in self._registry.values()]
            fetchers.extend(self._closing)
        for fetcher in fetchers:
            await fetcher.sender.aclose()

    def registered(self, key: str) -> bool:
        """Whether credentials for ``key`` are registered in this process."""
        return key in self._registry

    def _policy(self, key: str) -> Policy:
        reg = self._registry.get(key)
        return reg.policy if reg is not None else Policy()

    # -- the loader (runs on the engine loop, in the owner or in a process the owner declined) ---

    async def _load(self, key: str) -> tokencache.Entry:
        reg = self._registry.get(key)
        if reg is None:
            raise tokencache.Declined("no credentials registered for this token key here")
        self.check_cooldown(key)
        creds = reg.creds
        now = self._clock.now()
        context = tokencache.load_context() or b""
        after_401 = context.startswith(AFTER_401)
        if after_401:
            last = self._after_401.get(key)
            in_window = last is not None and now < last[0] + reg.policy.unauthorized_cooldown
            if (
                last is not None
                and in_window
                and now < last[2]
                and context == _after_401_context(last[1])
            ):
                # The owner's half of the 401 rule: one fetch per window for the cluster.
                self.stats.count_unauthorized_cooldown()
                _log.debug(
                    "401 cooldown: client %r at %s keeps its token (no fetch)",
                    creds.client_id,
                    creds.endpoint,
                )
                return tokencache.Entry(last[1], last[2] - now)
            flight = self._after_401_flights.get(key)
            if (
                flight is not None
                and flight[0] == context
                and flight[1].get_loop() is asyncio.get_running_loop()
            ):
                # Another renewal of the same rejected token is fetching: its compare-and-
                # invalidate found no copy left to compare (this one's fetch in flight) and so
                # started this load; join that fetch rather than fetch again.
                self.stats.count_unauthorized_cooldown()
                _log.debug(
                    "401 renewal: client %r at %s joins the fetch in flight",
                    creds.client_id,
                    creds.endpoint,
                )
                value, expires_at = await asyncio.shield(flight[1])
                return tokencache.Entry(value, expires_at - self._clock.now())
            joined: asyncio.Future[tuple[bytes, float]] = asyncio.get_running_loop().create_future()
            self._after_401_flights[key] = (context, joined)
            try:
                entry = await self._fetch(key, reg, now, after_401)
            except BaseException as exc:
                if isinstance(exc, Exception):
                    joined.set_exception(exc)
                    joined.exception()  # retrieved: nobody may have joined
                else:
                    joined.cancel()
                raise
            else:
                assert entry.ttl is not None  # a token always has a lifetime
                joined.set_result((entry.value, self._clock.now() + entry.ttl))
                return entry
            finally:
                if self._after_401_flights.get(key, (b"", None))[1] is joined:
                    del self._after_401_flights[key]
        return await self._fetch(key, reg, now, after_401)

    async def _fetch(
        self, key: str, reg: _Registered, now: float, after_401: bool
    ) -> tokencache.Entry:
        creds = reg.creds
        _log.debug(
            "fetching a token for client %r at %s%s",
            creds.client_id,
            creds.endpoint,
            " after a 401" if after_401 else "",
        )
        try:
            token = await reg.fetcher.fetch()
        except TokenError as exc:
            self.stats.count_error(exc.kind)
            if self._registry.get(key) is reg:
                # Not when its registration was dropped meanwhile: the last auth was closed or
                # collected and its token client closed under this fetch, a failure of ours that
                # must not cool the credentials for the next auth (cooldowns outlive a
                # registration).
                self._cool(key, exc, reg.policy)
            _log.debug("token fetch for client %r failed: %s", creds.client_id, exc.kind)
            raise
        self.stats.count_fetch()
        value = token.encode()
        ttl = cache_ttl(token.lifetime, reg.policy.leeway)
        with self._lock:
            self._failures.pop(key, None)
            if after_401:
                self._after_401[key] = (now, value, now + ttl)
        return tokencache.Entry(value, ttl)

    def _cool(self, key: str, exc: TokenError, policy: Policy) -> None:
        pause = policy.cooldown
        if isinstance(exc, TokenThrottledError) and exc.retry_after:
            pause = max(pause, min(exc.retry_after, policy.max_cooldown))
        if pause > 0:
            with self._lock:
                self._failures[key] = (self._clock.now() + pause, exc)

    def check_cooldown(self, key: str) -> None:
        """Raise the last error for ``key`` while its cooldown lasts."""
        failed = self._failures.get(key)
        if failed is None:
            return
        now = self._clock.now()
        if now < failed[0]:
            self.stats.count_cooldown()
            _log.debug("failure cooldown: %s for another %.1f s", failed[1].kind, failed[0] - now)
            raise failed[1].with_traceback(None)

    # -- the front: local copies (any thread) -----------------------------------------------------

    def peek(self, key: str) -> Held | None:
        """The live local copy of ``key``, without I/O or locks; counts a hit or a miss."""
        held = self._memo.get(key)
        if held is not None and self._clock.now() < held.expires_at:
            self.stats.count_hit()
            return held
        self.stats.count_miss()
        return None

    def _remember(self, key: str, value: bytes, ttl: float | None) -> Held:
        current = self._memo.get(key)
        token = current.token if current is not None and current.value == value else None
        token = token or Token.decode(value)
        policy = self._policy(key)
        total = cache_ttl(token.lifetime, policy.leeway)
        expires_at = self._clock.now() + (total if ttl is None else ttl)
        window = policy.refresh_fraction * total
        held = Held(value, token, expires_at, expires_at - window, window)
        with self._lock:
            self._memo[key] = held
        return held

    async def get(self, key: str, min_ttl: float = 0.0) -> Held:
        """Engine loop: the token for ``key`` from the cluster (loading it once if needed)."""
        if key in self._distrusted:
            with self._lock:
                self._distrusted.discard(key)
            self.group.remove_local(key)
        value, ttl = await self.group.get_with_ttl(key, min_ttl=min_ttl)
        return self._remember(key, value, ttl)

    async def renew(self, key: str, rejected: Held) -> Held:
        """Engine loop: after a 401, compare-and-invalidate ``rejected`` cluster-wide and get the
        current token; within this process's 401 cooldown, no I/O (module docstring)."""
        now = self._clock.now()
        held = self._memo.get(key)
        if now < self._unauthorized_until.get(key, 0.0):
            self.stats.count_unauthorized_cooldown()
            _log.debug("401 cooldown: the rejected token is not renewed")
            if held is not None and held.value != rejected.value and now < held.expires_at:
                return held  # another request already renewed it: that one may still work
            return rejected
        await self.group.remove(key, if_value=rejected.value)
        with self._lock:
            held = self._memo.get(key)
            if held is not None and held.value == rejected.value:
                del self._memo[key]
        value, ttl = await self.group.get_with_ttl(key, context=_after_401_context(rejected.value))
        fresh = self._remember(key, value, ttl)
        if fresh.value == rejected.value:
            self.unauthorized_again(key)  # the cluster has no other token in this window
        return fresh

    def unauthorized_again(self, key: str) -> None:
        """A renewal did not help (a second 401): start this process's 401 cooldown for ``key``."""
        pause = self._policy(key).unauthorized_cooldown
        if pause <= 0:
            return
        with self._lock:
            self._unauthorized_until[key] = self._clock.now() + pause
        _log.debug("401 after renewal: cooldown of %.1f s starts (no token requests)", pause)

    # -- refresh-ahead ------------------------------------------------------------------------------

    def refresh_due(self, key: str, held: Held) -> bool:
        """True (and the key marked in flight) when ``held`` is in its refresh window."""
        now = self._clock.now()
        if now < held.refresh_at:
            return False
        with self._lock:
            if key in self._refreshing or now < self._refresh_not_before.get(key, 0.0):
                return False
            self._refreshing.add(key)
        return True

    async def refresh(self, key: str, window: float) -> None:
        """Engine loop: reload ``key`` unless the cluster already holds it with ``window`` to live."""
        try:
            await self.get(key, min_ttl=window)
            self.stats.count_refresh()
            _log.debug("token refreshed ahead of expiry")
        except Exception as exc:  # noqa: BLE001 - the current token keeps serving; next get retries
            _log.warning("background token refresh failed: %s", type(exc).__name__)
        finally:
            with self._lock:
                self._refreshing.discard(key)
                self._refresh_not_before[key] = self._clock.now() + _REFRESH_PAUSE * window

    @property
    def background(self) -> set[Future[None]]:
        """Refreshes started from any thread and still running (kept referenced until done)."""
        return self._background
