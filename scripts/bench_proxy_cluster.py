"""Cluster figures of the proxy benchmark: backend requests under a herd, and the peer hop's cost.

Called from `scripts.bench_proxy.main` (``run_cluster`` then ``report_cluster``). Everything runs
as real processes on 127.0.0.1, each stopped by its PID in a ``finally``:

- **Herd.** A counting backend (tests/support/demo_backend.py, answering after ``?delay=``
  seconds) and 3 proxies (``python -m tokencache.proxy`` via tests/support/proxy_cluster.py: static peers,
  a peer secret). Per round, 500 connections are opened first, spread round-robin over the 3,
  then one GET of one fresh URL is written on every connection back to back, so all 500 are in
  flight while the backend is still answering the first. The backend's count for that URL is the
  figure (a cluster-wide singleflight gives 1). The same against 3 nginx instances, each with
  its own ``proxy_cache`` and ``proxy_cache_lock on`` (its own temp dir, pid, logs, port): the
  lock only collapses requests within one instance, so 3. The number of distinct bodies
  confirms it from the client's side (the backend numbers every fetch of a URL in its body).
- **Peer hop.** With the 3 proxies: N fresh URLs are first loaded each on its owner (the owner
  is ``tokencache.Ring(peer URLs).owner("GET <target>")``, the proxy's cache key with the
  engine's default ring); then, per URL, one hit on the owner and the first (and only) request
  on a non-owner, which must fetch the value from the owner over the peer protocol. Requests are
  sequential on one keep-alive connection per node (raw sockets, so the client adds little),
  the two kinds interleaved and their order alternated. A warm-up set, measured the same way and
  discarded, opens the peer connections first. The backend's counts (1 per URL) and the nodes'
  ``groupcache_peer_loads`` counters (+1 per hop) check that each measured request was what it
  claims to be.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import tokencache
from scripts._nginx import nginx_conf
from tests.support.proxy_cluster import BackendProcess, ProxyCluster, free_port, wait_until

INSTANCES = 3
IO_TIMEOUT = 30.0  # any one socket operation
SECTION_DEADLINE = 600.0  # the whole cluster part, checked in every loop
_HEADER_END = b"\r\n\r\n"


class _Deadline:
    """The section's time budget; every loop calls `check`."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def check(self, what: str) -> None:
        if time.monotonic() > self.end:
            raise TimeoutError(f"cluster benchmark over its time budget during {what}")


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HerdRound:
    """One herd against one kind of cluster."""

    backend_requests: int
    ok: int
    distinct_bodies: int
    wall_ms: float  # first connect to last response


@dataclass(frozen=True)
class HopResult:
    """Latencies (ms) of owner hits and first requests on a non-owner, one pair per URL."""

    owner_ms: list[float]
    hop_ms: list[float]
    urls: int  # measured and warm-up URLs
    peer_loads: int  # expected: one per URL
    backend_requests: int  # expected: one per URL


@dataclass
class ClusterResults:
    """Everything `report_cluster` prints."""

    herd_size: int
    herd_delay: float
    proxy_herd: list[HerdRound]
    nginx_herd: list[HerdRound]
    hop: HopResult | None


# --- clients ----------------------------------------------------------------------------------


