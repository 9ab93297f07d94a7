"""What the public port accepts: the checks on a parsed request head, and the proxy's own answers.

Pure functions, no I/O; the listener calls `check_head` once per request head, after httptools has
accepted its syntax, and before anything is forwarded or looked up. In order:

0. Version (RFC 9110 §6.2, §15.6.6): only HTTP/1.0 and HTTP/1.1; llhttp also passes a request line
   without a version (HTTP/0.9) and ``HTTP/2.0``, which get 505 (the answer is HTTP/1.1 either way).
1. Framing (RFC 9112 §6): ``Transfer-Encoding`` in an HTTP/1.0 request is faulty framing (400);
   any transfer coding but a single ``chunked`` is 501 (``gzip, chunked`` included: the proxy
   would otherwise have to drop or apply a coding it does not implement); a ``Content-Length``
   above the body limit is 413 before a byte of the body is read.
2. ``Host`` (RFC 9112 §3.2): an HTTP/1.1 request without one, a request with several, or one whose
   value is not ``host[:port]`` is 400.
3. The request-target (`proxy._target.classify_target`): origin-form is proxied, absolute-form is
   proxied as its origin-form with its authority as ``Host``, ``OPTIONS *`` is answered here (200),
   CONNECT and TRACE are 405, everything else 400.

Every refusal closes the connection after its answer (what follows it on the wire cannot be
trusted to be the next request); ``OPTIONS *`` without a body keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ._stored import status_line
from ._target import LOCAL_METHODS, classify_target, is_origin_form

__all__ = ["ALLOW", "Verdict", "check_head", "local_response"]

# The methods the proxy forwards (any other method llhttp knows is forwarded too; CONNECT and
# TRACE are not): what ``Allow`` lists on 405 and on ``OPTIONS *``.
ALLOW = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

_TEXT = {
    400: b"bad request\n",
    405: b"method not allowed\n",
    413: b"request body too large\n",
    414: b"URI too long\n",
    431: b"request header too large\n",
    500: b"internal error\n",
    501: b"transfer coding not implemented\n",
    505: b"HTTP version not supported\n",
}


# ``Host``: ``host[:port]`` (reg-name or IP literal), optional whitespace around; checked as bytes.
# One character class for a reg-name (fast in `re`); a "%" must start a %HH escape (checked apart).
_HOST = re.compile(
    rb"[ \t]*(?:\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\]"
    rb"|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?[ \t]*"
)
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


class Verdict(NamedTuple):
    """The outcome of `check_head`.

    `status` 0: proxy the request, as origin-form `origin` when that is set (else the target is
    origin-form already), ``Host`` replaced by `authority` when that is set. Otherwise the status
    of the proxy's own answer and `reason`, a short metric label.
    """

    status: int
    reason: str = ""
    origin: str = ""
    authority: str | None = None


def check_head(
    method: str,
    target: str,
    version: str,
    headers: Sequence[tuple[bytes, bytes]],
    hmap: Mapping[bytes, bytes],
    max_body_bytes: int,
) -> Verdict:
    """Check one parsed request head (see the module docstring for the rules, in order)."""
    if version != "1.1" and version != "1.0":
        return Verdict(505, "version")
    coding = hmap.get(b"transfer-encoding")
    if coding is not None:
        if version == "1.0":
            return Verdict(400, "framing")
        if [t.strip().lower() for t in coding.split(b",")] != [b"chunked"]:
            return Verdict(501, "transfer-coding")
    length = hmap.get(b"content-length")
    if length is not None and coding is None:
        # httptools has checked the syntax (digits only, repeats equal); repeats were joined.
        first = length.split(b",", 1)[0].strip()
        if first.isdigit() and int(first) > max_body_bytes:
            return Verdict(413, "too-large")
    host = hmap.get(b"host")
    if host is None:
        if version == "1.1":
            return Verdict(400, "host")
    elif _HOST.fullmatch(host) is None or (b"%" in host and _BAD_PERCENT.search(host)):
        return Verdict(400, "host")  # (also several Host fields: hmap joined them with ", ")
    elif len(hmap) != len(headers) and sum(n.lower() == b"host" for n, _ in headers) > 1:
        return Verdict(400, "host")
    if target[:1] == "/" and "." not in target and method not in LOCAL_METHODS:
        # The common case, decided by the same function classify_target uses.
        return _OK if is_origin_form(target) else _BAD_TARGET
    where = classify_target(method, target)
    if where.status == 405:
        return Verdict(405, "method")
    if where.status == 200:
        return Verdict(200, "options")
    if where.status:
        return Verdict(400, "target")
    return Verdict(0, "", where.origin, where.authority)


_OK = Verdict(0)
_BAD_TARGET = Verdict(400, "target")


def local_response(status: int, connection: bytes = b"Connection: close\r\n") -> bytes:
    """The complete answer the proxy gives itself: ``OPTIONS *`` (200) or a refusal.

    `connection` is the ``Connection`` line of a 200; a refusal always closes the connection.
    """
    body = b"" if status == 200 else _TEXT.get(status, _TEXT[400])
    if status != 200:
        connection = b"Connection: close\r\n"
    allow = b"Allow: %s\r\n" % ALLOW if status in (200, 405) else b""
    return b"".join(
        (
            status_line(status),
            allow,
            b"Content-Type: text/plain\r\n" if body else b"",
            b"Content-Length: %d\r\n" % len(body),
            connection,
            b"Cache-Control: no-store\r\n\r\n",
            body,
        )
    )
