"""``ClientCredentialsAuth`` for httpx: a drop-in ``auth=`` for ``httpx.Client`` and ``AsyncClient``.

The flow (both sync and async, as httpx's docs prescribe for flows that do I/O):

1. take the token (this process's copy, else the cluster's group; refresh-ahead in the background
   when it is in the last part of its life) and send the request with it;
2. on 401, compare-and-invalidate: remove the rejected token cluster-wide *only if the cached value is
   still that token*, get the current one, and retry once with it. If the current token is the one
   that was just rejected, the 401 is returned (never a second retry, never the same token twice).

Request bodies: httpx gives bytes, str, form, JSON and multipart-from-bytes bodies a replayable
``ByteStream``; those are retried. A streaming body (a generator or file object) cannot be sent
twice: its 401 is returned as is (the rejected token is still invalidated, so the next request
gets a new one). Call ``request.read()`` first to make such a body replayable.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping

import httpx

import tokencache
from plugin._cache import Policy, TokenCache
from plugin._core import AuthCore
from plugin._fetch import Sleep
from plugin._httpx_sender import HttpxTokenSender


class ClientCredentialsAuth(httpx.Auth):
    """OAuth2 client-credentials tokens shared across the cluster, for httpx clients.

    Standalone when ``workspace`` is None (a private single-node workspace on a private loop
    thread); clustered when given the process's :class:`tokencache.Workspace`. A sync client used
    with a given workspace needs ``loop=`` (the loop the workspace runs on, or a
    :class:`tokencache.BackgroundLoop`). See docs/plugin.md for every parameter.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | Iterable[str] | None = None,
        extra_params: Mapping[str, str] | None = None,
        auth_method: str = "client_secret_basic",
        *,
        workspace: tokencache.Workspace | None = None,
        group_name: str = "oauth2",
        loop: asyncio.AbstractEventLoop | tokencache.BackgroundLoop | None = None,
        leeway: float | None = None,
        refresh_fraction: float = 0.2,
        default_lifetime: float = 300.0,
        cooldown: float = 2.0,
        max_attempts: int = 3,
        max_retry_after: float = 30.0,
        timeout: float = 10.0,
        sync_timeout: float = 60.0,
        token_transport: httpx.AsyncBaseTransport | None = None,
        clock: tokencache.Clock | None = None,
        sleep: Sleep | None = None,
        wall_clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._core = AuthCore(
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            extra_params=extra_params,
            auth_method=auth_method,
            sender=HttpxTokenSender(timeout=timeout, transport=token_transport),
            workspace=workspace,
            loop=loop,
            group_name=group_name,
            policy=Policy(leeway=leeway, refresh_fraction=refresh_fraction, cooldown=cooldown),
            default_lifetime=default_lifetime,
            max_attempts=max_attempts,
            max_retry_after=max_retry_after,
            sync_timeout=sync_timeout,
            clock=clock,
            sleep=sleep,
            wall_clock=wall_clock,
            rng=rng,
        )

    @property
    def key(self) -> str:
        """The cache key of these credentials (no secret in it)."""
        return self._core.key

    @property
    def token_cache(self) -> TokenCache:
        """The token cache (group, stats) these credentials live in."""
        return self._core.cache

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """The flow for ``httpx.Client``: blocks this thread only, on a token miss."""
        core = self._core
        held = core.token_sync()
        request.headers["Authorization"] = held.token.authorization
        response = yield request
        if response.status_code != 401:
            return
        fresh = core.renew_sync(held)
        if fresh.token.access_token == held.token.access_token or not isinstance(
            request.stream, httpx.ByteStream
        ):
            return
        core.cache.stats.count_unauthorized_retry()
        request.headers["Authorization"] = fresh.token.authorization
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The flow for ``httpx.AsyncClient``: awaits the engine, never blocks the loop."""
        core = self._core
        held = await core.token()
        request.headers["Authorization"] = held.token.authorization
        response = yield request
        if response.status_code != 401:
            return
        fresh = await core.renew(held)
        if fresh.token.access_token == held.token.access_token or not isinstance(
            request.stream, httpx.ByteStream
        ):
            return
        core.cache.stats.count_unauthorized_retry()
        request.headers["Authorization"] = fresh.token.authorization
        yield request

    def close(self) -> None:
        """Release the credentials registration and token client (and the private loop)."""
        self._core.close()

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        await self._core.aclose()
