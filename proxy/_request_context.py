"""The load context of a cacheable miss: the triggering request, for the owner's loader.

Theory of operation. The key names the response (method, target, varied headers); the rest of
the client's request travels beside it as the engine's per-request load context
(``Group.get(..., context=...)``, read by the loader with ``tokencache.load_context()``), so the
backend sees on a miss what it would have seen without the cache: the client's end-to-end headers
and ``X-Forwarded-*``. What the cache itself decides is left out: the client's conditionals and
``Range``/``If-Range`` (the cache fetches the whole response and answers those itself), and
credentials unless ``CACHE_ALLOW_AUTHORIZED`` (then they are part of the request the shared
response is for). The context also carries a random request id: a response that may not be
stored (`proxy._stored` pass record) goes to the request with that id and to nobody else.

Format: ``TCX1``, the id's length (one byte), the id, then ``name: value`` lines joined by CRLF.
Header values cannot hold CR or LF (the listener's parser refuses them), so the format is exact.

Trust. A context can arrive from another peer, and the loader sends its headers to the backend
with the proxy's credentials, so `decode_context` applies the same rules as `encode_context`
again (never ``Host``, framing, hop-by-hop fields, the cache's own fields, or credentials unless
allowed) and refuses a context that is not well-formed (`BadContext`, a bad request on the peer
port): a field name must be a token and a value field-value bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import tokencache

from ._policy import HOP_BY_HOP

__all__ = [
    "EXCLUDED",
    "BadContext",
    "RequestContext",
    "context_fields",
    "decode_context",
    "encode_context",
    "with_request_id",
]

_MAGIC = b"TCX1"
# Request fields the cache answers itself or sets itself; never part of a backend fill request.
EXCLUDED = frozenset(
    {
        b"host",
        b"if-none-match",
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"if-range",
        b"range",
        b"content-length",
        b"expect",
    }
)
_CREDENTIALS = frozenset({b"authorization", b"cookie"})
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


class BadContext(tokencache.InvalidArgument):
    """A load context this proxy could not have made: the load is refused."""


def _excluded(credentials: bool) -> frozenset[bytes]:
    return EXCLUDED | HOP_BY_HOP if credentials else EXCLUDED | HOP_BY_HOP | _CREDENTIALS


@dataclass(frozen=True, slots=True)
class RequestContext:
    """A decoded context: the triggering request's id and the headers to send upstream."""

    request_id: bytes
    headers: list[tuple[bytes, bytes]]


def encode_context(
    request_id: bytes, headers: Sequence[tuple[bytes, bytes]], *, credentials: bool
) -> bytes:
    """The context for `headers` (already without hop-by-hop fields, with ``X-Forwarded-*``)."""
    return with_request_id(request_id, context_fields(headers, credentials=credentials))


def context_fields(headers: Sequence[tuple[bytes, bytes]], *, credentials: bool) -> bytes:
    """The header part of a context (what repeats of one request share)."""
    excluded = _excluded(credentials)
    return b"\r\n".join([b"%s: %s" % (n, v) for n, v in headers if n.lower() not in excluded])


def with_request_id(request_id: bytes, fields: bytes) -> bytes:
    """A whole context: `request_id` and the header part `fields` (`context_fields`)."""
    return b"".join((_MAGIC, bytes((len(request_id),)), request_id, fields))


def decode_context(data: bytes | None, *, credentials: bool) -> RequestContext | None:
    """The inverse of `encode_context` with the same `credentials` rule; None for no context or
    one of another format; `BadContext` for a malformed one (see the module docstring)."""
    if data is None or data[:4] != _MAGIC:
        return None
    if len(data) < 5 or len(data) < 5 + data[4]:
        raise BadContext("load context: truncated")
    n = data[4]
    request_id = data[5 : 5 + n]
    headers: list[tuple[bytes, bytes]] = []
    rest = data[5 + n :]
    excluded = _excluded(credentials)
    if rest:
        for line in rest.split(b"\r\n"):
            name, sep, value = line.partition(b": ")
            if not sep or _NAME.fullmatch(name) is None or _VALUE.fullmatch(value) is None:
                raise BadContext("load context: malformed header line")
            if name.lower() not in excluded:
                headers.append((name, value))
    return RequestContext(request_id, headers)
