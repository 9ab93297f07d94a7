"""Cluster scenarios on loopback: a peer killed under load, a rolling restart, the soak.

Each scenario starts a counting backend and three real proxy processes (static peers, a peer
secret), runs `chaos_load.run_load` against the nodes in service while an orchestrator coroutine
kills or restarts nodes, then reads the backend's per-path counters and the nodes' /metrics and
returns a `Report`. Tests call them with short parameters and assert on the figures; `make chaos`
calls them with long ones and prints the table. Every process is stopped by PID in ``finally``.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import tokencache
from tests.support.chaos_figures import Report
from tests.support.chaos_load import Outcome, Targets, metric_value, rss_kib, run_load, scrape
from tests.support.proxy_cluster import BackendProcess, ProxyCluster, ProxyNode

__all__ = ["owners", "peer_killed", "rolling_restart", "soak"]

_PEER_ERRORS = "groupcache_peer_errors"
_ROUTING_GRACE = 0.1


def owners(peer_urls: Sequence[str], paths: Sequence[str]) -> dict[str, str]:
    """Which peer URL owns each path's ``http`` key (the proxy keys a GET by ``GET <target>``)."""
    ring = tokencache.Workspace("")  # the same defaults (replicas, probes) the proxy uses
    ring.set_peers(peer_urls)
    return {p: ring.owner(f"GET {p}") or "" for p in paths}


def _backend_counts(backend: BackendProcess, paths: Sequence[str]) -> dict[str, int]:
    by_target: dict[str, int] = backend.stats()["by_target"]
    return {p: int(by_target.get(p, 0)) for p in paths}


def _describe(errors: Sequence[Outcome], limit: int = 6) -> str:
    """``node:status-or-error@second`` for the first few failed requests."""
    return " ".join(f"n{o.node}:{o.status or o.error}@{o.started:.1f}" for o in errors[:limit])


def _errors(outcomes: Sequence[Outcome], nodes: set[int]) -> list[Outcome]:
    return [o for o in outcomes if o.node in nodes and not o.ok]


async def _sample_peer_errors(
    nodes: Sequence[ProxyNode], stop: asyncio.Event, samples: list[tuple[float, float]]
) -> None:
    """Every 0.2 s (until ``stop``), the survivors' summed peer-error counter."""
    begin = time.monotonic()
    for _ in range(100_000):  # bounded; ``stop`` ends it long before
        total = 0.0
        for node in nodes:
            try:
                text = await asyncio.to_thread(scrape, node.metrics_url, 2.0)
            except OSError:
                continue
            total += metric_value(text, _PEER_ERRORS, 'group="path"')
        samples.append((time.monotonic() - begin, total))
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
            return
        except TimeoutError:
            pass


