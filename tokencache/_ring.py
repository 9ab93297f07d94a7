"""Consistent hashing: which peer owns a key.

Theory of operation. Every peer puts ``replicas`` points on a 64-bit ring (BLAKE2b of ``"{peer}#{i}"``).
A plain ring sends a key to the first point after the key's hash; with 50 random points per peer the
busiest peer then typically carries 15-30 % more than its share. We use *multi-probe* consistent
hashing (Appleton & O'Reilly, 2015) instead: one BLAKE2b call gives ``probes`` positions for the key,
and the key goes to the point that follows its probe most closely. With 50 replicas and 8 probes the
imbalance drops to a few percent, and the property that matters is kept: when a peer joins, the only
keys that move are those whose nearest point is now one of the new peer's (about 1/N of them), and
when a peer leaves only its own keys move.

The ring is immutable; a membership change builds a new one. Every process given the same peer list,
replicas and probes computes the same owners. Since a ring never changes, it remembers the owners it
computed (a hashed key costs a BLAKE2b call and eight bisections: on a node's remote-hit path that was
the largest single step), for keys up to `MEMO_KEY_CHARS` and at most `MEMO_ENTRIES` of them; when
full, the oldest eighth goes (emptying it whole left it half full on average: with 20,000 remote
keys in play, half the lookups hashed again).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Iterable

_MASK = (1 << 64) - 1
_MAX_PROBES = 8  # BLAKE2b gives at most 64 bytes: eight 64-bit probes from one call
# Owners remembered per ring (oldest eighth dropped when full): ~5 MiB at most with 256-character
# ASCII keys, more with wider characters (measured with tracemalloc).
MEMO_ENTRIES = 16384
MEMO_KEY_CHARS = 256  # longer keys are hashed every time


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Ring:
    """An immutable consistent-hash ring over peer names (URLs)."""

    __slots__ = ("_memo", "_owners", "_peers", "_points", "_probes")

    def __init__(self, peers: Iterable[str] = (), replicas: int = 50, probes: int = 8) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        if not 1 <= probes <= _MAX_PROBES:
            raise ValueError(f"probes must be between 1 and {_MAX_PROBES}")
        self._peers = tuple(sorted(set(peers)))
        self._probes = probes
        pairs = sorted(
            (_point(f"{peer}#{i}".encode()), peer) for peer in self._peers for i in range(replicas)
        )
        self._points = [point for point, _ in pairs]
        self._owners = [peer for _, peer in pairs]
        self._memo: dict[str, str] = {}

    @property
    def peers(self) -> tuple[str, ...]:
        """The peers on the ring, sorted."""
        return self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def owner(self, key: str) -> str | None:
        """Return the peer that owns ``key``, or ``None`` when the ring is empty."""
        points = self._points
        if not points:
            return None
        if len(self._peers) == 1:
            return self._peers[0]
        memo = self._memo
        owner = memo.get(key)
        if owner is not None:
            return owner
        owner = self._hashed_owner(key)
        if len(key) <= MEMO_KEY_CHARS:
            if len(memo) >= MEMO_ENTRIES:
                # A ring may be shared by threads (it is immutable but for this memo): another
                # thread may drop the same keys, or change the dict while it is read.
                try:
                    for old in list(itertools.islice(memo, max(1, MEMO_ENTRIES // 8))):
                        memo.pop(old, None)
                except RuntimeError:
                    memo.clear()
            memo[key] = owner
        return owner

    def _hashed_owner(self, key: str) -> str:
        points = self._points
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8 * self._probes)
        raw = digest.digest()
        best_distance = _MASK + 1
        best_index = 0
        size = len(points)
        for offset in range(0, len(raw), 8):
            probe = int.from_bytes(raw[offset : offset + 8], "big")
            index = bisect.bisect_left(points, probe)
            if index == size:
                index = 0
            distance = (points[index] - probe) & _MASK
            if distance < best_distance:
                best_distance = distance
                best_index = index
        return self._owners[best_index]
