"""Request-targets and authorities: which forms the public port takes, pure functions, no I/O.

Theory of operation (RFC 9112 §3.2). A request-target comes in four forms; the proxy proxies only
one of them, and only ever to its own backend:

* origin-form ``/path?query`` — proxied. Its path and query are appended to the backend URL's path
  (`backend_url`), through a URL type, never by string concatenation.
* absolute-form ``http://authority/path?query`` — accepted as RFC 9112 §3.2.2 says a server must:
  the authority replaces ``Host``; the destination is still the backend, and the request
  continues as the origin-form ``/path?query`` (that is also what goes into the cache key).
  A userinfo (``user@``) is an error (RFC 9110 §4.2.4), as is any scheme but http(s).
* authority-form ``host:port`` — only with CONNECT, which this proxy refuses (405).
* asterisk-form ``*`` — only with OPTIONS: the proxy answers for itself (200, ``Allow``), since an
  ``OPTIONS *`` is about the server it reaches, which is this proxy (RFC 9110 §9.3.7).

Anything else (``x:@host``, ``@host``, high bytes, a target with bytes a URI cannot hold) is 400.
Dot-segments (``/a/../b``) are removed (RFC 3986 §5.2.4) before the target is used, so a target can
never climb above the backend URL's own path. Allowed bytes: RFC 3986 ``pchar``, ``/`` and ``?``,
with ``%`` only as a ``%HH`` escape.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import httpx

__all__ = [
    "LOCAL_METHODS",
    "Target",
    "backend_url",
    "classify_target",
    "is_origin_form",
    "remove_dot_segments",
    "valid_authority",
]

# Methods the proxy answers itself instead of forwarding (with 405): CONNECT would open a tunnel
# from the proxy, TRACE would echo the backend request back to the client, bearer token included.
LOCAL_METHODS = frozenset({"CONNECT", "TRACE"})

# One character class each (fast in `re`); a "%" must start a %HH escape, checked apart since
# it is rare. In a target the first "?" starts the query, where "?" is allowed again.
_ORIGIN = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_AUTHORITY = re.compile(
    r"(?:\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\]"
    r"|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?"
)
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ABSOLUTE = re.compile(r"(?i:https?)://([^/?#]*)(.*)", re.DOTALL)


class Target(NamedTuple):
    """What to do with a request-target.

    `status` 0: proxy `origin` (normalised origin-form); `authority` is set for an absolute-form
    target (it replaces ``Host``). Otherwise `status` is the proxy's own answer: 200 (``OPTIONS
    *``), 400 (a form this proxy does not take) or 405 (a method it does not forward).
    """

    status: int
    origin: str = ""
    authority: str | None = None


def is_origin_form(target: str) -> bool:
    """True when `target` is an origin-form request-target of only URI bytes (``/p?q``)."""
    if _ORIGIN.fullmatch(target) is None:
        return False
    return "%" not in target or _BAD_PERCENT.search(target) is None


def valid_authority(authority: str) -> bool:
    """True for ``host[:port]`` as in a ``Host`` field: no userinfo, a reg-name or IP literal."""
    if _AUTHORITY.fullmatch(authority) is None:
        return False
    return "%" not in authority or _BAD_PERCENT.search(authority) is None


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path: ``/a/./b/../c`` → ``/a/c``; never above ``/``."""
    if "." not in path:
        return path
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif seg == ".":
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


_BAD = Target(400)


def _normalise(origin: str) -> str:
    path, sep, query = origin.partition("?")
    return remove_dot_segments(path) + sep + query


def classify_target(method: str, target: str) -> Target:
    """Decide what the proxy does with a request of `method` for request-target `target`."""
    if method in LOCAL_METHODS:
        return Target(405)
    if target == "*":
        return Target(200) if method == "OPTIONS" else Target(400)
    if target.startswith("/"):
        if not is_origin_form(target):
            return _BAD
        return Target(0, _normalise(target) if "." in target else target)
    m = _ABSOLUTE.fullmatch(target)
    if m is None:
        return Target(400)
    authority, rest = m.group(1), m.group(2) or "/"
    if not authority or not valid_authority(authority) or not rest.startswith(("/", "?")):
        return Target(400)
    origin = rest if rest.startswith("/") else "/" + rest
    if not is_origin_form(origin):
        return Target(400)
    return Target(0, _normalise(origin), authority)


def backend_url(base: httpx.URL, origin: str) -> httpx.URL:
    """The backend URL for origin-form `origin`: `base` with its path extended, nothing else.

    Scheme, userinfo, host and port are `base`'s whatever `origin` holds: it only ever becomes
    the path and query of a URL object. `origin` must satisfy `is_origin_form` (callers check);
    a target that does not is a ValueError here too, so no caller can skip the check.
    """
    if not is_origin_form(origin):
        raise ValueError("not an origin-form request-target")
    prefix = base.raw_path.split(b"?", 1)[0].rstrip(b"/")
    return base.copy_with(raw_path=prefix + _normalise(origin).encode("ascii"))