async def peer_killed(
    workdir: Path, *, duration: float = 6.0, max_requests: int = 3000, keys: int = 60
) -> Report:
    """Scenario 1: three proxies under steady load; node 2 gets ``kill -9`` at 30 % of the run."""
    report = Report(
        "1 peer killed", f"duration={duration}s max_requests={max_requests} keys={keys}"
    )
    run = uuid.uuid4().hex[:8]
    paths = [f"/k/{run}/{i}" for i in range(keys)]
    backend = BackendProcess(workdir)
    cluster = ProxyCluster(3, "", workdir, env={"CACHE_TTL": "600s", "SHUTDOWN_TIMEOUT": "5s"})
    try:
        backend.start()
        for node in cluster.nodes:
            node.env["BACKEND_URL"] = backend.url
        cluster.start()
        dead = 2
        owned = owners([n.peer_url for n in cluster.nodes], paths)
        dead_keys = {p for p, o in owned.items() if o == cluster.nodes[dead].peer_url}
        targets = Targets([n.url for n in cluster.nodes], paths)
        stop = asyncio.Event()
        samples: list[tuple[float, float]] = []
        killed_at: list[float] = []
        begin = time.monotonic()

        async def orchestrate() -> None:
            await asyncio.sleep(duration * 0.3)  # the load is running; kill mid-run
            targets.take_out(dead)
            await asyncio.to_thread(cluster.nodes[dead].stop, signal.SIGKILL)
            killed_at.append(time.monotonic() - begin)

        survivors = [n for i, n in enumerate(cluster.nodes) if i != dead]
        sampler = asyncio.create_task(_sample_peer_errors(survivors, stop, samples))
        outcomes, _ = await asyncio.gather(
            run_load(targets, duration=duration, max_requests=max_requests), orchestrate()
        )
        stop.set()
        await sampler
        counts = _backend_counts(backend, paths)
    finally:
        cluster.stop()
        backend.stop()
    kill_t = killed_at[0] if killed_at else duration
    survivor_errors = _errors(outcomes, {0, 1})
    dup = {p for p, c in counts.items() if c > 1}
    base = next((v for t, v in samples if t >= kill_t), 0.0)
    after = [(t, v) for t, v in samples if t >= kill_t]
    rising = [t for (t, v), (_, prev) in zip(after[1:], after, strict=False) if v > prev]
    report.add("requests sent", len(outcomes))
    report.add(
        "errors on surviving nodes",
        len(survivor_errors),
        "0",
        not survivor_errors,
        _describe(survivor_errors),
    )
    report.add(
        "failed requests to the killed node (in flight at kill)", len(_errors(outcomes, {2}))
    )
    report.add("keys owned by the killed node", len(dead_keys))
    report.add("keys loaded more than once", len(dup))
    report.add(
        "duplicates only for the killed node's keys",
        str(sorted(dup - dead_keys)[:3] or "yes"),
        "yes",
        dup <= dead_keys,
    )
    report.add(
        "max backend loads of one key",
        max(counts.values(), default=0),
        "<= 3",
        max(counts.values(), default=0) <= 3,
        "owner + each survivor once",
    )
    report.add("keys never loaded", sum(1 for c in counts.values() if c == 0), "0")
    report.add("survivor peer errors after the kill", (after[-1][1] - base) if after else 0.0)
    report.add(
        "last new peer error, s after kill",
        (rising[-1] - kill_t) if rising else 0.0,
        "",
        None,
        "survivors skip the dead node for unreachable_backoff, then health checks (2 failed "
        "pings, about 2 s) take it off every ring",
    )
    return report


async def rolling_restart(
    workdir: Path,
    *,
    duration: float = 30.0,
    max_requests: int = 6000,
    keys: int = 60,
    gap: float = 0.5,
) -> Report:
    """Scenario 2: SIGTERM → drain → start again on the same ports, node by node, under load."""
    report = Report("2 rolling restart", f"max duration={duration}s keys={keys} gap={gap}s")
    run = uuid.uuid4().hex[:8]
    paths = [f"/r/{run}/{i}?delay=0.05" for i in range(keys)]
    backend = BackendProcess(workdir)
    cluster = ProxyCluster(3, "", workdir, env={"CACHE_TTL": "600s", "SHUTDOWN_TIMEOUT": "5s"})
    exit_codes: list[int] = []
    timeline: list[str] = []
    try:
        backend.start()
        for node in cluster.nodes:
            node.env["BACKEND_URL"] = backend.url
        cluster.start()
        targets = Targets([n.url for n in cluster.nodes], paths)
        stop = asyncio.Event()
        begin = time.monotonic()

        async def orchestrate() -> None:
            try:
                await asyncio.sleep(gap)
                for i, node in enumerate(cluster.nodes):
                    targets.take_out(i)
                    # What an endpoints controller (or a preStop pause) gives a pod: no new requests
                    # are routed to it a moment before its SIGTERM. Those already sent drain.
                    await asyncio.sleep(_ROUTING_GRACE)
                    timeline.append(f"n{i} term@{time.monotonic() - begin:.1f}")
                    exit_codes.append(await asyncio.to_thread(node.stop, signal.SIGTERM))
                    node.start()
                    await asyncio.to_thread(node.wait_ready)
                    targets.put_back(i)
                    timeline.append(f"n{i} ready@{time.monotonic() - begin:.1f}")
                    await asyncio.sleep(gap)
            finally:
                stop.set()

        outcomes, _ = await asyncio.gather(
            run_load(targets, duration=duration, max_requests=max_requests, stop=stop),
            orchestrate(),
        )
        counts = _backend_counts(backend, paths)
    finally:
        cluster.stop()
        backend.stop()
    errors = [o for o in outcomes if not o.ok]
    hung = [o for o in outcomes if o.hung]
    requested = {o.path for o in outcomes}
    report.add("requests sent", len(outcomes))
    report.add("restarts completed", len(exit_codes), "3", len(exit_codes) == 3)
    report.add("clean exit codes", str(exit_codes), "[0, 0, 0]", exit_codes == [0, 0, 0])
    report.add("errors", len(errors), "0", not errors, _describe(errors))
    report.add("hung requests", len(hung), "0", not hung)
    report.add("timeline", " ".join(timeline))
    report.add(
        "extra backend loads",
        sum(counts.values()) - len(requested),
        "",
        None,
        "a leaving node hands its keys over; a returning one asks the previous owners first",
    )
    report.add("max backend loads of one key", max(counts.values(), default=0))
    return report


