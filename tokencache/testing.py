"""Test doubles shipped with the engine (galaxycache ships its own): a fake clock and an in-process
transport that wires several workspaces together without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from ._errors import Declined, InvalidArgument, NotFound, PeerError
from ._fetched import Fetched, Kind
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
    """The whole :class:`~tokencache.PeerTransport`, delivered by calling the target workspace's
    :class:`~tokencache.PeerService` methods directly.

    Faults, so tests control every interleaving without sleeps:

    - ``down`` peers refuse at once (``PeerError(unreachable=True)``, like a refused connect);
    - ``gates`` hold requests to a peer until the event is set (a slow but live peer);
    - :meth:`black_hole` makes a peer stop answering (a frozen process under a pooled connection):
      its requests wait until :meth:`expire_liveness` (the transport's liveness timeout, driven by
      the test) fails them with ``PeerError(unreachable=True)``.
    """

    def __init__(self) -> None:
        self.workspaces: dict[str, Workspace] = {}
        self.down: set[str] = set()
        self.gates: dict[str, asyncio.Event] = {}
        self._holes: dict[str, asyncio.Event] = {}
        self.fetches: list[tuple[str, str, str]] = []  # (peer, group, key)
        self.calls: list[tuple[str, str]] = []  # (operation, peer), every request

    def register(self, url: str, workspace: Workspace) -> None:
        """Make ``workspace`` reachable as ``url``."""
        self.workspaces[url.rstrip("/")] = workspace

    def black_hole(self, peer: str) -> None:
        """Requests to ``peer`` stop being answered (until :meth:`heal`)."""
        self._holes.setdefault(peer, asyncio.Event())

    def expire_liveness(self, peer: str) -> None:
        """The liveness timeout passes for every request waiting on black-holed ``peer``."""
        hole = self._holes.get(peer)
        if hole is not None:
            hole.set()
            self._holes[peer] = asyncio.Event()

    def heal(self, peer: str) -> None:
        """``peer`` answers again."""
        self._holes.pop(peer, None)

    async def _target(self, op: str, peer: str) -> Workspace:
        self.calls.append((op, peer))
        gate = self.gates.get(peer)
        if gate is not None:
            await gate.wait()
        hole = self._holes.get(peer)
        if hole is not None:
            await hole.wait()
            raise PeerError(peer, "no answer within the liveness timeout", unreachable=True)
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
        target = await self._target("fetch", peer)
        try:
            return await target.serve_get(group, key, min_ttl=min_ttl, context=context)
        except (NotFound, Declined):
            raise
        except Exception as exc:
            raise PeerError(peer, "load failed") from exc

    async def lookup(self, peer: str, group: str, key: str) -> Fetched | None:
        """The target's cached copy, if any."""
        target = await self._target("lookup", peer)
        try:
            return target.serve_lookup(group, key)
        except InvalidArgument as exc:
            raise PeerError(peer, "unknown group") from exc

    async def remove(
        self, peer: str, group: str, key: str, *, if_digest: str | None = None
    ) -> None:
        """Drop the key from the target workspace's caches."""
        target = await self._target("remove", peer)
        try:
            target.serve_remove(group, key, if_digest)
        except InvalidArgument as exc:
            raise PeerError(peer, "unknown group") from exc

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
        """Hand an entry to the target."""
        target = await self._target("put", peer)
        try:
            target.serve_put(group, key, value, ttl, kind)
        except InvalidArgument as exc:
            raise PeerError(peer, "unknown group") from exc

    async def leave(self, peer: str, member: str) -> None:
        """Tell the target that ``member`` leaves."""
        (await self._target("leave", peer)).serve_leave(member)

    async def ping(self, peer: str) -> None:
        """Health check of the target."""
        target = await self._target("ping", peer)
        try:
            target.serve_ping()
        except Declined as exc:
            raise PeerError(peer, "leaving") from exc

    async def close(self) -> None:
        """Nothing to release."""
