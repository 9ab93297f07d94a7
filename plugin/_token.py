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
import time
from collections.abc import Mapping
from dataclasses import dataclass

from tokencache.plugin._errors import (
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

_log = logging.getLogger("tokencache.plugin.oauth2")

_REJECTIONS: dict[str, type[TokenRejectedError]] = {
    "invalid_client": InvalidClientError,
    "invalid_scope": InvalidScopeError,
    "unauthorized_client": UnauthorizedClientError,
}
#: The token types accepted by default (lower-case): RFC 6750 bearer tokens only.
BEARER_ONLY: tuple[str, ...] = ("bearer",)
#: The longest lifetime (seconds) a token is cached for, whatever ``expires_in`` says: one day. A
#: larger ``expires_in`` (1e300 from a broken endpoint) is capped to it, so the token is fetched
#: again at least daily instead of being kept for ever (and no TTL arithmetic overflows).
MAX_LIFETIME = 86400.0
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


@dataclass(frozen=True, repr=False)
class AccessToken:
    """A token as the public API hands it out: for gRPC metadata, websockets, database drivers.

    ``expires_at`` is on the wall clock (``time.time()``): when the plugin stops using this token
    (its lifetime minus the leeway). ``repr`` hides the token.
    """

    access_token: str
    token_type: str
    expires_at: float

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value (``Bearer <token>``)."""
        return Token(self.access_token, self.token_type, 0.0).authorization

    def expires_in(self, now: float | None = None) -> float:
        """Seconds of use left (never negative); ``now`` defaults to ``time.time()``."""
        return max(0.0, self.expires_at - (time.time() if now is None else now))

    def __repr__(self) -> str:
        return (
            f"AccessToken(token_type={self.token_type!r}, expires_at={self.expires_at!r}, <hidden>)"
        )


def default_leeway(lifetime: float) -> float:
    """The default leeway: min(60 s, 10 % of the lifetime)."""
    return min(60.0, 0.1 * lifetime)


def cache_ttl(lifetime: float, leeway: float | None) -> float:
    """TTL to cache a token for: its lifetime (at most :data:`MAX_LIFETIME`) minus the leeway
    (default :func:`default_leeway`)."""
    lifetime = min(lifetime, MAX_LIFETIME)
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


def rejection(
    status: int, body: bytes, *, client_id: str, secret: str, endpoint: str
) -> TokenError:
    """Map a 4xx answer to the :class:`TokenRejectedError` subclass for its OAuth2 ``error``."""
    error: str | None = None
    description: str | None = None
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            error = _scrub(_short(data.get("error")), secret)
            description = _scrub(_short(data.get("error_description")), secret)
    except ValueError:
        pass
    cls = _REJECTIONS.get(error or "", InvalidRequestError)
    if error is None and status == 401:
        cls = InvalidClientError  # RFC 6749 5.2: a 401 from the token endpoint is a client failure
    detail = f": {description}" if description else ""
    message = (
        f"token endpoint {endpoint} refused client {client_id!r} "
        f"(HTTP {status}, {error or 'no error code'}){detail}"
    )
    return cls(
        message, error=error, error_description=description, status=status, endpoint=endpoint
    )


def transient(status: int, *, client_id: str, endpoint: str) -> TokenError:
    """The error for a retryable status (429 or 5xx) once the retries are spent."""
    if status == 429:
        return TokenThrottledError(
            f"token endpoint {endpoint} throttled client {client_id!r} (HTTP 429)",
            status=status,
            endpoint=endpoint,
        )
    return TokenServerError(
        f"token endpoint {endpoint} failed (HTTP {status})", status=status, endpoint=endpoint
    )


def is_retryable_status(status: int) -> bool:
    """429 and every 5xx are worth another try; other statuses are final."""
    return status == 429 or 500 <= status <= 599


def _lifetime(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        value = float(raw)
    except (ValueError, OverflowError):  # an integer beyond a float's range: as 1e400 (inf)
        return None
    return value if math.isfinite(value) else None


def parse_token(
    body: bytes,
    *,
    default_lifetime: float,
    client_id: str,
    endpoint: str,
    token_types: tuple[str, ...] = BEARER_ONLY,
) -> Token:
    """Parse a 2xx token response (RFC 6749 5.1).

    ``access_token`` must be a non-empty string; ``token_type`` must be one of ``token_types``
    (case-insensitive; Bearer only by default, a missing one is taken as Bearer); ``expires_in``
    must be a positive finite number (or a string holding one, as some servers send) when present
    (a missing one takes ``default_lifetime``, logged); one above :data:`MAX_LIFETIME` is capped
    to it (logged).
    Anything else is a :class:`TokenResponseError` naming the endpoint (never the token).
    """

    def bad(why: str) -> TokenResponseError:
        return TokenResponseError(
            f"token endpoint {endpoint} sent {why} for client {client_id!r}", endpoint=endpoint
        )

    try:
        data = json.loads(body)
    except ValueError:
        raise bad("a non-JSON answer") from None
    if not isinstance(data, dict):
        raise bad("a JSON answer that is not an object")
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token.strip():
        raise bad("no access_token (missing, empty or not a string)")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in access_token):
        # RFC 6750 b64token characters are printable ASCII; anything else would corrupt the header.
        raise bad("an access_token with characters a header cannot carry")
    token_type = data.get("token_type")
    if token_type is None:
        # RFC 6749 5.1 requires it; lenient interop (docs/plugin.md, "Token type"): taken as
        # Bearer, and so still refused below when the caller's token_types leave Bearer out.
        token_type = "Bearer"  # noqa: S105 - RFC 6750's type name, not a credential
        _log.debug(
            "token endpoint %s sent no token_type for client %r: taken as Bearer",
            endpoint,
            client_id,
        )
    if not isinstance(token_type, str) or token_type.lower() not in token_types:
        shown = _short(token_type) if isinstance(token_type, str) else type(token_type).__name__
        raise bad(f"token_type {shown!r}, which is not accepted (token_types={token_types!r})")
    raw = data.get("expires_in")
    if raw is None:
        _log.warning(
            "token endpoint %s: expires_in missing for client %r; using the default lifetime of %.0f s",
            endpoint,
            client_id,
            default_lifetime,
        )
        lifetime = default_lifetime
    else:
        parsed = _lifetime(raw)
        if parsed is None or parsed <= 0:
            raise bad(
                f"expires_in {_short(raw)!r} (a token must live a positive number of seconds)"
            )
        lifetime = parsed
        if lifetime > MAX_LIFETIME:
            _log.warning(
                "token endpoint %s: expires_in %s for client %r capped to %.0f s",
                endpoint,
                _short(raw),
                client_id,
                MAX_LIFETIME,
            )
            lifetime = MAX_LIFETIME
    return Token(access_token, token_type, lifetime)


def retry_after(headers: Mapping[str, str], *, now_epoch: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); None when absent/bad."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    if len(raw) > _MAX_FIELD:
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_epoch)
