"""Cache keys of the ``http`` group: made, parsed and checked in this one place. Pure, no I/O.

Format. The base key is ``"<METHOD> <origin-form target>"`` (kubecache's key). A variant of a
response that names ``Vary`` headers lives under the base key, then ``"\\n#<generation>"`` (the
generation of the vary record it belongs to: a new record starts new variants), then one line per
varied header, in the order of the stored vary record: ``"\\nname: value"`` when the request
carried the header, ``"\\nname:"`` when it did not (an absent and an empty header are different
variants). Values are the request's field bytes read as Latin-1, so a key round-trips a field
exactly.

Trust. The key is all the key's owner sees, and its loader turns it into a backend request with
the proxy's credentials; keys also arrive on the peer port. `check_key` therefore accepts only
what `base_key`/`variant_key` could have made from a request the public port accepted: a cached
method, a normalised origin-form target, lower-case token names (never ``host``, framing,
connection or credential fields) and field-value bytes (no CR, LF, NUL or other control).
Whether the names are the ones the base key's vary record lists is the loader's check (it needs
the record). Anything else raises `BadKey`, a
`tokencache.InvalidArgument`, which the peer port answers as a bad request.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import tokencache

from ._target import is_origin_form, remove_dot_segments

__all__ = [
    "BadKey",
    "ParsedKey",
    "base_key",
    "check_key",
    "join_variant",
    "parse_key",
    "variant_key",
    "variant_lines",
    "variant_value",
    "varyable",
]

_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
# Never a varied name: framing, routing and connection fields, credentials. A key naming one would
# let whoever writes keys set it on the backend request.
_NEVER_VARIED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-authorization",
        "proxy-connection",
        "authorization",
        "cookie",
    }
)
# A field value as Latin-1 text: HTAB, SP, VCHAR, obs-text; no other control, nothing above 0xFF.
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# A vary record's generation (proxy._loader makes 8 hex digits; older records may have none).
_GENERATION = re.compile(r"#[0-9a-f]{0,32}")


class BadKey(tokencache.InvalidArgument):
    """A key this proxy could not have made: refused, never loaded."""


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A checked key: method, target, varied names in key order, and the headers to send."""

    method: str
    target: str
    names: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]


def varyable(name: str) -> bool:
    """Whether a response varying on header `name` (lower case) can have variant keys: a token,
    and not a framing, routing, connection or credential field (see the module docstring)."""
    return _NAME.fullmatch(name) is not None and name not in _NEVER_VARIED


def base_key(method: str, target: str) -> str:
    """The base cache key of a request: method and request-target, kubecache's key."""
    return method + " " + target


def variant_lines(names: Sequence[str], values: Sequence[bytes | None]) -> str:
    """One ``"\\nname: value"`` line per varied header (``"\\nname:"`` when it is absent).

    An absent header and an empty one are different variants (``name:`` versus ``name: ``).
    Whitespace around the commas of a list is not part of a value (RFC 9110 §5.6.1), so
    ``1, 2`` and ``1,2`` are one variant (RFC 9111 §4.1); a value with a quoted-string is kept
    as it is (a comma there may be data). ``Accept-Language`` and ``Accept-Encoding`` values are
    lower-cased (``en-US`` and ``en-us`` name one language).
    """
    lines = []
    for name, value in zip(names, values, strict=True):
        if value is None:
            lines.append(f"\n{name}:")
            continue
        lines.append(f"\n{name}: {variant_value(name, value).decode('latin-1')}")
    return "".join(lines)


# Fields whose values are case-insensitive throughout: language ranges (RFC 9110 §12.5.4, RFC
# 4647 §2) and content-codings (§8.4.1), with their q parameters.
_CASELESS = frozenset({"accept-language", "accept-encoding"})


def variant_value(name: str, value: bytes) -> bytes:
    """The value of the varied header `name` as its variant key holds it (see `variant_lines`)."""
    if name in _CASELESS:
        value = value.lower()
    if b"," in value and b'"' not in value:
        return b",".join(part.strip(b" \t") for part in value.split(b","))
    return value


def variant_key(
    base: str, names: Sequence[str], values: Sequence[bytes | None], generation: str = ""
) -> str:
    """The key of one variant of `base` (of the vary record of `generation`)."""
    return join_variant(base, generation, variant_lines(names, values))


def join_variant(base: str, generation: str, lines: str) -> str:
    """The variant key of `base` for the `variant_lines` result `lines`."""
    return f"{base}\n#{generation}{lines}"


def parse_key(key: str) -> tuple[str, str, list[tuple[str, str]]]:
    """A key → (method, request-target, varied headers to send); inverse of the two key makers.

    No checks (see `check_key` for keys from elsewhere).
    """
    first, *rest = key.split("\n")
    method, _, target = first.partition(" ")
    headers: list[tuple[str, str]] = []
    for line in rest:
        if line.startswith("#"):
            continue  # the generation of the vary record
        name, _, value = line.partition(":")
        if value:  # "name:" alone means the header was absent in the request
            headers.append((name, value[1:]))
    return method, target, headers


def check_key(key: str, methods: Collection[str]) -> ParsedKey:
    """Parse `key` and check it is one this proxy could have made; `BadKey` otherwise."""
    first, *rest = key.split("\n")
    method, sep, target = first.partition(" ")
    if not sep or method not in methods:
        raise BadKey("key: method not cached here")
    path = target.partition("?")[0]
    if not is_origin_form(target) or remove_dot_segments(path) != path:
        raise BadKey("key: target is not a normalised origin-form")
    names: list[str] = []
    headers: list[tuple[str, str]] = []
    if rest:  # a variant: the generation line, then at least one varied header
        if len(rest) < 2 or _GENERATION.fullmatch(rest[0]) is None:
            raise BadKey("key: bad variant generation")
        rest = rest[1:]
    for line in rest:
        name, colon, value = line.partition(":")
        if not colon or not varyable(name) or name in names:
            raise BadKey("key: bad header name")
        if value:
            if value[0] != " " or _VALUE.fullmatch(value) is None:
                raise BadKey("key: bad header value")
            headers.append((name, value[1:]))
        names.append(name)
    return ParsedKey(method, target, tuple(names), tuple(headers))
