"""The proxy process: wires settings into the engine, the plugin, the data path and the side servers.

Start-up order (each step only after the previous one succeeded; a failure stops what was started):

1. tracing (an SDK TracerProvider, or none with TRACE=false), installed as the global provider so
   the engine, the plugin and httpx instrumentation all report into one trace;
2. the `tokencache.Workspace` (self URL, peer secret) and its peer server on GROUPCACHE_PORT
   (not in single-node mode: there is no one to talk to);
3. peer selection: static list (with health checks: a peer that stops answering pings leaves the
   ring and rejoins when it answers), Kubernetes discovery, or single node;
4. the OAuth2 `httpx.Auth` when OAUTH2_TOKEN_URL is set (its ``oauth2`` group lives in the same
   Workspace, so the cluster fetches one token per TTL); bad OAuth2 settings (a key that does not
   parse, a certificate that does not match its key) stop the start as a `ConfigError`, and with
   OAUTH2_CHECK_AT_START a token is fetched here: none (any plugin ``TokenError``) stops the start
   the same way, with one line naming the token endpoint and the error class;
5. `ProxyApp` on LISTEN_ADDR, then the health and metrics servers; readiness turns true last.

Shutdown (SIGTERM/SIGINT) is the reverse and keeps invariant "no new work lands on a leaving node":
readiness goes false at once (the load balancer stops sending), the node leaves the ring: it
tells every peer (they drop it from their rings at once, static peers too) and hands its main-cache
entries to their new owners (bounded by HANDOFF_SECONDS and the group size), so a rollout does not
reload what the cluster already had. Discovery stops, the data path drains for SHUTDOWN_TIMEOUT. Only
then do the health/metrics servers, the peer server and the data path close, in that order. Peers
may ask this node for keys until they see it leave; the peer server stays up through the drain and
closes before the backend client does, so a peer gets either a real answer or a refused connection
(and then loads the key itself, engine invariant 3), never a load that failed on a closed client.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import resource
import signal
import socket
import ssl
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

import tokencache
from tokencache.plugin import (
    ClientCredentialsAuth,
    ConfigurationError,
    TokenError,
    TokenMetricsCollector,
)

from ._app import ProxyApp
from ._config import Address, Settings
from ._errors import ConfigError
from ._gc import collect_periodically, restore
from ._gc import settle as settle_gc
from ._health import AppServer, Readiness, build_app
from ._http_request import ListenerLimits
from ._logging import configure_logging
from ._metrics import DEFAULT_BUCKETS, ProxyMetrics
from ._push_metrics import PushExporter
from ._tracing import build_propagator, build_tracer_provider

_log = logging.getLogger("proxy")
PEER_TIMEOUT_MARGIN = 1.0  # seconds a peer's answer may take beyond BACKEND_TIMEOUT
HEALTH_INTERVAL = 1.0  # seconds between health pings of static peers
HEALTH_FAILURES = 2  # failed pings in a row before a static peer leaves the ring
HANDOFF_SECONDS = 5.0  # at most this long (and SHUTDOWN_TIMEOUT) for leave + hand-off
ORPHAN_CHECK_INTERVAL = 1.0  # seconds between a worker's checks that its supervisor lives


class PeerSource(Protocol):
    """What the service needs from a peer discovery source (`KubernetesPeerSource` fits)."""

    async def start(self) -> None:
        """Begin watching; call `on_peers` with every new peer list."""

    async def stop(self) -> None:
        """Stop watching (idempotent)."""


# Builds a source from the callback that receives peer lists (tests pass a fake).
PeerSourceFactory = Callable[[Callable[[list[str]], None]], PeerSource]


class ProxyService:
    """One proxy process's parts; `start`, then `shutdown` once (after a signal, say)."""

    def __init__(
        self,
        settings: Settings,
        *,
        install_tracer: bool = True,
        peer_source: PeerSourceFactory | None = None,
    ) -> None:
        self.settings = settings
        self.readiness = Readiness()
        self.metrics = ProxyMetrics(
            namespace=settings.metrics_namespace,
            buckets=settings.metrics_buckets_latency_http or DEFAULT_BUCKETS,
            uri_limit=settings.metrics_uri_limit,
        )
        self.registry = CollectorRegistry()
        self._install_tracer = install_tracer
        self._peer_source = peer_source or self._kubernetes_source
        self._provider: TracerProvider | None = None
        self._ws: tokencache.Workspace | None = None
        self._app: ProxyApp | None = None
        self._auth: ClientCredentialsAuth | None = None
        self._discovery: PeerSource | None = None
        self._servers: list[AppServer] = []
        self._pushers: list[PushExporter] = []
        self._collector: asyncio.Task[None] | None = None
        self._gc_before: tuple[int, int, int] | None = None
        self._closed = False

    @property
    def workspace(self) -> tokencache.Workspace:
        """The engine workspace (after `start`)."""
        assert self._ws is not None, "start() first"
        return self._ws

    async def start(self) -> None:
        """Bring every part up; on failure, close what was started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self._close_all()
            raise

    async def _start(self) -> None:
        s = self.settings
        self._provider = build_tracer_provider(s.trace, s.otel)
        if self._install_tracer:
            # Process-wide like kubecache's otel.SetTextMapPropagator; TRACE=false installs none.
            propagate.set_global_textmap(build_propagator(s.trace, s.otel))
            if self._provider is not None:
                trace.set_tracer_provider(self._provider)
        single = s.peer_discovery == "none"
        ssl_server, ssl_client = _peer_tls(s)
        ws = tokencache.Workspace(
            self_url="" if single else s.groupcache_self_url,
            peer_secret=s.groupcache_peer_secret or None,
            # Two clocks: a peer silent for the liveness timeout is gone (seconds); an owner that
            # keeps sending heartbeats may take as long as its backend request (max load time),
            # so a slow backend is never loaded a second time by an impatient caller.
            peer_timeout=s.backend_timeout + PEER_TIMEOUT_MARGIN,
            peer_liveness_timeout=s.groupcache_liveness_timeout,
            ssl_server=ssl_server,
            ssl_client=ssl_client,
            # TRACE=false: the engine's own spans are off too (not left to the global provider).
            tracer_provider=self._provider or trace.NoOpTracerProvider(),
            purge_interval=(
                0.0
                if s.groupcache_disable_purge_expired
                else s.groupcache_expired_keys_eviction_interval
            ),
        )
        self._ws = ws
        ws.set_ready(False)  # peers put us on their rings once the groups below exist
        if single:
            await ws.start()  # background purge of expired entries; no peer port to serve
        else:
            # serve() also logs the one warning when GROUPCACHE_PEER_SECRET is unset.
            await ws.serve(peer_bind_host(s), s.groupcache_port.port)
        await self._start_peers(ws)
        if s.oauth2_token_url:
            self._auth = build_backend_auth(s, ws)
            if s.oauth2_check_at_start:
                await self._check_token(self._auth)
        self._app = ProxyApp(
            backend_url=s.backend_url,
            backend_timeout=s.backend_timeout,
            cache_ttl=s.cache_ttl,
            cache_error_ttl=s.cache_error_ttl,
            restrict_methods=s.restrict_method,
            route_regexp=s.restrict_route_regexp,
            max_body_bytes=s.cache_max_body_bytes,
            stale_if_error=s.cache_stale_if_error,
            allow_auth_caching=s.cache_allow_authorized,
            ttl_override=s.cache_ttl_override,
            targeted_field=s.cache_targeted_field,
            honor_request_directives=s.cache_request_directives == "revalidate",
            purge_token=s.cache_purge_token,
            workspace=ws,
            group_bytes=s.groupcache_size_bytes,
            hot_fraction=s.groupcache_hot_fraction,
            backend_auth=self._auth,
            metrics=self.metrics,
            tracer=None if self._provider is None else self._provider.get_tracer("proxy"),
            trace_client_sampled_hits=s.trace_client_sampled_hits,
            logger=logging.getLogger("proxy.app"),
            limits=ListenerLimits(
                max_body_bytes=s.max_request_body_bytes,
                write_timeout=s.write_timeout,
                max_connections=s.max_client_connections or _connection_cap(),
            ),
            group_name=s.groupcache_group_name,
        )
        await self._app.start(
            s.listen_addr.bind_host, s.listen_addr.port, reuse_port=s.proxy_workers > 1
        )
        ws.set_ready(True)
        self._register_metrics(ws)
        self._start_pushers(ws)
        await self._start_side_servers()
        self._gc_before = settle_gc()  # (see proxy._gc)
        self._collector = asyncio.get_running_loop().create_task(collect_periodically())
        self.readiness.started = True
        _log.info(
            "proxy started",
            extra={
                "listen": str(s.listen_addr),
                "backend": _safe_url(s.backend_url),
                "peer_discovery": s.peer_discovery,
                "self_url": s.groupcache_self_url if not single else "",
                "oauth2": bool(s.oauth2_token_url),
                "tracing": self._provider is not None,
            },
        )

    async def _check_token(self, auth: ClientCredentialsAuth) -> None:
        """OAUTH2_CHECK_AT_START: one token now, or a `ConfigError` (the process exits 2)."""
        try:
            await auth.atoken()
        except TokenError as exc:
            endpoint = exc.endpoint or _endpoint(self.settings.oauth2_token_url)
            raise ConfigError(
                f"OAUTH2_CHECK_AT_START: no token from {endpoint}: {type(exc).__name__}: {exc}"
            ) from None
        _log.info(
            "OAuth2 token check passed",
            extra={"token_endpoint": _endpoint(self.settings.oauth2_token_url)},
        )

    async def _start_peers(self, ws: tokencache.Workspace) -> None:
        s = self.settings
        if s.peer_discovery == "static":
            ws.set_peers(list(s.groupcache_peers))
            ws.start_health_checks(
                interval=HEALTH_INTERVAL, timeout=HEALTH_INTERVAL, failures=HEALTH_FAILURES
            )
            self.readiness.peers_known = True
        elif s.peer_discovery in ("kubernetes", "ecs"):

            def on_peers(urls: Sequence[str]) -> None:
                if self.readiness.draining:
                    return  # a leaving node keeps itself out of its ring
                ws.set_peers(list(urls))
                self.readiness.peers_known = True

            if s.peer_discovery == "ecs":
                from tokencache.discovery import DiscoveryError

                self._discovery = self._ecs_source(on_peers)
                try:
                    await self._discovery.start()
                except DiscoveryError as exc:
                    raise ConfigError(f"COMPUTE: ecs discovery cannot start: {exc}") from None
            else:
                self._discovery = self._peer_source(on_peers)
                await self._discovery.start()
        else:
            self.readiness.peers_known = True  # single node: the ring is just us

    def _kubernetes_source(self, on_peers: Callable[[list[str]], None]) -> PeerSource:
        from tokencache.discovery import DiscoveryConfigError, KubernetesPeerSource

        s = self.settings
        try:
            source: PeerSource = KubernetesPeerSource(
                on_peers,
                label_selector=s.kubegroup_label_selector,
                # Worker 0's port: every pod's workers are at port .. port + workers - 1.
                peer_port=s.groupcache_port.port - max(s.worker_index, 0),
                workers=s.proxy_workers,
                debounce=s.kubegroup_debounce,
                registry=self.registry if s.prometheus_enable else None,
                # kubegroup's own prefix, as in Go: METRICS_NAMESPACE does not apply.
                metrics_namespace=s.kubegroup_metrics_namespace,
                namespace="default" if s.kubegroup_force_namespace_default else None,
            )
        except DiscoveryConfigError as exc:
            raise ConfigError(f"PEER_DISCOVERY: kubernetes discovery cannot start: {exc}") from None
        return source

    def _ecs_source(self, on_peers: Callable[[list[str]], None]) -> PeerSource:
        from tokencache.discovery import DiscoveryConfigError, EcsPeerSource

        s = self.settings
        endpoint = s.aws_endpoint_url or None

        def client() -> Any:
            try:
                import boto3
            except ImportError:
                raise ConfigError(
                    "COMPUTE: ecs needs boto3 (install the tokencache[aws] extra)"
                ) from None
            return boto3.client("ecs", endpoint_url=endpoint)

        host = s.groupcache_self_url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
        try:
            source: PeerSource = EcsPeerSource(
                on_peers,
                service=s.ecs_task_discovery_service,
                peer_port=s.groupcache_port.port,
                metadata_uri=s.ecs_container_metadata_uri_v4,
                client_factory=client,
                force_single_task=host if s.force_single_task else "",
                registry=self.registry if s.prometheus_enable else None,
                metrics_namespace=s.metrics_namespace,
            )
        except DiscoveryConfigError as exc:
            raise ConfigError(f"COMPUTE: ecs discovery cannot start: {exc}") from None
        return source

    def _register_metrics(self, ws: tokencache.Workspace) -> None:
        s = self.settings
        self.registry.register(tokencache.GroupcacheCollector(ws, namespace=s.metrics_namespace))
        self.registry.register(self.metrics.collector())
        if self._auth is not None:
            caches = [self._auth.token_cache]
            self.registry.register(TokenMetricsCollector(caches, namespace=s.metrics_namespace))
        # Go's process collector has no namespace either: process_* keeps its standard names.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def _start_pushers(self, ws: tokencache.Workspace) -> None:
        """kubecache's pushed metrics: DogStatsD (on by default there, and here) and EMF."""
        s = self.settings

        def groups() -> list[tokencache.Group]:
            return sorted(ws.groups.values(), key=lambda g: g.name)

        if s.dogstatsd_enable:
            tags = (f"pod_name:{socket.gethostname()}", "service:kubecache", *s.dd_tags.split())
            target = (s.dd_agent_host, s.dd_agent_port, s.dogstatsd_client_ttl, tags)
            self._pushers.append(
                PushExporter(
                    groups,
                    interval=s.dogstatsd_export_interval,
                    dogstatsd=(*target, s.dogstatsd_debug),
                    discovery=self._discovery_counts,
                )
            )
        if s.emf_enable:
            # groupcache_awsemf's fixed 20 s; EMF lines go to stdout beside the JSON logs.
            self._pushers.append(PushExporter(groups, interval=20.0, emf_out=sys.stdout))
        for pusher in self._pushers:
            pusher.start()

    def _discovery_counts(self) -> tuple[int, int] | None:
        """(peer updates so far, pods or tasks found) of the discovery source, None without one:
        kubegroup's and ecs-task-discovery's ``events`` and ``peers``."""
        source = self._discovery
        if source is None:
            return None
        from tokencache.discovery import EcsPeerSource, KubernetesPeerSource

        if isinstance(source, KubernetesPeerSource):
            stats = source.stats
            return stats.changes, stats.pods
        if isinstance(source, EcsPeerSource):
            return source.updates, source.tasks_found
        return None

    async def _start_side_servers(self) -> None:
        s = self.settings
        if s.worker_control:
            # A worker: liveness, readiness and metrics for its supervisor only, on a Unix
            # socket; the supervisor serves HEALTH_ADDR and METRICS_ADDR for the pod.
            control = build_app(
                self.readiness,
                health_path=s.health_path,
                ready_path=s.ready_path,
                metrics_path=s.metrics_path,
                registry=self.registry,
            )
            server = AppServer(control)
            self._servers.append(server)
            await server.start_unix(s.worker_control)
            return
        shared = s.metrics_addr == s.health_addr
        health = build_app(
            self.readiness,
            health_path=s.health_path,
            ready_path=s.ready_path,
            metrics_path=s.metrics_path if shared and s.prometheus_enable else None,
            registry=self.registry,
        )
        plan: list[tuple[Address, Any]] = [(s.health_addr, health)]
        if not shared and s.prometheus_enable:
            metrics = build_app(self.readiness, metrics_path=s.metrics_path, registry=self.registry)
            plan.append((s.metrics_addr, metrics))
        for addr, app in plan:
            server = AppServer(app)
            self._servers.append(server)
            await server.start(addr.bind_host, addr.port)

    async def shutdown(self) -> bool:
        """Drain and stop; True when every in-flight request finished within SHUTDOWN_TIMEOUT."""
        s = self.settings
        self.readiness.draining = True
        _log.info("shutting down: draining", extra={"timeout_s": s.shutdown_timeout})
        ws = self._ws
        if ws is not None and s.peer_discovery != "none":
            try:
                await ws.leave(
                    within=min(HANDOFF_SECONDS, s.shutdown_timeout),
                    max_bytes=s.groupcache_size_bytes,
                )
            except Exception:  # noqa: BLE001 - a failed hand-off must not stop the drain
                _log.exception("leave failed")
        if self._discovery is not None:
            await self._discovery.stop()
        idle = True
        if self._app is not None:
            self._app.begin_drain()
            idle = await self._app.wait_idle(s.shutdown_timeout)
            if not idle:
                _log.warning(
                    "shutdown timeout: closing with requests in flight",
                    extra={"in_flight": self._app.in_flight},
                )
        await self._close_all()
        _log.info("stopped")
        return idle

    async def _close_all(self) -> None:
        """Close whatever was started, once, in an order that never serves half-closed loads."""
        if self._closed:
            return
        self._closed = True
        if self._collector is not None:
            self._collector.cancel()
        if self._gc_before is not None:
            restore(self._gc_before)
        steps: list[Callable[[], Any]] = [s.close for s in reversed(self._servers)]
        steps.extend(p.stop for p in self._pushers)
        if self._discovery is not None:
            steps.append(self._discovery.stop)
        # The peer port goes before the data path: a peer asking this node for a key must get
        # either an answer loaded with a working backend client or a refused connection (then it
        # loads the key itself), never a load failure from a client that is already closed.
        if self._ws is not None:
            steps.append(self._ws.close)
        if self._app is not None:
            steps.append(self._app.close)
        if self._auth is not None:
            steps.append(self._auth.aclose)
        if self._provider is not None:
            steps.append(self._provider.shutdown)
        for close in steps:
            try:
                await _maybe_await(close())
            except Exception:  # noqa: BLE001 - one failing part must not keep the rest open
                _log.exception("error while closing")


