"""Pushed metrics, as kubecache sent them: DogStatsD over UDP and CloudWatch EMF on stdout.

Theory of operation: every interval a `PushExporter` reads the counters of every cache group
(`group_snapshot`, the same numbers `/metrics` shows), subtracts the previous reading for the
counters (kubecache's exporters sent deltas) and hands one `Reading` per group to its sinks:

- `dogstatsd_lines`: udhos/groupcache_datadog's names (``gets``, ``hits``, ``local_load``,
  ``cache_items``...), counts as ``|c`` and gauges as ``|g``, tags ``group:<name>``,
  ``pod_name:<hostname>``, ``type:main|hot`` for the cache metrics, ``service:kubecache`` and
  DD_TAGS; sent to DD_AGENT_HOST:DD_AGENT_PORT (the address is resolved off the event loop,
  again every DOGSTATSD_CLIENT_TTL, as kubecache's client was renewed);
- discovery's ``events`` (peer updates, a count) and ``peers`` (pods or tasks found, a gauge), as
  udhos/kubegroup and udhos/ecs-task-discovery sent them through kubecache's DogStatsD client;
- `emf_documents`: udhos/groupcache_awsemf's CloudWatch Embedded Metric Format, namespace
  ``groupcache``, dimensions ``application`` (``kubecache``, so existing CloudWatch dashboards
  match), ``group`` and, for the cache metrics, ``type``; one JSON object per line on stdout, where
  the CloudWatch agent or Fluent Bit picks it up (EMF_SEND_LOGS, the direct API upload, is
  refused at start).

Pure formatting is apart from the I/O; the clock of the loop is asyncio's, intervals injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import tokencache

__all__ = ["PushExporter", "Reading", "dogstatsd_lines", "emf_documents", "group_snapshot"]

APPLICATION = "kubecache"
_log = logging.getLogger("proxy.push")

# (metric name, GroupStats attribute) in groupcache_exporter's order; all counters.
_GROUP_COUNTERS = (
    ("gets", "gets"),
    ("hits", "cache_hits"),
    ("peer_loads", "peer_loads"),
    ("peer_errors", "peer_errors"),
    ("loads", "loads"),
    ("loads_deduped", "loads_deduped"),
    ("local_load", "local_loads"),
    ("local_load_errs", "local_load_errs"),
    ("server_requests", "server_requests"),
    ("crosstalk_refusals", "crosstalk_refusals"),
)
_CACHE_COUNTERS = ("gets", "hits", "evictions", "evictions_nonexpired")


@dataclass
class Reading:
    """One group's numbers: counters (deltas once diffed), gauges, and per cache type."""

    group: str
    counters: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    types: dict[str, tuple[dict[str, int], dict[str, float]]] = field(default_factory=dict)

    def minus(self, before: Reading | None) -> Reading:
        """Counters as deltas since `before` (gauges as they are); a reset counts from zero."""
        if before is None:
            return self

        def diff(now: dict[str, int], then: dict[str, int]) -> dict[str, int]:
            return {k: v - then.get(k, 0) if v >= then.get(k, 0) else v for k, v in now.items()}

        types = {
            kind: (diff(c, before.types.get(kind, ({}, {}))[0]), g)
            for kind, (c, g) in self.types.items()
        }
        return Reading(self.group, diff(self.counters, before.counters), self.gauges, types)


def group_snapshot(group: tokencache.Group) -> Reading:
    """The current counters of one group, with groupcache_exporter's metric names."""
    stats = group.stats
    reading = Reading(group.name)
    for name, attr in _GROUP_COUNTERS:
        reading.counters[name] = int(getattr(stats, attr))
    reading.gauges["get_from_peers_latency_slowest_milliseconds"] = float(
        stats.get_from_peers_latency_slowest_ms
    )
    for kind, cache in (("main", group.main_cache), ("hot", group.hot_cache)):
        counters = {f"cache_{n}": int(getattr(cache.stats, n)) for n in _CACHE_COUNTERS}
        gauges = {"cache_items": float(len(cache)), "cache_bytes": float(cache.bytes)}
        reading.types[kind] = (counters, gauges)
    return reading


def dogstatsd_lines(reading: Reading, tags: Iterable[str]) -> list[str]:
    """The DogStatsD datagrams' lines for one reading (deltas)."""
    base = [f"group:{reading.group}", *tags]
    out = [f"{n}:{v}|c|#{','.join(base)}" for n, v in reading.counters.items()]
    out += [f"{n}:{_num(v)}|g|#{','.join(base)}" for n, v in reading.gauges.items()]
    for kind, (counters, gauges) in reading.types.items():
        typed = ",".join([*base, f"type:{kind}"])
        out += [f"{n}:{_num(v)}|g|#{typed}" for n, v in gauges.items()]
        out += [f"{n}:{v}|c|#{typed}" for n, v in counters.items()]
    return out


