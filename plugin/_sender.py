"""What the httpx and httpx2 token senders share: a lazily created pooled client and the one
place where the library's transport errors become plugin errors.

This module imports neither library; each subclass names its client and its error classes, so a
process using httpx never runs httpx2 code for its tokens and vice versa.
"""

from __future__ import annotations

import ssl
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Protocol

from tokencache.plugin._errors import TokenConnectionError, TokenTimeoutError
from tokencache.plugin._key import safe_endpoint
from tokencache.plugin._request import TokenHttpResponse, TokenRequest, lower_headers


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...


class _Client(Protocol):
    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], content: bytes
    ) -> _Response: ...
    async def aclose(self) -> None: ...


def _cause(exc: BaseException) -> str:
    """The exception's type, and the TLS failure under it when there is one (a wrong CA or a
    refused client certificate is the first thing an operator needs to see)."""
    name = type(exc).__name__
    seen: set[int] = set()
    inner: BaseException | None = exc
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, ssl.SSLError):
            return f"{name}: TLS {inner.reason or type(inner).__name__}"
        inner = inner.__cause__ or inner.__context__
    return name


class PooledTokenSender(ABC):
    """Sends token requests with an async client created on first use.

    The client is created lazily so it belongs to the event loop the engine's loader runs on.
    """

    timeout_error: type[Exception]
    transport_error: type[Exception]

    def __init__(self) -> None:
        self._client: _Client | None = None
        self._closed = False

    @abstractmethod
    def _new_client(self) -> _Client:
        """A new pooled async client of the subclass's library."""

    async def send(self, request: TokenRequest) -> TokenHttpResponse:
        """POST the token request; timeouts and connection failures become plugin errors."""
        endpoint = safe_endpoint(request.url)
        if self._closed:
            # A load that outlived its credentials' last user (e.g. a peer's request that
            # arrived late): a new client now would never be closed.
            raise TokenConnectionError(
                f"token endpoint {endpoint}: client closed", endpoint=endpoint
            )
        if self._client is None:
            self._client = self._new_client()
        try:
            response = await self._client.request(
                request.method, request.url, headers=request.headers, content=request.body
            )
        except self.timeout_error:
            raise TokenTimeoutError(
                f"token endpoint {endpoint} timed out", endpoint=endpoint
            ) from None
        except self.transport_error as exc:
            # Keep only the exception's type: its text may carry a URL with userinfo.
            raise TokenConnectionError(
                f"token endpoint {endpoint} unreachable ({_cause(exc)})", endpoint=endpoint
            ) from None
        return TokenHttpResponse(
            response.status_code, lower_headers(response.headers), response.content
        )

    async def aclose(self) -> None:
        """Close the pooled client; later sends fail instead of opening a new one."""
        self._closed = True
        if self._client is not None:
            await self._client.aclose()
            self._client = None
