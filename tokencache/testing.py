"""Test doubles shipped with the engine (galaxycache ships its own): a fake clock and an in-process
transport that wires several workspaces together without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from ._errors import Declined, NotFound, PeerError
from ._fetched import Fetched
from ._workspace import Workspace

__all__ = ["FakeClock", "LocalTransport"]


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start

    def now(self) -> float:
        """The current fake time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._now += seconds


class LocalTransport:
    """Delivers peer requests by calling the target workspace directly.

    ``down`` peers refuse; ``gates`` hold requests to a peer until the event is set (to make a slow
    peer), so tests control every interleaving without sleeps.
    """

    def __init__(self) -> None:
        self.workspaces: dict[str, Workspace] = {}
        self.down: set[str] = set()
        self.gates: dict[str, asyncio.Event] = {}
        self.fetches: list[tuple[str, str, str]] = []  # (peer, group, key)

    def register(self, url: str, workspace: Workspace) -> None:
        """Make ``workspace`` reachable as ``url``."""
        self.workspaces[url.rstrip("/")] = workspace

    async def _target(self, peer: str) -> Workspace:
        gate = self.gates.get(peer)
        if gate is not None:
            await gate.wait()
        if peer in self.down or peer not in self.workspaces:
            raise PeerError(peer, "connection refused", unreachable=True)
        return self.workspaces[peer]

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
        """Serve a get from the target workspace as its peer server would."""
        self.fetches.append((peer, group, key))
        target = (await self._target(peer)).get_group(group)
        if target is None:
            raise PeerError(peer, "unknown group")
        try:
            return await target.serve_peer(key, min_ttl, context)
        except (NotFound, Declined):
            raise
        except Exception as exc:
            raise PeerError(peer, "load failed") from exc

    async def remove(
        self,
        peer: str,
        group: str,
        key: str,
        *,
        if_digest: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Drop the key from the target workspace's caches."""
        target = (await self._target(peer)).get_group(group)
        if target is None:
            raise PeerError(peer, "unknown group")
        target.remove_local(key, if_digest)

    async def close(self) -> None:
        """Nothing to release."""
