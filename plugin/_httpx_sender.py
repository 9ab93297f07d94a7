"""The httpx sender for token requests (the httpx code path never touches httpx2)."""

from __future__ import annotations

import ssl

import httpx

from tokencache.plugin._cache import Same, SameOrEqual
from tokencache.plugin._sender import PooledTokenSender
from tokencache.plugin._tls import context_fingerprint

# The connection pool settings of an httpx.AsyncHTTPTransport (httpcore.AsyncConnectionPool).
_POOL_SETTINGS = (
    "_max_connections",
    "_max_keepalive_connections",
    "_keepalive_expiry",
    "_http1",
    "_http2",
    "_retries",
    "_local_address",
    "_uds",
    "_socket_options",
)


def transport_option(transport: httpx.AsyncBaseTransport | None) -> object:
    """How ``token_transport`` compares between auth objects sharing a registration.

    A plain :class:`httpx.AsyncHTTPTransport` without a proxy compares by its settings (TLS
    context fingerprint, pool limits, HTTP versions, retries, local address, socket options), so
    one built inline per auth object is equal to the last one; any other transport (a proxy, a
    mock, a custom class) by identity. Settings that cannot be read mean identity too.
    """
    if type(transport) is not httpx.AsyncHTTPTransport:
        return Same(transport)
    pool = getattr(transport, "_pool", None)
    try:
        settings = vars(pool)
        if type(pool).__name__ != "AsyncConnectionPool" or settings.get("_proxy") is not None:
            return Same(transport)
        context = settings["_ssl_context"]
        return SameOrEqual(
            transport,
            (
                "httpx.AsyncHTTPTransport",
                None if context is None else context_fingerprint(context),
                type(settings["_network_backend"]).__qualname__,
                repr([settings[name] for name in _POOL_SETTINGS]),
            ),
        )
    except (KeyError, TypeError, AttributeError):
        return Same(transport)


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
