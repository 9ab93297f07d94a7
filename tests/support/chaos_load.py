"""Bounded client load for the fault scenarios, and the small measurements they share.

Theory of operation: `run_load` starts ``concurrency`` workers that share one request counter.
Each worker takes the next number, stops when ``max_requests`` are taken or ``duration`` has
passed, picks a node among those the `Targets` object says are in service (the test's stand-in for a
load balancer: the orchestrator takes a node out before it kills or restarts it) and a path, sends
one GET and records an `Outcome`. The loop stops by itself in count and in time; a request that
outlives ``request_timeout`` is recorded as hung (status 0, error ``timeout``), never waited on forever.

Everything here targets 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

__all__ = [
    "Outcome",
    "Targets",
    "metric_value",
    "percentile",
    "rss_kib",
    "run_load",
    "scrape",
]


@dataclass(frozen=True)
class Outcome:
    """One client request: which node, which path, when, how long, and what came back."""

    node: int
    path: str
    started: float  # seconds since the load began
    latency: float
    status: int  # 0: no HTTP answer (see error)
    error: str = ""
    cache_status: str = ""
    body: bytes = b""

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return 200 <= self.status < 300

    @property
    def hung(self) -> bool:
        """No answer within the client timeout."""
        return self.error == "timeout"


@dataclass
class Targets:
    """Node base URLs, which of them take traffic now, and the paths to request in turn."""

    urls: list[str]
    paths: Sequence[str]
    in_service: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.in_service:
            self.in_service = set(range(len(self.urls)))

    def take_out(self, node: int) -> None:
        """Stop sending new requests to ``node`` (in-flight ones finish)."""
        self.in_service.discard(node)

    def put_back(self, node: int, url: str | None = None) -> None:
        """Send to ``node`` again (at ``url`` when it moved)."""
        if url is not None:
            self.urls[node] = url
        self.in_service.add(node)


async def run_load(
    targets: Targets,
    *,
    duration: float,
    max_requests: int,
    concurrency: int = 8,
    request_timeout: float = 15.0,
    keep_body: Callable[[str], bool] | None = None,
    stop: asyncio.Event | None = None,
) -> list[Outcome]:
    """Send GETs until ``max_requests``, ``duration`` or ``stop`` (whichever first); every outcome."""
    outcomes: list[Outcome] = []
    counter = iter(range(max_requests))
    begin = time.monotonic()
    deadline = begin + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for n in counter:
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return
            nodes = sorted(targets.in_service)
            if not nodes:
                await asyncio.sleep(0.01)  # every node is out for a moment; the deadline bounds it
                continue
            node = nodes[n % len(nodes)]
            path = targets.paths[(n * 7919) % len(targets.paths)]
            outcomes.append(await _one(client, node, targets.urls[node], path, begin, keep_body))

    async with httpx.AsyncClient(timeout=request_timeout, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    outcomes.sort(key=lambda o: o.started)
    return outcomes


async def _one(
    client: httpx.AsyncClient,
    node: int,
    url: str,
    path: str,
    begin: float,
    keep_body: Callable[[str], bool] | None,
) -> Outcome:
    started = time.monotonic()
    try:
        resp = await client.get(url + path)
    except httpx.TimeoutException:
        return Outcome(node, path, started - begin, time.monotonic() - started, 0, "timeout")
    except httpx.HTTPError as exc:
        return Outcome(
            node, path, started - begin, time.monotonic() - started, 0, type(exc).__name__
        )
    body = resp.content if keep_body is not None and keep_body(path) else b""
    return Outcome(
        node,
        path,
        started - begin,
        time.monotonic() - started,
        resp.status_code,
        cache_status=resp.headers.get("cache-status", ""),
        body=body,
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def scrape(url: str, timeout: float = 5.0) -> str:
    """The Prometheus text a /metrics URL answers (loopback only)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        text: str = resp.read().decode()
        return text


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The sum of every sample of ``name`` whose label set contains ``labels`` (e.g. 'group="path"')."""
    total = 0.0
    pattern = re.compile(
        rf"^{re.escape(name)}(?:_total)?(\{{[^}}]*\}})? ([-+0-9.eE]+|NaN)$", re.MULTILINE
    )
    for match in pattern.finditer(text):
        if labels and labels not in (match.group(1) or ""):
            continue
        total += float(match.group(2))
    return total


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (from /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
