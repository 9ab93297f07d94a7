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
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry import trace

from . import _protocol as wire
from ._clock import Clock, MonotonicClock
from ._errors import InvalidArgument
from ._group import Entry, Group, Loader
from ._ring import Ring
from ._server import PeerServer
from ._signing import Verifier
from ._stats import ServerStats
from ._transport import HttpTransport, PeerTransport

log = logging.getLogger("tokencache")


class _QuietBadRequests(logging.Filter):
    """aiohttp logs every malformed request at ERROR with a traceback (about 1 KB each), which
    lets anyone who can reach the peer port flood the logs. Keep one short INFO line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed peer request: %s"
            record.args = (type(exc).__name__,)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_http_log = logging.getLogger("tokencache.server.http")
_http_log.addFilter(_QuietBadRequests())


def _normalise_url(url: str) -> str:
    return url.strip().rstrip("/")


class Workspace:
    """A process's view of the cluster: its own URL, the peers, and its groups."""

    def __init__(
        self,
        self_url: str = "",
        *,
        replicas: int = 50,
        probes: int = 8,
        peer_secret: bytes | str | None = None,
        peer_timeout: float = 2.0,
        peer_connect_timeout: float | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        transport: PeerTransport | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        max_key_bytes: int = 32 << 10,
        max_value_bytes: int = 64 << 20,
        purge_interval: float = 30.0,
        unreachable_backoff: float = 2.0,
    ) -> None:
        self.self_url = _normalise_url(self_url)
        self.replicas = replicas
        self.probes = probes
        self.clock: Clock = clock or MonotonicClock()
        self._rng = rng or random.Random()
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes
        self.purge_interval = purge_interval
        self.unreachable_backoff = unreachable_backoff
        self._unreachable_until: dict[str, float] = {}  # peer -> clock time it may be tried again
        self.peer_timeout = peer_timeout
        self.transport: PeerTransport = transport or HttpTransport(
            timeout=peer_timeout,
            connect_timeout=peer_connect_timeout,
            secret=peer_secret,
            max_value_bytes=max_value_bytes,
        )
        self.verifier = Verifier(peer_secret) if peer_secret else None
        self.tracer = trace.get_tracer("tokencache", tracer_provider=tracer_provider)
        self.server_stats = ServerStats()
        self._groups: dict[str, Group] = {}
        self._ring = Ring((), replicas, probes)
        self._runner: web.AppRunner | None = None
        self._purger: asyncio.Task[None] | None = None
        self._warned_insecure = False

    # -- membership --------------------------------------------------------------------------

    def set_peers(self, urls: Iterable[str]) -> None:
        """Replace the peer list; the ring is exactly this list (include ``self_url`` to own keys)."""
        peers = {_normalise_url(u) for u in urls if u and u.strip()}
        if peers == set(self._ring.peers):
            return
        self._ring = Ring(peers, self.replicas, self.probes)
        self._unreachable_until = {p: t for p, t in self._unreachable_until.items() if p in peers}
        log.info("peers set: %d peers, self included: %s", len(peers), self.self_url in peers)

    @property
    def peers(self) -> tuple[str, ...]:
        """The current peers, sorted."""
        return self._ring.peers

    def peer_reachable(self, peer: str) -> bool:
        """False while ``peer`` is in its back-off after failing to answer at all."""
        until = self._unreachable_until.get(peer)
        if until is None:
            return True
        if self.clock.now() >= until:
            # Half-open: the next request tries the peer again; failing re-arms the back-off.
            del self._unreachable_until[peer]
            return True
        return False

    def mark_unreachable(self, peer: str) -> None:
        """Skip ``peer`` for ``unreachable_backoff`` seconds (its keys are loaded locally)."""
        if self.unreachable_backoff > 0:
            self._unreachable_until[peer] = self.clock.now() + self.unreachable_backoff

    def owner(self, key: str) -> str | None:
        """The peer that owns ``key``, or ``None`` when this process does (or there are no peers)."""
        peer = self._ring.owner(key)
        if peer is None or peer == self.self_url:
            return None
        return peer

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

        The hot cache (copies of values other peers own) holds at most ``hot_fraction`` of
        ``max_bytes``; a value fetched from its owner is offered to it with ``hot_probability``
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
        if not isinstance(key, str):
            raise InvalidArgument("keys are str")
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgument("keys must be encodable as UTF-8") from None
        if size > self.max_key_bytes:
            raise InvalidArgument(f"key longer than {self.max_key_bytes} bytes")

    def purge_expired(self) -> int:
        """Drop expired entries from every group now; return how many."""
        return sum(group.purge_expired() for group in self._groups.values())

    # -- the peer server ---------------------------------------------------------------------

    def _warn_if_insecure(self) -> None:
        if self.verifier is None and not self._warned_insecure:
            self._warned_insecure = True
            log.warning(
                "no peer secret configured: the peer port accepts unauthenticated requests; "
                "set a shared peer secret in production"
            )

    def add_peer_routes(self, app: web.Application) -> None:
        """Mount the peer protocol on an existing aiohttp application."""
        self._warn_if_insecure()
        PeerServer(self).add_routes(app)

    def peer_app(self) -> web.Application:
        """A new aiohttp application serving only the peer protocol."""
        app = web.Application(client_max_size=self.max_key_bytes + 1024)
        self.add_peer_routes(app)
        return app

    async def start(self) -> None:
        """Start background work (the periodic purge of expired entries)."""
        if self._purger is None and self.purge_interval > 0:
            self._purger = asyncio.get_running_loop().create_task(self._purge_loop())

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.purge_interval)
            self.purge_expired()

    async def serve(self, host: str, port: int) -> None:
        """Run the peer server on ``host:port`` (returns once listening) and start background work."""
        await self.start()
        runner = web.AppRunner(
            self.peer_app(), access_log=None, handle_signals=False, logger=_http_log
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self._runner = runner

    async def close(self) -> None:
        """Stop the peer server and background work; close peer connections."""
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.transport.close()
