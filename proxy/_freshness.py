"""RFC 9111 freshness and storability of a backend response, and the client's request directives.

Pure functions over header lists; no clock is read here (callers pass the times).

Theory of operation. `parse_directives` reads ``Cache-Control`` into a dict (the targeted
``CDN-Cache-Control`` of RFC 9213 is a Structured Field: proxy._targeted reads it into the same
shape, or ignores it when it is empty or invalid): names lower-cased, the *first* occurrence of a
directive wins (RFC 9111 §4.2.1 leaves duplicates to the cache; the first is what Squid and Traffic
Server use), arguments are a token or a quoted-string. `assess` then decides, for one response:

* storable or not, and why not (the ``Cache-Status`` detail): ``no-store`` (ignored beside
  ``must-understand`` for a status code of RFC 9110), ``must-understand`` (any other status), ``private``,
  ``set-cookie``, ``vary-star``, ``vary-credentials``, ``vary-field`` (a framing or routing field such as ``Host``), ``status`` (neither explicit freshness nor a heuristically cacheable status, RFC 9110 §15.1),
  ``too-large``;
* the freshness lifetime (RFC 9111 §4.2.1): the targeted field's ``max-age``/``s-maxage`` when it is
  present and valid (it replaces ``Cache-Control`` and ``Expires`` for this cache), else ``s-maxage`` >
  ``max-age`` > ``Expires`` - ``Date``; without any of them the configured default (kubecache's
  ``CACHE_TTL`` for 2xx, ``CACHE_ERROR_TTL`` for other heuristically cacheable statuses), else the
  Last-Modified heuristic (10 % of the time since, at most a day: RFC 9111 §4.2.2);
* the current age at receipt (RFC 9111 §4.2.3): max(apparent age, ``Age`` + response delay);
* what may happen once it is stale: ``no-cache`` (revalidate before every reuse), ``must-
  revalidate``/``proxy-revalidate``/``s-maxage`` (never served stale), ``stale-while-revalidate``
  and ``stale-if-error`` (RFC 5861).

An invalid ``max-age``/``s-maxage`` argument makes the response stale (RFC 9111 §4.2.1 "SHOULD
consider the response stale"); an invalid ``Expires`` is a time in the past (§5.3).
"""

from __future__ import annotations

import calendar
import datetime
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._keys import varyable
from ._targeted import targeted_directives

__all__ = [
    "HEURISTIC_STATUSES",
    "UNDERSTOOD_STATUSES",
    "Assessment",
    "assess",
    "delta_seconds",
    "header_values",
    "http_date",
    "parse_directives",
]

# RFC 9110 §15.1: statuses cacheable by default (heuristically cacheable).
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# RFC 9110 §15: the final status codes it defines, whose caching rules this cache implements
# (the must-understand directive of RFC 9111 §5.2.2.3 lets only those be stored).
UNDERSTOOD_STATUSES = frozenset(
    {*range(200, 207), *range(300, 306), 307, 308, *range(400, 418), 421, 422, 426}
    | {*range(500, 506)}
)
# RFC 9111 §1.2.2: a delta-seconds too large to represent is 2^31.
_MAX_DELTA = 2**31
_HEURISTIC_FRACTION = 0.1
_HEURISTIC_MAX = 86400.0
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})

Directives = dict[str, str | None]


