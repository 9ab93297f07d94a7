"""`ProxyApp`: the proxy's data path assembled — policy, ``http`` group, loader, listener.

The service shell (config, main, health, metrics server) builds one `ProxyApp` per process from the
settings, starts it on ``LISTEN_ADDR``, and on SIGTERM calls `begin_drain`, waits with `wait_idle`,
then `close`. The workspace (peers, the peer port) and the metrics registry belong to the shell;
the app only adds its ``http`` group to the one and hands `ProxyMetrics.collector` to the other.
"""

from __future__ import annotations

import http.cookiejar
import logging
import re
import time
from collections.abc import Sequence

import httpx
from opentelemetry import trace

import tokencache

from ._forward import MAX_BACKEND_CONNECTIONS, BackendSender, Forwarder
from ._handler import READY_BYTES, CacheHandler
from ._http_request import ListenerLimits
from ._http_server import Listener
from ._loader import BackendLoader
from ._metrics import ProxyMetrics
from ._policy import CachePolicy

__all__ = ["ProxyApp"]

RouteSpec = str | re.Pattern[str] | Sequence[str | re.Pattern[str]] | None


def _routes(spec: RouteSpec) -> tuple[re.Pattern[str], ...]:
    if spec is None:
        return ()
    items = [spec] if isinstance(spec, str | re.Pattern) else list(spec)
    return tuple(r if isinstance(r, re.Pattern) else re.compile(r) for r in items if r)


def _backend_client(timeout: float, *, keepalive: int = 64) -> httpx.AsyncClient:
    # No environment proxies, no redirects followed (the client sees them), and a cookie jar that
    # accepts nothing: backend Set-Cookie headers belong to the client, not to this process.
    # keepalive=0 makes the client for retries: every request on a fresh connection.
    jar = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(
        timeout=timeout,
        trust_env=False,
        follow_redirects=False,
        cookies=jar,
        limits=httpx.Limits(
            max_connections=MAX_BACKEND_CONNECTIONS, max_keepalive_connections=keepalive
        ),
    )


class ProxyApp:
    """A caching reverse proxy in front of `backend_url`, one per process.

    `restrict_methods` and `route_regexp` (any match; none = every route) select what is cached;
    freshness is the backend's (RFC 9111); responses that say nothing live `cache_ttl` seconds
    (2xx) or `cache_error_ttl` (other heuristically cacheable statuses), or every storable
    response does with `ttl_override`; bodies above `max_body_bytes` pass uncached; with
    `stale_if_error` > 0 an entry stale less than that long is served (marked stale) when the
    backend fails. `targeted_field` names the CDN-Cache-Control field this cache obeys first;
    `honor_request_directives` makes clients' Cache-Control count (as revalidations, never
    bypasses); `purge_token` enables ``PURGE`` with ``Authorization: Bearer <token>``. Requests carrying ``Authorization`` or
    ``Cookie`` are forwarded uncached unless `allow_auth_caching`. `backend_auth` (e.g. the
    plugin's OAuth2 auth) is applied to every backend request.
    """

    def __init__(
        self,
        *,
        backend_url: str,
        backend_timeout: float,
        cache_ttl: float,
        cache_error_ttl: float,
        restrict_methods: Sequence[str],
        route_regexp: RouteSpec,
        max_body_bytes: int,
        stale_if_error: float,
        allow_auth_caching: bool = False,
        ttl_override: bool = False,
        targeted_field: str = "CDN-Cache-Control",
        honor_request_directives: bool = True,
        purge_token: str = "",
        workspace: tokencache.Workspace,
        group_bytes: int,
        hot_fraction: float = 0.125,
        backend_client: httpx.AsyncClient | None = None,
        backend_auth: httpx.Auth | None = None,
        metrics: ProxyMetrics,
        tracer: trace.Tracer | None = None,
        trace_client_sampled_hits: bool = False,
        logger: logging.Logger | None = None,
        clock: tokencache.Clock | None = None,
        limits: ListenerLimits | None = None,
        group_name: str = "http",
    ) -> None:
        self.policy = CachePolicy(
            methods=frozenset(m.upper() for m in restrict_methods),
            routes=_routes(route_regexp),
            cache_ttl=cache_ttl,
            error_ttl=cache_error_ttl,
            max_body_bytes=max_body_bytes,
            allow_auth_caching=allow_auth_caching,
            ttl_override=ttl_override,
            targeted_field=targeted_field.strip().lower().encode("ascii"),
            honor_request_directives=honor_request_directives,
            stale_if_error=stale_if_error,
        )
        self.metrics = metrics
        self.logger = logger or logging.getLogger("proxy")
        peer_timeout = workspace.peer_timeout
        if workspace.self_url and peer_timeout < backend_timeout:
            # A peer fetch that times out is loaded again locally (engine invariant 3): with a
            # backend slower than the peer timeout, one miss becomes two backend requests.
            self.logger.warning(
                "peer timeout is shorter than the backend timeout",
                extra={"peer_timeout": peer_timeout, "backend_timeout": backend_timeout},
            )
        self._own_client = backend_client is None
        self._client = backend_client or _backend_client(backend_timeout)
        self._fresh_client = _backend_client(backend_timeout, keepalive=0)
        sender = BackendSender(
            client=self._client,
            fresh_client=self._fresh_client,
            timeout=backend_timeout,
            auth=backend_auth,
            metrics=metrics,
        )
        forwarder = Forwarder(
            sender=sender, backend_url=backend_url, metrics=metrics, logger=self.logger
        )
        self.handler = CacheHandler(
            policy=self.policy,
            forwarder=forwarder,
            metrics=metrics,
            logger=self.logger,
            tracer=tracer,
            trace_client_sampled_hits=trace_client_sampled_hits,
            now=clock.now if clock is not None else time.perf_counter,
            purge_token=purge_token.encode("utf-8") if purge_token else None,
            # Ready hit bytes: a quarter of the group's size on top of it (each holds a response
            # and keeps the value it came from alive), so a working set that fits the group
            # mostly fits there too.
            ready_bytes=max(READY_BYTES, group_bytes // 4),
        )
        loader = BackendLoader(
            sender=sender,
            backend_url=backend_url,
            policy=self.policy,
            metrics=metrics,
            logger=self.logger,
        )
        # Expired entries stay readable (peek_stale) this long for stale-if-error.
        self.group = workspace.new_group(
            group_name,
            max_bytes=group_bytes,
            loader=loader,
            stale_window=stale_if_error,
            hot_fraction=hot_fraction,
        )
        loader.group = self.group
        self.handler.group = self.group
        self.listener = Listener(self.handler, limits, self.logger, metrics)
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> tuple[str, int]:
        """Listen on host:port (0 = a free port); return the bound (host, port).

        ``reuse_port``: several worker processes share the port (``SO_REUSEPORT``).
        """
        self.address = await self.listener.start(host, port, reuse_port=reuse_port)
        return self.address

    @property
    def in_flight(self) -> int:
        """Requests being answered by a task right now (misses and forwards; hits take no time)."""
        return self.listener.in_flight

    def begin_drain(self) -> None:
        """Stop keeping connections alive: answers say ``Connection: close``; idle ones close."""
        self.listener.begin_drain()

    async def wait_idle(self, timeout: float) -> bool:  # noqa: ASYNC109 - the contract's API
        """Wait until nothing is in flight; False when `timeout` seconds passed first."""
        return await self.listener.wait_idle(timeout)

    async def close(self) -> None:
        """Close the listener and every connection, and the backend client if this app made it."""
        await self.listener.close()
        if self._own_client:
            await self._client.aclose()
        await self._fresh_client.aclose()
