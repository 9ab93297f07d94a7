"""The bytes the proxy keeps in the ``http`` group: responses stored ready to write.

Theory of operation. Every value starts with a 4-byte magic that says what it is:

``TCR2`` response   struct ``<HIddBddI`` (status, age when stored, stored ttl, seconds fresh from
                    when it was stored, flags, stale-while-revalidate, stale-if-error, head length),
                    the head, the body. The head is the status line and every header line
                    (CRLF-terminated, including ``Content-Length``) *without* the blank line: the
                    listener writes the head, then its own ``Cache-Status``/``Age`` (and
                    ``Connection``) lines, then CRLF and the body. A HEAD request gets the same head
                    and no body. The engine's ttl is the freshness *plus* how long the entry is kept
                    stale (for revalidation, stale-while-revalidate, stale-if-error): the entry is
                    fresh while ``stored ttl - remaining ttl < fresh`` and flag ``NO_CACHE`` is off.
``TCV2`` vary       struct ``<HHH`` (lengths of names, generation, match), the comma-joined
                    lower-case header names the backend varies on, a generation (new with every
                    load of the base key, part of every variant key: invalidating the base key
                    orphans every variant at once), the variant lines of the request that loaded it
                    (`proxy._policy.variant_lines`), then the ``TCR2`` record of that variant.
``TCP1`` pass       struct ``<HH`` (lengths of reason and trigger), the reason (ASCII) the response
                    may not be stored, the id of the request that triggered the load, then that
                    request's response as a ``TCR2`` record (stored nowhere: handed only to the
                    request whose id matches; every other waiter forwards its own request).
``TCS1`` stale      struct ``<Hd`` (status of the failed fetch, seconds since expiry), then an inner
                    ``TCR2`` or ``TCV2`` record served with ``detail=stale``. Never stored.
``TCE1`` error      struct ``<H`` (502 or 504), then a short ASCII reason. Never stored.

``Age`` on a hit is the age the response had when stored (RFC 9111 §4.2.3) plus the time it has
spent in the cache (stored ttl minus remaining ttl): no wall clock crosses the wire.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

from ._policy import strip_hop_by_hop

__all__ = [
    "ERROR",
    "MUST_REVALIDATE",
    "NO_CACHE",
    "PASS",
    "RESPONSE",
    "STALE",
    "VARY",
    "ErrorRecord",
    "PassRecord",
    "StaleRecord",
    "StoredResponse",
    "VaryRecord",
    "decode_error",
    "decode_pass",
    "decode_response",
    "decode_stale",
    "decode_vary",
    "encode_error",
    "encode_pass",
    "encode_response",
    "encode_stale",
    "encode_vary",
    "head_fields",
    "response_layout",
    "status_line",
]

RESPONSE = b"TCR2"
VARY = b"TCV2"
PASS = b"TCP1"
STALE = b"TCS1"
ERROR = b"TCE1"

# Flags of a stored response.
NO_CACHE = 1  # revalidate before every reuse
MUST_REVALIDATE = 2  # never served stale (must-revalidate, proxy-revalidate, s-maxage)

_RESPONSE = struct.Struct("<4sHIddBddI")
_HEAD_START = _RESPONSE.size
_VARY = struct.Struct("<4sHHH")
_PASS = struct.Struct("<4sHH")
_STALE = struct.Struct("<4sHd")
_ERROR = struct.Struct("<4sH")

# Written by the listener itself, never taken from the stored head.
_OWN = frozenset({b"content-length", b"age", b"cache-status"})


def status_line(status: int, reason: bytes = b"") -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``; the standard phrase when `reason` is empty."""
    if not reason:
        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            reason = b"Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def encode_response(
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    *,
    ttl: float,
    age: float = 0.0,
    fresh: float | None = None,
    flags: int = 0,
    stale_while_revalidate: float = 0.0,
    stale_if_error: float = 0.0,
    reason: bytes = b"",
    head_only: bool = False,
) -> bytes:
    """A ``TCR2`` record. Hop-by-hop headers are dropped; ``Content-Length`` is set to the body's
    length unless `head_only` (an answer to HEAD: the backend's ``Content-Length`` is kept).
    `fresh` defaults to `ttl` (fresh for as long as it is kept)."""
    kept = [(n, v) for n, v in strip_hop_by_hop(headers) if n.lower() not in _OWN]
    lines = [status_line(status, reason)]
    lines.extend(b"%s: %s\r\n" % (n, v) for n, v in kept)
    if head_only:
        lines.extend(b"%s: %s\r\n" % (n, v) for n, v in headers if n.lower() == b"content-length")
    elif status not in (204, 304) and not 100 <= status < 200:
        lines.append(b"Content-Length: %d\r\n" % len(body))
    head = b"".join(lines)
    fixed = _RESPONSE.pack(
        RESPONSE,
        status,
        max(0, min(int(age), 0xFFFFFFFF)),
        ttl,
        ttl if fresh is None else fresh,
        flags,
        stale_while_revalidate,
        stale_if_error,
        len(head),
    )
    return b"".join((fixed, head, body))


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A decoded ``TCR2`` record; `head` and `body` are views into the stored bytes."""

    status: int
    base_age: int
    ttl: float
    fresh: float
    flags: int
    stale_while_revalidate: float
    stale_if_error: float
    head: memoryview
    body: memoryview

    def elapsed(self, remaining: float | None) -> float:
        """Seconds spent in the cache when `remaining` seconds of the stored ttl are left."""
        return 0.0 if remaining is None else max(0.0, self.ttl - remaining)

    def age(self, remaining: float | None) -> int:
        """The ``Age`` to send when `remaining` seconds of the stored ttl are left."""
        return self.base_age + int(self.elapsed(remaining))

    def staleness(self, remaining: float | None) -> float:
        """Seconds past its freshness (negative while fresh; ``no-cache`` is never fresh)."""
        return self.elapsed(remaining) - self.fresh


def decode_response(value: bytes) -> StoredResponse:
    """The inverse of `encode_response`; ValueError when `value` is not a ``TCR2`` record."""
    if value[:4] != RESPONSE:
        raise ValueError("not a stored response")
    _, status, base_age, ttl, fresh, flags, swr, sie, head_len = _RESPONSE.unpack_from(value)
    view = memoryview(value)
    start = _HEAD_START
    return StoredResponse(
        status,
        base_age,
        ttl,
        fresh,
        flags,
        swr,
        sie,
        view[start : start + head_len],
        view[start + head_len :],
    )


def response_layout(value: bytes) -> tuple[int, int, float, float, int, int, int]:
    """(status, base age, stored ttl, fresh, flags, head start, head end) of a ``TCR2`` record.

    The hit path's cheap alternative to `decode_response`: offsets instead of views, unchecked.
    """
    _, status, base_age, ttl, fresh, flags, _, _, head_len = _RESPONSE.unpack_from(value)
    return status, base_age, ttl, fresh, flags, _HEAD_START, _HEAD_START + head_len


def head_fields(head: bytes | memoryview) -> list[tuple[bytes, bytes]]:
    """The header fields of a stored head (its status line skipped), names as stored."""
    lines = bytes(head).split(b"\r\n")
    out: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out.append((name, value.strip()))
    return out


@dataclass(frozen=True, slots=True)
class VaryRecord:
    """A decoded ``TCV2`` record (see the module docstring)."""

    names: tuple[str, ...]
    generation: str
    match: str
    default: bytes


def encode_vary(names: Sequence[str], generation: str, match: str, default: bytes) -> bytes:
    """A ``TCV2`` record over lower-case `names`; `default` is the ``TCR2`` of variant `match`."""
    joined = ",".join(names).encode("ascii")
    gen = generation.encode("ascii")
    lines = match.encode("latin-1")
    return b"".join(
        (_VARY.pack(VARY, len(joined), len(gen), len(lines)), joined, gen, lines, default)
    )


def decode_vary(value: bytes) -> VaryRecord:
    """The inverse of `encode_vary`."""
    if value[:4] != VARY:
        raise ValueError("not a vary record")
    _, n_names, n_gen, n_match = _VARY.unpack_from(value)
    i = _VARY.size
    joined = value[i : i + n_names].decode("ascii")
    i += n_names
    gen = value[i : i + n_gen].decode("ascii")
    i += n_gen
    match = value[i : i + n_match].decode("latin-1")
    i += n_match
    return VaryRecord(tuple(joined.split(",")) if joined else (), gen, match, value[i:])


@dataclass(frozen=True, slots=True)
class PassRecord:
    """A decoded ``TCP1`` record: why not stored, the triggering request, its response."""

    reason: str
    trigger: bytes
    response: bytes


def encode_pass(reason: str, trigger: bytes = b"", response: bytes = b"") -> bytes:
    """A ``TCP1`` record: not stored because of `reason`; `response` belongs to `trigger` only."""
    why = reason.encode("ascii")
    return b"".join((_PASS.pack(PASS, len(why), len(trigger)), why, trigger, response))


def decode_pass(value: bytes) -> PassRecord:
    """The inverse of `encode_pass`."""
    if value[:4] != PASS:
        raise ValueError("not a pass record")
    _, n_reason, n_trigger = _PASS.unpack_from(value)
    i = _PASS.size
    reason = value[i : i + n_reason].decode("ascii")
    i += n_reason
    return PassRecord(reason, value[i : i + n_trigger], value[i + n_trigger :])


@dataclass(frozen=True, slots=True)
class StaleRecord:
    """A decoded ``TCS1`` record."""

    fwd_status: int
    expired_ago: float
    inner: bytes


def encode_stale(fwd_status: int, expired_ago: float, inner: bytes) -> bytes:
    """A ``TCS1`` record: `inner` served stale because the backend fetch failed with `fwd_status`."""
    return _STALE.pack(STALE, fwd_status, expired_ago) + inner


def decode_stale(value: bytes) -> StaleRecord:
    """The inverse of `encode_stale`."""
    if value[:4] != STALE:
        raise ValueError("not a stale record")
    _, fwd_status, expired_ago = _STALE.unpack_from(value)
    return StaleRecord(fwd_status, expired_ago, value[_STALE.size :])


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """A decoded ``TCE1`` record: the status to answer and a short reason."""

    status: int
    reason: str


def encode_error(status: int, reason: str) -> bytes:
    """A ``TCE1`` record (a backend fault, handed to the waiters of one flight only)."""
    return _ERROR.pack(ERROR, status) + reason.encode("ascii", "replace")


def decode_error(value: bytes) -> ErrorRecord:
    """The inverse of `encode_error`."""
    if value[:4] != ERROR:
        raise ValueError("not an error record")
    _, status = _ERROR.unpack_from(value)
    return ErrorRecord(status, value[_ERROR.size :].decode("ascii"))