def header_values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Every value of the field `name` (lower-case), in order."""
    return [v for n, v in headers if n.lower() == name]


def parse_directives(values: Iterable[bytes]) -> Directives:
    """``Cache-Control``-style field values → {directive: argument or None}; the first one wins."""
    out: Directives = {}
    for raw in values:
        text = raw.decode("latin-1")
        i, n = 0, len(text)
        while i < n:
            # One directive: name [= token | quoted-string], up to the next comma outside quotes.
            j = i
            while j < n and text[j] not in ",=":
                j += 1
            name = text[i:j].strip().lower()
            arg: str | None = None
            if j < n and text[j] == "=":
                j += 1
                if j < n and text[j] == '"':
                    k = j + 1
                    buf = []
                    while k < n and text[k] != '"':
                        if text[k] == "\\" and k + 1 < n:
                            k += 1
                        buf.append(text[k])
                        k += 1
                    arg = "".join(buf)
                    j = k + 1
                    while j < n and text[j] != ",":
                        j += 1
                else:
                    k = j
                    while k < n and text[k] != ",":
                        k += 1
                    arg = text[j:k]
                    j = k
            if name and name not in out:
                out[name] = arg
            i = j + 1
    return out


def delta_seconds(directives: Directives, name: str) -> int | None:
    """The delta-seconds argument of `name`: None when absent, 0 when invalid (stale)."""
    if name not in directives:
        return None
    arg = directives[name]
    if arg is None or not arg.isascii() or not arg.isdigit():
        return 0
    return min(int(arg), _MAX_DELTA)


_MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
_MONTH_NUMBER = {m: i + 1 for i, m in enumerate(_MONTHS.split("|"))}
# RFC 9110 §5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms; nothing else. Names
# match in any case ("THU", "AUG", "gMT"): §5.6.7 encourages robust parsing of timestamps, and a
# name in the wrong case names the same day, unlike a wrong zone or a two-digit year.
_IMF = re.compile(
    rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) ({_MONTHS}) (\d{{4}}) (\d\d):(\d\d):(\d\d) GMT",
    re.IGNORECASE,
)
_RFC850 = re.compile(
    r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
    rf"(\d\d)-({_MONTHS})-(\d\d) (\d\d):(\d\d):(\d\d) GMT",
    re.IGNORECASE,
)
_ASCTIME = re.compile(
    rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ({_MONTHS}) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\d{{4}})",
    re.IGNORECASE,
)


def http_date(value: bytes | None) -> float | None:
    """An HTTP-date (one of the three RFC 9110 §5.6.7 forms) → POSIX seconds; None if invalid."""
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    if m := _IMF.fullmatch(text):
        day, month, year, hh, mm, ss = m.groups()
    elif m := _RFC850.fullmatch(text):
        day, month, yy, hh, mm, ss = m.groups()
        # two-digit years: the most recent year with those digits that is not 50 years ahead
        year = str(int(yy) + (1900 if int(yy) >= 70 else 2000))
    elif m := _ASCTIME.fullmatch(text):
        month, day, hh, mm, ss, year = m.groups()
    else:
        return None
    try:
        stamp = (int(year), _MONTH_NUMBER[month.title()], int(day), int(hh), int(mm), int(ss))
        datetime.datetime(*stamp)  # checks the day of the month and the time of day
    except ValueError:
        return None
    return float(calendar.timegm((*stamp, 0, 0, 0)))


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the cache may do with one response (see the module docstring)."""

    why_not: str | None  # None: storable
    lifetime: float  # freshness lifetime, seconds
    age: float  # current age when it was received, seconds
    no_cache: bool
    must_revalidate: bool
    stale_while_revalidate: float
    stale_if_error: float

    @property
    def fresh_for(self) -> float:
        """Seconds it stays fresh from the moment it was received (0 when already stale)."""
        return max(0.0, self.lifetime - self.age)


