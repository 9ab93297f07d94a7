"""Answers made from a stored response: the full one, a 304, a 206 or a 416: pure functions.

`answer` picks what a request gets from a stored ``TCR2`` record (RFC 9110 §13.2.2 order): a
client's ``If-None-Match``/``If-Modified-Since`` that the stored validators satisfy → 304 with
the fields a 304 carries; else ``Range`` on a stored 200 (``If-Range`` permitting) → 206 (one part
or ``multipart/byteranges``) or 416; else the stored response. `extra` holds the lines the cache
adds (``Cache-Status``, ``Age``, ``Connection``), already CRLF-terminated.
"""

from __future__ import annotations

from ._conditional import (
    NOT_MODIFIED_FIELDS,
    byte_ranges,
    if_range_holds,
    not_modified,
    partial_body,
)
from ._stored import StoredResponse, head_fields, status_line

__all__ = ["answer"]

_BOUNDARY = b"tokencache-byteranges-7d3a91"
_NOT_IN_PARTIAL = frozenset({b"content-length", b"content-range"})


def _validators(
    fields: list[tuple[bytes, bytes]],
) -> tuple[bytes | None, bytes | None, bytes | None]:
    etag = last_modified = date = None
    for name, value in fields:
        lname = name.lower()
        if lname == b"etag" and etag is None:
            etag = value
        elif lname == b"last-modified" and last_modified is None:
            last_modified = value
        elif lname == b"date" and date is None:
            date = value
    return etag, last_modified, date


def answer(
    stored: StoredResponse, method: str, request: dict[bytes, bytes], extra: bytes
) -> tuple[int, bytes]:
    """(status, complete response bytes) for `request` from `stored`."""
    conditional = b"if-none-match" in request or b"if-modified-since" in request
    ranged = b"range" in request and method == "GET" and stored.status == 200
    if (conditional or ranged) and 200 <= stored.status < 300:
        fields = head_fields(stored.head)
        etag, last_modified, date = _validators(fields)
        # Without Last-Modified the response's Date stands in for If-Modified-Since (RFC 9110
        # §13.1.3: the cache knows the response was current then).
        if conditional and not_modified(request, etag, last_modified or date):
            lines = [status_line(304)]
            lines.extend(
                b"%s: %s\r\n" % (n, v) for n, v in fields if n.lower() in NOT_MODIFIED_FIELDS
            )
            return 304, b"".join((*lines, extra, b"\r\n"))
        if ranged:
            if_range = request.get(b"if-range")
            if if_range is None or if_range_holds(if_range, etag, last_modified):
                ranges = byte_ranges(request[b"range"], len(stored.body))
                if ranges is not None:
                    return _partial(stored, fields, ranges, method, extra)
    head = bytes(stored.head)
    if method == "HEAD":
        return stored.status, b"".join((head, extra, b"\r\n"))
    return stored.status, b"".join((head, extra, b"\r\n", stored.body))


def _partial(
    stored: StoredResponse,
    fields: list[tuple[bytes, bytes]],
    ranges: list[tuple[int, int]],
    method: str,
    extra: bytes,
) -> tuple[int, bytes]:
    length = len(stored.body)
    if not ranges:
        body = b"range not satisfiable\n"
        head = [
            status_line(416),
            b"Content-Range: bytes */%d\r\n" % length,
            b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body),
        ]
        return 416, b"".join((*head, extra, b"\r\n", body))
    content_type = next((v for n, v in fields if n.lower() == b"content-type"), None)
    added, body = partial_body(ranges, stored.body, content_type, _BOUNDARY)
    drop = set(_NOT_IN_PARTIAL)
    if len(ranges) > 1:
        drop.add(b"content-type")
    lines = [status_line(206)]
    lines.extend(b"%s: %s\r\n" % (n, v) for n, v in fields if n.lower() not in drop)
    lines.extend(b"%s: %s\r\n" % (n, v) for n, v in added)
    lines.append(b"Content-Length: %d\r\n" % len(body))
    if method == "HEAD":
        body = b""
    return 206, b"".join((*lines, extra, b"\r\n", body))
