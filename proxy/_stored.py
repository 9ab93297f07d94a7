"""The bytes the proxy keeps in the ``http`` group: responses stored ready to write.

Theory of operation. Every value starts with a 4-byte magic that says what it is:

``TCR1`` response   struct ``<HIdI`` (status, base age, stored ttl, head length), the head, the body.
                    The head is the status line and every header line (CRLF-terminated, including
                    ``Content-Length``) *without* the blank line: the listener writes the head, then
                    its own ``Cache-Status``/``Age`` (and ``Connection``) lines, then CRLF and the
                    body. A HEAD request gets the same head and no body.
``TCV1`` vary       struct ``<H`` (length of the names), the comma-joined lower-case header names the
                    backend varies on, then a whole ``TCR1`` record: the variant for a request that
                    carries none of those headers (that is what the key's owner fetched).
``TCP1`` pass       the reason (ASCII) this URI is not cached (no-store, private, set-cookie, …):
                    remembered so that later requests are forwarded at once ("hit-for-pass").
``TCS1`` stale      struct ``<Hd`` (status of the failed fetch, seconds since expiry), then an inner
                    ``TCR1`` or ``TCV1`` record served with ``detail=stale``. Never stored.
``TCE1`` error      struct ``<H`` (502 or 504), then a short ASCII reason. Never stored.

``Age`` on a hit is the backend's own ``Age`` when the response was stored plus the time it has
spent in the cache (stored ttl minus remaining ttl): no wall clock crosses the wire.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from ._policy import strip_hop_by_hop

__all__ = [
    "ERROR",
    "PASS",
    "RESPONSE",
    "STALE",
    "VARY",
    "ErrorRecord",
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
    "response_layout",
    "status_line",
]

RESPONSE = b"TCR1"
VARY = b"TCV1"
PASS = b"TCP1"
STALE = b"TCS1"
ERROR = b"TCE1"

_RESPONSE = struct.Struct("<4sHIdI")
_HEAD_START = _RESPONSE.size
_VARY = struct.Struct("<4sH")
_STALE = struct.Struct("<4sHd")
_ERROR = struct.Struct("<4sH")

# Written by the listener itself, never taken from the stored head.
_OWN = frozenset({b"content-length", b"age"})


def status_line(status: int, reason: bytes = b"") -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``; the standard phrase when `reason` is empty."""
    if not reason:
        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            reason = b"Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def _age(headers: Iterable[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name.lower() == b"age":
            try:
                return max(0, min(int(value.strip()), 0xFFFFFFFF))
            except ValueError:
                return 0
    return 0


def encode_response(
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    *,
    ttl: float,
    reason: bytes = b"",
    head_only: bool = False,
) -> bytes:
    """A ``TCR1`` record. Hop-by-hop headers are dropped; ``Content-Length`` is set to the body's
    length unless `head_only` (an answer to HEAD: the backend's ``Content-Length`` is kept)."""
    kept = [(n, v) for n, v in strip_hop_by_hop(headers) if n.lower() not in _OWN]
    lines = [status_line(status, reason)]
    lines.extend(b"%s: %s\r\n" % (n, v) for n, v in kept)
    if head_only:
        lines.extend(b"%s: %s\r\n" % (n, v) for n, v in headers if n.lower() == b"content-length")
    elif status not in (204, 304) and not 100 <= status < 200:
        lines.append(b"Content-Length: %d\r\n" % len(body))
    head = b"".join(lines)
    fixed = _RESPONSE.pack(RESPONSE, status, _age(headers), ttl, len(head))
    return b"".join((fixed, head, body))


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A decoded ``TCR1`` record; `head` and `body` are views into the stored bytes."""

    status: int
    base_age: int
    ttl: float
    head: memoryview
    body: memoryview

    def age(self, remaining: float | None) -> int:
        """The ``Age`` to send when `remaining` seconds of the stored ttl are left."""
        if remaining is None:
            return self.base_age
        return self.base_age + max(0, int(self.ttl - remaining))


def decode_response(value: bytes) -> StoredResponse:
    """The inverse of `encode_response`; ValueError when `value` is not a ``TCR1`` record."""
    if value[:4] != RESPONSE:
        raise ValueError("not a stored response")
    _, status, base_age, ttl, head_len = _RESPONSE.unpack_from(value)
    view = memoryview(value)
    start = _RESPONSE.size
    return StoredResponse(
        status, base_age, ttl, view[start : start + head_len], view[start + head_len :]
    )


def response_layout(value: bytes) -> tuple[int, int, float, int, int]:
    """(status, base age, stored ttl, head start, head end) of a ``TCR1`` record, unchecked.

    The hit path's cheap alternative to `decode_response`: offsets instead of views.
    """
    _, status, base_age, ttl, head_len = _RESPONSE.unpack_from(value)
    return status, base_age, ttl, _HEAD_START, _HEAD_START + head_len


@dataclass(frozen=True, slots=True)
class VaryRecord:
    """A decoded ``TCV1`` record: varied header names and the no-header variant's record."""

    names: tuple[str, ...]
    default: bytes


def encode_vary(names: Sequence[str], default: bytes) -> bytes:
    """A ``TCV1`` record over lower-case `names` and a ``TCR1`` record `default`."""
    joined = ",".join(names).encode("ascii")
    return b"".join((_VARY.pack(VARY, len(joined)), joined, default))


def decode_vary(value: bytes) -> VaryRecord:
    """The inverse of `encode_vary`."""
    if value[:4] != VARY:
        raise ValueError("not a vary record")
    _, size = _VARY.unpack_from(value)
    start = _VARY.size
    joined = value[start : start + size].decode("ascii")
    return VaryRecord(tuple(joined.split(",")) if joined else (), value[start + size :])


def encode_pass(reason: str) -> bytes:
    """A ``TCP1`` record: this URI is forwarded, not cached, because of `reason`."""
    return PASS + reason.encode("ascii")


def decode_pass(value: bytes) -> str:
    """The reason of a ``TCP1`` record."""
    if value[:4] != PASS:
        raise ValueError("not a pass record")
    return value[4:].decode("ascii")


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
