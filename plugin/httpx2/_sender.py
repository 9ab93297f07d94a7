"""The httpx2 sender for token requests (the httpx2 code path never touches httpx)."""

from __future__ import annotations

import httpx2

from plugin._errors import TokenConnectionError, TokenTimeoutError
from plugin._request import TokenHttpResponse, TokenRequest, lower_headers


class Httpx2TokenSender:
    """Sends token requests with an :class:`httpx2.AsyncClient` created on first use."""

    def __init__(
        self, *, timeout: float = 10.0, transport: httpx2.AsyncBaseTransport | None = None
    ) -> None:
        self._timeout = timeout
        self._transport = transport
        self._client: httpx2.AsyncClient | None = None

    async def send(self, request: TokenRequest) -> TokenHttpResponse:
        """POST the token request; timeouts and connection failures become plugin errors."""
        if self._client is None:
            self._client = httpx2.AsyncClient(timeout=self._timeout, transport=self._transport)
        try:
            response = await self._client.request(
                request.method, request.url, headers=request.headers, content=request.body
            )
        except httpx2.TimeoutException:
            raise TokenTimeoutError("token endpoint timed out") from None
        except httpx2.TransportError as exc:
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
