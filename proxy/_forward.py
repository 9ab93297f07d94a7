"""Forwarding a request the cache does not answer: streamed both ways, bytes unchanged.

The request goes to the backend with its method, its headers minus the hop-by-hop ones (RFC 9110
§7.6.1 and whatever ``Connection`` names), ``Host`` set to the backend's and ``X-Forwarded-*``
added, and its body streamed as the client sends it (chunked upstream unless the client gave a
``Content-Length``). The response is written back as it arrives: its raw bytes (``aiter_raw``: no
decompression, ``Content-Encoding`` untouched), with ``Content-Length`` when the backend gave one,
else chunked to an HTTP/1.1 client, else delimited by closing the connection (HTTP/1.0).

Faults before the response head: connection refused/reset and protocol errors → 502, a timeout
(``BACKEND_TIMEOUT`` for connect, each read, each write) → 504, each with a short text body. After
the head has been written the only honest signal left is closing the connection.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import AsyncIterator

import httpx

from ._http import Connection
from ._http_request import Request
from ._metrics import ProxyMetrics
from ._policy import strip_hop_by_hop
from ._stored import status_line

__all__ = ["Forwarder", "backend_url_for", "classify_fault", "fault_response"]

_NO_BODY_STATUS = frozenset({204, 304})
# Request headers the forwarder sets itself.
_REPLACED = frozenset({b"host", b"expect", b"x-forwarded-host", b"x-forwarded-proto"})


def backend_url_for(backend_url: str, target: str) -> str:
    """The backend URL for a request-target (origin-form, or the path of an absolute-form one)."""
    if not target.startswith("/"):
        parts = urllib.parse.urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return backend_url.rstrip("/") + target


def classify_fault(exc: Exception) -> tuple[int, str]:
    """A backend exception → (status to answer, fault kind for metrics/``detail``)."""
    if isinstance(exc, httpx.TimeoutException):
        return 504, "timeout"
    if isinstance(exc, httpx.ConnectError):
        return 502, "connect"
    return 502, "other"


_FAULT_TEXT = {
    "timeout": b"backend timeout\n",
    "connect": b"backend unavailable\n",
    "other": b"backend failed\n",
}


def fault_response(status: int, kind: str, cache_status: bytes, connection: bytes) -> bytes:
    """A complete short text response for a backend fault."""
    body = _FAULT_TEXT.get(kind, _FAULT_TEXT["other"])
    return b"".join(
        (
            status_line(status),
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
            b"Cache-Control: no-store\r\nCache-Status: %s\r\n" % cache_status,
            connection,
            b"\r\n",
            body,
        )
    )


class Forwarder:
    """Sends one request to the backend and streams the answer to the client."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        backend_url: str,
        timeout: float,
        auth: httpx.Auth | None,
        metrics: ProxyMetrics,
        logger: logging.Logger,
    ) -> None:
        self._client = client
        self._backend_url = backend_url
        self._timeout = httpx.Timeout(timeout).as_dict()
        self._auth = auth
        self._metrics = metrics
        self._logger = logger

    def _request_headers(self, conn: Connection, req: Request) -> list[tuple[bytes, bytes]]:
        headers = [(n, v) for n, v in strip_hop_by_hop(req.headers) if n.lower() not in _REPLACED]
        host = req.hmap.get(b"host")
        forwarded_for = req.hmap.get(b"x-forwarded-for")
        peer = conn.peer.encode("ascii", "replace")
        if forwarded_for is not None:
            headers = [(n, v) for n, v in headers if n.lower() != b"x-forwarded-for"]
            peer = forwarded_for + b", " + peer
        if peer:
            headers.append((b"X-Forwarded-For", peer))
        if host is not None:
            headers.append((b"X-Forwarded-Host", host))
        headers.append((b"X-Forwarded-Proto", b"http"))
        return headers

    async def forward(
        self, conn: Connection, req: Request, cache_status: bytes
    ) -> tuple[int, bool]:
        """Forward `req`; return (status written, whether it was a backend fault)."""
        body: AsyncIterator[bytes] | None = None
        if req.body is not None:
            if req.hmap.get(b"expect", b"").lower() == b"100-continue":
                conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = req.body.chunks()
        request = httpx.Request(
            req.method,
            backend_url_for(self._backend_url, req.target),
            headers=self._request_headers(conn, req),
            content=body,
            extensions={"timeout": self._timeout},
        )
        try:
            if self._auth is not None:
                response = await self._client.send(request, stream=True, auth=self._auth)
            else:
                response = await self._client.send(request, stream=True)
        except ConnectionResetError:
            conn.abort()  # the client went away while its body was being streamed
            return 499, False
        except httpx.HTTPError as exc:
            status, kind = classify_fault(exc)
            self._metrics.backend_error(kind)
            self._logger.warning(
                "backend fault",
                extra={"method": req.method, "path": req.target.split("?", 1)[0], "fault": kind},
            )
            conn.write(fault_response(status, kind, cache_status, conn.connection_header(req)))
            return status, True
        try:
            await self._relay(conn, req, response, cache_status)
        finally:
            await response.aclose()
        return response.status_code, False

    async def _relay(
        self, conn: Connection, req: Request, response: httpx.Response, cache_status: bytes
    ) -> None:
        status = response.status_code
        headers = strip_hop_by_hop(response.headers.raw)
        reason = response.extensions.get("reason_phrase", b"")
        no_body = req.method == "HEAD" or status in _NO_BODY_STATUS or 100 <= status < 200
        has_length = any(n.lower() == b"content-length" for n, _ in headers)
        chunked = False
        if not no_body and not has_length:
            if req.version == "1.1":
                chunked = True
                headers.append((b"Transfer-Encoding", b"chunked"))
            else:
                req.keep_alive = False  # the body ends when the connection does
        head = [status_line(status, reason if isinstance(reason, bytes) else b"")]
        head.extend(b"%s: %s\r\n" % (n, v) for n, v in headers)
        head.append(b"Cache-Status: %s\r\n" % cache_status)
        head.append(conn.connection_header(req))
        head.append(b"\r\n")
        conn.write(b"".join(head))
        req.sent_status = status
        if no_body:
            return
        try:
            async for chunk in response.aiter_raw():
                if not chunk:
                    continue
                conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain()
        except httpx.HTTPError as exc:
            # The head is out: the client learns about the fault from the connection closing.
            _, kind = classify_fault(exc)
            self._metrics.backend_error(kind)
            self._logger.warning(
                "backend fault mid-response",
                extra={"method": req.method, "path": req.target.split("?", 1)[0], "fault": kind},
            )
            conn.abort()
            return
        except ConnectionResetError:
            return  # the client went away; closing the response stops the backend read
        if chunked:
            conn.write(b"0\r\n\r\n")
