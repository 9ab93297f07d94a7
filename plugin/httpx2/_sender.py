"""The httpx2 sender for token requests (the httpx2 code path never touches httpx)."""

from __future__ import annotations

import ssl

import httpx2

from tokencache.plugin._sender import PooledTokenSender


class Httpx2TokenSender(PooledTokenSender):
    """Sends token requests with an :class:`httpx2.AsyncClient`.

    ``ssl_context``: the token endpoint's TLS (custom CA, client certificate; :mod:`plugin._tls`).
    ``transport`` is for tests (respx or an :class:`httpx2.MockTransport`).
    """

    timeout_error = httpx2.TimeoutException
    transport_error = httpx2.TransportError

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        transport: httpx2.AsyncBaseTransport | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__()
        self._timeout = timeout
        self._transport = transport
        self._verify: ssl.SSLContext | bool = True if ssl_context is None else ssl_context

    def _new_client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            timeout=self._timeout, transport=self._transport, verify=self._verify
        )