def emf_documents(
    reading: Reading, now_ms: int, extra: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """CloudWatch EMF documents for one reading: one for the group, one per cache type."""
    dims = {"application": APPLICATION, "group": reading.group, **(extra or {})}
    docs = [_emf(now_ms, dims, reading.counters, reading.gauges)]
    for kind, (counters, gauges) in reading.types.items():
        docs.append(_emf(now_ms, {**dims, "type": kind}, counters, gauges))
    return docs


def _emf(
    now_ms: int, dims: dict[str, str], counters: dict[str, int], gauges: dict[str, float]
) -> dict[str, Any]:
    metrics = [{"Name": n, "Unit": "Count"} for n in counters]
    metrics += [{"Name": n, "Unit": _unit(n)} for n in gauges]
    doc: dict[str, Any] = {
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [
                {"Namespace": "groupcache", "Dimensions": [list(dims)], "Metrics": metrics}
            ],
        },
        **dims,
    }
    doc.update(counters)
    doc.update({n: _num(v) for n, v in gauges.items()})
    return doc


def _unit(name: str) -> str:
    if name.endswith("milliseconds"):
        return "Milliseconds"
    return "Bytes" if name.endswith("bytes") else "Count"


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


class PushExporter:
    """Reads `groups()` every `interval` seconds and sends the deltas to DogStatsD and/or EMF.

    `dogstatsd`: (host, port, client ttl, tags, debug) or None; `emf_out`: a text stream for EMF
    lines or None. `wall_ms` gives EMF timestamps (injected for tests).
    """

    def __init__(
        self,
        groups: Callable[[], Iterable[tokencache.Group]],
        *,
        interval: float,
        dogstatsd: tuple[str, int, float, tuple[str, ...], bool] | None = None,
        emf_out: TextIO | None = None,
        wall_ms: Callable[[], int] | None = None,
        discovery: Callable[[], tuple[int, int] | None] | None = None,
    ) -> None:
        self._groups = groups
        self._discovery = discovery
        self._updates_before = 0
        self._interval = interval
        self._dogstatsd = dogstatsd
        self._emf_out = emf_out
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self._before: dict[str, Reading] = {}
        self._sock: socket.socket | None = None
        self._address: tuple[Any, ...] | None = None
        self._resolved_at = float("-inf")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Export now and then every interval, in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop (idempotent) after one last export, so a short run still reports."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.export_once()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _run(self) -> None:
        while True:
            await self._resolve()
            self.export_once()
            await asyncio.sleep(self._interval)

    async def _resolve(self) -> None:
        """Resolve the agent's address again once DOGSTATSD_CLIENT_TTL has passed, off the event
        loop (a slow DNS answer must never stall the requests this loop serves)."""
        if self._dogstatsd is None:
            return
        host, port, ttl, _, _ = self._dogstatsd
        if self._sock is not None and time.monotonic() - self._resolved_at <= ttl:
            return
        loop = asyncio.get_running_loop()
        try:
            info = (await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM))[0]
            sock = socket.socket(info[0], socket.SOCK_DGRAM)
        except OSError as exc:  # no agent name yet: keep the previous address, try next time
            _log.debug("dogstatsd resolve failed", extra={"error": type(exc).__name__})
            return
        sock.setblocking(False)
        if self._sock is not None:
            self._sock.close()
        self._sock, self._address = sock, info[4]
        self._resolved_at = time.monotonic()

    def export_once(self) -> None:
        """Read every group once and send what changed since the last reading."""
        if self._dogstatsd is not None and self._discovery is not None:
            self._send_discovery()
        for group in list(self._groups()):
            now = group_snapshot(group)
            delta = now.minus(self._before.get(group.name))
            self._before[group.name] = now
            if self._dogstatsd is not None:
                self._send_dogstatsd(delta)
            if self._emf_out is not None:
                stamp = self._wall_ms()
                for doc in emf_documents(delta, stamp):
                    self._emf_out.write(json.dumps(doc, separators=(",", ":")) + "\n")
                self._emf_out.flush()

    def _send_discovery(self) -> None:
        """kubegroup's (and ecs-task-discovery's) DogStatsD metrics: ``events`` (peer updates,
        a count) and ``peers`` (pods or tasks found, a gauge), with the client's tags."""
        assert self._discovery is not None
        assert self._dogstatsd is not None
        counts = self._discovery()
        if counts is None:
            return
        updates, peers = counts
        delta = updates - self._updates_before if updates >= self._updates_before else updates
        self._updates_before = updates
        suffix = f"|#{','.join(self._dogstatsd[3])}" if self._dogstatsd[3] else ""
        lines = [f"events:{delta}|c{suffix}"] if delta else []
        self._send_lines([*lines, f"peers:{peers}|g{suffix}"])

    def _send_dogstatsd(self, reading: Reading) -> None:
        assert self._dogstatsd is not None
        self._send_lines(dogstatsd_lines(reading, self._dogstatsd[3]))

    def _send_lines(self, lines: list[str]) -> None:
        assert self._dogstatsd is not None
        debug = self._dogstatsd[4]
        if self._sock is None or self._address is None:
            return  # not resolved (yet): these deltas are lost, as UDP would lose them
        address = self._address
        try:
            for line in lines:
                if debug:
                    _log.info("dogstatsd", extra={"line": line})
                self._sock.sendto(line.encode(), address)
        except OSError as exc:  # no agent (yet): UDP loses the datagram, the proxy goes on
            _log.debug("dogstatsd send failed", extra={"error": type(exc).__name__})
