"""Health checks of static peers: a peer that stops answering leaves the ring, and comes back.

With a static peer list nothing else tells a process that a peer died; without checks its keys
stay on the ring and every caller pays a failed connect per back-off period. Every process runs
the same checker with the same settings against the same peers, so their rings agree once each
has seen the same failures (a few ``interval`` periods), which is what consistent hashing needs.

Invariants:

- A peer is excluded after ``failures`` consecutive failed pings (any ``PeerError`` or no answer
  within ``timeout``), and put back after one answered ping; each change is logged once (by
  :class:`~tokencache._membership.Membership`) and counted.
- A peer that announced it is leaving (``leave``) is put back only when it answers a ping again:
  a leaving process refuses pings (``Workspace.serve_ping``), so it cannot rejoin while it drains.
- ``check_once`` is the whole decision (tests call it with a fake transport, no sleeps); ``run``
  only repeats it every ``interval`` seconds with the injected ``sleep``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ._errors import PeerError
from ._membership import UNHEALTHY, Membership
from ._peering import PeerTransport


class HealthChecker:
    """Pings every other configured member and keeps the ring to those that answer."""

    def __init__(
        self,
        membership: Membership,
        transport: PeerTransport,
        *,
        interval: float = 1.0,
        timeout: float = 1.0,
        failures: int = 2,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if interval <= 0 or timeout <= 0 or failures < 1:
            raise ValueError("interval and timeout > 0, failures >= 1")
        self._membership = membership
        self._transport = transport
        self.interval = interval
        self.timeout = timeout
        self.failures = failures
        self._sleep = sleep
        self._failed: dict[str, int] = {}  # peer -> consecutive failed pings
        self.checks = 0
        self.failed_pings = 0

    async def _ping(self, peer: str) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                await self._transport.ping(peer)
        except (PeerError, TimeoutError):
            return False
        return True

    async def check_once(self) -> None:
        """Ping every other member once (in parallel) and apply the results."""
        m = self._membership
        peers = sorted(p for p in m.members if p != m.self_url)
        results = await asyncio.gather(*(self._ping(p) for p in peers))
        self.checks += 1
        self._failed = {p: n for p, n in self._failed.items() if p in m.members}
        for peer, ok in zip(peers, results, strict=True):
            if ok:
                self._failed.pop(peer, None)
                if peer in m.excluded:
                    m.include(peer)
                continue
            self.failed_pings += 1
            count = self._failed.get(peer, 0) + 1
            self._failed[peer] = count
            if count >= self.failures and peer not in m.excluded:
                m.exclude(peer, UNHEALTHY)

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled."""
        while True:
            await self.check_once()
            await self._sleep(self.interval)
