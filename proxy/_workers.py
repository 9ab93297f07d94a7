"""Worker processes of one pod: how many, and which peer URL each one has. Pure logic, no I/O.

With ``PROXY_WORKERS`` = N > 1 a pod runs N worker processes (proxy/_supervisor.py starts them).
They share the public port (``SO_REUSEPORT``: the kernel spreads connections over them) and each is
a peer of the ring on its own peer port, ``GROUPCACHE_PORT + i``. Invariant: every process in the
cluster derives the same ring, because a pod's worker URLs follow from the pod's URL alone:

- static peers list pods (worker 0's URL, ``http://host:5000``); each expands to N URLs;
- Kubernetes discovery yields N URLs per Ready pod (the chart sets the count);
- single node (no peers) becomes a ring of the pod's own workers on loopback, so a key is still
  loaded once per pod rather than once per worker.

All pods must run the same N (the chart sets it explicitly; pods may also declare theirs in the
``tokencache.io/workers`` annotation, which discovery reads).
"""

from __future__ import annotations

import math
import urllib.parse

# Set by the supervisor for each worker it starts; not user settings (absent from --help).
WORKER_INDEX_ENV = "TOKENCACHE_PROXY_WORKER"
WORKER_CONTROL_ENV = "TOKENCACHE_PROXY_CONTROL"
MAX_WORKERS = 256
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def cpus_from_cgroup(cpu_max: str | None, affinity: int) -> int:
    """The CPUs the container may use: cgroup v2 ``cpu.max`` quota / period, at most ``affinity``.

    ``cpu.max`` reads ``"max 100000"`` (no quota) or ``"150000 100000"`` (1.5 CPUs). A fractional
    quota rounds down (at least 1): a worker per partial CPU would only add throttling, the same
    rule as Go's automaxprocs. Unreadable or malformed text means no quota.
    """
    cpus = max(1, affinity)
    if cpu_max:
        parts = cpu_max.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and int(parts[1]) > 0:
            cpus = min(cpus, max(1, math.floor(int(parts[0]) / int(parts[1]))))
    return min(cpus, MAX_WORKERS)


def with_port_offset(url: str, offset: int) -> str:
    """``url`` with its port increased by ``offset`` (worker ``offset`` of the pod at ``url``)."""
    if offset == 0:
        return url
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{port + offset}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def expand_peers(pods: tuple[str, ...], workers: int) -> tuple[str, ...]:
    """Every worker's peer URL of every pod URL (pod order, then worker order)."""
    return tuple(with_port_offset(url, i) for url in pods for i in range(workers))


def local_peers(port: int, workers: int) -> tuple[str, ...]:
    """The ring of one pod's own workers on loopback (single-node mode with N workers)."""
    return tuple(f"http://127.0.0.1:{port + i}" for i in range(workers))
