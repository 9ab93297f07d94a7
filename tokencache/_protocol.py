"""The peer protocol's messages, without I/O: encode and decode the payload of every operation.

Frames (see ``_channel.py``) carry a type, a request id and a payload; this module says what the
payload of each type holds. Every decoder takes untrusted bytes and either returns a typed value or
raises :class:`ProtocolError` with a wire error code; nothing here reads a socket or a clock. The
layout of each payload is documented in ``docs/peer-protocol.md``; integers are big-endian.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from typing import NamedTuple

from ._fetched import Fetched, Kind

GROUP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# Frame types. Requests travel client -> server, answers server -> client (high bit set).
GET = 0x01
LOOKUP = 0x02
REMOVE = 0x03
PUT = 0x04
LEAVE = 0x05
PING = 0x06
VALUE = 0x81
OK = 0x82
MISS = 0x83
ERROR = 0x84
HEARTBEAT = 0x85
REQUESTS = frozenset((GET, LOOKUP, REMOVE, PUT, LEAVE, PING))
ANSWERS = frozenset((VALUE, OK, MISS, ERROR, HEARTBEAT))

# Error codes carried by ERROR frames (request id 0: about the connection, which then closes).
NOT_FOUND = 1
DECLINED = 2
UNKNOWN_GROUP = 3
BAD_REQUEST = 4
TOO_LARGE = 5
UNAUTHORIZED = 6
LOAD_FAILED = 7
UNSUPPORTED_VERSION = 8
SHUTTING_DOWN = 9
ERROR_NAMES = {
    NOT_FOUND: "not-found",
    DECLINED: "declined",
    UNKNOWN_GROUP: "unknown-group",
    BAD_REQUEST: "bad-request",
    TOO_LARGE: "too-large",
    UNAUTHORIZED: "unauthorized",
    LOAD_FAILED: "load-failed",
    UNSUPPORTED_VERSION: "unsupported-version",
    SHUTTING_DOWN: "shutting-down",
}

MAX_TRACE_BYTES = 8 << 10  # trace-context fields are a few hundred bytes in practice
MAX_MEMBER_BYTES = 2 << 10
MAX_MESSAGE_BYTES = 200

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_F64 = struct.Struct("!d")
_VALUE_HEAD = struct.Struct("!Bd")  # flags, ttl
_HAS_TTL = 0x01
_LOADED = 0x02
# A result's Kind in two flag bits (VALUE and PUT payloads); 0b11 is not a kind.
_KIND_SHIFT = 2
_KIND_MASK = 0x03 << _KIND_SHIFT
_KIND_CODES = {Kind.VALUE: 0, Kind.MARKER: 1, Kind.TRANSIENT: 2}
_KINDS = {code: kind for kind, code in _KIND_CODES.items()}
_HAS_CONTEXT = 0x01
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


class ProtocolError(ValueError):
    """Malformed, oversized or unauthenticated input; ``code`` is one of the error codes."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class GetRequest(NamedTuple):
    """A GET: answer from a cache or run the loader."""

    group: str
    key: str
    min_ttl: float
    context: bytes | None
    trace: dict[str, str]


class KeyRequest(NamedTuple):
    """A LOOKUP or REMOVE: a group, a key and (REMOVE only) the compare-and-remove digest."""

    group: str
    key: str
    if_digest: str | None


class PutRequest(NamedTuple):
    """A PUT: a handed-over entry with its remaining TTL and kind."""

    group: str
    key: str
    value: bytes
    ttl: float | None
    kind: Kind = Kind.VALUE


