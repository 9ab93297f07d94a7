"""What the httpx and httpx2 token senders share: a lazily created pooled client and the one
place where the library's transport errors become plugin errors.

This module imports neither library; each subclass names its client and its error classes, so a
process using httpx never runs httpx2 code for its tokens and vice versa.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Protocol

from plugin._errors import TokenConnectionError, TokenTimeoutError
from plugin._request import TokenHttpResponse, TokenRequest, lower_headers


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


class PooledTokenSender(ABC):
    """Sends token requests with an async client created on first use.

    The client is created lazily so it belongs to the event loop the engine's loader runs on.
    """

    timeout_error: type[Exception]
    transport_error: type[Exception]

    def __init__(self) -> None:
        self._client: _Client | None = None

    @abstractmethod
    def _new_client(self) -> _Client:
        """A new pooled async client of the subclass's library."""

    async def send(self, request: TokenRequest) -> TokenHttpResponse:
        """POST the token request; timeouts and connection failures become plugin errors."""
        if self._client is None:
            self._client = self._new_client()
        try:
            response = await self._client.request(
                request.method, request.url, headers=request.headers, content=request.body
            )
        except self.timeout_error:
            raise TokenTimeoutError("token endpoint timed out") from None
        except self.transport_error as exc:
            # The exception text names the host, never credentials; keep only its type.
            raise TokenConnectionError(
                f"token endpoint unreachable ({type(exc).__name__})"
            ) from None
        return TokenHttpResponse(
            response.status_code, lower_headers(response.headers), response.content
        )

    async def aclose(self) -> None:
        """Close the pooled client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
