"""What both Auth classes (httpx and httpx2) share: credentials, the token cache and the bridge.

This module imports neither HTTP library: each Auth class hands in its own token sender, so a
process using httpx never runs httpx2 code for its tokens and vice versa.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Mapping
from typing import TypedDict

import tokencache
from plugin._bridge import EngineBridge
from plugin._cache import Held, Policy, TokenCache
from plugin._errors import ConfigurationError
from plugin._fetch import Sleep, TokenFetcher
from plugin._key import AUTH_METHODS, Credentials
from plugin._request import TokenSender


class FlowOptions(TypedDict, total=False):
    """The keyword options both Auth classes take; see docs/plugin.md for each (defaults there)."""

    workspace: tokencache.Workspace | None
    group_name: str
    loop: asyncio.AbstractEventLoop | tokencache.BackgroundLoop | None
    leeway: float | None
    refresh_fraction: float
    default_lifetime: float
    cooldown: float
    max_attempts: int
    max_retry_after: float
    sync_timeout: float
    clock: tokencache.Clock | None
    sleep: Sleep | None
    wall_clock: Callable[[], float] | None
    rng: random.Random | None


class AuthCore:
    """The token side of a ``ClientCredentialsAuth``: get, refresh ahead, renew after a 401."""

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | Iterable[str] | None,
        extra_params: Mapping[str, str] | None,
        auth_method: str,
        sender: TokenSender,
        options: FlowOptions,
    ) -> None:
        workspace = options.get("workspace")
        loop = options.get("loop")
        clock = options.get("clock")
        group_name = options.get("group_name", "oauth2")
        policy = Policy(
            leeway=options.get("leeway"),
            refresh_fraction=options.get("refresh_fraction", 0.2),
            cooldown=options.get("cooldown", 2.0),
        )
        if auth_method not in AUTH_METHODS:
            raise ConfigurationError(
                f"unknown auth_method {auth_method!r}; one of {', '.join(AUTH_METHODS)}"
            )
        if not 0 <= policy.refresh_fraction < 1:
            raise ConfigurationError("refresh_fraction must be in [0, 1)")
        self.creds = Credentials.build(
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            extra_params=extra_params,
            auth_method=auth_method,
        )
        self._private: tokencache.BackgroundLoop | None = None
        if workspace is None:
            # Standalone: a private single-node workspace on a private loop thread, so sync and
            # async callers (on any loop) reach the same singleflight.
            self._private = tokencache.BackgroundLoop(name="plugin-oauth2")
            workspace = tokencache.Workspace("", clock=clock)
            engine_loop: asyncio.AbstractEventLoop | None = self._private.loop
        elif isinstance(loop, tokencache.BackgroundLoop):
            engine_loop = loop.loop
        else:
            engine_loop = loop
        self.workspace = workspace
        self.bridge = EngineBridge(engine_loop)
        self.cache = TokenCache.for_workspace(workspace, group_name)
        self.fetcher = TokenFetcher(
            self.creds,
            sender,
            max_attempts=options.get("max_attempts", 3),
            max_retry_after=options.get("max_retry_after", 30.0),
            default_lifetime=options.get("default_lifetime", 300.0),
            sleep=options.get("sleep"),
            wall_clock=options.get("wall_clock"),
            rng=options.get("rng"),
        )
        self.key = self.cache.register(self.creds, self.fetcher, policy)
        self.sync_timeout = options.get("sync_timeout", 60.0)
        self._closed = False

    # -- getting a token ----------------------------------------------------------------------

    def _maybe_refresh(self, held: Held) -> None:
        cache, key = self.cache, self.key
        if cache.refresh_due(key, held):
            self.bridge.spawn(lambda: cache.refresh(key, held.window), cache.background)

    def _cached(self) -> Held | None:
        cache = self.cache
        held = cache.peek(self.key)
        if held is None:
            cache.check_cooldown(self.key)
            return None
        self._maybe_refresh(held)
        return held

    def token_sync(self) -> Held:
        """The current token, for a thread (sync client)."""
        held = self._cached()
        if held is None:
            cache, key = self.cache, self.key
            held = self.bridge.run_sync(lambda: cache.get(key), self.sync_timeout)
        return held

    async def token(self) -> Held:
        """The current token, for a coroutine on any loop (never blocks that loop)."""
        held = self._cached()
        if held is None:
            cache, key = self.cache, self.key
            held = await self.bridge.run(lambda: cache.get(key))
        return held

    def renew_sync(self, rejected: Held) -> Held:
        """After a 401: compare-and-invalidate ``rejected`` and get the cluster's current token."""
        cache, key = self.cache, self.key
        return self.bridge.run_sync(lambda: cache.renew(key, rejected), self.sync_timeout)

    async def renew(self, rejected: Held) -> Held:
        """Async :meth:`renew_sync`."""
        cache, key = self.cache, self.key
        return await self.bridge.run(lambda: cache.renew(key, rejected))

    # -- closing --------------------------------------------------------------------------------

    async def _release(self) -> None:
        fetcher = self.cache.unregister(self.key)
        if fetcher is not None:
            await fetcher.sender.aclose()
        if self._private is not None:
            await self.workspace.close()

    def _engine_gone(self) -> bool:
        loop = self.bridge.loop
        if loop is not None and (loop.is_closed() or not loop.is_running()):
            self.cache.unregister(self.key)  # nothing left to close on a stopped loop
            return True
        return False

    def close(self) -> None:
        """Unregister the credentials, close the token client; stop the private loop if any.

        From a thread that is not the engine loop's; on the engine loop use :meth:`aclose`.
        """
        if self._closed:
            return
        self._closed = True
        if self.bridge.loop is not None and not self._engine_gone():
            self.bridge.run_sync(self._release, self.sync_timeout)
        if self._private is not None:
            self._private.close()

    async def aclose(self) -> None:
        """Async :meth:`close` (safe to call on the engine loop)."""
        if self._closed:
            return
        self._closed = True
        if not self._engine_gone():
            await self.bridge.run(self._release)
        if self._private is not None:
            await asyncio.to_thread(self._private.close)