class _Reader:
    """Reads fields from one payload; any shortfall or excess is a bad request."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise ProtocolError(BAD_REQUEST, "payload ends early")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def seconds(self, what: str) -> float:
        value = float(_F64.unpack(self.take(8))[0])
        return check_seconds(value, what)

    def text(self, n: int, what: str) -> str:
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(BAD_REQUEST, f"{what} is not valid UTF-8") from None

    def rest(self) -> bytes:
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk

    def end(self) -> None:
        if self._pos != len(self._data):
            raise ProtocolError(BAD_REQUEST, "trailing bytes in payload")


def check_seconds(value: float, what: str) -> float:
    """``value`` if it is a finite number of seconds >= 0."""
    if not math.isfinite(value) or value < 0:
        raise ProtocolError(BAD_REQUEST, f"{what} must be a finite number >= 0")
    return value


def _group_and_key(r: _Reader, max_key_bytes: int) -> tuple[str, str]:
    group = r.text(r.u8(), "group")
    size = r.u32()
    if size > max_key_bytes:
        raise ProtocolError(TOO_LARGE, f"key longer than {max_key_bytes} bytes")
    return group, r.text(size, "key")


def _encode_group_key(group: str, key: str) -> bytes:
    g = group.encode("utf-8")
    k = key.encode("utf-8")  # lone surrogates raise here, in the caller's process
    return _U8.pack(len(g)) + g + _U32.pack(len(k)) + k


# -- requests ----------------------------------------------------------------------------------


def encode_get(
    group: str,
    key: str,
    min_ttl: float = 0.0,
    context: bytes | None = None,
    trace: Mapping[str, str] | None = None,
) -> bytes:
    """The payload of a GET."""
    parts = [_encode_group_key(group, key), _F64.pack(min_ttl)]
    if context is None:
        parts.append(b"\x00")
    else:
        parts += (b"\x01", _U32.pack(len(context)), context)
    fields = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in (trace or {}).items()]
    parts.append(_U8.pack(len(fields)))
    for name, value in fields:
        parts += (_U8.pack(len(name)), name, _U16.pack(len(value)), value)
    return b"".join(parts)


def decode_get(payload: bytes, max_key_bytes: int, max_context_bytes: int) -> GetRequest:
    """A GET's fields from its payload."""
    r = _Reader(payload)
    group, key = _group_and_key(r, max_key_bytes)
    min_ttl = r.seconds("min_ttl")
    context = None
    flags = r.u8()
    if flags & ~_HAS_CONTEXT:
        raise ProtocolError(BAD_REQUEST, "unknown GET flags")
    if flags & _HAS_CONTEXT:
        size = r.u32()
        if size > max_context_bytes:
            raise ProtocolError(TOO_LARGE, f"context longer than {max_context_bytes} bytes")
        context = r.take(size)
    trace: dict[str, str] = {}
    total = 0
    for _ in range(r.u8()):
        name = r.take(r.u8())
        value = r.take(r.u16())
        total += len(name) + len(value)
        if total > MAX_TRACE_BYTES:
            raise ProtocolError(TOO_LARGE, "trace context too large")
        # latin-1 maps every byte: trace fields are only ever handed to the propagator.
        trace[name.decode("latin-1")] = value.decode("latin-1")
    r.end()
    return GetRequest(group, key, min_ttl, context, trace)


def encode_lookup(group: str, key: str) -> bytes:
    """The payload of a LOOKUP."""
    return _encode_group_key(group, key)


def decode_lookup(payload: bytes, max_key_bytes: int) -> KeyRequest:
    """A LOOKUP's fields."""
    r = _Reader(payload)
    group, key = _group_and_key(r, max_key_bytes)
    r.end()
    return KeyRequest(group, key, None)


def encode_remove(group: str, key: str, if_digest: str | None = None) -> bytes:
    """The payload of a REMOVE; ``if_digest`` is a hex SHA-256 (sent as 32 raw bytes)."""
    if if_digest is None:
        return _encode_group_key(group, key) + b"\x00"
    if not _DIGEST_RE.fullmatch(if_digest):
        raise ValueError("if_digest must be 64 lowercase hex digits")
    return _encode_group_key(group, key) + b"\x20" + bytes.fromhex(if_digest)


