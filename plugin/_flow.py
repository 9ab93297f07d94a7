"""The auth flow both ``ClientCredentialsAuth`` classes (httpx and httpx2) run.

This module imports neither HTTP library: it touches requests only through ``headers`` and
responses only through ``status_code``, and each class says for itself whether a request's body
can be sent twice. So the httpx class runs httpx code only and the httpx2 class httpx2 code only,
while the flow itself is written once.

The flow (sync and async, as httpx's docs prescribe for flows that do I/O):

1. take the token (this process's copy, else the cluster's group; refresh-ahead in the background
   when it is in the last part of its life) and send the request with it;
2. on 401, compare-and-invalidate: remove the rejected token cluster-wide *only if the cached value is
   still that token*, get the current one, and retry once with it. If the current token is the one
   that was just rejected, the 401 is returned (never a second retry, never the same token twice);
3. when the retry gets a 401 too, the credential enters the persistent-401 cooldown
   (:mod:`plugin._cache`): further 401s in it return at once, with no token request.

Request bodies: bytes, str, form, JSON and multipart-from-bytes bodies are replayable (a
``ByteStream``) and are retried. A streaming body (a generator or file object) cannot be sent twice:
its 401 is returned as is (the rejected token is still invalidated, so the next request gets a new
one). Call ``request.read()`` first to make such a body replayable.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator, MutableMapping
from typing import Protocol, TypeVar

from tokencache.plugin._cache import TokenCache
from tokencache.plugin._core import AuthCore
from tokencache.plugin._token import AccessToken


class _Request(Protocol):
    @property
    def headers(self) -> MutableMapping[str, str]: ...


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...


Req = TypeVar("Req", bound=_Request)
Resp = TypeVar("Resp", bound=_Response)


class CredentialsFlow:
    """The library-agnostic half of ``ClientCredentialsAuth``: token handling and the 401 retry."""

    _core: AuthCore

    @property
    def key(self) -> str:
        """The cache key of these credentials (no secret in it)."""
        return self._core.key

    @property
    def token_cache(self) -> TokenCache:
        """The token cache (group, stats) these credentials live in."""
        return self._core.cache

    def token(self) -> AccessToken:
        """The current token, from a thread: for gRPC metadata, websockets, database drivers.

        Same cache, same rules as the requests this auth signs (one fetch per lifetime, shared).
        Raises a :class:`TokenError` subclass when no token can be had.
        """
        core = self._core
        return core.public(core.token_sync())

    async def atoken(self) -> AccessToken:
        """Async :meth:`token`, from a coroutine on any loop."""
        core = self._core
        return core.public(await core.token())

    def _sync_flow(
        self, request: Req, replayable: Callable[[Req], bool]
    ) -> Generator[Req, Resp, None]:
        core = self._core
        held = core.token_sync()
        request.headers["Authorization"] = held.token.authorization
        response = yield request
        if response.status_code != 401:
            return
        fresh = core.renew_sync(held)
        if fresh.token.access_token == held.token.access_token or not replayable(request):
            return
        core.cache.stats.count_unauthorized_retry()
        request.headers["Authorization"] = fresh.token.authorization
        response = yield request
        if response.status_code == 401:
            core.unauthorized_again()

    async def _async_flow(
        self, request: Req, replayable: Callable[[Req], bool]
    ) -> AsyncGenerator[Req, Resp]:
        core = self._core
        held = await core.token()
        request.headers["Authorization"] = held.token.authorization
        response = yield request
        if response.status_code != 401:
            return
        fresh = await core.renew(held)
        if fresh.token.access_token == held.token.access_token or not replayable(request):
            return
        core.cache.stats.count_unauthorized_retry()
        request.headers["Authorization"] = fresh.token.authorization
        response = yield request
        if response.status_code == 401:
            core.unauthorized_again()

    def close(self) -> None:
        """Release the credentials registration and token client (and the private loop)."""
        self._core.close()

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        await self._core.aclose()