def _first(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def _age_value(headers: Sequence[tuple[bytes, bytes]]) -> int:
    value = _first(headers, b"age")
    if value is None:
        return 0
    text = value.split(b",", 1)[0].strip()  # a list ("7200, 0"): its first member counts
    if not text.isdigit():
        return 0
    return min(int(text), _MAX_DELTA)


def _vary(headers: Sequence[tuple[bytes, bytes]]) -> set[str]:
    names: set[str] = set()
    for value in header_values(headers, b"vary"):
        names.update(t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip())
    return names


def assess(
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    request_time: float,
    response_time: float,
    now_wall: float,
    default_ttl: float,
    default_error_ttl: float,
    override: bool = False,
    targeted: bytes = b"cdn-cache-control",
    authorized: bool = False,
) -> Assessment:
    """Assess a response (see the module docstring).

    `request_time`/`response_time` are monotonic seconds around the backend exchange; `now_wall`
    is the POSIX time at `response_time` (for ``Date``/``Expires``). With `override`, every
    response that may be stored at all lives `default_ttl` (2xx) / `default_error_ttl` (others)
    whatever it says about freshness: kubecache's behaviour. `authorized`: the request carried
    ``Authorization`` (only possible with CACHE_ALLOW_AUTHORIZED); then the response is stored
    only when it says a shared cache may (RFC 9111 §3.5: public, s-maxage or must-revalidate).
    """
    cc = parse_directives(header_values(headers, b"cache-control"))
    # An empty or invalid targeted field is ignored (RFC 9213 §2.1): None, and Cache-Control rules.
    targeted_cc = targeted_directives(header_values(headers, targeted)) if targeted else None
    own = targeted_cc if targeted_cc is not None else cc
    date = http_date(_first(headers, b"date"))
    apparent = max(0.0, now_wall - date) if date is not None else 0.0
    # Whole seconds, as Age itself (RFC 9111 §5.1): a few ms of response delay are not a second.
    age = float(int(max(apparent, _age_value(headers) + max(0.0, response_time - request_time))))

    def refuse(why: str) -> Assessment:
        return Assessment(why, 0.0, age, False, False, 0.0, 0.0)

    if "must-understand" in own:
        # RFC 9111 §5.2.2.3: store only when this cache knows the status code's caching rules,
        # and then no-store (sent beside it for caches that do not know must-understand) yields
        if status not in UNDERSTOOD_STATUSES:
            return refuse("must-understand")
    elif "no-store" in own:
        return refuse("no-store")
    if "private" in own:
        return refuse("private")
    if authorized and not ({"public", "s-maxage", "must-revalidate"} & (cc.keys() | own.keys())):
        return refuse("authorization")
    if _first(headers, b"set-cookie") is not None:
        return refuse("set-cookie")
    vary = _vary(headers)
    if "*" in vary:
        return refuse("vary-star")
    if vary & _CREDENTIALS:
        return refuse("vary-credentials")
    if not all(varyable(name) for name in vary):
        return refuse("vary-field")  # a field no variant key may name (proxy._keys)
    if status < 200 or status == 206 or status == 304:
        return refuse("status")

    lifetime: float | None
    if override:
        lifetime = default_ttl if 200 <= status < 300 else default_error_ttl
    else:
        lifetime = delta_seconds(own, "s-maxage")
        if lifetime is None:
            lifetime = delta_seconds(own, "max-age")
        if lifetime is None and targeted_cc is None:
            expires_fields = header_values(headers, b"expires")
            if expires_fields:
                # more than one Expires is as invalid as a malformed one: in the past
                when = http_date(expires_fields[0]) if len(expires_fields) == 1 else None
                base = date if date is not None else now_wall
                lifetime = max(0.0, when - base) if when is not None else 0.0
        if lifetime is None:
            if status not in HEURISTIC_STATUSES and "public" not in own:
                return refuse("status")
            default = default_ttl if 200 <= status < 300 else default_error_ttl
            if default > 0:
                lifetime = default
            else:
                last_modified = http_date(_first(headers, b"last-modified"))
                base = date if date is not None else now_wall
                if last_modified is not None and last_modified < base:
                    lifetime = min(_HEURISTIC_MAX, (base - last_modified) * _HEURISTIC_FRACTION)
                else:
                    lifetime = 0.0
    swr = delta_seconds(own, "stale-while-revalidate") or 0
    sie = delta_seconds(own, "stale-if-error") or 0
    return Assessment(
        None,
        float(lifetime),
        age,
        no_cache="no-cache" in own,
        must_revalidate=bool({"must-revalidate", "proxy-revalidate", "s-maxage"} & own.keys()),
        stale_while_revalidate=float(swr),
        stale_if_error=float(sie),
    )