def _split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(_HEADER_END)
    if not sep:
        raise RuntimeError(f"incomplete response: {raw[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def _herd(ports: list[int], target: str, n: int) -> list[tuple[int, bytes]]:
    """Open `n` connections round-robin over `ports`, then write one GET on each, back to back."""
    limit = asyncio.Semaphore(64)  # connect in waves: stay under the servers' accept backlogs

    async def connect(i: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with limit:
            return await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", ports[i % len(ports)]), IO_TIMEOUT
            )

    conns = await asyncio.gather(*(connect(i) for i in range(n)))
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    try:
        for _, writer in conns:  # no await in between: every request leaves in one loop turn
            writer.write(request)
        await asyncio.gather(*(asyncio.wait_for(w.drain(), IO_TIMEOUT) for _, w in conns))
        raws = await asyncio.gather(*(asyncio.wait_for(r.read(), IO_TIMEOUT) for r, _ in conns))
    finally:
        for _, writer in conns:
            writer.close()
    out = []
    for raw in raws:
        status, _, body = _split_response(raw)
        out.append((status, body))
    return out


def _run_herd(ports: list[int], backend: BackendProcess, n: int, delay: float) -> HerdRound:
    target = f"/herd/{uuid.uuid4().hex}?delay={delay}"
    start = time.perf_counter()
    answers = asyncio.run(_herd(ports, target, n))
    wall = (time.perf_counter() - start) * 1e3
    count = int(backend.stats()["by_target"].get(target, 0))
    return HerdRound(
        backend_requests=count,
        ok=sum(1 for status, _ in answers if status == 200),
        distinct_bodies=len({body for status, body in answers if status == 200}),
        wall_ms=wall,
    )


class _KeepAlive:
    """One persistent HTTP/1.1 connection; GETs with Content-Length answers, sequentially."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def get(self, target: str) -> tuple[int, dict[str, str]]:
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        for _ in range(10_000):  # bounded: headers arrive in a few reads
            if _HEADER_END in self.buf:
                break
            self._recv()
        status, headers, rest = _split_response(self.buf)
        if "content-length" not in headers:
            raise RuntimeError(f"no Content-Length in the answer to {target}: {headers}")
        length = int(headers["content-length"])
        self.buf = rest
        for _ in range(100_000):
            if len(self.buf) >= length:
                break
            self._recv()
        self.buf = self.buf[length:]
        return status, headers

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed by the server")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def _peer_loads(cluster: ProxyCluster) -> int:
    total = 0.0
    for node in cluster.nodes:
        with urllib.request.urlopen(node.metrics_url, timeout=IO_TIMEOUT) as resp:
            text = resp.read().decode()
        for m in re.finditer(r'^\w*groupcache_peer_loads_total\{group="path"\} (\S+)$', text, re.M):
            total += float(m.group(1))
    return int(total)


def _run_hops(
    cluster: ProxyCluster, backend: BackendProcess, n: int, warmup: int, deadline: _Deadline
) -> HopResult:
    nodes = cluster.nodes
    ring = tokencache.Ring([node.peer_url for node in nodes])
    index_of = {node.peer_url: node.index for node in nodes}
    run_id = uuid.uuid4().hex[:12]
    targets = [f"/hop/{run_id}/{i}?size=1024" for i in range(warmup + n)]
    owners = [index_of[ring.owner(f"GET {t}") or ""] for t in targets]
    clients = [_KeepAlive(node.port) for node in nodes]
    try:
        for target, owner in zip(targets, owners, strict=True):  # load each on its owner
            deadline.check("warming the owners")
            status, headers = clients[owner].get(target)
            if status != 200 or "fwd=miss" not in headers.get("cache-status", ""):
                raise RuntimeError(f"warming {target}: {status} {headers.get('cache-status')}")
        loads_before = _peer_loads(cluster)
        owner_ms: list[float] = []
        hop_ms: list[float] = []
        for i, (target, owner) in enumerate(zip(targets, owners, strict=True)):
            deadline.check("measuring the peer hop")
            # Each non-owner sees each URL exactly once, so it never holds a (hot) copy yet.
            other = (owner + 1 + i % (INSTANCES - 1)) % INSTANCES
            pair = [("owner", clients[owner]), ("hop", clients[other])]
            for kind, client in pair if i % 2 == 0 else pair[::-1]:
                start = time.perf_counter()
                status, headers = client.get(target)
                elapsed = (time.perf_counter() - start) * 1e3
                if status != 200 or "hit" not in headers.get("cache-status", ""):
                    raise RuntimeError(f"{kind} {target}: {status} {headers.get('cache-status')}")
                if i >= warmup:
                    (owner_ms if kind == "owner" else hop_ms).append(elapsed)
        peer_loads = _peer_loads(cluster) - loads_before
    finally:
        for client in clients:
            client.close()
    by_target = backend.stats()["by_target"]
    return HopResult(
        owner_ms=owner_ms,
        hop_ms=hop_ms,
        urls=len(targets),
        peer_loads=peer_loads,
        backend_requests=sum(int(by_target.get(t, 0)) for t in targets),
    )


# --- nginx ------------------------------------------------------------------------------------


class _Nginxes:
    """`count` nginx instances with proxy_cache_lock, each in its own directory under `workdir`."""

    def __init__(self, workdir: Path, backend_port: int, count: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports = [free_port() for _ in range(count)]
        self.workdir = workdir
        self.backend_port = backend_port

    def start(self) -> None:
        nginx = shutil.which("nginx")
        if nginx is None:
            raise RuntimeError("nginx is not installed (scripts.bench_proxy installs it)")
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        for i, port in enumerate(self.ports):
            tmp = self.workdir / f"nginx-{i}"
            tmp.mkdir(parents=True)
            conf = tmp / "nginx.conf"
            conf.write_text(
                nginx_conf(user=user, tmp=tmp, backend=self.backend_port, port=port, lock=True)
            )
            with (tmp / "stdout.log").open("wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        [nginx, "-c", str(conf), "-p", str(tmp)],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        for port, proc in zip(self.ports, self.procs, strict=True):
            wait_until(lambda p=port, pr=proc: _listening(p, pr), 30.0, f"nginx on {port}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _listening(port: int, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"nginx exited with {proc.returncode}")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


# --- the section ------------------------------------------------------------------------------


def run_cluster(
    workdir: Path, herd: int = 500, herd_delay: float = 0.3, rounds: int = 3, hops: int = 300
) -> ClusterResults:
    """Run the herd (proxies, then nginx) and the peer-hop measurement; stop every process."""
    deadline = _Deadline(SECTION_DEADLINE)
    results = ClusterResults(herd, herd_delay, [], [], None)
    backend = BackendProcess(workdir)
    cluster: ProxyCluster | None = None
    nginxes: _Nginxes | None = None
    try:
        backend.start()
        cluster = ProxyCluster(INSTANCES, backend.url, workdir / "proxies", {"CACHE_TTL": "600s"})
        cluster.start()
        nginxes = _Nginxes(workdir, backend.port, INSTANCES)
        nginxes.start()
        proxy_ports = [node.port for node in cluster.nodes]
        for r in range(rounds if herd > 0 else 0):
            deadline.check("the herd")
            for name, ports, out in (
                ("proxies", proxy_ports, results.proxy_herd),
                ("nginx", nginxes.ports, results.nginx_herd),
            )[:: 1 if r % 2 == 0 else -1]:
                res = _run_herd(ports, backend, herd, herd_delay)
                out.append(res)
                print(
                    f"herd round {r + 1} {name:>7}: {res.backend_requests} backend requests, "
                    f"{res.ok}/{herd} OK, {res.wall_ms:.0f} ms",
                    flush=True,
                )
        if hops > 0:
            results.hop = _run_hops(cluster, backend, hops, min(30, hops), deadline)
    finally:
        try:
            if nginxes is not None:
                nginxes.stop()
        finally:
            try:
                if cluster is not None:
                    cluster.stop()
            finally:
                backend.stop()
    return results


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report_cluster(res: ClusterResults) -> None:
    """Print the herd table and the peer-hop table."""
    if res.proxy_herd:
        print(
            f"\nherd: {res.herd_size} concurrent GETs of one fresh URL, round-robin over "
            f"{INSTANCES} instances, backend answering in {res.herd_delay * 1e3:.0f} ms "
            f"({len(res.proxy_herd)} rounds)"
        )
        print(
            f"{'cluster':<32} {'backend requests':>17} {'expected':>8} {'200 OK':>7} "
            f"{'bodies':>6} {'wall ms':>8}"
        )
        for name, rounds, expected in (
            (f"{INSTANCES} tokencache proxies", res.proxy_herd, 1),
            (f"{INSTANCES} nginx proxy_cache_lock", res.nginx_herd, INSTANCES),
        ):
            counts = ",".join(str(x.backend_requests) for x in rounds)
            print(
                f"{name:<32} {counts:>17} {expected:>8} "
                f"{min(x.ok for x in rounds):>7} {max(x.distinct_bodies for x in rounds):>6} "
                f"{statistics.median(x.wall_ms for x in rounds):8.0f}"
            )
    hop = res.hop
    if hop is not None:
        print(
            f"\npeer hop: {len(hop.hop_ms)} fresh URLs, sequential GETs on one keep-alive "
            f"connection per node (+{hop.urls - len(hop.hop_ms)} warm-up URLs); for "
            f"{hop.urls} URLs: {hop.backend_requests} backend requests, {hop.peer_loads} peer loads"
        )
        print(f"{'request':<34} {'p50 ms':>8} {'p99 ms':>8}")
        for name, values in (
            ("hit on the owner", hop.owner_ms),
            ("first request on a non-owner", hop.hop_ms),
        ):
            print(f"{name:<34} {_pct(values, 50):8.3f} {_pct(values, 99):8.3f}")
        added = _pct(hop.hop_ms, 50) - _pct(hop.owner_ms, 50)
        print(f"{'added latency of the peer hop (p50)':<34} {added:8.3f}")
