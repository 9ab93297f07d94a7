"""Finding a copy of a moved key before loading it (galaxycache's idea, for TTL'd values).

After a ring change the new owner of a key usually finds it missing from its own cache although
the cluster still holds it: in the previous owner's main cache, or as hot copies. Asking costs
one lookup (never a load); loading again costs a backend request. Invariants:

- only keys with a previous owner (other than this process and the current owner) within the
  hand-off window are searched: keys that did not move cost nothing;
- previous owners first, in parallel; other peers' hot copies only when no previous owner
  answered at all (gone), at most ``HOT_COPY_FANOUT`` of them;
- the whole search is bounded by ``within`` seconds so it never outlasts a caller's wait, and a copy
  with less life left than ``min_ttl`` is not taken.
"""

from __future__ import annotations

import asyncio

from ._errors import PeerError
from ._fetched import Fetched
from ._membership import PeerPicker
from ._stats import GroupStats

HOT_COPY_FANOUT = 4  # peers asked for a hot copy when no previous owner answered


async def find_moved_copy(
    peers: PeerPicker, group: str, key: str, min_ttl: float, within: float, stats: GroupStats
) -> Fetched | None:
    """A cached copy of ``key`` elsewhere in the cluster if its owner changed recently."""
    previous = [p for p in peers.previous_owners(key) if peers.peer_reachable(p)]
    if not previous:
        return None
    found: Fetched | None = None
    try:
        async with asyncio.timeout(within):
            found, answered = await _ask(peers, previous, group, key, min_ttl, stats)
            if found is None and not answered:
                asked = {*previous, peers.self_url}
                rest = [p for p in peers.peers if p not in asked][:HOT_COPY_FANOUT]
                found, _ = await _ask(peers, rest, group, key, min_ttl, stats)
    except TimeoutError:
        stats.peer_errors += 1
    return found


async def _ask(
    peers: PeerPicker,
    targets: list[str],
    group: str,
    key: str,
    min_ttl: float,
    stats: GroupStats,
) -> tuple[Fetched | None, bool]:
    """The first usable copy among ``targets`` (asked in parallel), and whether any answered."""
    transport = peers.transport
    tasks = [asyncio.ensure_future(transport.lookup(p, group, key)) for p in targets]
    for task in tasks:
        task.add_done_callback(_retrieve)  # answers that arrive after the first hit
    answered = False
    try:
        for next_done in asyncio.as_completed(tasks):
            try:
                copy = await next_done
            except PeerError:
                stats.peer_errors += 1
                continue
            answered = True
            if copy is not None and (copy.ttl is None or copy.ttl > max(min_ttl, 0.0)):
                return copy._replace(loaded=False), True
    finally:
        for task in tasks:
            task.cancel()
    return None, answered


def _retrieve(task: asyncio.Future[Fetched | None]) -> None:
    if not task.cancelled():
        task.exception()
