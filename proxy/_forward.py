"""Forwarding a request the cache does not answer: streamed both ways, bytes unchanged.

The request goes to the backend with its method, its headers minus the hop-by-hop ones (RFC 9110
§7.6.1 and whatever ``Connection`` names), ``Host`` set to the backend's, and its body streamed as
the client sends it (chunked upstream unless the client gave a ``Content-Length``; a body is
buffered up to the listener's ``body_buffer_bytes`` before the backend is asked, `_body`). The
URL is the backend URL with the request's origin-form path and query
(`proxy._target.backend_url`): a request can choose a path on the backend, never another
destination.

``X-Forwarded-For``/``-Host``/``-Proto`` and ``Forwarded`` (RFC 7239) get this hop appended: what
the client sent stays in front as earlier hops (their values are the client's claims, never taken
as ours), and the last element is always what this proxy saw (`forwarded_headers`).

A cache fill is different (``shared=True``): its response may be stored and served to every
client, so it carries nothing a client chooses that the cache key does not hold — no client-sent
``X-Forwarded-*``/``Forwarded`` chain and no host at all (neither ``X-Forwarded-Host`` nor
``host=``): a backend that builds absolute links from them would otherwise let one request plant
``evil.example`` links in the response every client gets (cache poisoning through unkeyed
headers). The fill says only which client triggered it and how (``X-Forwarded-For``/``-Proto``,
``Forwarded: for=…;proto=…``).

A request body that is refused (`proxy._body.BodyError`: bad chunk, too large) fails the forward at
once: the backend connection is dropped, the client gets 400/413 when nothing of an answer was sent
yet, and the connection closes. ``100 Continue`` is sent only to HTTP/1.1 clients that ask.

The response is written back as it arrives: its raw bytes (``aiter_raw``: no decompression,
``Content-Encoding`` untouched), with ``Content-Length`` when the backend gave one, else chunked to
an HTTP/1.1 client, else delimited by closing the connection (HTTP/1.0).

Faults before the response head: connection refused/reset and protocol errors → 502, a timeout
(``BACKEND_TIMEOUT`` for connect, each read, each write; a cache fill in `proxy._loader` is
bounded by it as a whole) → 504, each with a short text body. No
OAuth2 token for the backend request (any of the plugin's ``TokenError``: a refused client secret,
a token endpoint that is down or answers nonsense) → 502 with ``detail=token`` in ``Cache-Status``,
counted as backend error kind ``token`` and logged as one line naming the token endpoint and the
error class (`log_fault`), never a traceback. After the head has been written the only honest
signal left is closing the connection.

Pooled connections (`BackendSender`). A pooled connection can be broken without anyone knowing
yet: the backend closed it while idle, or an earlier response sent more bytes than its
``Content-Length`` and the surplus sits in the connection's buffer, where the next response on it
would be read from. So a request without a body (GET, HEAD, OPTIONS, ...: idempotent, nothing
streamed yet) that fails with a protocol or read/write error before any response head came back
is sent once more on a *fresh* connection (a client that keeps none); the failed connection is
closed by the pool, never reused. A connect error or a timeout is not retried (the backend is
down or slow: a retry only doubles the wait).

Concurrency. At most `MAX_BACKEND_CONNECTIONS` requests are inside the HTTP client at a time (its
pool's size); the rest wait on a semaphore, in order, for at most the backend timeout (then
``httpx.PoolTimeout``: 504). The client's own pool queue re-scans every waiting request on each
event, so tens of thousands of concurrent misses (a peer asking for distinct keys, or as many
public connections) queued there would stall the event loop for minutes — quadratic time.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from tokencache.plugin import TokenError

from ._body import BodyError
from ._http import Connection
from ._http_request import Request
from ._http_rules import local_response
from ._metrics import ProxyMetrics
from ._policy import strip_hop_by_hop
from ._stored import status_line
from ._target import backend_url

# The backend clients' pool size: also how many requests may be inside a client at once.
MAX_BACKEND_CONNECTIONS = 512

__all__ = [
    "MAX_BACKEND_CONNECTIONS",
    "BackendSender",
    "Forwarder",
    "classify_fault",
    "fault_response",
    "forwarded_headers",
    "log_fault",
    "upstream_headers",
    "with_detail",
]

_NO_BODY_STATUS = frozenset({204, 304})
# Request headers the forwarder sets itself.
_FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"forwarded"}
)
_REPLACED = frozenset({b"host", b"expect"}) | _FORWARDING
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _quoted(value: bytes) -> bytes:
    # RFC 7239 §4: a value that is not a token is a quoted-string.
    return (
        value
        if _TOKEN.fullmatch(value)
        else b'"%s"' % value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    )


def forwarded_headers(
    hmap: dict[bytes, bytes], peer: str, proto: bytes = b"http", *, shared: bool = False
) -> list[tuple[bytes, bytes]]:
    """This hop's ``X-Forwarded-*`` and ``Forwarded`` fields, the client's values kept in front.

    `hmap` is the request's (repeated fields already joined by ", "); `peer` the client's address.
    `shared`: for a cache fill, only this hop's client and protocol (see the module docstring).
    """
    client = peer.encode("ascii", "replace")
    host = b"" if shared else hmap.get(b"host", b"")
    ours = {
        b"X-Forwarded-For": client,
        b"X-Forwarded-Host": host,
        b"X-Forwarded-Proto": proto,
    }
    if shared:
        hmap = {}  # the client's chain is not forwarded
    out = []
    for name, value in ours.items():
        earlier = hmap.get(name.lower())
        if earlier is not None and earlier.strip():
            value = earlier + b", " + value
        if value:
            out.append((name, value))
    # RFC 7239 §6: an IPv6 node is bracketed (and so quoted).
    node = b"[%s]" % client if b":" in client else client or b"unknown"
    element = [b"for=" + _quoted(node), b"proto=" + proto]
    if host:
        element.insert(1, b"host=" + _quoted(host))
    forwarded = b";".join(element)
    earlier = hmap.get(b"forwarded")
    if earlier is not None and earlier.strip():
        forwarded = earlier + b", " + forwarded
    out.append((b"Forwarded", forwarded))
    return out


def upstream_headers(req: Request, peer: str, *, shared: bool = False) -> list[tuple[bytes, bytes]]:
    """The headers a backend request for `req` from client address `peer` carries: the client's
    end-to-end fields and ``X-Forwarded-*`` (the one place they are made: forwards and,
    `shared`, cache fills). A function of the fields and the address, never of the request
    line: what is derived from it may be shared by heads of one field section (`_head_memo`)."""
    headers = [(n, v) for n, v in strip_hop_by_hop(req.headers) if n.lower() not in _REPLACED]
    headers.extend(forwarded_headers(req.hmap, peer, shared=shared))
    return headers


# What a backend request can fail with before its response: transport faults, and the OAuth2
# plugin's errors when no token could be had for it.
BACKEND_FAULTS = (httpx.HTTPError, TokenError)


def classify_fault(exc: BaseException) -> tuple[int, str]:
    """A backend exception → (status to answer, fault kind for metrics/``detail``)."""
    if isinstance(exc, TokenError):
        return 502, "token"
    if isinstance(exc, httpx.TimeoutException):
        return 504, "timeout"
    if isinstance(exc, httpx.ConnectError):
        return 502, "connect"
    return 502, "other"


_FAULT_TEXT = {
    "timeout": b"backend timeout\n",
    "connect": b"backend unavailable\n",
    "other": b"backend failed\n",
    "token": b"backend credentials unavailable\n",
}


def log_fault(
    logger: logging.Logger, message: str, exc: BaseException, kind: str, method: str, target: str
) -> None:
    """One warning line for a backend fault, never a traceback. A token fault names the token
    endpoint (scheme, host, path: the plugin's safe form), the error class and its message (which
    the plugin builds without secrets); the request's query is never logged."""
    fields: dict[str, object] = {"method": method, "path": target.split("?", 1)[0], "fault": kind}
    if isinstance(exc, TokenError):
        fields["token_endpoint"] = exc.endpoint or ""
        fields["error"] = type(exc).__name__
        fields["error_kind"] = exc.kind
        fields["reason"] = str(exc)
        message = "backend token failure"
    logger.warning(message, extra=fields)


