"""Errors of the OAuth2 plugin.

The tree::

    PluginError                      base of everything the plugin raises on purpose
    ├── ConfigurationError           bad arguments (unknown auth method, no engine loop for a sync
    │                                caller, a group name taken by something that is not a token group)
    └── TokenError                   no token could be obtained; carries ``kind`` (a bounded label)
        ├── TokenRejectedError       the token endpoint answered 4xx with an OAuth2 error: never retried
        │   ├── InvalidClientError   ``invalid_client`` (wrong id or secret, wrong auth method)
        │   ├── InvalidScopeError    ``invalid_scope``
        │   ├── UnauthorizedClientError  ``unauthorized_client`` (grant not allowed for this client)
        │   └── InvalidRequestError  ``invalid_request``, ``invalid_grant`` and any other 4xx
        ├── TokenEndpointError       429, 5xx, timeouts, connection errors, after bounded retries
        │   ├── TokenThrottledError  429 (``Retry-After`` honoured while retrying)
        │   ├── TokenServerError     5xx
        │   ├── TokenTimeoutError    the endpoint did not answer in time
        │   └── TokenConnectionError the endpoint could not be reached
        ├── TokenResponseError       a 2xx answer that is not a usable token (no JSON, an empty or
        │                            missing access_token, expires_in <= 0, a token_type not accepted)
        └── AuthClosedError          the auth object was closed and then used

A sync caller that waits longer than ``sync_timeout`` gets :class:`TokenTimeoutError`.

Every message names the token endpoint (scheme, host and path only: no userinfo, no query) and is
built from the OAuth2 ``error`` / ``error_description``, the HTTP status and the client id: never a
secret or a token. ``endpoint`` carries the same safe form of the URL. Descriptions are scrubbed of the client secret in case an
endpoint echoes its input.
"""

from __future__ import annotations


class PluginError(Exception):
    """Base class of the errors the plugin raises."""


class ConfigurationError(PluginError, ValueError):
    """The plugin was given arguments it cannot work with."""


class TokenError(PluginError):
    """No token could be obtained from the token endpoint.

    ``kind`` is one of a fixed set of short labels (used as a metrics label), ``error`` and
    ``error_description`` are the OAuth2 fields when the endpoint sent them, ``status`` is the HTTP
    status when there was one, ``endpoint`` the token endpoint (without userinfo or query).
    """

    kind = "error"

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        error_description: str | None = None,
        status: int | None = None,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error = error
        self.error_description = error_description
        self.status = status
        self.endpoint = endpoint


class TokenRejectedError(TokenError):
    """The token endpoint refused the request (4xx). Retrying would not help; not retried."""

    kind = "rejected"


class InvalidClientError(TokenRejectedError):
    """``invalid_client``: the client id, secret or authentication method is wrong."""

    kind = "invalid_client"


class InvalidScopeError(TokenRejectedError):
    """``invalid_scope``: a requested scope is unknown or not allowed for this client."""

    kind = "invalid_scope"


class UnauthorizedClientError(TokenRejectedError):
    """``unauthorized_client``: this client may not use the client-credentials grant."""

    kind = "unauthorized_client"


class InvalidRequestError(TokenRejectedError):
    """Any other 4xx answer (``invalid_request``, ``invalid_grant``, a bare 400/403/404 …)."""

    kind = "invalid_request"


class TokenEndpointError(TokenError):
    """The token endpoint failed transiently and kept failing through the bounded retries."""

    kind = "endpoint"


class TokenThrottledError(TokenEndpointError):
    """429 Too Many Requests. ``retry_after``: the seconds the endpoint asked for, if it did."""

    kind = "throttled"
    retry_after: float | None = None


class TokenServerError(TokenEndpointError):
    """A 5xx answer."""

    kind = "server_error"


class TokenTimeoutError(TokenEndpointError):
    """The token endpoint did not answer within the timeout."""

    kind = "timeout"


class TokenConnectionError(TokenEndpointError):
    """The token endpoint could not be reached (refused, reset, DNS)."""

    kind = "connection"


class TokenResponseError(TokenError):
    """A successful status with a body that is not a usable token response."""

    kind = "bad_response"


class AuthClosedError(TokenError):
    """The auth object was used after ``close()``/``aclose()``: build a new one."""

    kind = "closed"


#: Every ``kind`` label a :class:`TokenError` can carry (the metrics label set is exactly this).
ERROR_KINDS: tuple[str, ...] = (
    "bad_response",
    "closed",
    "connection",
    "invalid_client",
    "invalid_request",
    "invalid_scope",
    "other",
    "server_error",
    "throttled",
    "timeout",
    "unauthorized_client",
)
