"""A :class:`PeerService` over today's ``Group`` methods, so the peer port has one narrow callee.

Interim by design: when ``Workspace`` implements ``PeerService`` itself (remove generations,
handoff, previous-owner lookup), the server is handed the workspace and this module goes away.
Until then: lookup is a main-or-hot cache read, put stores in main, leave drops the member from
the ring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import InvalidArgument
from ._fetched import Fetched

if TYPE_CHECKING:
    from ._group import Group
    from ._workspace import Workspace


class GroupPeerService:
    """Answers peer requests from a workspace's groups."""

    def __init__(self, workspace: Workspace) -> None:
        self._ws = workspace

    def _group(self, name: str) -> Group:
        group = self._ws.get_group(name)
        if group is None:
            raise InvalidArgument("unknown group")
        return group

    async def serve_get(
        self, group: str, key: str, *, min_ttl: float = 0.0, context: bytes | None = None
    ) -> Fetched:
        """A peer's get, answered by ``Group.serve_peer`` (caches or the local loader)."""
        return await self._group(group).serve_peer(key, min_ttl, context)

    def serve_lookup(self, group: str, key: str) -> Fetched | None:
        """The live cached copy (main or hot); counted as a served peer request, as serve_peer."""
        g = self._group(group)
        found = g.main_cache.get(key) or g.hot_cache.get(key)
        if found is None:
            return None
        g.stats.server_requests += 1
        return Fetched(found[0], found[1])

    def serve_remove(self, group: str, key: str, if_digest: str | None) -> None:
        """Drop ``key`` here."""
        self._group(group).remove_local(key, if_digest)

    def serve_put(self, group: str, key: str, value: bytes, ttl: float | None) -> None:
        """Store a handed-over entry in the main cache (unless already expired)."""
        g = self._group(group)
        if ttl is None or ttl > 0:
            g._store(g.main_cache, key, value, ttl)  # interim, see the module doc

    def serve_leave(self, member: str) -> None:
        """Drop ``member`` from the ring now."""
        ws = self._ws
        member = member.strip().rstrip("/")
        if member in ws.peers and member != ws.self_url:
            ws.set_peers([p for p in ws.peers if p != member])
