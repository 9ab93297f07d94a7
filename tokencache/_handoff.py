"""Leaving: announce it to the peers, then hand the main-cache entries to their new owners.

A process that stops on purpose (SIGTERM in a rollout) owns keys that were loaded at a cost. It
tells every peer it is leaving (they take it off their rings at once, static peers included) and
meanwhile sends each live main-cache entry, hottest first, to the key's owner in the ring without it
(``put`` with the remaining TTL). The new owners then answer from their main caches instead of
loading again.

Invariants: bounded in time (``within`` seconds for the whole hand-off, the leave announcements
included; ``each`` seconds per request, so a silent peer holds one slot that long, not all of
them) and in bytes (``max_bytes`` of values sent); at most ``concurrency`` puts in flight;
transient records never travel (they are never stored); a failed put is counted and skipped,
never retried. Pure orchestration over the injected transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ._errors import PeerError
from ._fetched import Kind
from ._group import Group
from ._peering import PeerTransport
from ._ring import Ring


@dataclass
class HandoffReport:
    """What a leave achieved (also kept on the workspace for metrics)."""

    peers_told: int = 0
    entries_sent: int = 0
    bytes_sent: int = 0
    entries_failed: int = 0
    entries_left: int = 0  # not sent: out of time or bytes
    timed_out: bool = False


async def announce_leave(
    transport: PeerTransport, peers: list[str], me: str, report: HandoffReport, *, each: float
) -> None:
    """Tell ``peers`` that ``me`` is leaving (in parallel, ``each`` seconds at most per peer)."""

    async def tell(peer: str) -> bool:
        try:
            async with asyncio.timeout(each):
                await transport.leave(peer, me)
        except (PeerError, TimeoutError):
            return False
        return True

    report.peers_told = sum(await asyncio.gather(*(tell(p) for p in peers)))


async def hand_off(
    transport: PeerTransport,
    groups: Mapping[str, Group],
    ring: Ring,
    me: str,
    *,
    max_bytes: int,
    concurrency: int,
    each: float,
    report: HandoffReport,
) -> None:
    """Put every live main-cache entry to its owner in ``ring`` until done or ``max_bytes``
    (``each`` seconds at most per put, so one silent owner cannot hold every worker)."""
    work = _plan(groups, ring, me)
    budget = [max_bytes]

    async def worker() -> None:
        for peer, group, key, value, ttl, kind in work:
            if len(value) > budget[0]:
                continue
            budget[0] -= len(value)
            try:
                async with asyncio.timeout(each):
                    await transport.put(peer, group, key, value, ttl, kind=kind)
            except (PeerError, TimeoutError):
                report.entries_failed += 1
                continue
            report.entries_sent += 1
            report.bytes_sent += len(value)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _plan(
    groups: Mapping[str, Group], ring: Ring, me: str
) -> Iterator[tuple[str, str, str, bytes, float | None, Kind]]:
    # One shared iterator: the workers take the next entry in turn (hottest first per group).
    for name, group in groups.items():
        for key, value, ttl, kind in group.handoff_entries():
            owner = ring.owner(key)
            if owner is not None and owner != me:
                yield owner, name, key, value, ttl, kind


async def leave(
    transport: PeerTransport,
    groups: Mapping[str, Group],
    peers: list[str],
    ring: Ring,
    me: str,
    *,
    within: float,
    max_bytes: int,
    each: float,
    concurrency: int = 16,
) -> HandoffReport:
    """Announce the leave and hand off (at the same time), all within ``within`` seconds."""
    report = HandoffReport()
    total = sum(1 for _ in _plan(groups, ring, me))
    try:
        async with asyncio.timeout(within):
            # Together: a silent peer must not delay the hand-off to the others (a put that
            # arrives before the leave is stored all the same).
            await asyncio.gather(
                announce_leave(transport, peers, me, report, each=each),
                hand_off(
                    transport,
                    groups,
                    ring,
                    me,
                    max_bytes=max_bytes,
                    concurrency=concurrency,
                    each=each,
                    report=report,
                ),
            )
    except TimeoutError:
        report.timed_out = True
    report.entries_left = max(0, total - report.entries_sent - report.entries_failed)
    return report
