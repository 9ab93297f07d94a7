"""What the supervisor answers for the pod: liveness, readiness and every worker's metrics.

Readiness: true once every worker has been ready at least once (the pod started whole) and, after
that, while at least one worker answers ready and the pod is not draining. One worker being
restarted leaves the pod in the Service: the kernel only hands new connections to listening
sockets, so the others take its share, and the ring does not change.

Metrics: a scrape asks every worker for its exposition over its Unix socket (concurrently, bounded
by a timeout), adds a ``worker`` label to every sample and merges families of the same name, then
appends the supervisor's own families. A worker that does not answer in time is left out of that
scrape (``proxy_worker_up`` says which).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from ._config import Address, Settings

ASK_TIMEOUT = 1.0  # seconds a worker gets to answer a readiness check
SCRAPE_TIMEOUT = 3.0  # seconds a worker gets to answer a metrics scrape


@dataclass
class WorkerState:
    """What the supervisor knows of one worker."""

    index: int
    control: str  # the worker's Unix socket
    pid: int = 0
    ready: bool = False  # answered ready since it last started
    ready_once: bool = False
    restarts: int = 0


def merge_expositions(texts: list[tuple[str, str]]) -> list[Metric]:
    """Families from each ``(worker, exposition text)``, each sample labelled ``worker``."""
    families: dict[str, Metric] = {}
    for worker, text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            merged.samples.extend(
                sample._replace(labels={**sample.labels, "worker": worker})
                for sample in family.samples
            )
    return list(families.values())


class _Static:
    """A collector that yields families built beforehand (one scrape's worth)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


class FleetView:
    """The pod as its supervisor sees it; asks workers over their sockets."""

    def __init__(self, workers: list[WorkerState], settings: Settings) -> None:
        self.workers = workers
        self.settings = settings
        self.draining = False
        self.started = False  # every worker has been ready at least once
        self._sessions = {
            w.index: aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=w.control))
            for w in workers
        }
        self._metric_prefix = f"{settings.metrics_namespace}_" if settings.metrics_namespace else ""

    def note_ready(self) -> None:
        """A worker became ready; the pod has started once all have."""
        self.started = self.started or all(w.ready_once for w in self.workers)

    async def _get(self, worker: WorkerState, path: str, limit: float) -> tuple[int, str]:
        session = self._sessions[worker.index]
        async with session.get(
            f"http://worker{path}", timeout=aiohttp.ClientTimeout(total=limit)
        ) as resp:
            return resp.status, await resp.text()

    async def ask_ready(self, worker: WorkerState) -> bool:
        """Whether the worker answers its readiness path with 200 now."""
        try:
            status, _ = await self._get(worker, self.settings.ready_path, ASK_TIMEOUT)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
        return status == 200

    async def reason(self) -> str | None:
        """Why the pod is not ready, or None when it is."""
        if self.draining:
            return "draining"
        if not self.started:
            return "starting"
        answers = await asyncio.gather(*(self.ask_ready(w) for w in self.workers))
        for worker, ready in zip(self.workers, answers, strict=True):
            worker.ready = ready
        return None if any(answers) else "no worker ready"

    async def exposition(self) -> bytes:
        """Every worker's metrics with a ``worker`` label, then the supervisor's."""

        async def scrape(worker: WorkerState) -> tuple[str, str] | None:
            try:
                status, text = await self._get(worker, self.settings.metrics_path, SCRAPE_TIMEOUT)
            except (aiohttp.ClientError, TimeoutError, OSError):
                return None
            return (str(worker.index), text) if status == 200 else None

        scraped = await asyncio.gather(*(scrape(w) for w in self.workers))
        texts = [t for t in scraped if t is not None]
        up = {name for name, _ in texts}
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Static([*merge_expositions(texts), *self._own(up)]))
        return generate_latest(registry)

    def _own(self, up: set[str]) -> list[Metric]:
        p = self._metric_prefix
        count = GaugeMetricFamily(p + "proxy_workers", "Worker processes this pod runs")
        count.add_metric([], len(self.workers))
        alive = GaugeMetricFamily(
            p + "proxy_worker_up", "1 when the worker answered this scrape", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            p + "proxy_worker_restarts",
            "Times the supervisor restarted a worker that exited",
            labels=["worker"],
        )
        for w in self.workers:
            alive.add_metric([str(w.index)], 1.0 if str(w.index) in up else 0.0)
            restarts.add_metric([str(w.index)], w.restarts)
        return [count, alive, restarts]

    async def close(self) -> None:
        """Close the sockets' client sessions."""
        for session in self._sessions.values():
            await session.close()


def build_fleet_app(fleet: FleetView, s: Settings) -> list[tuple[Address, Any]]:
    """The pod's health (and metrics) apps with the addresses they serve on."""

    async def live(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def ready(_: web.Request) -> web.Response:
        why = await fleet.reason()
        if why is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {why}\n")

    async def metrics(_: web.Request) -> web.Response:
        body = await fleet.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    health = web.Application()
    health.router.add_get(s.health_path, live)
    health.router.add_get(s.ready_path, ready)
    if s.metrics_addr == s.health_addr:
        health.router.add_get(s.metrics_path, metrics)
        return [(s.health_addr, health)]
    scrape = web.Application()
    scrape.router.add_get(s.metrics_path, metrics)
    return [(s.health_addr, health), (s.metrics_addr, scrape)]
