"""``ClientCredentialsAuth`` for ``requests``: the header on every request and the 401 rule.

``requests`` calls an ``AuthBase`` once per prepared request, so the 401 rule runs in a response
hook (as requests' own digest auth does): on a 401 the rejected token is compare-and-invalidated,
and when the cluster has another token the request is sent once more on the same connection
adapter with it. A body that is a file or a generator cannot be sent twice: its 401 is returned
(the rejected token is still invalidated). A second 401 starts the persistent-401 cooldown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Unpack

import requests
from requests.auth import AuthBase

from tokencache.plugin._cache import Held
from tokencache.plugin._core import AuthCore, FlowOptions
from tokencache.plugin._flow import CredentialsFlow
from tokencache.plugin._httpx_sender import HttpxTokenSender


def _replayable(request: requests.PreparedRequest) -> bool:
    return request.body is None or isinstance(request.body, bytes | str)


class ClientCredentialsAuth(CredentialsFlow, AuthBase):
    """OAuth2 client-credentials tokens shared across the process or cluster, for ``requests``.

    ``session.auth = auth`` or ``requests.get(url, auth=auth)``. Parameters as
    :class:`plugin.ClientCredentialsAuth` (see docs/plugin.md).
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

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """Set the token on ``request`` and watch its response for a 401."""
        held = self._core.token_sync()
        request.headers["Authorization"] = held.token.authorization
        request.hooks.setdefault("response", []).append(self._on_response(held))
        return request

    def _on_response(self, held: Held) -> Any:
        core = self._core

        def on_401(response: requests.Response, **kwargs: Any) -> requests.Response:
            request = response.request
            if response.status_code != 401:
                return response
            fresh = core.renew_sync(held)
            if fresh.token.access_token == held.token.access_token or not _replayable(request):
                return response
            core.cache.stats.count_unauthorized_retry()
            response.content  # noqa: B018 - read the body so the connection can be reused
            response.close()
            retry = request.copy()
            retry.headers["Authorization"] = fresh.token.authorization
            # Sent on the connection adapter directly (as requests' digest auth does): no hook runs
            # for the retry's answer, so it can never be retried a second time.
            connection = response.connection
            second: requests.Response = connection.send(retry, **kwargs)
            second.history.append(response)
            second.request = retry
            if second.status_code == 401:
                core.unauthorized_again()
            return second

        return on_401
