"""A parsed request head as the listener hands it to the handler, and the listener's limits.

`Request.hmap` maps lower-case header names to values (a repeated field's values joined with
", ", RFC 9110 §5.3); the original list keeps order and spelling for forwarding.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ._stored import status_line

if TYPE_CHECKING:
    from ._body import BodyStream
    from ._http import Connection

__all__ = ["Handler", "ListenerLimits", "Request", "rejection_response"]

_ERROR_BODY = {400: b"bad request\n", 414: b"URI too long\n", 431: b"request header too large\n"}


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """Per-connection limits of the public listener (sizes in bytes, times in seconds)."""

    max_header_bytes: int = 16384
    max_headers: int = 100
    max_url_bytes: int = 8192
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_pipeline: int = 16
    body_buffer_bytes: int = 256 * 1024


class Request:
    """One parsed request head. `hmap` maps lower-case names to values (repeats joined by ", ")."""

    __slots__ = (
        "body",
        "bypass",
        "has_body",
        "headers",
        "hmap",
        "keep_alive",
        "key",
        "method",
        "reject",
        "sent_status",
        "target",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        hmap = {name.lower(): value for name, value in headers}
        if len(hmap) != len(headers):  # a repeated field: join the values (RFC 9110 §5.3)
            hmap = {}
            for name, value in headers:
                lname = name.lower()
                prev = hmap.get(lname)
                hmap[lname] = value if prev is None else prev + b", " + value
        self.hmap = hmap
        self.keep_alive = keep_alive
        length = hmap.get(b"content-length")
        self.has_body = b"transfer-encoding" in hmap or (length is not None and length != b"0")
        self.body: BodyStream | None = None
        # Scratch space for the handler: set by serve_fast, read by serve.
        self.key: str | None = None
        self.bypass: str | None = None
        # Set on the placeholder for a request the listener refused (the status to answer).
        self.reject = 0
        # The status of a response head already written for this request (0: none yet), so a
        # request whose task is cancelled after answering is still counted with its status.
        self.sent_status = 0


class Handler(Protocol):
    """What the listener calls for each request, in order."""

    def serve_fast(self, conn: Connection, req: Request) -> bool:
        """Answer synchronously and return True, or return False to have `serve` run."""
        ...

    def serve(self, conn: Connection, req: Request) -> Awaitable[None]:
        """Answer the request completely (head and body) before returning."""
        ...


def rejection_response(status: int) -> bytes:
    """The complete response to a request the listener refused to parse."""
    body = _ERROR_BODY.get(status, b"bad request\n")
    return b"".join(
        (
            status_line(status),
            b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body),
            b"Connection: close\r\n\r\n",
            body,
        )
    )
