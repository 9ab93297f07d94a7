"""Engine benchmark: local hits, remote gets, the peer hop (plain and mutual TLS), herd loads,
memory per entry.

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
from collections.abc import Coroutine
from typing import Any, TypeVar

import tokencache
from tests.support.engine_cluster import start_engine_peers, stop_all

ROUNDS = 5
T = TypeVar("T")


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


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pki(tmp: str) -> tuple[str, str, str]:
    """A throw-away CA and one peer certificate (trustme), as PEM files under ``tmp``."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = (f"{tmp}/peer.crt", f"{tmp}/peer.key", f"{tmp}/ca.crt")
    cert.cert_chain_pems[0].write_to_path(paths[0])
    cert.private_key_pem.write_to_path(paths[1])
    ca.cert_pem.write_to_path(paths[2])
    return paths


class HopFigures:
    """Medians over rounds of one peer-hop setup (plain or mTLS)."""

    def __init__(self) -> None:
        self.p50: list[float] = []
        self.p99: list[float] = []
        self.cpu_us: list[float] = []
        self.rps: list[float] = []
        self.signed_rps: list[float] = []  # WireTransport.fetch, many in flight, no Group around it
        self.signed_cpu_us: list[float] = []


async def _signed_rps(
    transport: tokencache.WireTransport, url: str, owner_pid: int, keys: list[str]
) -> tuple[float, float]:
    """Authenticated peer requests per second with 128 in flight on one connection, and the CPU
    µs per request in both processes (the transport alone, no Group around it)."""
    inflight, per_worker = 128, 150

    async def worker(w: int) -> None:
        for i in range(per_worker):
            await transport.fetch(url, "g", keys[(w + i) % len(keys)])

    cpu0, server0 = time.process_time(), _proc_cpu(owner_pid)
    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(inflight)))
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0 + _proc_cpu(owner_pid) - server0
    done = inflight * per_worker
    return done / wall, cpu / done * 1e6


async def _hop_round(
    group: tokencache.Group, owner_pid: int, keys: list[str], samples: int, burst: int
) -> tuple[float, float, float, float]:
    """(p50 ms, p99 ms, CPU µs per hit in both processes, gets/s with many in flight).

    ``owner_pid`` 0: the hits are local (no second process to count).
    """
    latencies = []
    for i in range(samples):
        started = time.perf_counter()
        await group.get(keys[i % len(keys)])
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    inflight = 128
    per_worker = burst // inflight

    async def worker(w: int) -> None:
        for i in range(per_worker):
            await group.get(keys[(w * per_worker + i) % len(keys)])

    def server_cpu() -> float:
        return _proc_cpu(owner_pid) if owner_pid else 0.0

    cpu0, server0, wall0 = time.process_time(), server_cpu(), time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(inflight)))
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0 + server_cpu() - server0
    done = per_worker * inflight
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    return p50, p99, cpu / done * 1e6, done / wall


