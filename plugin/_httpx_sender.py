"""The httpx sender for token requests (the httpx code path never touches httpx2)."""

from __future__ import annotations

import ssl

import httpx

from tokencache.plugin._sender import PooledTokenSender


class HttpxTokenSender(PooledTokenSender):
    """Sends token requests with an :class:`httpx.AsyncClient`.

    ``ssl_context``: the token endpoint's TLS (custom CA, client certificate; :mod:`plugin._tls`).
    ``transport`` is for tests (respx or an :class:`httpx.MockTransport`).
    """

    timeout_error = httpx.TimeoutException
    transport_error = httpx.TransportError

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__()
        self._timeout = timeout
        self._transport = transport
        self._verify: ssl.SSLContext | bool = True if ssl_context is None else ssl_context

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self._timeout, transport=self._transport, verify=self._verify
        )
