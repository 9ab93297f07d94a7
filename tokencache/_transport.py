"""How a process talks to its peers over HTTP (the interface is :mod:`tokencache._peering`).

The core never imports the HTTP client; a :class:`PeerTransport` is injected (galaxycache's
``FetchProtocol``). The default is :class:`HttpTransport`: one pooled aiohttp session, a timeout per
request, requests signed when a peer secret is set, and every failure turned into ``PeerError``
(or ``NotFound``/``Declined`` when the owner said so) at this one boundary.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from . import _protocol as wire
from ._errors import Declined, NotFound, PeerError
from ._fetched import Fetched, Kind
from ._peering import PeerTransport

__all__ = ["HttpTransport", "PeerTransport"]
from ._signing import Signer


class HttpTransport:
    """The peer protocol over HTTP/1.1 with a pooled aiohttp client."""

    def __init__(
        self,
        *,
        timeout: float = 2.0,
        connect_timeout: float | None = None,
        secret: bytes | str | None = None,
        max_value_bytes: int = 64 << 20,
        connections_per_peer: int = 64,
    ) -> None:
        # A peer that is gone (partitioned, powered off) is noticed at connect time; a live peer
        # running a slow load still gets the whole ``timeout``.
        connect = min(timeout, 1.0) if connect_timeout is None else connect_timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect)
        self._signer = Signer(secret) if secret else None
        self._max_value_bytes = max_value_bytes
        self._connections_per_peer = connections_per_peer
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=self._connections_per_peer, keepalive_timeout=30
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, auto_decompress=False
            )
        return self._session

    def _headers(self, path: str, body: bytes, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        headers["Content-Type"] = "application/octet-stream"
        if self._signer is not None:
            headers.update(self._signer.headers("POST", path, body))
        return headers

    async def _post(
        self, peer: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        try:
            async with self._client().post(peer + path, data=body, headers=headers) as resp:
                length = resp.content_length
                if length is not None and length > self._max_value_bytes:
                    raise PeerError(peer, "answer larger than the value limit")
                data = await resp.content.read(self._max_value_bytes + 1)
                if len(data) > self._max_value_bytes:
                    raise PeerError(peer, "answer larger than the value limit")
                return resp.status, resp.headers, data
        except (
            aiohttp.ClientConnectorError,
            aiohttp.ConnectionTimeoutError,
            aiohttp.ServerDisconnectedError,
            ConnectionError,
        ) as exc:
            # Could not connect, or the connection died: the peer is unreachable.
            raise PeerError(peer, type(exc).__name__, unreachable=True) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # A read timeout of a live peer (a slow load) is not "dead": the caller loads locally
            # for this key but keeps asking the peer for its others.
            raise PeerError(peer, type(exc).__name__) from exc

    async def fetch(
        self,
        peer: str,
        group: str,
        key: str,
        *,
        min_ttl: float = 0.0,
        context: bytes | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> Fetched:
        """See :meth:`PeerTransport.fetch`."""
        path = wire.path(group, wire.GET_OP)
        body = wire.encode_key(key)
        extra = dict(trace or {})
        if context is not None:
            extra[wire.CONTEXT_HEADER] = wire.encode_context(context)
        if min_ttl > 0:
            extra[wire.MIN_TTL_HEADER] = f"{min_ttl:.3f}"
        status, resp_headers, data = await self._post(
            peer, path, body, self._headers(path, body, extra)
        )
        if status == 200:
            try:
                ttl = wire.parse_seconds(resp_headers.get(wire.TTL_HEADER), wire.TTL_HEADER)
            except wire.ProtocolError as exc:
                raise PeerError(peer, str(exc)) from exc
            try:
                kind = Kind(wire.parse_kind(resp_headers.get(wire.KIND_HEADER)))
            except wire.ProtocolError as exc:
                raise PeerError(peer, str(exc)) from exc
            return Fetched(data, ttl, resp_headers.get(wire.LOADED_HEADER) == "1", kind)
        code = resp_headers.get(wire.ERROR_HEADER, "")
        if code == "not-found":
            raise NotFound(key)
        if code == "declined":
            raise Declined(f"peer {peer} declined")
        raise PeerError(peer, f"HTTP {status} {code}".strip())

    async def remove(
        self,
        peer: str,
        group: str,
        key: str,
        *,
        if_digest: str | None = None,
    ) -> None:
        """See :meth:`PeerTransport.remove`."""
        path = wire.path(group, wire.REMOVE_OP)
        body = wire.encode_key(key)
        extra: dict[str, str] = {}
        if if_digest is not None:
            extra[wire.IF_DIGEST_HEADER] = if_digest
        status, resp_headers, _ = await self._post(
            peer, path, body, self._headers(path, body, extra)
        )
        if status != 200:
            code = resp_headers.get(wire.ERROR_HEADER, "")
            raise PeerError(peer, f"HTTP {status} {code}".strip())

    async def lookup(self, peer: str, group: str, key: str) -> Fetched | None:
        """See :meth:`PeerTransport.lookup`."""
        path = wire.path(group, wire.LOOKUP_OP)
        body = wire.encode_key(key)
        status, resp_headers, data = await self._post(
            peer, path, body, self._headers(path, body, None)
        )
        if status == 404 and resp_headers.get(wire.ERROR_HEADER) == "not-found":
            return None
        if status != 200:
            raise PeerError(peer, f"HTTP {status}")
        try:
            ttl = wire.parse_seconds(resp_headers.get(wire.TTL_HEADER), wire.TTL_HEADER)
            kind = Kind(wire.parse_kind(resp_headers.get(wire.KIND_HEADER)))
        except wire.ProtocolError as exc:
            raise PeerError(peer, str(exc)) from exc
        return Fetched(data, ttl, False, kind)

    async def put(
        self,
        peer: str,
        group: str,
        key: str,
        value: bytes,
        ttl: float | None,
        *,
        kind: Kind = Kind.VALUE,
    ) -> None:
        """See :meth:`PeerTransport.put`."""
        path = wire.path(group, wire.PUT_OP)
        raw_key = wire.encode_key(key)
        body = raw_key + value
        extra = {wire.KEY_LENGTH_HEADER: str(len(raw_key)), wire.KIND_HEADER: str(kind)}
        ttl_text = wire.format_ttl(ttl)
        if ttl_text is not None:
            extra[wire.TTL_HEADER] = ttl_text
        await self._simple(peer, path, body, extra)

    async def leave(self, peer: str, member: str) -> None:
        """See :meth:`PeerTransport.leave`."""
        path = f"{wire.PREFIX}/{wire.MEMBERS}/leave"
        await self._simple(peer, path, member.encode("utf-8"), None)

    async def ping(self, peer: str) -> None:
        """See :meth:`PeerTransport.ping`."""
        await self._simple(peer, f"{wire.PREFIX}/{wire.MEMBERS}/ping", b"", None)

    async def _simple(
        self, peer: str, path: str, body: bytes, extra: Mapping[str, str] | None
    ) -> None:
        status, resp_headers, _ = await self._post(
            peer, path, body, self._headers(path, body, extra)
        )
        if status != 200:
            code = resp_headers.get(wire.ERROR_HEADER, "")
            raise PeerError(peer, f"HTTP {status} {code}".strip())

    async def close(self) -> None:
        """Close the pooled session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