async def soak(
    workdir: Path,
    *,
    duration: float = 600.0,
    ttl: float = 5.0,
    keys: int = 400,
    sample_every: float = 10.0,
    max_requests: int = 2_000_000,
) -> Report:
    """Scenario 8: mixed traffic over three nodes with expiring keys; RSS over time."""
    report = Report("8 soak", f"duration={duration}s ttl={ttl}s keys={keys}")
    run = uuid.uuid4().hex[:8]
    sizes = (100, 2_000, 30_000)
    paths = [f"/s/{run}/{i}?size={sizes[i % 3]}" for i in range(keys)]
    paths += [f"/s/{run}/missing-{i}?status=404" for i in range(keys // 10)]
    backend = BackendProcess(workdir)
    cluster = ProxyCluster(3, "", workdir, env={"CACHE_TTL": f"{ttl}s", "SHUTDOWN_TIMEOUT": "5s"})
    rss: list[tuple[float, int]] = []
    try:
        backend.start()
        for node in cluster.nodes:
            node.env["BACKEND_URL"] = backend.url
        cluster.start()
        targets = Targets([n.url for n in cluster.nodes], paths)
        stop = asyncio.Event()
        begin = time.monotonic()

        async def sample() -> None:
            for _ in range(int(duration / sample_every) + 2):
                rss.append((time.monotonic() - begin, sum(rss_kib(n.pid) for n in cluster.nodes)))
                try:
                    await asyncio.wait_for(stop.wait(), sample_every)
                    return
                except TimeoutError:
                    pass

        sampler = asyncio.create_task(sample())
        outcomes = await run_load(targets, duration=duration, max_requests=max_requests)
        stop.set()
        await sampler
        counts = _backend_counts(backend, paths)
    finally:
        cluster.stop()
        backend.stop()
    warm = [kib for t, kib in rss if t >= duration * 0.2] or [kib for _, kib in rss]
    growth = (warm[-1] - warm[0]) / warm[0] if warm and warm[0] else 0.0
    windows = duration / ttl + 1
    per_ttl = max(counts.values(), default=0) / windows
    errors = [o for o in outcomes if o.status not in (200, 404)]
    report.add("requests sent", len(outcomes))
    report.add("errors", len(errors), "0", not errors)
    report.add("RSS after warm-up, MiB (3 nodes)", round(warm[0] / 1024, 1) if warm else 0)
    report.add("RSS at end, MiB (3 nodes)", round(warm[-1] / 1024, 1) if warm else 0)
    report.add("RSS growth after warm-up", f"{growth:+.1%}", "<= +10%", growth <= 0.10)
    report.add("RSS samples (s, MiB)", " ".join(f"{t:.0f}:{k / 1024:.0f}" for t, k in rss[::6]))
    report.add("max backend loads per key per TTL", round(per_ttl, 2), "<= 1.5", per_ttl <= 1.5)
    return report
