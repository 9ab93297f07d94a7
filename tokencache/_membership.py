"""Membership: who is on the ring now, who owned a key before, and who is briefly skipped.

Pure logic on an injected clock (no I/O); the :class:`~tokencache.Workspace` holds one and
:class:`~tokencache._health.HealthChecker`, the peer port (``leave``) and discovery change it.

Invariants:

- The ring is the configured members minus the *excluded* ones (``left``: the member announced
  that it is leaving; ``unhealthy``: it failed health checks). Every process applies the same rule
  to the same events, so rings agree once the events have reached everyone.
- An exclusion is forgotten when its member leaves the configured list (a Kubernetes pod that is
  gone and may come back under the same URL is a new member), and lifted by ``include`` (a health
  check that succeeded).
- Rings replaced within ``handoff_window`` seconds are kept (newest first, at most
  ``_MAX_HISTORY``): a key whose owner changed is first asked of its previous owners
  (galaxycache's idea), so a ring change does not cost a load per moved key. A process that joins
  a ring with others in it treats "the ring without me" as its previous ring: it asks before
  loading too.
- A peer that could not be reached at all is skipped for ``unreachable_backoff`` seconds (its keys
  are loaded locally); a slow peer is never marked (only ``PeerError(unreachable=True)`` does).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ._clock import Clock
from ._peering import PeerTransport
from ._ring import Ring

log = logging.getLogger("tokencache.membership")

_MAX_HISTORY = 4
LEFT = "left"
UNHEALTHY = "unhealthy"


def normalise_url(url: str) -> str:
    """A peer URL as the ring names it."""
    return url.strip().rstrip("/")


@dataclass
class MembershipStats:
    """Counters of membership changes. Plain ints, read at scrape time."""

    exclusions: dict[str, int] = field(default_factory=lambda: {LEFT: 0, UNHEALTHY: 0})
    rejoins: int = 0
    ring_changes: int = 0


class PeerPicker(Protocol):
    """What a :class:`~tokencache.Group` needs to reach its peers (groupcache's ``PeerPicker``)."""

    @property
    def self_url(self) -> str:
        """This process's own URL ("" when alone)."""
        ...

    @property
    def transport(self) -> PeerTransport:
        """The client side of the peer protocol."""
        ...

    @property
    def peers(self) -> tuple[str, ...]:
        """The peers on the ring now, sorted."""
        ...

    def owner(self, key: str) -> str | None:
        """The owner of ``key``, or ``None`` when this process owns it."""
        ...

    def previous_owners(self, key: str) -> list[str]:
        """Recent owners of ``key`` other than this process and the current owner, newest first."""
        ...

    def peer_reachable(self, peer: str) -> bool:
        """False while ``peer`` is in its back-off after it could not be reached."""
        ...

    def mark_unreachable(self, peer: str) -> None:
        """``peer`` could not be reached: skip it for a while."""
        ...


class Membership:
    """The ring of one process and its recent history."""

    def __init__(
        self,
        self_url: str,
        clock: Clock,
        *,
        replicas: int = 50,
        probes: int = 8,
        unreachable_backoff: float = 2.0,
        handoff_window: float = 60.0,
    ) -> None:
        self.self_url = normalise_url(self_url)
        self._clock = clock
        self._replicas = replicas
        self._probes = probes
        self.unreachable_backoff = unreachable_backoff
        self.handoff_window = handoff_window
        self._members: frozenset[str] = frozenset()
        self._excluded: dict[str, str] = {}  # member -> LEFT | UNHEALTHY
        self._ring = Ring((), replicas, probes)
        self._history: list[tuple[float, Ring]] = []  # (replaced at, ring), newest first
        self._unreachable_until: dict[str, float] = {}
        self.stats = MembershipStats()

    # -- reading -----------------------------------------------------------------------------

    @property
    def members(self) -> frozenset[str]:
        """The configured members (ring or not)."""
        return self._members

    @property
    def excluded(self) -> dict[str, str]:
        """Members kept off the ring, with the reason (a copy)."""
        return dict(self._excluded)

    @property
    def peers(self) -> tuple[str, ...]:
        """The peers on the ring now, sorted."""
        return self._ring.peers

    def owner(self, key: str) -> str | None:
        """The owner of ``key``, or ``None`` when this process owns it (or the ring is empty)."""
        peer = self._ring.owner(key)
        return None if peer is None or peer == self.self_url else peer

    def previous_owners(self, key: str) -> list[str]:
        """Owners of ``key`` in the rings replaced within the hand-off window, newest first,
        without this process and the current owner."""
        if not self._history:
            return []
        horizon = self._clock.now() - self.handoff_window
        current = self._ring.owner(key)
        found: list[str] = []
        for replaced_at, ring in self._history:
            if replaced_at < horizon:
                break
            peer = ring.owner(key)
            if peer is not None and peer not in (self.self_url, current) and peer not in found:
                found.append(peer)
        return found

    def ring_without(self, peer: str) -> Ring:
        """The ring as it will be once ``peer`` is gone (a leaving process hands its keys by it)."""
        return Ring(set(self._ring.peers) - {peer}, self._replicas, self._probes)

    # -- changing ----------------------------------------------------------------------------

    def set_members(self, urls: Iterable[str]) -> bool:
        """Replace the configured members; True when the ring changed."""
        members = frozenset(normalise_url(u) for u in urls if u and u.strip())
        first = not self._members and not self._ring.peers
        self._members = members
        self._excluded = {p: r for p, r in self._excluded.items() if p in members}
        self._unreachable_until = {p: t for p, t in self._unreachable_until.items() if p in members}
        changed = self._rebuild()
        if first and changed and self.self_url in members and len(members) > 1:
            # Joining a ring that ran without us: its owners hold our keys now.
            alone = Ring(members - {self.self_url}, self._replicas, self._probes)
            self._history = [(self._clock.now(), alone)]
        return changed

    def exclude(self, peer: str, reason: str) -> bool:
        """Keep ``peer`` off the ring (``LEFT`` or ``UNHEALTHY``); True when it was on it."""
        peer = normalise_url(peer)
        if peer not in self._members or self._excluded.get(peer) == reason:
            return False
        self._excluded[peer] = reason
        self.stats.exclusions[reason] = self.stats.exclusions.get(reason, 0) + 1
        changed = self._rebuild()
        log.warning("peer %s off the ring (%s); %d peers left", peer, reason, len(self.peers))
        return changed

    def include(self, peer: str) -> bool:
        """Put an excluded ``peer`` back on the ring; True when it was excluded."""
        peer = normalise_url(peer)
        if self._excluded.pop(peer, None) is None:
            return False
        self.stats.rejoins += 1
        self._unreachable_until.pop(peer, None)
        self._rebuild()
        log.warning("peer %s back on the ring; %d peers", peer, len(self.peers))
        return True

    def _rebuild(self) -> bool:
        peers = self._members - set(self._excluded)
        if peers == set(self._ring.peers):
            return False
        now = self._clock.now()
        if self._ring.peers:
            self._history.insert(0, (now, self._ring))
            horizon = now - self.handoff_window
            self._history = [(t, r) for t, r in self._history[:_MAX_HISTORY] if t >= horizon]
        self._ring = Ring(peers, self._replicas, self._probes)
        self.stats.ring_changes += 1
        return True

    # -- unreachable back-off ----------------------------------------------------------------

    def peer_reachable(self, peer: str) -> bool:
        """False while ``peer`` is in its back-off after failing to answer at all."""
        until = self._unreachable_until.get(peer)
        if until is None:
            return True
        if self._clock.now() >= until:
            # Half-open: the next request tries the peer again; failing re-arms the back-off.
            del self._unreachable_until[peer]
            return True
        return False

    def mark_unreachable(self, peer: str) -> None:
        """Skip ``peer`` for ``unreachable_backoff`` seconds (its keys are loaded locally)."""
        if self.unreachable_backoff > 0:
            self._unreachable_until[peer] = self._clock.now() + self.unreachable_backoff
