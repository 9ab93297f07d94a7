"""What every client adapter shares: checked credentials, the token cache, the bridge, the rules.

This module imports no HTTP library: each adapter hands in a factory for its own token sender, so
a process using httpx never runs httpx2 code for its tokens and vice versa.

Life of an :class:`AuthCore`: the constructor checks and computes (arguments, TLS files, the
private key, the key fingerprint): no thread, no loop, no I/O. *Binding* registers the credentials
in a token cache (where every other auth with the same credentials shares the registration, when
its fetch options are equal: :attr:`AuthCore.registration`; else it is refused): on a
caller's workspace at once (so this process can serve as the key's owner from the start), on the
runtime's standalone engine at the first token request (the engine's thread starts only then). A
fork moves the runtime's generation on; the next call rebinds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import ssl
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TypedDict

import tokencache
from tokencache.plugin._bridge import EngineBridge
from tokencache.plugin._cache import Held, Policy, Same, SameOrEqual, TokenCache
from tokencache.plugin._client_auth import build_client_auth
from tokencache.plugin._errors import AuthClosedError, ConfigurationError, TokenTimeoutError
from tokencache.plugin._fetch import Sleep, TokenFetcher
from tokencache.plugin._key import Credentials, check_token_url, fingerprint_key
from tokencache.plugin._request import TokenSender
from tokencache.plugin._runtime import DEFAULT_RUNTIME, PluginRuntime
from tokencache.plugin._tls import TokenTls, build_tls, context_fingerprint
from tokencache.plugin._token import BEARER_ONLY, MAX_LIFETIME, AccessToken

_log = logging.getLogger("tokencache.plugin.oauth2")

SenderFactory = Callable[[TokenTls], TokenSender]


class FlowOptions(TypedDict, total=False):
    """The keyword options every adapter takes; see docs/plugin.md for each (defaults there)."""

    workspace: tokencache.Workspace | None
    runtime: PluginRuntime | None
    cluster_secret: str | bytes | None
    group_name: str
    loop: asyncio.AbstractEventLoop | tokencache.BackgroundLoop | None
    leeway: float | None
    refresh_fraction: float
    default_lifetime: float
    cooldown: float
    unauthorized_cooldown: float
    max_attempts: int
    max_retry_after: float
    sync_timeout: float
    token_types: Iterable[str]
    signing_alg: str | None
    kid: str | None
    ca_file: str | os.PathLike[str] | None
    client_cert: str | os.PathLike[str] | None
    client_key: str | os.PathLike[str] | None
    ssl_context: ssl.SSLContext | None
    clock: tokencache.Clock | None
    sleep: Sleep | None
    wall_clock: Callable[[], float] | None
    rng: random.Random | None


def _checked(name: str, value: object, low: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not value >= low
    ):
        raise ConfigurationError(f"{name} must be a finite number >= {low}")
    return float(value)


def _number(options: FlowOptions, name: str, default: float, low: float = 0.0) -> float:
    return _checked(name, options.get(name, default), low)


def _path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.path.abspath(os.fspath(value))


def _collected(
    cache: TokenCache, key: str, loop: asyncio.AbstractEventLoop | None, pid: int
) -> None:
    # weakref.finalize callback of a bound AuthCore: nothing here may lock or do I/O.
    if os.getpid() == pid:  # a fork child never touches the parent's engine
        cache.release_soon(key, loop)


class AuthCore:
    """The token side of an auth object: get, refresh ahead, renew after a 401, close."""

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | Iterable[str] | None,
        extra_params: Mapping[str, str] | None,
        auth_method: str,
        sender_factory: SenderFactory,
        options: FlowOptions,
        timeout: object = 10.0,
        transport: object = None,
        transport_option: object = None,
    ) -> None:
        """``timeout`` and ``transport`` are the adapter's token-sender settings (the factory
        uses them); they are checked here and are part of the registration's options.
        ``transport_option`` is how the transport compares there (the adapter's fingerprint of
        it); without one, by identity."""
        workspace = options.get("workspace")
        runtime = options.get("runtime")
        clock = options.get("clock")
        self._owns_runtime = False
        if runtime is None:
            if workspace is None and clock is not None:
                # An injected clock needs an engine of its own (tests): a private runtime.
                runtime, self._owns_runtime = PluginRuntime(clock=clock), True
            else:
                runtime = DEFAULT_RUNTIME
        self._runtime = runtime
        self._workspace = workspace
        self._group_name = options.get("group_name", "oauth2")
        loop = options.get("loop")
        self._loop = loop.loop if isinstance(loop, tokencache.BackgroundLoop) else loop
        leeway = options.get("leeway")
        self.policy = Policy(
            leeway=None if leeway is None else _number(options, "leeway", 0.0),
            refresh_fraction=_number(options, "refresh_fraction", 0.2),
            cooldown=_number(options, "cooldown", 2.0),
            unauthorized_cooldown=_number(options, "unauthorized_cooldown", 30.0),
        )
        if not self.policy.refresh_fraction < 1:
            raise ConfigurationError("refresh_fraction must be in [0, 1)")
        self.sync_timeout = _number(options, "sync_timeout", 60.0)
        if not self.sync_timeout > 0:
            raise ConfigurationError("sync_timeout must be a number > 0")
        timeout_s = _checked("timeout", timeout, 0.0)
        if not timeout_s > 0:
            raise ConfigurationError("timeout must be a finite number > 0")
        max_retry_after = _number(options, "max_retry_after", 30.0)
        default_lifetime = _number(options, "default_lifetime", 300.0, low=1.0)
        if default_lifetime > MAX_LIFETIME:
            raise ConfigurationError(f"default_lifetime must be at most {MAX_LIFETIME:g} s")
        attempts = options.get("max_attempts", 3)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError("max_attempts must be an integer >= 1")
        raw_types: object = options.get("token_types", BEARER_ONLY)
        if isinstance(raw_types, str | bytes) or not isinstance(raw_types, Iterable):
            # A bare string was taken letter by letter ("DPoP" -> d, p, o, p).
            raise ConfigurationError("token_types must be an iterable of non-empty strings")
        types = tuple(raw_types)  # once: a generator was checked, then read again empty
        if not all(isinstance(t, str) and t for t in types):
            raise ConfigurationError("token_types must be an iterable of non-empty strings")
        check_token_url(token_url)
        if not isinstance(client_id, str) or not client_id:
            raise ConfigurationError("client_id must be a non-empty string")
        tls = build_tls(
            ca_file=options.get("ca_file"),
            client_cert=options.get("client_cert"),
            client_key=options.get("client_key"),
            ssl_context=options.get("ssl_context"),
        )
        auth = build_client_auth(
            auth_method,
            client_id,
            client_secret,
            alg=options.get("signing_alg"),
            kid=options.get("kid"),
            certificate=tls.certificate,
        )
        cluster_secret = options.get("cluster_secret")
        if workspace is None:
            key: bytes | None = runtime.process_key  # keys never leave this process
        elif cluster_secret:
            key = fingerprint_key(cluster_secret)
        else:
            key = None  # scrypt: see plugin._key
        fingerprint = runtime.fingerprint(client_id, auth.material(), token_url=token_url, key=key)
        self.creds = Credentials.build(
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            extra_params=extra_params,
            auth=auth,
            fingerprint=fingerprint,
        )
        self.key = self.creds.key
        # An empty iterable means the default (the fetcher always fell back to it), so it must
        # register as the default too.
        self._types = tuple(t.lower() for t in types) or BEARER_ONLY
        self._default_lifetime = default_lifetime
        self._max_retry_after = max_retry_after
        # Everything that changes how or where this auth's token is fetched or accepted. Auth
        # objects with the same credentials share one registration (one fetcher, one token client)
        # only when these are equal; otherwise the later one is refused (ConfigurationError naming
        # the options, never a value). An ssl_context compares by what it shows of its settings
        # (plugin._tls.context_fingerprint), a transport as its adapter says (a plain httpx
        # transport by its settings), other objects without value equality by identity.
        context = options.get("ssl_context")
        self.registration: tuple[tuple[str, object], ...] = (
            ("token_types", tuple(sorted(set(self._types)))),
            ("timeout", timeout_s),
            ("token_transport", Same(transport) if transport_option is None else transport_option),
            (
                "ssl_context",
                None if context is None else SameOrEqual(context, context_fingerprint(context)),
            ),
            ("ca_file", _path(options.get("ca_file"))),
            ("client_cert", _path(options.get("client_cert"))),
            ("client_key", _path(options.get("client_key"))),
            ("max_attempts", attempts),
            ("max_retry_after", max_retry_after),
            ("default_lifetime", default_lifetime),
            ("leeway", self.policy.leeway),
            ("refresh_fraction", self.policy.refresh_fraction),
            ("cooldown", self.policy.cooldown),
            ("unauthorized_cooldown", self.policy.unauthorized_cooldown),
            ("sleep", Same(options.get("sleep"))),
            ("wall_clock", Same(options.get("wall_clock"))),
            ("rng", Same(options.get("rng"))),
        )
        self._options = options
        self._tls = tls
        self._sender_factory = sender_factory
        self._born = runtime.generation
        self._generation = -1  # not bound yet: the first token request binds
        self._cache: TokenCache | None = None
        self._fetcher: TokenFetcher | None = None
        self.bridge = EngineBridge(None)
        self._closed = False
        # Unregisters this auth when it is collected without close() (set when bound).
        self._finalizer: weakref.finalize[..., AuthCore] | None = None
        if workspace is None:
            # The standalone engine runs already: refuse conflicting options now rather than at
            # the first token request (an engine not started yet checks when this auth binds).
            existing = runtime.existing_cache(self._group_name)
            if existing is not None:
                existing.check_options(self.creds, self.registration)
        else:
            # Registered at once on a caller's workspace (that starts no thread): a peer that
            # asks this process, as the key's owner, finds the credentials already here.
            self._bind()

    # -- binding (first use, and again after a fork) -------------------------------------------

    def _new_fetcher(self) -> TokenFetcher:
        options = self._options
        return TokenFetcher(
            self.creds,
            self._sender_factory(self._tls),
            max_attempts=int(options.get("max_attempts", 3)),
            max_retry_after=self._max_retry_after,
            default_lifetime=self._default_lifetime,
            token_types=self._types or BEARER_ONLY,
            sleep=options.get("sleep"),
            wall_clock=options.get("wall_clock"),
            rng=options.get("rng"),
        )

    def _bind(self) -> TokenCache:
        if self._closed:
            raise AuthClosedError(
                f"auth for client {self.creds.client_id!r} at {self.creds.endpoint} was closed",
                endpoint=self.creds.endpoint,
            )
        runtime = self._runtime
        generation = runtime.generation
        if self._workspace is None:
            engine = runtime.standalone()
            cache = engine.cache(self._group_name)
            loop: asyncio.AbstractEventLoop | None = engine.loop.loop
        else:
            if generation != self._born:
                raise ConfigurationError(
                    "this auth's workspace was created before fork(): build the workspace and "
                    "the auth in the child process (e.g. in gunicorn's post_fork hook), or omit "
                    "workspace= for standalone use"
                )
            cache = TokenCache.for_workspace(self._workspace, self._group_name)
            loop = self._loop
        fetcher = self._new_fetcher()
        cache.register(self.creds, fetcher, self.policy, self.registration)
        self._forget_finalizer()
        # An auth dropped without close() (one per request, as real code does) unregisters when
        # it is collected: the callback only queues the key (no lock, no I/O: it may run inside
        # the collector, on any thread, even one holding the cache's lock); the cache drops the
        # registration on its loop, or at the next registration or option check (_cache.reap).
        finalizer = weakref.finalize(self, _collected, cache, self.key, loop, os.getpid())
        finalizer.atexit = False
        self._finalizer = finalizer
        self.bridge = EngineBridge(loop)
        self._cache, self._fetcher, self._generation = cache, fetcher, generation
        return cache

    def _forget_finalizer(self) -> None:
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer.detach()

    @property
    def cache(self) -> TokenCache:
        """The token cache these credentials live in (binding on first use)."""
        cache = self._cache
        if cache is None or self._generation != self._runtime.generation or self._closed:
            cache = self._bind()
        return cache

    # -- getting a token ----------------------------------------------------------------------

    def _maybe_refresh(self, cache: TokenCache, held: Held) -> None:
        key = self.key
        if cache.refresh_due(key, held):
            _log.debug("refreshing the token of client %r ahead of expiry", self.creds.client_id)
            self.bridge.spawn(lambda: cache.refresh(key, held.window), cache.background)

    def _cached(self) -> tuple[TokenCache, Held | None]:
        cache = self.cache
        held = cache.peek(self.key)
        if held is None:
            cache.check_cooldown(self.key)
            return cache, None
        self._maybe_refresh(cache, held)
        return cache, held

    def _timeout(self) -> TokenTimeoutError:
        endpoint = self.creds.endpoint
        return TokenTimeoutError(
            f"no token for client {self.creds.client_id!r} from {endpoint} within "
            f"sync_timeout={self.sync_timeout:g} s",
            endpoint=endpoint,
        )

    def token_sync(self) -> Held:
        """The current token, for a thread (sync client)."""
        cache, held = self._cached()
        if held is None:
            key = self.key
            try:
                held = self.bridge.run_sync(lambda: cache.get(key), self.sync_timeout)
            except TimeoutError:
                raise self._timeout() from None
            # No local copy (the last auth with these credentials was collected or closed, as
            # one per request is): the cluster's token may be in its refresh window all the same.
            self._maybe_refresh(cache, held)
        return held

    async def token(self) -> Held:
        """The current token, for a coroutine on any loop (never blocks that loop)."""
        cache, held = self._cached()
        if held is None:
            key = self.key
            held = await self.bridge.run(lambda: cache.get(key))
            self._maybe_refresh(cache, held)
        return held

    def renew_sync(self, rejected: Held) -> Held:
        """After a 401: compare-and-invalidate ``rejected`` and get the cluster's current token."""
        cache, key = self.cache, self.key
        _log.debug("401 from the API: renewing the token of client %r", self.creds.client_id)
        try:
            return self.bridge.run_sync(lambda: cache.renew(key, rejected), self.sync_timeout)
        except TimeoutError:
            raise self._timeout() from None

    async def renew(self, rejected: Held) -> Held:
        """Async :meth:`renew_sync`."""
        cache, key = self.cache, self.key
        _log.debug("401 from the API: renewing the token of client %r", self.creds.client_id)
        return await self.bridge.run(lambda: cache.renew(key, rejected))

    def unauthorized_again(self) -> None:
        """The retry with a renewed token got a 401 too: start the 401 cooldown."""
        self.cache.unauthorized_again(self.key)

    def public(self, held: Held) -> AccessToken:
        """``held`` as the public :class:`AccessToken` (expiry on the wall clock)."""
        remaining = held.expires_at - self.cache.workspace.clock.now()
        return AccessToken(
            held.token.access_token, held.token.token_type, time.time() + max(0.0, remaining)
        )

    # -- closing --------------------------------------------------------------------------------

    def _unregister(self) -> TokenFetcher | None:
        self._forget_finalizer()
        cache, self._cache = self._cache, None
        if cache is None or self._generation != self._runtime.generation:
            return None
        return cache.unregister(self.key)

    async def _release(self) -> None:
        fetcher = self._unregister()
        if fetcher is not None:
            await fetcher.sender.aclose()

    def _bound_here(self) -> bool:
        # Bound in this process (not only in a parent before a fork, whose loop is gone here).
        return self._cache is not None and self._generation == self._runtime.generation

    def _engine_gone(self) -> bool:
        loop = self.bridge.loop
        return loop is None or loop.is_closed() or not loop.is_running()

    def close(self) -> None:
        """Unregister the credentials (closing the token client if this was the last user).

        From a thread that is not the engine loop's; on the engine loop use :meth:`aclose`.
        Using the auth afterwards raises :class:`AuthClosedError`.
        """
        if self._closed:
            return
        self._closed = True
        if self._bound_here() and not self._engine_gone():
            self.bridge.run_sync(self._release, self.sync_timeout)
        else:
            self._unregister()
        if self._owns_runtime:
            self._runtime.close()

    async def aclose(self) -> None:
        """Async :meth:`close` (safe to call on the engine loop)."""
        if self._closed:
            return
        self._closed = True
        # An auth whose own requests never reached the engine has no loop yet, but its token
        # client may have served a peer's load on this workspace: close it on the loop we are on
        # (a workspace without loop= runs on its caller's loop).
        if self._bound_here() and (self.bridge.loop is None or not self._engine_gone()):
            await self.bridge.run(self._release)
        else:
            self._unregister()
        if self._owns_runtime:
            await asyncio.to_thread(self._runtime.close)
