"""The httpx2 sender for token requests (the httpx2 code path never touches httpx)."""

from __future__ import annotations

import httpx2

from plugin._sender import PooledTokenSender


class Httpx2TokenSender(PooledTokenSender):
    """Sends token requests with an :class:`httpx2.AsyncClient`.

    ``transport`` is for tests (respx or an :class:`httpx2.MockTransport`).
    """

    timeout_error = httpx2.TimeoutException
    transport_error = httpx2.TransportError

    def __init__(
        self, *, timeout: float = 10.0, transport: httpx2.AsyncBaseTransport | None = None
    ) -> None:
        super().__init__()
        self._timeout = timeout
        self._transport = transport

    def _new_client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(timeout=self._timeout, transport=self._transport)