def with_detail(cache_status: bytes, detail: bytes) -> bytes:
    """``cache_status`` (as `proxy._policy.cache_status` made it) with its ``detail`` replaced."""
    parts = [p for p in cache_status.split(b"; ") if not p.startswith(b"detail=")]
    parts.append(b"detail=" + detail)
    return b"; ".join(parts)


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


# Failures of a reused connection before the response head (not a down or slow backend).
_RETRYABLE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def _h11_connection(response: httpx.Response) -> Any:
    """The HTTP/1.1 connection a streamed response is read from, or None.

    httpx and httpcore offer no public way to learn that a response left unread bytes in its
    connection, so this follows their streams' private links (response stream → httpcore pool
    stream → connection stream → connection with its h11 state), bounded and checked at each
    step: a different version of either library makes it None (the one retry then still
    protects the next request), never an error.
    """
    obj: Any = response.stream
    for _ in range(6):
        if hasattr(obj, "_h11_state"):
            return obj
        nxt = None
        for link in ("_stream", "_httpcore_stream", "_connection"):
            nxt = getattr(obj, link, None)
            if nxt is not None:
                break
        if nxt is None:
            return None
        obj = nxt
    return None


class BackendSender:
    """Sends backend requests through the pooled client, once more on a fresh connection when a
    pooled one turns out broken (see the module docstring)."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        fresh_client: httpx.AsyncClient,
        timeout: float,
        auth: httpx.Auth | None,
        metrics: ProxyMetrics,
    ) -> None:
        self._client = client
        self._fresh = fresh_client
        self._timeout = httpx.Timeout(timeout).as_dict()
        self.timeout = timeout  # a cache fill is bounded by it as a whole (`BackendLoader`)
        self._auth = auth
        self._metrics = metrics
        self._slots = asyncio.Semaphore(MAX_BACKEND_CONNECTIONS)

    async def send(self, request: httpx.Request, *, retry: bool) -> httpx.Response:
        """The streamed response; `retry` allows the one retry (the request has no body)."""
        request.extensions["timeout"] = self._timeout
        try:
            return await self._send(self._client, request)
        except _RETRYABLE:
            if not retry or request.method not in _IDEMPOTENT:
                raise
        self._metrics.backend_error("retried")
        return await self._send(self._fresh, request)

    async def release(self, response: httpx.Response) -> None:
        """Close `response`; when its connection holds bytes beyond the response's framing
        (more than its ``Content-Length``), close that connection instead of pooling it."""
        connection = _h11_connection(response)
        await response.aclose()
        if connection is not None and connection._h11_state.trailing_data[0]:
            self._metrics.backend_error("framing")
            await connection.aclose()

    async def _send(self, client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
        # Wait here, not in the client's pool queue (see the module docstring).
        try:
            async with asyncio.timeout(self._timeout["pool"]):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no backend connection within the timeout") from None
        try:
            if self._auth is not None:
                return await client.send(request, stream=True, auth=self._auth)
            return await client.send(request, stream=True)
        finally:
            self._slots.release()


class Forwarder:
    """Sends one request to the backend and streams the answer to the client."""

    def __init__(
        self,
        *,
        sender: BackendSender,
        backend_url: str,
        metrics: ProxyMetrics,
        logger: logging.Logger,
    ) -> None:
        self._sender = sender
        self._backend_url = httpx.URL(backend_url)
        self._metrics = metrics
        self._logger = logger

    def request_headers(
        self, conn: Connection, req: Request, *, shared: bool = False
    ) -> list[tuple[bytes, bytes]]:
        """The headers a backend request for `req` carries (`upstream_headers`)."""
        return upstream_headers(req, conn.peer, shared=shared)

    async def forward(
        self,
        conn: Connection,
        req: Request,
        cache_status: bytes,
        before_head: Callable[[httpx.Response], Awaitable[None]] | None = None,
    ) -> tuple[int, bool]:
        """Forward `req`; return (status written, whether it was a backend fault).

        `before_head` runs once the backend's response head is in, before the client sees it
        (the cache invalidates there, so a client that saw the answer sees the invalidation).
        """
        body: AsyncIterator[bytes] | None = None
        if req.body is not None:
            expect = req.hmap.get(b"expect", b"").lower() == b"100-continue"
            if expect and req.version == "1.1" and not req.body.failed:
                conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = req.body.chunks()
        request = httpx.Request(
            req.method,
            backend_url(self._backend_url, req.target),
            headers=self.request_headers(conn, req),
            content=body,
        )
        try:
            if req.body is not None:
                # A small body arrives whole before a backend connection is taken (`_body`).
                await req.body.prefetch()
            response = await self._sender.send(request, retry=body is None)
        except ConnectionResetError:
            conn.abort()  # the client went away while its body was being streamed
            return 499, False
        except BodyError as exc:
            # The body was refused mid-way; httpx has dropped the backend connection.
            req.keep_alive = False
            conn.write(local_response(exc.status))
            conn.abort()
            return exc.status, False
        except BACKEND_FAULTS as exc:
            status, kind = classify_fault(exc)
            self._metrics.backend_error(kind)
            log_fault(self._logger, "backend fault", exc, kind, req.method, req.target)
            if kind == "token":
                cache_status = with_detail(cache_status, b"token")
            conn.write(fault_response(status, kind, cache_status, conn.connection_header(req)))
            return status, True
        try:
            if before_head is not None:
                await before_head(response)
            await self._relay(conn, req, response, cache_status)
        finally:
            await self._sender.release(response)
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
            log_fault(self._logger, "backend fault mid-response", exc, kind, req.method, req.target)
            conn.abort()
            return
        except ConnectionResetError:
            return  # the client went away; closing the response stops the backend read
        if chunked:
            conn.write(b"0\r\n\r\n")
