"""A parsed request head as the listener hands it to the handler, and the listener's limits.

`Request.hmap` maps lower-case header names to values (a repeated field's values joined with
", ", RFC 9110 §5.3); the original list keeps order and spelling for forwarding.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ._http_rules import local_response

if TYPE_CHECKING:
    from ._body import BodyStream
    from ._http import Connection

__all__ = ["DERIVED_MAX", "Handler", "ListenerLimits", "Request", "rejection_response"]

# Entries a request head keeps in `Request.derived` (one per client address).
DERIVED_MAX = 8


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
    # A request body above this is refused with 413 (MAX_REQUEST_BODY_BYTES).
    max_body_bytes: int = 10 << 20
    # A client that takes none of our answer for this long is disconnected (WRITE_TIMEOUT).
    write_timeout: float = 60.0
    # Open client connections at most (MAX_CLIENT_CONNECTIONS; 0 = no cap). At the cap an idle
    # keep-alive connection is closed to make room, else the new one is closed at once.
    max_connections: int = 0
    # Entries of the listener's head memo (`Listener.heads`; 0 = no memo), and the memory they
    # may take by the memo's estimate (`proxy._head_memo`). The bytes are the bound that counts:
    # 24 MiB holds ~39,000 heads of one short field (~640 bytes each), ~15,000 of a browser's
    # (~400 bytes, a dozen fields).
    head_memo_entries: int = 65536
    head_memo_bytes: int = 24 << 20


class Request:
    """One parsed request head. `hmap` maps lower-case names to values (repeats joined by ", ")."""

    __slots__ = (
        "body",
        "bypass",
        "derived",
        "express",
        "flight",
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
        self.flight: object = None  # the handler's own state for a held request
        # What the handler derives from the head's fields and the connection, never from its
        # request line: shared by every repeat of it (`again`) and, in the head memo, by every
        # head with the same field section. At most DERIVED_MAX entries (the memo counts that).
        self.derived: dict[object, object] = {}
        # The handler's verdict on answering repeats of this head from ready bytes (see
        # `Handler.serve_express`): None until it looked; shared by every repeat, like `derived`.
        self.express: str | None = None
        # Set on the placeholder for a request the listener refused (the status to answer).
        self.reject = 0
        # The status of a response head already written for this request (0: none yet), so a
        # request whose task is cancelled after answering is still counted with its status.
        self.sent_status = 0

    def set_host(self, authority: bytes) -> None:
        """Make `authority` the request's one ``Host`` (RFC 9112 §3.2.2: an absolute-form's)."""
        headers = [(n, v) for n, v in self.headers if n.lower() != b"host"]
        headers.append((b"Host", authority))
        self.headers = headers
        # A new map, not an update: a request's head is never changed in place (see `again`).
        self.hmap = {**self.hmap, b"host": authority}
        self.derived = {}
        self.express = None

    def again(self) -> Request:
        """A new request with this one's head (shared: heads are never changed in place).

        What the listener's head memo hands out for a repeat of the same request bytes; the
        handler's scratch fields start empty.
        """
        req = Request.__new__(Request)
        req.method = self.method
        req.target = self.target
        req.version = self.version
        req.headers = self.headers
        req.hmap = self.hmap
        req.keep_alive = self.keep_alive
        req.has_body = self.has_body
        req.derived = self.derived
        req.express = self.express
        req.body = None
        req.key = None
        req.bypass = None
        req.flight = None
        req.reject = 0
        req.sent_status = 0
        return req


class Handler(Protocol):
    """What the listener calls for each request, in order."""

    def serve_fast(self, conn: Connection, req: Request) -> bool:
        """Answer synchronously and return True, or return False to have `serve` run."""
        ...

    def serve_express(self, conn: Connection, head: Request) -> bool:
        """Answer a repeat of `head`, a request the head memo remembered, at once from bytes kept
        ready for it, and return True; False to go on with a copy of it (`serve_fast`). The
        connection is idle, at a message boundary, and `head` must not be changed."""
        ...

    def serve(self, conn: Connection, req: Request) -> Awaitable[None]:
        """Answer the request completely (head and body) before returning."""
        ...


def rejection_response(status: int) -> bytes:
    """The complete response to a request the listener refused (closes the connection)."""
    return local_response(status)
