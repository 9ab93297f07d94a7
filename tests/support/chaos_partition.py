"""Scenario 3: a partitioned peer and a slow peer, with engine peers in network namespaces.

Host 0 drives (a ring member that gets fresh keys, so every get asks the key's owner), host 1 is
cut off (its link goes down), host 2 is slowed by ``tc tbf`` so its answers (64 KiB values) take
longer than the peer timeout. The driver runs once healthy and once with both faults; the figures
are latencies per owner and errors. `NetLab` keeps all of it inside namespaces the scenario made.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.support.chaos_figures import Report
from tests.support.chaos_load import percentile
from tests.support.netns import NetLab
from tests.support.proxy_cluster import base_env

__all__ = ["partition"]

_PORT = 7000
_RUN_DEADLINE = 120.0


def _drive(lab: NetLab, peers: str, prefix: str, keys: int, timeout: float, wait: bool) -> Any:
    args = [
        *(sys.executable, "-m", "tests.support.chaos_netpeer", "drive"),
        *("--host", lab.address(0), "--port", str(_PORT), "--peers", peers),
        *("--keys", str(keys), "--peer-timeout", str(timeout), "--prefix", prefix),
        *("--wait-for-peers", "1" if wait else "0"),
    ]
    proc = lab.spawn(0, args, base_env())
    try:
        out, err = proc.communicate(timeout=_RUN_DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"driver failed ({proc.returncode}): {err.decode(errors='replace')}")
    return json.loads(out)


def partition(*, keys: int = 90, peer_timeout: float = 1.0) -> Report:
    """Run the scenario; every namespace and process is gone when this returns or raises."""
    report = Report("3 slow+partitioned peer", f"keys={keys} peer_timeout={peer_timeout}s")
    lab = NetLab(3)
    try:
        lab.open()
        urls = [f"http://{lab.address(i)}:{_PORT}" for i in range(3)]
        peers = ",".join(urls)
        for host, size in ((1, 64), (2, 64 << 10)):
            serve = [
                *(sys.executable, "-m", "tests.support.chaos_netpeer", "serve"),
                *("--host", lab.address(host), "--port", str(_PORT), "--peers", peers),
                *("--value-bytes", str(size)),
            ]
            lab.spawn(host, serve, base_env())
        healthy = _drive(lab, peers, "healthy", keys, peer_timeout, wait=True)
        lab.cut(1)
        lab.rate_limit(2)
        faulted = _drive(lab, peers, "faulted", keys, peer_timeout, wait=False)
    finally:
        lab.close()
    left = lab.leftovers()

    def lat(doc: Any, owner: str) -> list[float]:
        return [float(r["latency"]) for r in doc["results"] if r["owner"] == owner]

    bound = peer_timeout + 1.0  # the peer timeout plus a local load and scheduling
    cut_p99 = percentile(lat(faulted, urls[1]), 0.99)
    slow_p99 = percentile(lat(faulted, urls[2]), 0.99)
    errors = [r for d in (healthy, faulted) for r in d["results"] if r["error"]]
    report.add(
        "p99 healthy, s (all owners)",
        percentile([float(r["latency"]) for r in healthy["results"]], 0.99),
    )
    report.add(
        "requests owned by the cut peer",
        len(lat(faulted, urls[1])),
        "> 0",
        bool(lat(faulted, urls[1])),
    )
    report.add(
        "p99 owner cut off, s",
        cut_p99,
        f"<= {bound}",
        cut_p99 <= bound,
        "peer timeout, then a local load",
    )
    report.add(
        "requests owned by the slow peer",
        len(lat(faulted, urls[2])),
        "> 0",
        bool(lat(faulted, urls[2])),
    )
    report.add("p99 owner rate-limited, s", slow_p99, f"<= {bound}", slow_p99 <= bound)
    report.add("p99 self-owned while faulted, s", percentile(lat(faulted, urls[0]), 0.99))
    report.add("errors", len(errors), "0", not errors)
    report.add(
        "peer errors counted (faulted run)",
        int(faulted["stats"]["peer_errors"]),
        "> 0",
        int(faulted["stats"]["peer_errors"]) > 0,
    )
    report.add("namespaces left after teardown", len(left), "0", not left)
    return report
