"""A targeted cache-control field (RFC 9213, ``CDN-Cache-Control``) read as a Structured Field.

Theory of operation. RFC 9213 §2.1 defines a targeted field as a Dictionary Structured Field
(RFC 9651 §3.2), not as ``Cache-Control`` syntax, and says that a targeted field that is empty or
fails to parse SHOULD be ignored: the cache then behaves as if it were absent and falls back to
``Cache-Control`` and ``Expires``. `targeted_directives` returns None in that case, so the caller
can tell "ignore this field" from "this field says nothing".

The parser follows RFC 9651 §4.2 (Dictionary, Item, Inner List, Parameters and every bare item
type). Two deliberate points:

* key case: cache directive names are case-insensitive (RFC 9111 §5.2) and origins that write
  ``Max-Age=60`` mean it, so upper-case letters in a key are lower-cased instead of failing the
  whole field (a strict Structured Field parser would fail it);
* value types (RFC 9213 §2.1: "implementations SHOULD NOT consume values that violate these
  inferred constraints"): the delta-seconds directives must be non-negative Integers; any other
  value (``max-age="60"``, ``max-age=1.5``) makes the field invalid, hence ignored. A Boolean true
  is a directive without argument; ``?0`` is an absent directive; parameters are ignored.

Duplicate keys: the last one wins (RFC 9651 §4.2.2), unlike ``Cache-Control`` where this cache
takes the first.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

__all__ = ["parse_dictionary", "targeted_directives"]

# Directives whose argument is delta-seconds: an Integer >= 0 in a targeted field.
_DELTA_DIRECTIVES = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})

_KEY = re.compile(r"[a-zA-Z*][a-zA-Z0-9_\-.*]*")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(r"-?(\d{1,15})(?:\.(\d{1,3}))?")
_BYTES = re.compile(r":([A-Za-z0-9+/=]*):")
_DISPLAY = re.compile(r'%"((?:[\x20-\x21\x23\x24\x26-\x7e]|%[0-9a-f]{2})*)"')


class _Invalid(ValueError):
    """The field is not a valid Dictionary Structured Field."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.i < len(self.text) and self.text[self.i] in chars:
            self.i += 1

    def match(self, pattern: re.Pattern[str]) -> re.Match[str]:
        m = pattern.match(self.text, self.i)
        if m is None:
            raise _Invalid(self.text)
        self.i = m.end()
        return m

    def key(self) -> str:
        return self.match(_KEY).group().lower()

    def bare_item(self) -> object:
        c = self.peek()
        if c == "-" or c.isdigit():
            return self.number()
        if c == '"':
            return self.string()
        if c == "*" or (c.isascii() and c.isalpha()):
            return self.match(_TOKEN).group()
        if c == ":":
            try:
                return base64.b64decode(self.match(_BYTES).group(1), validate=True)
            except binascii.Error as exc:
                raise _Invalid(self.text) from exc
        if c == "?":
            flag = self.text[self.i + 1 : self.i + 2]
            if flag not in ("0", "1"):
                raise _Invalid(self.text)
            self.i += 2
            return flag == "1"
        if c == "@":
            self.i += 1
            date = self.number()
            if not isinstance(date, int):
                raise _Invalid(self.text)
            return ("date", date)
        if c == "%":
            raw = self.match(_DISPLAY).group(1)
            try:
                return (
                    re.sub(r"%([0-9a-f]{2})", lambda m: chr(int(m[1], 16)), raw)
                    .encode("latin-1")
                    .decode("utf-8")
                )
            except UnicodeDecodeError as exc:
                raise _Invalid(self.text) from exc
        raise _Invalid(self.text)

    def number(self) -> int | float:
        m = self.match(_NUMBER)
        whole, fraction = m.group(1), m.group(2)
        if fraction is None:
            return int(m.group())
        if len(whole) > 12:
            raise _Invalid(self.text)
        return float(m.group())

    def string(self) -> str:
        self.i += 1  # the opening quote
        out: list[str] = []
        while self.i < len(self.text):
            c = self.text[self.i]
            self.i += 1
            if c == "\\":
                escaped = self.peek()
                if escaped not in ('"', "\\"):
                    raise _Invalid(self.text)
                out.append(escaped)
                self.i += 1
            elif c == '"':
                return "".join(out)
            elif not " " <= c <= "~":
                raise _Invalid(self.text)
            else:
                out.append(c)
        raise _Invalid(self.text)  # unterminated

    def parameters(self) -> None:
        while self.peek() == ";":
            self.i += 1
            self.skip(" ")
            self.key()
            if self.peek() == "=":
                self.i += 1
                self.bare_item()

    def item_or_inner_list(self) -> object:
        if self.peek() != "(":
            value = self.bare_item()
            self.parameters()
            return value
        self.i += 1
        items: list[object] = []
        while self.i < len(self.text):
            self.skip(" ")
            if self.peek() == ")":
                self.i += 1
                self.parameters()
                return items
            items.append(self.bare_item())
            self.parameters()
            if self.peek() not in (" ", ")"):
                raise _Invalid(self.text)
        raise _Invalid(self.text)  # unterminated inner list

    def dictionary(self) -> dict[str, object]:
        out: dict[str, object] = {}
        self.skip(" ")
        while self.i < len(self.text):
            name = self.key()
            if self.peek() == "=":
                self.i += 1
                out[name] = self.item_or_inner_list()
            else:
                out[name] = True
                self.parameters()
            self.skip(" \t")
            if self.i == len(self.text):
                return out
            if self.peek() != ",":
                raise _Invalid(self.text)
            self.i += 1
            self.skip(" \t")
            if self.i == len(self.text):
                raise _Invalid(self.text)  # a trailing comma
        return out


def parse_dictionary(values: Iterable[bytes]) -> dict[str, object] | None:
    """Field lines → {key: bare value}; None when they are not one valid Dictionary."""
    text = ", ".join(v.decode("latin-1") for v in values).strip(" ")
    try:
        return _Parser(text).dictionary()
    except _Invalid:
        return None


def targeted_directives(values: Iterable[bytes]) -> dict[str, str | None] | None:
    """A targeted field's lines → directives as `parse_directives` gives them; None: ignore it."""
    members = parse_dictionary(values)
    if not members:
        return None  # empty or invalid: RFC 9213 §2.1, as if the field were absent
    out: dict[str, str | None] = {}
    for name, value in members.items():
        if name in _DELTA_DIRECTIVES:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return None
            out[name] = str(value)
        elif value is True:
            out[name] = None
        elif value is False:
            continue
        elif isinstance(value, str):
            out[name] = value
        else:
            out[name] = str(value)
    return out
