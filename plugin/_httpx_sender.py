"""The httpx sender for token requests (the httpx code path never touches httpx2)."""

from __future__ import annotations

import httpx

from plugin._errors import TokenConnectionError, TokenTimeoutError
from plugin._request import TokenHttpResponse, TokenRequest, lower_headers


class HttpxTokenSender:
    """Sends token requests with an :class:`httpx.AsyncClient` created on first use.

    The client is created lazily so it belongs to the event loop the engine's loader runs on.
    ``transport`` is for tests (respx or an :class:`httpx.MockTransport`).
    """

    def __init__(
        self, *, timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def send(self, request: TokenRequest) -> TokenHttpResponse:
        """POST the token request; timeouts and connection failures become plugin errors."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, transport=self._transport)
        try:
            response = await self._client.request(
                request.method, request.url, headers=request.headers, content=request.body
            )
        except httpx.TimeoutException:
            raise TokenTimeoutError("token endpoint timed out") from None
        except httpx.TransportError as exc:
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
