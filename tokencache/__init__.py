"""tokencache: a cluster cache for asyncio services, after Google's groupcache.

Every process of an application is a peer. A consistent-hash ring names one owner per key; a miss
anywhere is loaded once, by the owner, and shared; values carry a TTL::

    ws = tokencache.Workspace(self_url="http://10.0.0.1:5000")
    ws.set_peers(["http://10.0.0.1:5000", "http://10.0.0.2:5000"])
    group = ws.new_group("thumbnails", max_bytes=64 << 20, loader=load)
    value = await group.get(key)
"""

from ._bridge import BackgroundLoop
from ._clock import Clock, MonotonicClock
from ._context import load_context
from ._entry import Entry, Loader
from ._errors import Declined, InvalidArgument, NotAValue, NotFound, PeerError, TokenCacheError
from ._fetched import Fetched, Kind
from ._group import Group
from ._handoff import HandoffReport
from ._health import HealthChecker
from ._lru import CacheStats, LRUCache
from ._membership import Membership, PeerPicker
from ._metrics import GroupcacheCollector
from ._peering import PeerService, PeerTransport
from ._ring import Ring
from ._server import PeerServer
from ._singleflight import SingleFlight
from ._stats import GroupStats, ServerStats
from ._ticket import HitTicket
from ._tls import peer_tls_contexts
from ._transport import WireTransport
from ._workspace import Workspace

__all__ = [
    "BackgroundLoop",
    "CacheStats",
    "Clock",
    "Declined",
    "Entry",
    "Fetched",
    "Group",
    "GroupStats",
    "GroupcacheCollector",
    "HandoffReport",
    "HealthChecker",
    "HitTicket",
    "InvalidArgument",
    "Kind",
    "LRUCache",
    "Loader",
    "Membership",
    "MonotonicClock",
    "NotAValue",
    "NotFound",
    "PeerError",
    "PeerPicker",
    "PeerServer",
    "PeerService",
    "PeerTransport",
    "Ring",
    "ServerStats",
    "SingleFlight",
    "TokenCacheError",
    "WireTransport",
    "Workspace",
    "load_context",
    "peer_tls_contexts",
]
