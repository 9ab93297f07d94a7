"""``ClientCredentialsAuth`` for httpx: a drop-in ``auth=`` for ``httpx.Client`` and ``AsyncClient``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterable, Mapping
from typing import Unpack

import httpx

from tokencache.plugin._core import AuthCore, FlowOptions
from tokencache.plugin._flow import CredentialsFlow
from tokencache.plugin._httpx_sender import HttpxTokenSender, transport_option


def _replayable(request: httpx.Request) -> bool:
    return isinstance(request.stream, httpx.ByteStream)


class ClientCredentialsAuth(CredentialsFlow, httpx.Auth):
    """OAuth2 client-credentials tokens shared across the cluster, for httpx clients.

    Standalone when ``workspace`` is None (a private single-node workspace on a private loop
    thread); clustered when given the process's :class:`tokencache.Workspace`. A sync client used
    with a given workspace needs ``loop=`` (the loop the workspace runs on, or a
    :class:`tokencache.BackgroundLoop`). The flow is :mod:`plugin._flow`'s; see docs/plugin.md
    for every parameter.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | Iterable[str] | None = None,
        extra_params: Mapping[str, str] | None = None,
        auth_method: str = "client_secret_basic",
        *,
        timeout: float = 10.0,
        token_transport: httpx.AsyncBaseTransport | None = None,
        **options: Unpack[FlowOptions],
    ) -> None:
        self._core = AuthCore(
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            extra_params=extra_params,
            auth_method=auth_method,
            sender_factory=lambda tls: HttpxTokenSender(
                timeout=timeout, transport=token_transport, ssl_context=tls.context
            ),
            options=options,
            timeout=timeout,
            transport=token_transport,
            transport_option=transport_option(token_transport),
        )

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """The flow for ``httpx.Client``: blocks this thread only, on a token miss."""
        return self._sync_flow(request, _replayable)

    def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The flow for ``httpx.AsyncClient``: awaits the engine, never blocks the loop."""
        return self._async_flow(request, _replayable)
