"""The httpx sender for token requests (the httpx code path never touches httpx2)."""

from __future__ import annotations

import httpx

from plugin._sender import PooledTokenSender


class HttpxTokenSender(PooledTokenSender):
    """Sends token requests with an :class:`httpx.AsyncClient`.

    ``transport`` is for tests (respx or an :class:`httpx.MockTransport`).
    """

    timeout_error = httpx.TimeoutException
    transport_error = httpx.TransportError

    def __init__(
        self, *, timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        super().__init__()
        self._timeout = timeout
        self._transport = transport

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self._timeout, transport=self._transport)