def build_backend_auth(s: Settings, ws: tokencache.Workspace) -> ClientCredentialsAuth:
    """The plugin's auth for backend requests from the OAUTH2_* settings; the plugin's own
    checks (key, alg, certificate files) become a `ConfigError` naming the setting group."""
    private = s.oauth2_auth_method == "private_key_jwt"
    try:
        return ClientCredentialsAuth(
            token_url=s.oauth2_token_url,
            client_id=s.oauth2_client_id,
            # private_key_jwt signs with the key; the plugin takes it where the secret goes.
            client_secret=s.oauth2_private_key if private else s.oauth2_client_secret,
            scope=s.oauth2_scope or None,
            auth_method=s.oauth2_auth_method,
            workspace=ws,
            signing_alg=s.oauth2_signing_alg or None,
            kid=s.oauth2_key_id or None,
            ca_file=s.oauth2_ca_file or None,
            client_cert=s.oauth2_client_cert or None,
            client_key=s.oauth2_client_key or None,
        )
    except ConfigurationError as exc:
        # The plugin's messages name the client and the problem, never the secret or key.
        raise ConfigError(f"OAUTH2_AUTH_METHOD={s.oauth2_auth_method}: {exc}") from None


def _endpoint(url: str) -> str:
    """A token endpoint for a log line: scheme, host, port and path (no userinfo, no query)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def run(settings: Settings) -> int:
    """Run the proxy until SIGTERM or SIGINT; the process exit code (0 after a clean drain)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = ProxyService(settings)
    try:
        await service.start()
    except OSError as exc:
        _log.error("cannot start: %s", exc)  # bind errors name an address, never a secret
        return 1
    if settings.worker_index >= 0:
        watch = loop.create_task(_stop_when_orphaned(os.getppid(), stop))
    await stop.wait()
    if settings.worker_index >= 0:
        watch.cancel()
    await service.shutdown()
    return 0


