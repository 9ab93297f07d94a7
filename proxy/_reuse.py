"""May a stored response answer this request now? (RFC 9111 §4, §5.2.1; RFC 5861): pure.

`reuse` returns one of:

* ``FRESH`` — answer from the cache;
* ``BACKGROUND`` — stale within ``stale-while-revalidate``: answer from the cache and have the
  key's owner refresh it (once for the cluster);
* ``STALE_OK`` — stale, but the client's ``max-stale`` accepts it: answer from the cache;
* ``REVALIDATE`` — ask the key's owner to validate it first (one conditional request for the
  cluster, under the owner's singleflight).

The request directives (``no-cache``, ``max-age``, ``min-fresh``, ``max-stale``; ``Pragma:
no-cache`` without ``Cache-Control``) count only when the policy honours them. Honouring them
never bypasses the cache: a client's ``no-cache`` is a revalidation on the owner shared by every
request that arrives meanwhile, so clients cannot multiply backend load (a herd of ``no-cache``
requests costs one conditional request per flight).
"""

from __future__ import annotations

from ._freshness import Directives, delta_seconds, parse_directives
from ._stored import MUST_REVALIDATE, NO_CACHE

__all__ = [
    "BACKGROUND",
    "FRESH",
    "REVALIDATE",
    "STALE_OK",
    "request_directives",
    "reuse",
    "stale_if_error",
]

FRESH = "fresh"
BACKGROUND = "background"
STALE_OK = "max-stale"
REVALIDATE = "revalidate"


def request_directives(hmap: dict[bytes, bytes]) -> Directives:
    """The request's ``Cache-Control`` directives; ``Pragma: no-cache`` when it has none."""
    value = hmap.get(b"cache-control")
    if value is not None:
        return parse_directives([value])
    pragma = hmap.get(b"pragma")
    if pragma is not None and b"no-cache" in pragma.lower():
        return {"no-cache": None}
    return {}


def reuse(
    *,
    age: float,
    elapsed: float,
    fresh: float,
    flags: int,
    stale_while_revalidate: float,
    directives: Directives,
) -> str:
    """The decision for a stored response `elapsed` seconds in the cache, `age` seconds old."""
    staleness = elapsed - fresh
    if directives:
        if "no-cache" in directives:
            return REVALIDATE
        max_age = delta_seconds(directives, "max-age")
        if max_age is not None and age > max_age:
            return REVALIDATE
        min_fresh = delta_seconds(directives, "min-fresh")
        if min_fresh is not None and fresh - elapsed < min_fresh:
            return REVALIDATE
        if (
            staleness >= 0
            and "max-stale" in directives
            and not flags & (NO_CACHE | MUST_REVALIDATE)
        ):
            limit = directives["max-stale"]
            if limit is None or (delta_seconds(directives, "max-stale") or 0) >= staleness:
                return STALE_OK
    if flags & NO_CACHE:
        return REVALIDATE
    if staleness < 0:
        return FRESH
    if staleness < stale_while_revalidate and not flags & MUST_REVALIDATE:
        return BACKGROUND
    return REVALIDATE


def stale_if_error(*, staleness: float, flags: int, allowed: float, window: float) -> bool:
    """May a response `staleness` seconds stale answer for a failed backend (RFC 5861)?

    `allowed` is the response's own ``stale-if-error``, `window` the operator's
    ``CACHE_STALE_IF_ERROR``; ``must-revalidate`` (and its kin) and ``no-cache`` forbid it.
    """
    if flags & (MUST_REVALIDATE | NO_CACHE):
        return False
    return staleness <= max(allowed, window)
