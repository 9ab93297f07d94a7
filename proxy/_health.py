"""Liveness, readiness and the Prometheus scrape endpoint (aiohttp, off the hit path).

Liveness and readiness are different questions (kubecache answered OK to both, always):

- liveness (``HEALTH_PATH``): the event loop runs and answers. 200 ``ok`` from a handler on the loop,
  nothing else checked, so a slow backend or a lost peer never gets the pod killed.
- readiness (``READY_PATH``): 200 ``ready`` only when the proxy has started, knows its peers and is
  not draining; otherwise 503 with the reason as text, e.g. ``draining``.

`Readiness` is the one object that holds those three facts; the service flips them, the handlers
only read them.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclasses.dataclass
class Readiness:
    """What readiness depends on; the service sets the fields, the handler reads them."""

    started: bool = False  # every listener is up
    peers_known: bool = False  # the ring holds the peer list (static, kubernetes or single node)
    draining: bool = False  # SIGTERM seen: leave the load balancer first

    def reason(self) -> str | None:
        """Why this node is not ready, or None when it is."""
        if self.draining:
            return "draining"
        if not self.started:
            return "starting"
        if not self.peers_known:
            return "waiting for peers"
        return None


def build_app(
    readiness: Readiness,
    *,
    health_path: str | None = None,
    ready_path: str | None = None,
    metrics_path: str | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """An app serving whichever of liveness, readiness and metrics are given a path."""

    async def live(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def ready(_: web.Request) -> web.Response:
        why = readiness.reason()
        if why is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {why}\n")

    async def metrics(_: web.Request) -> web.Response:
        assert registry is not None
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    if health_path:
        app.router.add_get(health_path, live)
    if ready_path:
        app.router.add_get(ready_path, ready)
    if metrics_path and registry is not None:
        app.router.add_get(metrics_path, metrics)
    return app


class AppServer:
    """Runs one aiohttp app on one address; `close` stops it."""

    def __init__(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self, host: str, port: int) -> None:
        """Bind and start serving."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()

    async def start_unix(self, path: str) -> None:
        """Serve on a Unix socket (a worker's health and metrics, read by its supervisor)."""
        await self._runner.setup()
        site = web.UnixSite(self._runner, path)
        await site.start()

    async def close(self) -> None:
        """Stop accepting and close open connections."""
        await self._runner.cleanup()
