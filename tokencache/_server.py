"""The peer port: aiohttp handlers that answer other processes' get and remove requests.

House rules: a request that arrives here is answered from this process (its caches or its own
loader) and never forwarded; malformed input gets a clear 4xx and changes nothing; a loader's error
text never crosses the wire (only the error class's code), since it may name things the asking
process should not learn.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web
from opentelemetry import propagate, trace

from . import _protocol as wire
from ._context import MAX_CONTEXT_BYTES
from ._errors import Declined, InvalidArgument, NotFound
from ._fetched import Fetched, Kind

if TYPE_CHECKING:
    from ._workspace import Workspace

log = logging.getLogger("tokencache.server")


def _error(code: str, message: str) -> web.Response:
    return web.Response(
        status=wire.ERRORS[code],
        text=message + "\n",
        headers={wire.ERROR_HEADER: code},
    )


class PeerServer:
    """Handlers for the peer routes of one workspace."""

    def __init__(self, workspace: Workspace) -> None:
        self._ws = workspace

    def add_routes(self, app: web.Application) -> None:
        """Mount the peer routes on ``app``."""
        app.router.add_post(wire.PREFIX + "/{group}/{op}", self.handle)

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._ws.max_key_bytes
        if request.match_info["op"] == wire.PUT_OP:
            limit += self._ws.max_value_bytes
        if request.content_length is not None and request.content_length > limit:
            raise wire.ProtocolError("too-large", f"body longer than {limit} bytes")
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            raise wire.ProtocolError("too-large", f"body longer than {limit} bytes")
        return body

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one peer request."""
        ws = self._ws
        try:
            body = await self._read_body(request)
        except wire.ProtocolError as exc:
            ws.server_stats.bad_requests += 1
            return _error(exc.code, str(exc))
        verifier = ws.verifier
        if verifier is not None:
            reason = verifier.verify(request.method, request.path, request.headers, body)
            if reason is not None:
                ws.server_stats.unauthorized += 1
                log.warning("refused peer request from %s: %s", request.remote, reason)
                return _error("unauthorized", "peer request not authenticated")
        op = request.match_info["op"]
        if request.match_info["group"] == wire.MEMBERS:
            return self._members(op, body)
        group = ws.get_group(request.match_info["group"])
        if group is None:
            return _error("unknown-group", "no such group")
        try:
            if op == wire.PUT_OP:
                return self._put(group.name, request, body)
            key = wire.decode_key(body, ws.max_key_bytes)
            if op == wire.GET_OP:
                min_ttl = wire.parse_seconds(
                    request.headers.get(wire.MIN_TTL_HEADER), wire.MIN_TTL_HEADER
                )
                context = wire.decode_context(
                    request.headers.get(wire.CONTEXT_HEADER), MAX_CONTEXT_BYTES
                )
                return await self._get(request, group.name, key, min_ttl or 0.0, context)
            if op == wire.REMOVE_OP:
                digest = wire.parse_digest(request.headers.get(wire.IF_DIGEST_HEADER))
                ws.serve_remove(group.name, key, digest)
                return web.Response(status=200)
            if op == wire.LOOKUP_OP:
                found = ws.serve_lookup(group.name, key)
                if found is None:
                    return _error("not-found", "not cached here")
                return _value_response(found)
        except wire.ProtocolError as exc:
            ws.server_stats.bad_requests += 1
            return _error(exc.code, str(exc))
        ws.server_stats.bad_requests += 1
        return _error("bad-request", "unknown operation")

    def _members(self, op: str, body: bytes) -> web.Response:
        ws = self._ws
        if op == "ping":
            try:
                ws.serve_ping()
            except Declined:
                return _error("leaving", "leaving the ring")
            return web.Response(status=200)
        if op == "leave":
            try:
                member = body.decode("utf-8")
            except UnicodeDecodeError:
                member = ""
            if not member or len(body) > 2048:
                ws.server_stats.bad_requests += 1
                return _error("bad-request", "leave names the leaving member's URL")
            ws.serve_leave(member)
            return web.Response(status=200)
        ws.server_stats.bad_requests += 1
        return _error("bad-request", "unknown operation")

    def _put(self, group_name: str, request: web.Request, body: bytes) -> web.Response:
        ws = self._ws
        raw_len = request.headers.get(wire.KEY_LENGTH_HEADER, "")
        if not raw_len.isdigit() or int(raw_len) > min(len(body), ws.max_key_bytes):
            raise wire.ProtocolError("bad-request", f"{wire.KEY_LENGTH_HEADER} is missing or wrong")
        key = wire.decode_key(body[: int(raw_len)], ws.max_key_bytes)
        ttl = wire.parse_seconds(request.headers.get(wire.TTL_HEADER), wire.TTL_HEADER)
        kind = Kind(wire.parse_kind(request.headers.get(wire.KIND_HEADER)))
        ws.serve_put(group_name, key, body[int(raw_len) :], ttl, kind)
        return web.Response(status=200)

    async def _get(
        self,
        request: web.Request,
        group_name: str,
        key: str,
        min_ttl: float,
        context: bytes | None,
    ) -> web.Response:
        parent = propagate.extract(request.headers)
        with self._ws.tracer.start_as_current_span(
            "tokencache.peer.serve",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"tokencache.group": group_name},
        ):
            try:
                fetched = await self._ws.serve_get(
                    group_name, key, min_ttl=min_ttl, context=context
                )
            except NotFound:
                return _error("not-found", "not found")
            except Declined:
                return _error("declined", "this peer cannot load the key")
            except InvalidArgument:
                # The loader refused the key itself (the PeerService contract: a bad request).
                self._ws.server_stats.bad_requests += 1
                return _error("bad-request", "key refused")
            except Exception as exc:  # noqa: BLE001 - any loader failure: the caller loads locally
                log.info("peer load failed in group %s: %s", group_name, type(exc).__name__)
                return _error("load-failed", "load failed")
        return _value_response(fetched)


def _value_response(fetched: Fetched) -> web.Response:
    headers = {"Content-Type": "application/octet-stream"}
    ttl_text = wire.format_ttl(fetched.ttl)
    if ttl_text is not None:
        headers[wire.TTL_HEADER] = ttl_text
    if fetched.loaded:
        headers[wire.LOADED_HEADER] = "1"
    if fetched.kind is not Kind.VALUE:
        headers[wire.KIND_HEADER] = str(fetched.kind)
    return web.Response(body=fetched.value, headers=headers)