def _peer_tls(s: Settings) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """Mutual-TLS contexts for the peer port from GROUPCACHE_TLS_*, or none."""
    if not s.groupcache_tls_cert:
        return None, None
    try:
        return tokencache.peer_tls_contexts(
            s.groupcache_tls_cert, s.groupcache_tls_key, s.groupcache_tls_ca
        )
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(
            f"GROUPCACHE_TLS_CERT: cannot load the peer TLS files: {reason}"
        ) from None


async def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (SIGKILL, OOM) drains and exits instead of serving on."""
    while os.getppid() == parent:  # noqa: ASYNC110 - a parent's death sets no event here
        await asyncio.sleep(ORPHAN_CHECK_INTERVAL)
    _log.warning("supervisor gone: shutting down")
    stop.set()


def _safe_url(url: str) -> str:
    """The URL without userinfo, for a log line."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def settings_help() -> str:
    """Every setting with its default and help, one per line (generated from `Settings`)."""
    rows = Settings.help_rows()
    width = max(len(name) for name, _, _ in rows)
    lines = ["settings (environment variables):"]
    for name, default, text in rows:
        shown = default if default else '""'
        lines.append(f"  {name:<{width}}  {text} (default: {shown})")
    lines.append("")
    lines.append("Any setting may be a reference resolved at start-up:")
    lines.append("  aws-secretsmanager:<region>:<name>[:<json field>]")
    lines.append("  aws-parameterstore:<region>:<name>[:<json field>]   file:<path>")
    lines.append("  aws-s3:<region>:<bucket>,<key>[:<json field>]")
    lines.append(
        "  aws-dynamodb:<region>:<table>,<key name>,<key value>,<attribute>[:<json field>]"
    )
    lines.append("  aws-lambda:<region>:<function>,<key name>,<key value>,<field>[:<json field>]")
    lines.append(
        "  #http::<method>,<scheme>,<host>,<port>,<path>,<type>,<body b64>,<auth>[:<field>]"
    )
    lines.append("Tracing also reads the standard OTEL_* variables (OTEL_TRACES_EXPORTER, ...).")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="tokencache-proxy",
        description="A caching reverse proxy whose replicas share one cache (configured by "
        "environment variables; kubecache-compatible names).",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"tokencache-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        debug=settings.debug_log,
        secrets=settings.secret_values(),
        # KUBEGROUP_DEBUG=false keeps discovery at INFO even with DEBUG_LOG=true (as in Go).
        quiet=() if settings.kubegroup_debug else ("tokencache.discovery",),
    )
    entry = run
    if settings.proxy_workers > 1 and settings.worker_index < 0:
        from ._supervisor import supervise

        entry = supervise
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
            return asyncio.run(entry(settings))
        return uvloop.run(entry(settings))
    except ConfigError as exc:  # found while starting (e.g. an OTEL_* value)
        print(f"tokencache-proxy: configuration error: {exc}", file=sys.stderr)
        return 2


_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def peer_bind_host(s: Settings) -> str:
    """Where the peer port listens: GROUPCACHE_PORT's host, but loopback without a peer secret.

    The settings allow no secret only when this process is its own only peer, or its peers are
    the pod's workers on loopback; nobody else has a reason to reach the port then, and anyone who
    could would be unauthenticated: able to PUT a response into the cache (served to every
    client as a hit), REMOVE keys or make this process LEAVE its ring.
    """
    host = s.groupcache_port.bind_host
    if s.groupcache_peer_secret or host in _LOOPBACK:
        return host
    return "127.0.0.1"


def _connection_cap() -> int:
    """Three quarters of this process's file-descriptor limit: the rest stays for backend,
    peer, token and metrics connections, so a flood of clients cannot starve them."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(64, soft * 3 // 4)