async def peer_hop(samples: int = 2000, burst: int = 40_000) -> dict[str, HopFigures]:
    """A remote hit against a local hit, plain and with mutual TLS, rounds interleaved."""
    import tempfile

    async def never(key: str) -> tokencache.Entry:
        raise AssertionError("the remote owner loads")

    async def load(key: str) -> tokencache.Entry:
        return tokencache.Entry(b"x" * 1024, 3600)

    keys = [f"k{i}" for i in range(1000)]
    figures = {"local": HopFigures(), "plain": HopFigures(), "mtls": HopFigures()}
    with tempfile.TemporaryDirectory() as tmp:
        cert, key, ca = _pki(tmp)
        tls_args = ("--tls-cert", cert, "--tls-key", key, "--tls-ca", ca)
        plain = start_engine_peers(1, secret="bench-secret")[0]
        secured = start_engine_peers(1, *tls_args, secret="bench-secret")[0]
        spaces = []
        try:
            groups: dict[str, tuple[tokencache.Group, int]] = {}
            local_ws = tokencache.Workspace("")
            groups["local"] = (local_ws.new_group("g", 64 << 20, load), os.getpid())
            _, client_tls = tokencache.peer_tls_contexts(cert, key, ca)
            for name, owner, ssl_client in (("plain", plain, None), ("mtls", secured, client_tls)):
                ws = tokencache.Workspace(
                    "http://127.0.0.1:1", peer_secret="bench-secret", ssl_client=ssl_client
                )
                ws.set_peers([owner.url])  # the owner of every key is the other process
                spaces.append(ws)
                groups[name] = (
                    ws.new_group("g", 64 << 20, never, hot_probability=0.0),
                    owner.proc.pid,
                )
            for group, _ in groups.values():
                for k in keys:
                    await group.get(k)  # cached: locally, or by the owner
            for _ in range(ROUNDS):  # setups interleaved, so each round compares like with like
                for name, (group, pid) in groups.items():
                    p50, p99, cpu_us, rps = await _hop_round(
                        group, 0 if name == "local" else pid, keys, samples, burst
                    )
                    fig = figures[name]
                    fig.p50.append(p50)
                    fig.p99.append(p99)
                    fig.cpu_us.append(cpu_us)
                    fig.rps.append(rps)
                    if name != "local":
                        ws = spaces[0 if name == "plain" else 1]
                        assert isinstance(ws.transport, tokencache.WireTransport)
                        owner = plain if name == "plain" else secured
                        rps, cpu_us = await _signed_rps(ws.transport, owner.url, pid, keys)
                        fig.signed_rps.append(rps)
                        fig.signed_cpu_us.append(cpu_us)
        finally:
            for ws in spaces:
                await ws.close()
            stop_all([plain, secured])
    return figures


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


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when installed: the loop the proxy and deployed peers run on."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


def hop_rows(figures: dict[str, HopFigures]) -> list[tuple[str, str, str]]:
    """The peer-hop table rows: medians over rounds, every setup measured in every round."""

    def med(name: str, attr: str) -> float:
        return statistics.median(getattr(figures[name], attr))

    local_cpu = med("local", "cpu_us")
    rows = [
        (
            "remote hit, added latency p50 / p99 (sequential)",
            f"{med('plain', 'p50') - med('local', 'p50'):.3f} / "
            f"{med('plain', 'p99') - med('local', 'p99'):.3f} ms",
            "p50 <= 0.3 ms",
        ),
        (
            "CPU per hit, local / remote (both processes)",
            f"{local_cpu:.1f} / {med('plain', 'cpu_us'):.1f} µs "
            f"({med('plain', 'cpu_us') / local_cpu:.0f} x)",
            "",
        ),
        ("remote hits/s through Group.get, 128 in flight", f"{med('plain', 'rps'):,.0f}", ""),
        ("signed peer requests/s, 128 in flight", f"{med('plain', 'signed_rps'):,.0f}", ""),
        (
            "CPU per signed peer request, transport only (both processes)",
            f"{med('plain', 'signed_cpu_us'):.1f} µs (mTLS {med('mtls', 'signed_cpu_us'):.1f} µs)",
            "",
        ),
        (
            "mTLS cost per hop: p50 / p99 / CPU",
            f"+{med('mtls', 'p50') - med('plain', 'p50'):.3f} ms / "
            f"+{med('mtls', 'p99') - med('plain', 'p99'):.3f} ms / "
            f"+{med('mtls', 'cpu_us') - med('plain', 'cpu_us'):.1f} µs",
            "",
        ),
        (
            "signed peer requests/s over mTLS, 128 in flight",
            f"{med('mtls', 'signed_rps'):,.0f}",
            "",
        ),
    ]
    return rows


def main() -> None:
    print("## Engine (tokencache/)")
    get_rate, peek_rate = asyncio.run(local_hits())
    p50, p99 = _run(remote_gets())
    runs = asyncio.run(herd())
    rows = [
        ("local hit, await group.get (one core)", f"{get_rate:,.0f} gets/s", ">= 300,000 gets/s"),
        ("local hit, group.peek (one core)", f"{peek_rate:,.0f} gets/s", ""),
        ("remote hit over loopback, p50", f"{p50:.3f} ms", "<= 1 ms"),
        ("remote hit over loopback, p99", f"{p99:.3f} ms", ""),
        ("loader runs, 1000-way herd on 3 peers", str(runs), "exactly 1"),
    ]
    rows += hop_rows(_run(peer_hop()))
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
