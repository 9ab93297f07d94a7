"""What a get answers with, and the kinds of result a loader may produce.

A loader's result is one of three kinds (:class:`Kind`), so the engine never has to guess from the
bytes what a control record means:

``value``      an ordinary value: stored for its TTL, served by every API, counted as a load.
``marker``     stored for its TTL and handed to callers of ``get_fetched``/``lookup`` with its kind,
               but not a value: the value APIs (``get``, ``peek``…) never return it; a load
               that made one counts in ``local_load_markers``, not as a successful load (a
               reverse proxy's "hit-for-pass" record).
``transient``  handed to the callers waiting on this one load and stored nowhere, whatever its TTL
               (a proxy's backend-error or served-stale answer); counted as a load error.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class Kind(enum.StrEnum):
    """What a loaded result is (see the module docstring). Travels on the wire in two flag bits."""

    VALUE = "value"
    MARKER = "marker"
    TRANSIENT = "transient"


class Fetched(NamedTuple):
    """A result with its remaining TTL, whether a loader ran to produce it, and its kind.

    ``loaded`` is True when the call found no cached copy and a loader ran for it (in this
    process or on the key's owner, possibly shared with concurrent callers); False when a cache
    in the cluster already held the value. A server uses it to say "miss" rather than "hit".
    """

    value: bytes
    ttl: float | None
    loaded: bool = False
    kind: Kind = Kind.VALUE
