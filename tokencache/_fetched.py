"""What a get answers with when the caller wants to know how the value was obtained."""

from __future__ import annotations

from typing import NamedTuple


class Fetched(NamedTuple):
    """A value with its remaining TTL and whether a loader ran to produce it for this call.

    ``loaded`` is True when the call found no cached copy and a loader ran for it (in this
    process or on the key's owner, possibly shared with concurrent callers); False when a cache
    in the cluster already held the value. A server uses it to say "miss" rather than "hit".
    """

    value: bytes
    ttl: float | None
    loaded: bool = False
