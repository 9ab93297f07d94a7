"""Token responses, sans-IO: parse a token endpoint's answer, encode the cached value, derive TTLs.

Nothing here does I/O or reads a clock; the fetcher feeds it status, headers and body. The cached
value is compact JSON ``{"a": access_token, "t": token_type, "l": lifetime}``; ``lifetime`` is the
``expires_in`` the endpoint granted (or the configured default when it sent none).
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from plugin._errors import (
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    TokenError,
    TokenRejectedError,
    TokenResponseError,
    TokenServerError,
    TokenThrottledError,
    UnauthorizedClientError,
)

_log = logging.getLogger("plugin.oauth2")

_REJECTIONS: dict[str, type[TokenRejectedError]] = {
    "invalid_client": InvalidClientError,
    "invalid_scope": InvalidScopeError,
    "unauthorized_client": UnauthorizedClientError,
}
_MAX_FIELD = 200  # error / error_description are cut so a hostile endpoint cannot flood logs


@dataclass(frozen=True, repr=False)
class Token:
    """An access token, its type and the lifetime (seconds) it was granted with."""

    access_token: str
    token_type: str
    lifetime: float

    def encode(self) -> bytes:
        """Return the compact bytes stored in the cache group."""
        return json.dumps(
            {"a": self.access_token, "t": self.token_type, "l": self.lifetime},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, value: bytes) -> Token:
        """Inverse of :meth:`encode`."""
        data = json.loads(value)
        return cls(str(data["a"]), str(data["t"]), float(data["l"]))

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value (RFC 6750: the type ``bearer`` is written ``Bearer``)."""
        kind = "Bearer" if self.token_type.lower() == "bearer" else self.token_type
        return f"{kind} {self.access_token}"

    def __repr__(self) -> str:
        return f"Token(token_type={self.token_type!r}, lifetime={self.lifetime!r}, <hidden>)"


def default_leeway(lifetime: float) -> float:
    """The default leeway: min(60 s, 10 % of the lifetime)."""
    return min(60.0, 0.1 * lifetime)


def cache_ttl(lifetime: float, leeway: float | None) -> float:
    """TTL to cache a token for: its lifetime minus the leeway (default :func:`default_leeway`)."""
    lee = default_leeway(lifetime) if leeway is None else leeway
    return max(0.0, lifetime - lee)


def _short(value: object) -> str | None:
    if value is None:
        return None
    return str(value)[:_MAX_FIELD]


def _scrub(text: str | None, secret: str) -> str | None:
    if text is None or not secret:
        return text
    return text.replace(secret, "<hidden>")


def rejection(status: int, body: bytes, *, client_id: str, secret: str) -> TokenError:
    """Map a 4xx answer to the :class:`TokenRejectedError` subclass for its OAuth2 ``error``."""
    error: str | None = None
    description: str | None = None
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            error = _short(data.get("error"))
            description = _scrub(_short(data.get("error_description")), secret)
    except ValueError:
        pass
    cls = _REJECTIONS.get(error or "", InvalidRequestError)
    if error is None and status == 401:
        cls = InvalidClientError  # RFC 6749 5.2: a 401 from the token endpoint is a client failure
    detail = f": {description}" if description else ""
    message = f"token endpoint refused client {client_id!r} (HTTP {status}, {error or 'no error code'}){detail}"
    return cls(message, error=error, error_description=description, status=status)


def transient(status: int, *, client_id: str) -> TokenError:
    """The error for a retryable status (429 or 5xx) once the retries are spent."""
    if status == 429:
        return TokenThrottledError(
            f"token endpoint throttled client {client_id!r} (HTTP 429)", status=status
        )
    return TokenServerError(f"token endpoint failed (HTTP {status})", status=status)


def is_retryable_status(status: int) -> bool:
    """429 and every 5xx are worth another try; other statuses are final."""
    return status == 429 or 500 <= status <= 599


def parse_token(body: bytes, *, default_lifetime: float, client_id: str) -> Token:
    """Parse a 2xx token response; a missing or non-numeric ``expires_in`` takes the default."""
    try:
        data = json.loads(body)
    except ValueError:
        raise TokenResponseError(
            f"token endpoint sent a non-JSON answer for client {client_id!r}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
        raise TokenResponseError(f"token endpoint sent no access_token for client {client_id!r}")
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or not token_type:
        token_type = "Bearer"  # noqa: S105 - RFC 6750's default type name, not a credential
    raw = data.get("expires_in")
    lifetime: float | None = None
    if isinstance(raw, int | float | str) and not isinstance(raw, bool):
        try:
            lifetime = float(raw)
        except ValueError:
            lifetime = None
    if lifetime is None or not math.isfinite(lifetime) or lifetime <= 0:
        why = "missing" if raw is None else "not a positive number"
        _log.warning(
            "token for client %r: expires_in %s; using the default lifetime of %.0f s",
            client_id,
            why,
            default_lifetime,
        )
        lifetime = default_lifetime
    return Token(data["access_token"], token_type, lifetime)


def retry_after(headers: Mapping[str, str], *, now_epoch: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); None when absent/bad."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_epoch)
