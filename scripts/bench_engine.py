"""Engine benchmark: local hits, remote gets, herd loads, memory per entry.

Run through ``make bench`` (or ``python -m scripts.bench_engine``). Medians of several rounds in
one run; the machine is shared, so compare figures from the same run only.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

import tokencache
from tests.support.engine_cluster import start_engine_peers, stop_all

ROUNDS = 5


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def local_hits(n: int = 300_000) -> tuple[float, float]:
    """Median gets/s of ``await group.get`` and of ``group.peek`` on local hits."""
    ws = tokencache.Workspace("")

    async def load(key: str) -> tokencache.Entry:
        return tokencache.Entry(b"x" * 1024, 3600)

    group = ws.new_group("bench", 64 << 20, load)
    keys = [f"key-{i}" for i in range(1000)]
    for key in keys:
        await group.get(key)
    get_rates, peek_rates = [], []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for i in range(n):
            await group.get(keys[i % 1000])
        get_rates.append(n / (time.perf_counter() - started))
        started = time.perf_counter()
        for i in range(n):
            group.peek(keys[i % 1000])
        peek_rates.append(n / (time.perf_counter() - started))
    return statistics.median(get_rates), statistics.median(peek_rates)


async def remote_gets(samples: int = 3000) -> tuple[float, float]:
    """p50/p99 (ms) of gets answered by the owner's cache in another process over loopback."""
    owner = start_engine_peers(1, secret="bench-secret")[0]
    try:
        ws = tokencache.Workspace("http://127.0.0.1:1", peer_secret="bench-secret")
        ws.set_peers([owner.url])  # the owner of every key is the other process

        async def never(key: str) -> tokencache.Entry:
            raise AssertionError("the remote owner loads")

        group = ws.new_group("g", 64 << 20, never, hot_probability=0.0)
        keys = [f"k{i}" for i in range(100)]
        for key in keys:
            await group.get(key)  # the owner loads and caches them
        latencies = []
        for i in range(samples):
            started = time.perf_counter()
            await group.get(keys[i % 100])
            latencies.append((time.perf_counter() - started) * 1000)
        await ws.close()
        latencies.sort()
        return latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    finally:
        stop_all([owner])


async def herd(n: int = 1000) -> int:
    """Loader runs across 3 peer processes for ``n`` concurrent gets of one key."""
    import aiohttp

    peers = start_engine_peers(3, "--load-delay", "0.2", secret="bench-secret")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def get(i: int) -> int:
                url = peers[i % 3].control_url + "/get"
                async with session.post(url, data=b"the herd key") as resp:
                    await resp.read()
                    return resp.status

            statuses = await asyncio.wait_for(asyncio.gather(*(get(i) for i in range(n))), 60)
            assert set(statuses) == {200}, statuses
        runs = 0
        for peer in peers:
            with urllib.request.urlopen(peer.control_url + "/stats") as resp:
                runs += json.loads(resp.read())["loader_runs"]
        return runs
    finally:
        stop_all(peers)


def memory_child(entries: int) -> None:
    """In a fresh interpreter: RSS growth for ``entries`` x 1 KiB against the counted bytes."""

    async def run() -> tuple[int, int]:
        ws = tokencache.Workspace("")

        async def load(key: str) -> tokencache.Entry:
            return tokencache.Entry(os.urandom(1024), 3600)

        group = ws.new_group("mem", 1 << 34, load)
        await group.get("warm-up")
        before = _rss_bytes()
        for i in range(entries):
            await group.get(f"entry-{i:08d}")
        return _rss_bytes() - before, group.main_cache.bytes

    grown, counted = asyncio.run(run())
    print(json.dumps({"rss": grown, "counted": counted}))


def memory(entries: int) -> tuple[float, float, float]:
    out = subprocess.run(
        [sys.executable, "-m", "scripts.bench_engine", "--memory-child", str(entries)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return data["rss"] / entries, data["counted"] / entries, data["rss"] / data["counted"]


def main() -> None:
    print("## Engine (tokencache/)")
    get_rate, peek_rate = asyncio.run(local_hits())
    p50, p99 = asyncio.run(remote_gets())
    runs = asyncio.run(herd())
    rows = [
        ("local hit, await group.get (one core)", f"{get_rate:,.0f} gets/s", ">= 300,000 gets/s"),
        ("local hit, group.peek (one core)", f"{peek_rate:,.0f} gets/s", ""),
        ("remote hit over loopback, p50", f"{p50:.3f} ms", "<= 1 ms"),
        ("remote hit over loopback, p99", f"{p99:.3f} ms", ""),
        ("loader runs, 1000-way herd on 3 peers", str(runs), "exactly 1"),
    ]
    for entries in (10_000, 100_000):
        rss, counted, ratio = memory(entries)
        rows.append(
            (
                f"RSS per entry, {entries:,} x 1 KiB",
                f"{rss:,.0f} B vs {counted:,.0f} B counted",
                f"ratio {ratio:.2f} (target <= 2)",
            )
        )
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | result | target |")
    print(f"|{'-' * (width + 2)}|--------|--------|")
    for name, result, target in rows:
        print(f"| {name.ljust(width)} | {result} | {target} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        memory_child(int(sys.argv[2]))
    else:
        main()
