"""``ClientCredentialsAuth`` for ``aiohttp``: a client middleware with the 401 rule.

aiohttp 3.12 added client middlewares: a callable ``(request, handler) -> response`` that may call
the handler again (aiohttp's documented way to retry). On a 401 the rejected token is
compare-and-invalidated; when the cluster has another token and the body can be sent again (none,
or a payload aiohttp has not consumed: bytes, str, form, JSON) the request is sent once more with
it. A second 401 starts the persistent-401 cooldown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Unpack

from aiohttp import ClientRequest, ClientResponse
from aiohttp.client_middlewares import ClientHandlerType

from tokencache.plugin._core import AuthCore, FlowOptions
from tokencache.plugin._flow import CredentialsFlow
from tokencache.plugin._httpx_sender import HttpxTokenSender


def _replayable(request: ClientRequest) -> bool:
    body = request.body
    return body == b"" or not body.consumed


class ClientCredentialsAuth(CredentialsFlow):
    """OAuth2 client-credentials tokens shared across the process or cluster, for aiohttp.

    Pass it in ``ClientSession(middlewares=(auth,))`` or per request (``middlewares=``).
    Parameters as :class:`plugin.ClientCredentialsAuth` (see docs/plugin.md).
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
        **options: Unpack[FlowOptions],
    ) -> None:
        self._core = AuthCore(
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            extra_params=extra_params,
            auth_method=auth_method,
            sender_factory=lambda tls: HttpxTokenSender(timeout=timeout, ssl_context=tls.context),
            options=options,
            timeout=timeout,
        )

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """The middleware: the token on the request, one retry after a 401 with a new token."""
        core = self._core
        held = await core.token()
        request.headers["Authorization"] = held.token.authorization
        response = await handler(request)
        if response.status != 401:
            return response
        fresh = await core.renew(held)
        if fresh.token.access_token == held.token.access_token or not _replayable(request):
            return response
        core.cache.stats.count_unauthorized_retry()
        response.release()
        request.headers["Authorization"] = fresh.token.authorization
        second = await handler(request)
        if second.status == 401:
            core.unauthorized_again()
        return second
