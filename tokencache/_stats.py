"""Counters of a group, named after golang/groupcache's ``Stats``. Plain ints, read at scrape time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GroupStats:
    """Per-group counters.

    ``loads`` counts gets that missed both caches (before deduplication); ``loads_deduped`` counts
    the loads that actually ran after singleflight (groupcache's meaning of the two names).
    ``crosstalk_refusals`` counts peer requests for keys this process does not own, which it loads
    itself instead of forwarding again (a request from a peer is never forwarded).
    ``local_load_markers`` counts loads that produced a marker (stored, not a value); transient
    results count in ``local_load_errs``. ``handoff_hits`` counts loads avoided because a previous
    owner or a hot copy still held the key after a ring change; ``handoffs_received`` counts
    entries a leaving peer handed over; ``lookups_served`` counts peers' lookups answered here.
    ``hot_admissions`` / ``hot_rejections`` count values fetched from their owner that the admission
    policy kept as hot copies / turned away (the hot cache was full of keys asked for more often).
    """

    gets: int = 0
    cache_hits: int = 0
    peer_loads: int = 0
    peer_errors: int = 0
    loads: int = 0
    loads_deduped: int = 0
    local_loads: int = 0
    local_load_errs: int = 0
    server_requests: int = 0
    crosstalk_refusals: int = 0
    local_load_markers: int = 0
    handoff_hits: int = 0
    handoffs_received: int = 0
    lookups_served: int = 0
    hot_admissions: int = 0
    hot_rejections: int = 0
    get_from_peers_latency_slowest_ms: float = 0.0


@dataclass
class ServerStats:
    """Counters of the peer server shared by all groups.

    ``busy`` counts GETs declined because too many loads already ran (the caller loads itself).
    """

    unauthorized: int = 0
    bad_requests: int = 0
    busy: int = 0
