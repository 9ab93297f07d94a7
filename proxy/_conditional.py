"""Client conditionals and Range against a stored response (RFC 9110 §13, §14): pure functions.

`not_modified` decides whether a stored response lets the cache answer 304 (``If-None-Match``
with the weak comparison; else ``If-Modified-Since``, only for a stored ``Last-Modified``).
`byte_ranges` parses a ``Range`` header against a body length: a list of (first, last) inclusive
ranges, `UNSATISFIABLE` (416) or None (ignore the header: not bytes, malformed, or too many
ranges). `if_range_holds` checks ``If-Range`` (a strong ETag match or an exact Last-Modified date).
`partial_response` builds the 206 (single part, or ``multipart/byteranges``) or 416 answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._freshness import http_date

__all__ = [
    "NOT_MODIFIED_FIELDS",
    "UNSATISFIABLE",
    "byte_ranges",
    "if_range_holds",
    "not_modified",
    "partial_body",
]

# RFC 9110 §15.4.5: what a 304 carries when the 200 would have had it (plus Last-Modified, which
# every cache we compare with sends too).
NOT_MODIFIED_FIELDS = frozenset(
    {
        b"cache-control",
        b"content-location",
        b"date",
        b"etag",
        b"expires",
        b"vary",
        b"last-modified",
    }
)
UNSATISFIABLE: list[tuple[int, int]] = []
_MAX_RANGES = 32  # more parts than this is a request to amplify, not to resume (RFC 9110 §14.2)


def _etags(value: bytes) -> list[bytes]:
    """The entity-tags of an ``If-None-Match``/``If-Match`` list (``*`` kept as is)."""
    return [t.strip() for t in value.split(b",") if t.strip()]


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def not_modified(
    request: dict[bytes, bytes], etag: bytes | None, last_modified: bytes | None
) -> bool:
    """True when the request's conditionals say the stored response is the one the client has."""
    inm = request.get(b"if-none-match")
    if inm is not None:
        if etag is None:
            return False
        tags = _etags(inm)
        return b"*" in tags or _opaque(etag.strip()) in {_opaque(t) for t in tags}
    ims = request.get(b"if-modified-since")
    if ims is None or last_modified is None:
        return False
    since = http_date(ims)
    modified = http_date(last_modified)
    return since is not None and modified is not None and modified <= since


def if_range_holds(value: bytes, etag: bytes | None, last_modified: bytes | None) -> bool:
    """``If-Range``: a strong ETag equal to the stored one, or the exact stored Last-Modified."""
    value = value.strip()
    if value.startswith(b'"') or value.startswith(b"W/"):
        return etag is not None and not value.startswith(b"W/") and value == etag.strip()
    if last_modified is None:
        return False
    when, stored = http_date(value), http_date(last_modified)
    return when is not None and when == stored


def byte_ranges(value: bytes, length: int) -> list[tuple[int, int]] | None:
    """A ``Range`` value → satisfiable ranges, `UNSATISFIABLE` ([]), or None (ignore it)."""
    unit, _, spec = value.partition(b"=")
    if unit.strip().lower() != b"bytes" or not spec.strip():
        return None
    out: list[tuple[int, int]] = []
    parts = [p.strip() for p in spec.split(b",")]
    if len(parts) > _MAX_RANGES:
        return None
    for part in parts:
        if not part:
            continue
        first_text, dash, last_text = part.partition(b"-")
        if not dash:
            return None
        first_text, last_text = first_text.strip(), last_text.strip()
        if (first_text and not first_text.isdigit()) or (last_text and not last_text.isdigit()):
            return None
        if not first_text:
            if not last_text:
                return None
            suffix = int(last_text)
            if suffix == 0:
                continue
            out.append((max(0, length - suffix), length - 1))
            continue
        first = int(first_text)
        if last_text and int(last_text) < first:
            return None  # invalid: the whole header is ignored (RFC 9110 §14.1.1)
        if first >= length:
            continue  # unsatisfiable part
        last = int(last_text) if last_text else length - 1
        out.append((first, min(last, length - 1)))
    if length == 0:
        return UNSATISFIABLE
    return out


def partial_body(
    ranges: Sequence[tuple[int, int]],
    body: bytes | memoryview,
    content_type: bytes | None,
    boundary: bytes,
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(headers, body) of a 206 for satisfiable `ranges` of `body`; multipart for several."""
    length = len(body)
    if len(ranges) == 1:
        first, last = ranges[0]
        return (
            [(b"Content-Range", b"bytes %d-%d/%d" % (first, last, length))],
            bytes(body[first : last + 1]),
        )
    chunks: list[bytes] = []
    for first, last in ranges:
        chunks.append(b"\r\n--" + boundary + b"\r\n")
        if content_type is not None:
            chunks.append(b"Content-Type: " + content_type + b"\r\n")
        chunks.append(b"Content-Range: bytes %d-%d/%d\r\n\r\n" % (first, last, length))
        chunks.append(bytes(body[first : last + 1]))
    chunks.append(b"\r\n--" + boundary + b"--\r\n")
    return (
        [(b"Content-Type", b"multipart/byteranges; boundary=" + boundary)],
        b"".join(chunks),
    )
