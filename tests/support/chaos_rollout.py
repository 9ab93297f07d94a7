"""The rollout scenario of issue 12: a rolling restart must not reload what the cluster holds.

Three real proxies with static peers in front of a counting backend. Every key is first loaded
once (spread over the nodes); then, under steady load spread over the nodes in rotation, nodes
are restarted one after the other as an operator's rollout does it: out of rotation, SIGTERM,
wait for the exit, start, back in rotation when /ready. The figure is how many keys the backend
had to load again: each node hands its keys to their new owners when it leaves, and a key's new
owner (or a returning node) asks the previous owner before it loads.

Bounded: requests and seconds; every process is stopped by PID in ``finally``.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.chaos_figures import Report
from tests.support.chaos_load import Targets, metric_value, run_load, scrape
from tests.support.proxy_cluster import BackendProcess, ProxyCluster, ProxyNode

if TYPE_CHECKING:
    from tests.test_proxy_e2e_kube import KubeCluster

__all__ = ["measure_kube_rollout", "measure_rollout", "rollout", "rollout_kube", "wait_full_rings"]

_ROUTING_GRACE = 0.1  # what an endpoints controller or a preStop pause gives a pod
_RING_DEADLINE = 20.0


async def wait_full_rings(nodes: list[ProxyNode], size: int) -> None:
    """Until every node's ring has ``size`` peers (health checks settle after a start)."""
    deadline = time.monotonic() + _RING_DEADLINE
    while time.monotonic() < deadline:
        counts = []
        for node in nodes:
            try:
                text = await asyncio.to_thread(scrape, node.metrics_url, 2.0)
            except OSError:
                counts.append(0.0)
                continue
            counts.append(metric_value(text, "tokencache_ring_peers"))
        if all(c == size for c in counts):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"rings did not settle at {size} peers")


StopHook = Callable[[int], Awaitable[None]]


async def _no_hook(index: int) -> None:
    return None


async def measure_rollout(
    report: Report,
    nodes: Sequence[ProxyNode],
    backend: BackendProcess,
    paths: Sequence[str],
    *,
    restarts: int,
    gap: float,
    duration: float,
    max_requests: int,
    before_stop: StopHook = _no_hook,
    after_start: StopHook = _no_hook,
) -> None:
    """Warm every path once, then restart ``restarts`` nodes one after the other under load and
    add the figures to ``report``. ``before_stop``/``after_start`` let a harness tell its
    orchestrator (a pod no longer Ready, Ready again)."""
    exit_codes: list[int] = []
    timeline: list[str] = []
    warm = Targets([n.url for n in nodes], paths)
    warmed = await run_load(warm, duration=60.0, max_requests=len(paths), concurrency=8)
    before = dict(backend.stats()["by_target"])
    targets = Targets([n.url for n in nodes], paths)
    stop = asyncio.Event()
    begin = time.monotonic()

    async def orchestrate() -> None:
        try:
            await asyncio.sleep(gap)
            for i in range(restarts):
                node = nodes[i]
                targets.take_out(i)
                await before_stop(i)
                await asyncio.sleep(_ROUTING_GRACE)
                timeline.append(f"n{i} term@{time.monotonic() - begin:.1f}")
                exit_codes.append(await asyncio.to_thread(node.stop, signal.SIGTERM))
                node.start()
                await asyncio.to_thread(node.wait_ready)
                await after_start(i)
                targets.put_back(i)
                timeline.append(f"n{i} ready@{time.monotonic() - begin:.1f}")
                await asyncio.sleep(gap)
        finally:
            stop.set()

    outcomes, _ = await asyncio.gather(
        run_load(targets, duration=duration, max_requests=max_requests, stop=stop),
        orchestrate(),
    )
    after: dict[str, int] = backend.stats()["by_target"]
    first = {p: int(before.get(p, 0)) for p in paths}
    again = {p: int(after.get(p, 0)) - first[p] for p in paths}
    reloaded = sorted(p for p, n in again.items() if n > 0)
    errors = [o for o in outcomes + warmed if not o.ok]
    limit = len(paths) // 100
    report.add("requests sent", len(outcomes))
    report.add("keys loaded once before the rollout", sum(1 for n in first.values() if n == 1))
    report.add("restarts completed", len(exit_codes), str(restarts), len(exit_codes) == restarts)
    report.add(
        "clean exit codes", str(exit_codes), str([0] * restarts), exit_codes == [0] * restarts
    )
    report.add("client errors", len(errors), "0", not errors)
    report.add(
        "keys loaded again during the rollout",
        len(reloaded),
        f"<= {limit} (1 %)",
        len(reloaded) <= limit,
        " ".join(p.rsplit("/", 1)[-1] for p in reloaded[:6]),
    )
    report.add("extra backend loads", sum(again.values()))
    report.add("timeline", " ".join(timeline))


async def rollout(
    workdir: Path,
    *,
    keys: int = 300,
    restarts: int = 2,
    duration: float = 120.0,
    max_requests: int = 100_000,
    gap: float = 1.0,
) -> Report:
    """Static peers: restart ``restarts`` of three nodes one after the other under load."""
    report = Report("2b rollout (issue 12)", f"keys={keys} restarts={restarts} gap={gap}s")
    run = uuid.uuid4().hex[:8]
    paths = [f"/o/{run}/{i}" for i in range(keys)]
    backend = BackendProcess(workdir)
    cluster = ProxyCluster(3, "", workdir, env={"CACHE_TTL": "600s", "SHUTDOWN_TIMEOUT": "5s"})
    try:
        backend.start()
        for node in cluster.nodes:
            node.env["BACKEND_URL"] = backend.url
        cluster.start()
        await wait_full_rings(cluster.nodes, 3)
        await measure_rollout(
            report,
            cluster.nodes,
            backend,
            paths,
            restarts=restarts,
            gap=gap,
            duration=duration,
            max_requests=max_requests,
        )
    finally:
        cluster.stop()
        backend.stop()
    return report


async def measure_kube_rollout(
    c: KubeCluster, report: Report, *, keys: int, restarts: int, gap: float
) -> None:
    """The same measurement on pods found through (fake) Kubernetes discovery: a restarted pod
    stops being Ready before its SIGTERM and is Ready again once it answers /ready."""
    for node in c.nodes:
        c.wait(node.ready, f"proxy {node.index} ready")
    await wait_full_rings(c.nodes, 3)
    run = uuid.uuid4().hex[:8]
    paths = [f"/ko/{run}/{i}" for i in range(keys)]

    async def not_ready(index: int) -> None:
        c.fake.set_ready(c.nodes[index].pod_name, False)  # terminating: out of the endpoints

    async def ready_again(index: int) -> None:
        c.fake.set_ready(c.nodes[index].pod_name, True)
        await wait_full_rings(c.nodes, 3)

    await measure_rollout(
        report,
        c.nodes,
        c.backend,
        paths,
        restarts=restarts,
        gap=gap,
        duration=120.0,
        max_requests=100_000,
        before_stop=not_ready,
        after_start=ready_again,
    )


async def rollout_kube(*, keys: int = 300, restarts: int = 2, gap: float = 1.0) -> Report:
    """Kubernetes discovery: restart ``restarts`` of three pods one after the other under load
    (needs root for the pods' mount namespaces, like scenario 3)."""
    from tests.test_proxy_e2e_kube import running_kube_cluster

    report = Report(
        "2k rollout, kubernetes (issue 12)", f"keys={keys} restarts={restarts} gap={gap}s"
    )
    with running_kube_cluster() as c:
        await measure_kube_rollout(c, report, keys=keys, restarts=restarts, gap=gap)
    return report
