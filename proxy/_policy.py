"""Cache policy of the proxy: pure functions, no I/O.

Theory of operation. A request is *cacheable* when its method is one of the configured methods,
its path matches one of the route regexps (none configured = every route), it carries no body and,
unless `allow_auth_caching`, no ``Authorization`` or ``Cookie`` header (a shared cache must not
hand one user's answer to another). A cacheable request is looked up under its *cache key*.

Keys. The base key is ``"<METHOD> <request-target>"`` (kubecache's key). When the backend answers
with ``Vary``, the base key holds a *vary record* (see `proxy._stored`) naming the request headers
the backend varies on, and each variant lives under ``base + "\\n" + "name: value"`` lines, one per
named header, in the order the record lists them. The key is all the owner of the key needs to
fetch the response: the owner's loader runs in another process and sees nothing but the key, so the
key carries the varied header values themselves. Credentials therefore never get into a key: a
response that varies on ``Authorization`` or ``Cookie`` is not stored (`response_ttl`).

Storability. 2xx responses live `cache_ttl`, every other status `error_ttl`; ``Cache-Control:
no-store`` or ``private``, ``Set-Cookie``, ``Vary: *``, ``Vary`` on credentials and bodies above
`max_body_bytes` are never stored (the reason becomes the ``detail`` of ``Cache-Status``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "HOP_BY_HOP",
    "CachePolicy",
    "base_key",
    "cache_status",
    "parse_key",
    "strip_hop_by_hop",
    "variant_key",
]

# RFC 9110 §7.6.1 connection-specific fields, plus the proxy-scoped ones of RFC 9110 §11.7 and the
# old "Trailers" spelling: none of them may be forwarded by an intermediary.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

# Request headers whose values are credentials: never part of a key, never varied on.
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers without hop-by-hop fields and without those named in ``Connection``.

    Names are compared case-insensitively; the surviving headers keep their order and spelling.
    """
    items = list(headers)
    drop = set(HOP_BY_HOP)
    for name, value in items:
        if name.lower() == b"connection":
            drop.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return [(n, v) for n, v in items if n.lower() not in drop]


def _tokens(values: Iterable[bytes]) -> list[str]:
    """Comma-separated header values → lowercase tokens (directive arguments dropped)."""
    out: list[str] = []
    for value in values:
        for part in value.decode("latin-1").split(","):
            token = part.split("=", 1)[0].strip().lower()
            if token:
                out.append(token)
    return out


def base_key(method: str, target: str) -> str:
    """The base cache key of a request: method and request-target, kubecache's key."""
    return f"{method} {target}"


def variant_key(base: str, names: Sequence[str], values: Sequence[bytes | None]) -> str:
    """The key of one variant of `base`: one ``name: value`` line per varied header.

    An absent header and an empty one are different variants (``name:`` versus ``name: ``).
    """
    lines = [base]
    for name, value in zip(names, values, strict=True):
        lines.append(f"{name}:" if value is None else f"{name}: {value.decode('latin-1')}")
    return "\n".join(lines)


def parse_key(key: str) -> tuple[str, str, list[tuple[str, str]]]:
    """A key → (method, request-target, varied headers to send); inverse of the two key makers."""
    first, *rest = key.split("\n")
    method, _, target = first.partition(" ")
    headers: list[tuple[str, str]] = []
    for line in rest:
        name, _, value = line.partition(":")
        if value:  # "name:" alone means the header was absent in the request
            headers.append((name, value[1:]))
    return method, target, headers


def cache_status(
    *,
    hit: bool = False,
    fwd: str | None = None,
    ttl: float | None = None,
    stored: bool = False,
    fwd_status: int | None = None,
    detail: str | None = None,
) -> bytes:
    """An RFC 9211 ``Cache-Status`` value for this cache, e.g. ``tokencache; hit; ttl=42``."""
    parts = ["tokencache"]
    if hit:
        parts.append("hit")
    if fwd is not None:
        parts.append(f"fwd={fwd}")
    if fwd_status is not None:
        parts.append(f"fwd-status={fwd_status}")
    if ttl is not None:
        parts.append(f"ttl={int(ttl)}")
    if stored:
        parts.append("stored")
    if detail is not None:
        parts.append(f"detail={detail}")
    return "; ".join(parts).encode("ascii")


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What the proxy caches and for how long.

    `methods` are upper-case method names; `routes` are searched in the request-target, path and query (any match
    makes it cacheable; an empty tuple matches every route).
    """

    methods: frozenset[str]
    routes: tuple[re.Pattern[str], ...]
    cache_ttl: float
    error_ttl: float
    max_body_bytes: int
    allow_auth_caching: bool = False

    def request_bypass(
        self,
        method: str,
        target: str,
        *,
        has_authorization: bool,
        has_cookie: bool,
        has_body: bool,
    ) -> str | None:
        """None when the request may use the cache, else why not (a ``Cache-Status`` detail)."""
        if method not in self.methods:
            return "method"
        # kubecache matched the request URI, path and query (Go's URL.RequestURI()).
        if self.routes and not any(r.search(target) for r in self.routes):
            return "route"
        if has_body:
            return "body"
        if not self.allow_auth_caching:
            if has_authorization:
                return "authorization"
            if has_cookie:
                return "cookie"
        return None

    def vary_names(self, headers: Iterable[tuple[bytes, bytes]]) -> list[str] | None:
        """The sorted, de-duplicated header names of the response's ``Vary``; None for ``*``."""
        names = sorted(set(_tokens(v for n, v in headers if n.lower() == b"vary")))
        return None if "*" in names else names

    def response_ttl(
        self, status: int, headers: Sequence[tuple[bytes, bytes]], body_len: int
    ) -> tuple[float, str | None]:
        """(seconds to keep, None) for a storable response, else (0.0, why not)."""
        cache_control = _tokens(v for n, v in headers if n.lower() == b"cache-control")
        if "no-store" in cache_control:
            return 0.0, "no-store"
        if "private" in cache_control:
            return 0.0, "private"
        if any(n.lower() == b"set-cookie" for n, _ in headers):
            return 0.0, "set-cookie"
        names = self.vary_names(headers)
        if names is None:
            return 0.0, "vary-star"
        if any(n in _CREDENTIALS for n in names):
            return 0.0, "vary-credentials"
        if body_len > self.max_body_bytes:
            return 0.0, "too-large"
        ttl = self.cache_ttl if 200 <= status < 300 else self.error_ttl
        if ttl <= 0:
            return 0.0, "ttl"
        return ttl, None
