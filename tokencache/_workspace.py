"""The workspace: the one object that holds a process's cache state.

No module globals (galaxycache's ``Universe``): groups, the ring, the transport, the clock, the
tracer and the counters all live here, so several workspaces can run in one process (tests wire
three together in-process) and nothing leaks between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Iterable

from opentelemetry import trace

from . import _protocol as wire
from ._clock import Clock, MonotonicClock
from ._entry import Entry, Loader, check_key
from ._errors import Declined, InvalidArgument
from ._fetched import Fetched, Kind
from ._group import Group
from ._handoff import HandoffReport
from ._handoff import leave as leave_ring
from ._health import HealthChecker
from ._membership import LEFT, Membership
from ._peering import PeerTransport
from ._server import PeerServer
from ._spans import Spans
from ._stats import ServerStats
from ._transport import WireTransport

log = logging.getLogger("tokencache")


class Workspace:
    """A process's view of the cluster: its own URL, the peers, and its groups.

    It is the :class:`~tokencache._peering.PeerService` the peer port calls, and the
    :class:`~tokencache._membership.PeerPicker` its groups reach peers through.
    """

    def __init__(
        self,
        self_url: str = "",
        *,
        replicas: int = 50,
        probes: int = 8,
        peer_secret: bytes | str | None = None,
        peer_timeout: float = 30.0,
        peer_liveness_timeout: float = 3.0,
        peer_connect_timeout: float | None = None,
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        transport: PeerTransport | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        max_key_bytes: int = 32 << 10,
        max_value_bytes: int = 64 << 20,
        purge_interval: float = 30.0,
        unreachable_backoff: float = 2.0,
        control_timeout: float = 2.0,
        lookup_timeout: float = 0.5,
        handoff_window: float = 60.0,
    ) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self.membership = Membership(
            self_url,
            self.clock,
            replicas=replicas,
            probes=probes,
            unreachable_backoff=unreachable_backoff,
            handoff_window=handoff_window,
        )
        self.replicas = replicas
        self.probes = probes
        self._rng = rng or random.Random()
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes
        self.purge_interval = purge_interval
        self.control_timeout = control_timeout
        self.lookup_timeout = lookup_timeout
        # peer_timeout bounds a peer request that the owner keeps alive with heartbeats (its
        # maximum load time); peer_liveness_timeout is how soon silence means the peer is gone.
        self.peer_timeout = peer_timeout
        self.peer_liveness_timeout = peer_liveness_timeout
        self._peer_secret = peer_secret or None
        self._ssl_server = ssl_server
        self._transport: PeerTransport = transport or WireTransport(
            secret=peer_secret,
            ssl=ssl_client,
            liveness_timeout=peer_liveness_timeout,
            max_load_time=peer_timeout,
            connect_timeout=peer_connect_timeout,
            max_value_bytes=max_value_bytes,
        )
        self.spans = Spans(tracer_provider)
        self.tracer = self.spans.tracer
        self.server_stats = ServerStats()
        self._groups: dict[str, Group] = {}
        self._server: PeerServer | None = None
        self._purger: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self.health: HealthChecker | None = None
        self.leaving = False
        self._ready = True
        self.last_handoff: HandoffReport | None = None

    # -- membership (the PeerPicker side) ----------------------------------------------------

    @property
    def self_url(self) -> str:
        """This process's own peer URL ("" when alone)."""
        return self.membership.self_url

    @property
    def transport(self) -> PeerTransport:
        """The client side of the peer protocol."""
        return self._transport

    @property
    def unreachable_backoff(self) -> float:
        """Seconds a peer that could not be reached is skipped."""
        return self.membership.unreachable_backoff

    def set_peers(self, urls: Iterable[str]) -> None:
        """Replace the peer list (include ``self_url`` to own keys). The ring is this list minus
        the peers that announced they are leaving or fail health checks."""
        urls = list(urls)
        if self.membership.set_members(urls):
            peers = self.membership.peers
            log.info("peers set: %d peers, self included: %s", len(peers), self.self_url in peers)

    @property
    def peers(self) -> tuple[str, ...]:
        """The peers on the ring now, sorted."""
        return self.membership.peers

    def peer_reachable(self, peer: str) -> bool:
        """False while ``peer`` is in its back-off after failing to answer at all."""
        return self.membership.peer_reachable(peer)

    def mark_unreachable(self, peer: str) -> None:
        """Skip ``peer`` for ``unreachable_backoff`` seconds (its keys are loaded locally)."""
        self.membership.mark_unreachable(peer)

    def owner(self, key: str) -> str | None:
        """The peer that owns ``key``, or ``None`` when this process does (or there are no peers)."""
        return self.membership.owner(key)

    def previous_owners(self, key: str) -> list[str]:
        """Recent owners of ``key`` other than this process and its current owner, newest first."""
        return self.membership.previous_owners(key)

    def start_health_checks(
        self, *, interval: float = 1.0, timeout: float = 1.0, failures: int = 2
    ) -> HealthChecker:
        """Ping the static peers every ``interval`` seconds: one that fails ``failures`` checks in
        a row leaves the ring, and rejoins when it answers (call from the event loop)."""
        if self.health is None:
            self.health = HealthChecker(
                self.membership,
                self._transport,
                interval=interval,
                timeout=timeout,
                failures=failures,
            )
            self._checker = asyncio.get_running_loop().create_task(self.health.run())
        return self.health

    async def leave(self, *, within: float = 5.0, max_bytes: int = 256 << 20) -> HandoffReport:
        """Leave the ring now: tell the peers, then hand the main caches to the new owners.

        Bounded by ``within`` seconds and ``max_bytes`` of values. Afterwards this process
        refuses health pings and routes its own requests by the ring without itself; its peer
        port keeps answering (lookups, gets) until :meth:`close`.
        """
        me = self.self_url
        self.leaving = True
        others = [p for p in self.membership.members if p != me]
        ring = self.membership.ring_without(me)
        self.membership.exclude(me, LEFT)
        if self._checker is not None:
            self._checker.cancel()
        report = await leave_ring(
            self._transport,
            self._groups,
            others,
            ring,
            me,
            within=within,
            max_bytes=max_bytes,
            each=self.control_timeout,
        )
        self.last_handoff = report
        log.info(
            "left the ring: %d peers told, %d entries (%d bytes) handed over, %d failed, "
            "%d left behind",
            report.peers_told,
            report.entries_sent,
            report.bytes_sent,
            report.entries_failed,
            report.entries_left,
        )
        return report

    # -- the PeerService side ----------------------------------------------------------------

    def _group_or_error(self, name: str) -> Group:
        group = self._groups.get(name)
        if group is None:
            raise InvalidArgument("no such group")
        return group

    async def serve_get(
        self, group: str, key: str, *, min_ttl: float = 0.0, context: bytes | None = None
    ) -> Fetched:
        """Answer a peer's get from this process's caches or loader, never forwarding it."""
        return await self._group_or_error(group).serve_peer(key, min_ttl, context)

    def serve_cached(self, group: str, key: str, min_ttl: float = 0.0) -> Fetched | None:
        """A peer's get answered from this process's caches alone, or ``None`` (then the peer
        port calls :meth:`serve_get`)."""
        return self._group_or_error(group).serve_cached(key, min_ttl)

    def serve_lookup(self, group: str, key: str) -> Fetched | None:
        """This process's cached copy of ``key``, if any; never loads."""
        return self._group_or_error(group).serve_lookup(key)

    def serve_remove(self, group: str, key: str, if_digest: str | None) -> None:
        """Drop ``key`` here (where the value has ``if_digest``, when given)."""
        self._group_or_error(group).remove_local(key, if_digest)

    def serve_put(
        self, group: str, key: str, value: bytes, ttl: float | None, kind: Kind = Kind.VALUE
    ) -> None:
        """Accept an entry a leaving peer hands over (kept unless a live copy is held here)."""
        self._group_or_error(group).accept(key, value, ttl, kind)

    def serve_leave(self, member: str) -> None:
        """``member`` says it is leaving: drop it from the ring now (static peers too)."""
        self.membership.exclude(member, LEFT)

    def serve_ping(self) -> None:
        """Answer a health check; refused while this process is leaving or not ready."""
        if self.leaving or not self._ready:
            raise Declined("leaving" if self.leaving else "not ready")

    def set_ready(self, ready: bool) -> None:
        """Whether this process answers health pings (default True). A process whose peer port
        is up before its groups exist says False until they do, so static peers put it back on
        their rings only when it can answer for every group."""
        self._ready = ready

    # -- groups ------------------------------------------------------------------------------

    def new_group(
        self,
        name: str,
        max_bytes: int,
        loader: Loader | Callable[[str], Awaitable[Entry]],
        *,
        hot_fraction: float = 0.125,
        hot_probability: float = 1.0,
        stale_window: float = 0.0,
    ) -> Group:
        """Create a group; its name must be the same on every process and unique here.

        The hot cache (copies of values other peers own) keeps at most ``hot_fraction`` of
        main's bytes once the group is full, or all that main leaves free when that is more
        (lent: hot copies are evicted first when main needs room; 0 keeps no hot copies); a
        value fetched from its owner is offered to it with ``hot_probability``
        (1: always, 0: never keep hot copies) and admitted by a TinyLFU frequency sketch.
        """
        if not wire.GROUP_NAME_RE.fullmatch(name):
            raise InvalidArgument("group names are 1-64 of [A-Za-z0-9_.-], starting alphanumeric")
        if name in self._groups:
            raise InvalidArgument(f"group {name!r} already exists")
        if max_bytes < 0 or not 0 <= hot_fraction <= 1 or not 0 <= hot_probability <= 1:
            raise InvalidArgument("max_bytes >= 0, hot_fraction and hot_probability in [0, 1]")
        if stale_window < 0:
            raise InvalidArgument("stale_window must be >= 0")
        group = Group(
            self,
            name,
            max_bytes,
            loader,
            clock=self.clock,
            spans=self.spans,
            max_key_bytes=self.max_key_bytes,
            max_value_bytes=self.max_value_bytes,
            control_timeout=self.control_timeout,
            lookup_timeout=self.lookup_timeout,
            hot_fraction=hot_fraction,
            hot_probability=hot_probability,
            stale_window=stale_window,
            rng=self._rng,
        )
        self._groups[name] = group
        return group

    def get_group(self, name: str) -> Group | None:
        """The group called ``name``, if any."""
        return self._groups.get(name)

    @property
    def groups(self) -> dict[str, Group]:
        """All groups by name (a copy)."""
        return dict(self._groups)

    def check_key(self, key: str) -> None:
        """Refuse keys the peer protocol cannot carry."""
        check_key(key, self.max_key_bytes)

    def purge_expired(self) -> int:
        """Drop expired entries from every group now; return how many."""
        return sum(group.purge_expired() for group in self._groups.values())

    # -- the peer server ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start background work (the periodic purge of expired entries)."""
        if self._purger is None and self.purge_interval > 0:
            self._purger = asyncio.get_running_loop().create_task(self._purge_loop())

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.purge_interval)
            self.purge_expired()

    async def serve(self, host: str, port: int) -> None:
        """Run the peer server on ``host:port`` (returns once listening) and start background work.

        Logs one warning when no peer secret is set (the port then accepts anyone).
        """
        await self.start()
        server = PeerServer(
            self,
            secret=self._peer_secret,
            ssl=self._ssl_server,
            stats=self.server_stats,
            spans=self.spans,
            max_key_bytes=self.max_key_bytes,
            max_value_bytes=self.max_value_bytes,
        )
        await server.start(host, port)
        self._server = server

    async def close(self) -> None:
        """Stop the peer server and background work; close peer connections."""
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
            self._checker = None
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None
        if self._server is not None:
            await self._server.close()
            self._server = None
        await self.transport.close()