def decode_remove(payload: bytes, max_key_bytes: int) -> KeyRequest:
    """A REMOVE's fields."""
    r = _Reader(payload)
    group, key = _group_and_key(r, max_key_bytes)
    size = r.u8()
    if size not in (0, 32):
        raise ProtocolError(BAD_REQUEST, "digest must be absent or 32 bytes")
    digest = r.take(size).hex() if size else None
    r.end()
    return KeyRequest(group, key, digest)


def encode_put(
    group: str, key: str, value: bytes, ttl: float | None, kind: Kind = Kind.VALUE
) -> bytes:
    """The payload of a PUT (a handed-over entry: its kind travels with it)."""
    flags = (0 if ttl is None else _HAS_TTL) | _KIND_CODES[kind] << _KIND_SHIFT
    head = _VALUE_HEAD.pack(flags, 0.0 if ttl is None else max(ttl, 0.0))
    return _encode_group_key(group, key) + head + value


def _kind(flags: int) -> Kind:
    kind = _KINDS.get((flags & _KIND_MASK) >> _KIND_SHIFT)
    if kind is None:
        raise ProtocolError(BAD_REQUEST, "unknown kind")
    return kind


def decode_put(payload: bytes, max_key_bytes: int, max_value_bytes: int) -> PutRequest:
    """A PUT's fields."""
    r = _Reader(payload)
    group, key = _group_and_key(r, max_key_bytes)
    flags = r.u8()
    if flags & ~(_HAS_TTL | _KIND_MASK):
        raise ProtocolError(BAD_REQUEST, "unknown PUT flags")
    kind = _kind(flags)
    ttl = r.seconds("ttl")
    value = r.rest()
    if len(value) > max_value_bytes:
        raise ProtocolError(TOO_LARGE, f"value longer than {max_value_bytes} bytes")
    return PutRequest(group, key, value, ttl if flags & _HAS_TTL else None, kind)


def encode_leave(member: str) -> bytes:
    """The payload of a LEAVE."""
    data = member.encode("utf-8")
    return _U16.pack(len(data)) + data


def decode_leave(payload: bytes) -> str:
    """The member named by a LEAVE."""
    r = _Reader(payload)
    size = r.u16()
    if size > MAX_MEMBER_BYTES:
        raise ProtocolError(TOO_LARGE, "member URL too long")
    member = r.text(size, "member")
    r.end()
    return member


# -- answers -----------------------------------------------------------------------------------


def encode_value(fetched: Fetched) -> bytes:
    """The payload of a VALUE answer: flags, remaining TTL (seconds; peers need no common clock)."""
    value, ttl, loaded, kind = fetched
    flags = (_LOADED if loaded else 0) | (0 if ttl is None else _HAS_TTL)
    flags |= _KIND_CODES[kind] << _KIND_SHIFT
    return _VALUE_HEAD.pack(flags, 0.0 if ttl is None else max(ttl, 0.0)) + value


def decode_value(payload: bytes) -> Fetched:
    """A VALUE answer's fields (the frame limit already bounds the value's size)."""
    r = _Reader(payload)
    flags = r.u8()
    if flags & ~(_HAS_TTL | _LOADED | _KIND_MASK):
        raise ProtocolError(BAD_REQUEST, "unknown VALUE flags")
    kind = _kind(flags)
    ttl = r.seconds("ttl")
    return Fetched(r.rest(), ttl if flags & _HAS_TTL else None, bool(flags & _LOADED), kind)


def encode_error(code: int, message: str) -> bytes:
    """The payload of an ERROR answer; the message is short and never carries a secret."""
    text = message.encode("utf-8")[:MAX_MESSAGE_BYTES]
    return _U8.pack(code) + _U16.pack(len(text)) + text


def decode_error(payload: bytes) -> tuple[int, str]:
    """An ERROR answer's code and message (undecodable message bytes are replaced)."""
    r = _Reader(payload)
    code = r.u8()
    text = r.take(r.u16()).decode("utf-8", errors="replace")
    r.end()
    return code, text


def error_name(code: int) -> str:
    """The readable name of an error code (unknown codes by number)."""
    return ERROR_NAMES.get(code, f"error-{code}")
