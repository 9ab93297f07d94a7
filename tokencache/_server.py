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
        if request.content_length is not None and request.content_length > limit:
            raise wire.ProtocolError("too-large", f"key longer than {limit} bytes")
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            raise wire.ProtocolError("too-large", f"key longer than {limit} bytes")
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
        group = ws.get_group(request.match_info["group"])
        if group is None:
            return _error("unknown-group", "no such group")
        op = request.match_info["op"]
        try:
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
                group.remove_local(key, digest)
                return web.Response(status=200)
        except wire.ProtocolError as exc:
            ws.server_stats.bad_requests += 1
            return _error(exc.code, str(exc))
        ws.server_stats.bad_requests += 1
        return _error("bad-request", "unknown operation")

    async def _get(
        self,
        request: web.Request,
        group_name: str,
        key: str,
        min_ttl: float,
        context: bytes | None,
    ) -> web.Response:
        group = self._ws.get_group(group_name)
        assert group is not None
        parent = propagate.extract(request.headers)
        with self._ws.tracer.start_as_current_span(
            "tokencache.peer.serve",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"tokencache.group": group_name},
        ):
            try:
                value, ttl, loaded = await group.serve_peer(key, min_ttl, context)
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
        headers = {"Content-Type": "application/octet-stream"}
        ttl_text = wire.format_ttl(ttl)
        if ttl_text is not None:
            headers[wire.TTL_HEADER] = ttl_text
        if loaded:
            headers[wire.LOADED_HEADER] = "1"
        return web.Response(body=value, headers=headers)
