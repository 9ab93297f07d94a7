"""Cache policy of the proxy: pure functions, no I/O.

Theory of operation. A request is *cacheable* when its method is one of the configured methods,
its path matches one of the route regexps (none configured = every route), it carries no body and,
unless `allow_auth_caching`, no ``Authorization`` or ``Cookie`` header (a shared cache must not
hand one user's answer to another). A cacheable request is looked up under its *cache key*.

Keys. The base key is ``"<METHOD> <request-target>"`` (kubecache's key). When the backend answers
with ``Vary``, the base key holds a *vary record* (see `proxy._stored`) naming the request headers
the backend varies on and a generation, and each variant lives under ``base + "\\n#" +
generation`` followed by ``"\\n" + "name: value"`` lines (`variant_lines`), one per named header, in
the order the record lists them (`proxy._keys` makes, parses and checks keys). The varied values are in the key because they decide which
response it holds; the rest of the triggering request travels as the engine's load context
(`proxy._request_context`). Credentials never get into a key: a response that varies on
``Authorization`` or ``Cookie`` is not stored (`proxy._freshness.assess`).

Storability and freshness are RFC 9111's (`proxy._freshness`); `cache_ttl`/`error_ttl` are the
defaults for responses that say nothing, and `ttl_override` restores kubecache's fixed ttl.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

# The key format lives in proxy._keys; these names stay importable from here.
from ._keys import base_key, parse_key, variant_key, variant_lines

__all__ = [
    "HOP_BY_HOP",
    "SAFE_METHODS",
    "CachePolicy",
    "base_key",
    "cache_status",
    "invalidation_targets",
    "parse_key",
    "strip_hop_by_hop",
    "variant_key",
    "variant_lines",
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


# RFC 9110 §9.2.1: the methods that do not change the target; every other one invalidates.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def invalidation_targets(
    target: str, host: bytes | None, headers: Iterable[tuple[bytes, bytes]]
) -> list[str]:
    """The request-targets whose stored responses an unsafe request's non-error response
    invalidates (RFC 9111 §4.4): its own, and ``Location``/``Content-Location`` when they name
    the same origin (a relative reference, or an absolute one whose authority is `host`)."""
    out = [_origin_form(target)]
    authority = host.decode("latin-1").lower() if host is not None else None
    for name, value in headers:
        if name.lower() not in (b"location", b"content-location"):
            continue
        ref = urllib.parse.urljoin("http://origin" + out[0], value.decode("latin-1").strip())
        parts = urllib.parse.urlsplit(ref)
        same = parts.netloc == "origin" or (
            authority is not None and parts.netloc.lower() == authority
        )
        if same:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            if path not in out:
                out.append(path)
    return out


def _origin_form(target: str) -> str:
    if target.startswith("/"):
        return target
    parts = urllib.parse.urlsplit(target)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


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
    ttl_override: bool = False
    targeted_field: bytes = b"cdn-cache-control"
    honor_request_directives: bool = True
    stale_if_error: float = 0.0
    # How long a stale response with validators is kept for revalidation (a 304 is cheaper than
    # a full fetch); entries are evicted earlier under memory pressure like any other.
    keep_for_revalidation: float = 3600.0
    # Hit-for-pass: how long a URL whose response may not be stored is forwarded straight away
    # (Varnish's default hit-for-miss time).
    pass_seconds: float = 120.0

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
