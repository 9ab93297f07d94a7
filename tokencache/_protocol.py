"""The peer wire protocol, without I/O.

Requests are ``POST {base}/_tokencache/v1/{group}/{op}`` with the key as the UTF-8 body, so every
key string round-trips exactly (golang/groupcache put keys in URL paths and broke on ``+``, spaces
and ``/``). Answers carry the value as the body and the *remaining* TTL in seconds in a header, so
peers need no synchronised clocks. Errors carry a machine-readable code in ``X-Tokencache-Error``;
the HTTP status is its wire form.
"""

from __future__ import annotations

import base64
import math
import re

PREFIX = "/_tokencache/v1"
GET_OP = "get"
REMOVE_OP = "remove"
LOOKUP_OP = "lookup"  # the cached copy only (404 not-found when none); never loads
PUT_OP = "put"  # body = key then value; KEY_LENGTH_HEADER says where the key ends
MEMBER_OPS = ("leave", "ping")  # POST {PREFIX}/_members/{op}; leave's body = the leaving URL
MEMBERS = "_members"

TTL_HEADER = "X-Tokencache-Ttl"
MIN_TTL_HEADER = "X-Tokencache-Min-Ttl"
IF_DIGEST_HEADER = "X-Tokencache-If-Digest"
ERROR_HEADER = "X-Tokencache-Error"
LOADED_HEADER = "X-Tokencache-Loaded"  # "1": a loader ran on the owner for this request
CONTEXT_HEADER = "X-Tokencache-Context"  # base64 of the caller's opaque load context
KIND_HEADER = "X-Tokencache-Kind"  # "marker" | "transient"; absent = "value"
KEY_LENGTH_HEADER = "X-Tokencache-Key-Length"  # put: body = key bytes, then the value

GROUP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")

# error code -> HTTP status
ERRORS = {
    "not-found": 404,
    "unknown-group": 404,
    "declined": 421,
    "bad-request": 400,
    "too-large": 413,
    "unauthorized": 401,
    "load-failed": 502,
    "leaving": 503,
}


class ProtocolError(ValueError):
    """A malformed peer request or answer; ``code`` is one of :data:`ERRORS`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def path(group: str, op: str) -> str:
    """The request path for ``op`` on ``group``."""
    return f"{PREFIX}/{group}/{op}"


def decode_key(body: bytes, max_key_bytes: int) -> str:
    """The key carried by a request body."""
    if len(body) > max_key_bytes:
        raise ProtocolError("too-large", f"key longer than {max_key_bytes} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("bad-request", "key is not valid UTF-8") from None


def encode_key(key: str) -> bytes:
    """The request body for ``key``; lone surrogates cannot travel and are refused."""
    return key.encode("utf-8")


def format_ttl(ttl: float | None) -> str | None:
    """The TTL header value for a remaining lifetime (``None``: no header, no expiry)."""
    if ttl is None:
        return None
    return f"{max(ttl, 0.0):.3f}"


def parse_seconds(raw: str | None, header: str) -> float | None:
    """A non-negative finite number of seconds from a header, ``None`` when absent."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ProtocolError("bad-request", f"{header} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ProtocolError("bad-request", f"{header} must be a finite number >= 0")
    return value


def encode_context(context: bytes) -> str:
    """The header value carrying a load context."""
    return base64.b64encode(context).decode("ascii")


def decode_context(raw: str | None, max_bytes: int) -> bytes | None:
    """The load context from its header, ``None`` when absent."""
    if raw is None:
        return None
    if len(raw) > (max_bytes + 2) // 3 * 4:
        raise ProtocolError("too-large", f"{CONTEXT_HEADER} longer than {max_bytes} bytes")
    try:
        return base64.b64decode(raw.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ProtocolError("bad-request", f"{CONTEXT_HEADER} is not base64") from None


def parse_digest(raw: str | None) -> str | None:
    """A hex SHA-256 digest from the compare-and-remove header."""
    if raw is None:
        return None
    if not _DIGEST_RE.fullmatch(raw):
        raise ProtocolError("bad-request", f"{IF_DIGEST_HEADER} must be 64 lowercase hex digits")
    return raw


def parse_kind(raw: str | None) -> str:
    """The record kind of an answer or put (``value`` when absent)."""
    if raw is None:
        return "value"
    if raw not in ("value", "marker", "transient"):
        raise ProtocolError("bad-request", f"{KIND_HEADER} is not a known kind")
    return raw
