"""tokencache.plugin: OAuth2 client-credentials tokens as a tokencache group, for httpx and others.

One token fetch per credential and scope per token lifetime for the whole cluster::

    from tokencache import plugin

    auth = plugin.ClientCredentialsAuth(token_url=..., client_id=..., client_secret=..., scope="api")
    async with httpx.AsyncClient(auth=auth) as client:      # or httpx.Client(auth=auth)
        await client.get("https://api.example.com/things")

Pass ``workspace=`` (the process's :class:`tokencache.Workspace`) to share across the cluster; see
docs/plugin.md. Other clients: :mod:`tokencache.plugin.httpx2`, :mod:`tokencache.plugin.requests`
(an ``AuthBase``), :mod:`tokencache.plugin.aiohttp` (a client middleware); anything else:
``ClientCredentialsAuth.token()``. Every failure is a :class:`tokencache.plugin.PluginError`
(:class:`tokencache.plugin.ConfigurationError`, :class:`tokencache.plugin.TokenError` and their
subclasses, all exported here; the tree is in docs/plugin.md, "Errors").
"""

from tokencache.plugin._auth import ClientCredentialsAuth
from tokencache.plugin._cache import Held, Policy, TokenCache
from tokencache.plugin._client_auth import AUTH_METHODS
from tokencache.plugin._errors import (
    ERROR_KINDS,
    AuthClosedError,
    ConfigurationError,
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    PluginError,
    TokenConnectionError,
    TokenEndpointError,
    TokenError,
    TokenRejectedError,
    TokenResponseError,
    TokenServerError,
    TokenThrottledError,
    TokenTimeoutError,
    UnauthorizedClientError,
)
from tokencache.plugin._fetch import TokenFetcher
from tokencache.plugin._httpx_sender import HttpxTokenSender
from tokencache.plugin._key import Credentials, fingerprint_key, secret_fingerprint
from tokencache.plugin._metrics import TokenMetricsCollector, TokenStats
from tokencache.plugin._request import (
    TokenHttpResponse,
    TokenRequest,
    TokenSender,
    build_token_request,
)
from tokencache.plugin._runtime import DEFAULT_RUNTIME, PluginRuntime
from tokencache.plugin._token import MAX_LIFETIME, AccessToken, Token

__all__ = [
    "AUTH_METHODS",
    "AccessToken",
    "AuthClosedError",
    "ClientCredentialsAuth",
    "ConfigurationError",
    "Credentials",
    "DEFAULT_RUNTIME",
    "ERROR_KINDS",
    "Held",
    "HttpxTokenSender",
    "InvalidClientError",
    "InvalidRequestError",
    "InvalidScopeError",
    "MAX_LIFETIME",
    "PluginError",
    "PluginRuntime",
    "Policy",
    "Token",
    "TokenCache",
    "TokenConnectionError",
    "TokenEndpointError",
    "TokenError",
    "TokenFetcher",
    "TokenHttpResponse",
    "TokenMetricsCollector",
    "TokenRejectedError",
    "TokenRequest",
    "TokenResponseError",
    "TokenSender",
    "TokenServerError",
    "TokenStats",
    "TokenThrottledError",
    "TokenTimeoutError",
    "UnauthorizedClientError",
    "build_token_request",
    "fingerprint_key",
    "secret_fingerprint",
]
