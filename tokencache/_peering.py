"""The two sides of talking to peers, as two small interfaces (groupcache's ``PeerPicker`` idea).

Client side, :class:`PeerTransport`: carries this process's requests to one peer, named by its
URL, and turns every failure into ``PeerError`` (``unreachable=True`` only when the peer could not
be reached or stopped answering, never for a slow but live peer) at this one boundary.

Server side, :class:`PeerService`: whatever listens on the peer port authenticates a request and
hands it to a ``PeerService`` (the ``Workspace`` is one). The listener knows the wire; the service
knows the cache. Neither reaches into the other's attributes.

Every answer that carries a value (``fetch``, ``lookup``) and every ``put`` also carries its
``Kind`` (``value``, ``marker``, ``transient``): a small field on the wire.

Errors a ``PeerService`` method raises and their meaning on the wire: ``NotFound`` (final, the
caller raises it too), ``Declined`` (the caller loads with its own loader), ``InvalidArgument``
(unknown group, key the protocol cannot carry: a bad request), anything else (the load failed: the
caller loads locally; the text never crosses the wire).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ._fetched import Fetched, Kind


class PeerTransport(Protocol):
    """Carries requests to peers (client side)."""

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
        """Ask ``peer`` for ``key``; it answers from its caches or runs its loader (never forwards).

        ``context`` is opaque per-request data for the owner's loader (not part of the key);
        ``trace`` carries the trace-context headers. Raises ``NotFound`` or ``Declined`` when the
        owner answered so, ``PeerError`` otherwise.
        """
        ...

    async def lookup(self, peer: str, group: str, key: str) -> Fetched | None:
        """``peer``'s cached copy of ``key`` (main or hot), or ``None``; never runs a loader.

        The answer carries the copy's remaining TTL and its ``kind`` (``Fetched.kind``).
        """
        ...

    async def remove(
        self, peer: str, group: str, key: str, *, if_digest: str | None = None
    ) -> None:
        """Ask ``peer`` to drop ``key`` (only where its value has ``if_digest``, when given)."""
        ...

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
        """Hand ``key`` to ``peer`` (its new owner) with its remaining TTL, e.g. when leaving.

        ``kind`` travels with it (``value`` or ``marker``; transient records are never put).
        """
        ...

    async def leave(self, peer: str, member: str) -> None:
        """Tell ``peer`` that ``member`` is leaving the ring now."""
        ...

    async def ping(self, peer: str) -> None:
        """Raise ``PeerError`` unless ``peer`` answers within the liveness timeout."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class PeerService(Protocol):
    """Answers authenticated peer requests (server side)."""

    async def serve_get(
        self, group: str, key: str, *, min_ttl: float = 0.0, context: bytes | None = None
    ) -> Fetched:
        """Answer a peer's get from this process's caches or loader, never forwarding it."""
        ...

    def serve_cached(self, group: str, key: str, min_ttl: float = 0.0) -> Fetched | None:
        """A get answered from this process's caches alone, or ``None`` (then ``serve_get``)."""
        ...

    def serve_lookup(self, group: str, key: str) -> Fetched | None:
        """This process's cached copy of ``key``, if any; never loads."""
        ...

    def serve_remove(self, group: str, key: str, if_digest: str | None) -> None:
        """Drop ``key`` here (where the value has ``if_digest``, when given)."""
        ...

    def serve_put(
        self, group: str, key: str, value: bytes, ttl: float | None, kind: Kind = Kind.VALUE
    ) -> None:
        """Accept a handed-over entry."""
        ...

    def serve_leave(self, member: str) -> None:
        """``member`` says it is leaving: drop it from the ring now."""
        ...

    def serve_ping(self) -> None:
        """Answer a health check; raises ``Declined`` while this process is leaving (a peer
        must not put a draining process back on its ring)."""
        ...
