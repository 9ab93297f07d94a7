"""The "cluster" section of ``make bench``: is node 0 of a 3-node cluster as fast as a lone node?

    .venv/bin/python -m scripts.bench_cluster [--rounds 3] [--duration 5] [--keys 3000,30000]

Set-up (real processes on 127.0.0.1; each stopped by its PID at the end): a counting backend
(tests/support/demo_backend.py, 1 KiB bodies); a lone proxy; a 3-node proxy cluster (static
peers, a peer secret); a second 3-node cluster whose nodes keep no hot copies (for the cost of a
remote hit); 3 nginx instances (``proxy_cache``, production settings, one cache each, as nginx
would be deployed behind the same Service). Every proxy and nginx runs on core 0; wrk runs on
core 1 (``-t2 -c64``, a Lua script picking a random URL of the key set for every request).

Per key set (3000 and 30,000 distinct 1 KiB URLs, disjoint), every key is first requested on
every node of a setup (as a Service spreads requests), then in each round, the setups' order
alternating: wrk against the lone proxy, node 0 of the cluster, and nginx 0. Printed per setup:
req/s, p50, p99 (medians of the rounds), CPU µs per request (all of the setup's processes, from
/proc), node 0's hot-cache hit ratio and share of requests that went to an owner, the backend
loads per key, and the ratios to the lone node side by side.

Then: CPU µs per local hit and per remote hit (the no-hot cluster, wrk on keys node 0 owns versus
keys others own; CPU of all three nodes), the peer hop's p50/p99 (one connection, remote minus
local), and a lone proxy with PROXY_WORKERS=1 versus 2 on both cores (CPU per request: wrk shares
the cores).

Every wait is bounded and fails with a message naming what did not finish: each wrk run (its
``-d`` plus WRK_GRACE), each warm-up sweep (a Python keep-alive client, SWEEP_BASE_S plus
SWEEP_PER_KEY_S per key, IO_TIMEOUT_S per read), each start (the readiness deadlines). The warm-up
is the slow part: a proxy miss costs milliseconds of CPU (httpx), so 30,000 keys on 4 proxies
take several minutes; ``--keys 3000`` for a quicker run.

Memory: the lone node gets 128 MiB; cluster nodes 48 MiB each with the proxy's default hot
fraction (0.5). Hot copies also borrow what a node's owned keys leave free (docs/hot-copies.md):
at 30,000 keys a node's own third takes ~15 MiB, so a 48 MiB node keeps every remote key of both
sets as a hot copy. The "tight" cluster (32 MiB nodes) is the case of a working set larger than
the room for hot copies: ~17 MiB for ~31 MiB of remote keys at 30,000 keys, so about half of
node 0's requests for remote keys pay a peer hop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tokencache
from scripts._nginx import nginx_conf
from tests.support.net import free_port, free_port_range
from tests.support.proxy_cluster import PEER_SECRET, BackendProcess, base_env, wait_until

_ROOT = Path(__file__).resolve().parent.parent
Popen = subprocess.Popen[bytes]
BODY = 1024
LONE_BYTES = 128 << 20
NODE_BYTES = 48 << 20
TIGHT_BYTES = 32 << 20
CLUSTERS = ("cluster", "tight")  # setups whose node 0 reports its hot-cache counters
PROXY_CPUS = "0"
WRK_CPUS = "1"
GROUP = "path"  # the proxy's group (GROUPCACHE_GROUP_NAME's default)
# Every wait is bounded: a wrk run may overrun its -d by WRK_GRACE; a warm-up sweep gets
# SWEEP_BASE_S + SWEEP_PER_KEY_S per key; one read or connect IO_TIMEOUT_S.
WRK_GRACE = 30.0
SWEEP_BASE_S = 30.0
SWEEP_PER_KEY_S = 0.05
IO_TIMEOUT_S = 10.0

_RANDOM_LUA = """
local n = {n}
local prefix = "{prefix}"
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end
function init(args)
  math.randomseed(os.time() * 1000 + id)
end
function request()
  return wrk.format("GET", prefix .. math.random(0, n - 1) .. "?size={size}")
end
"""

# A fixed list of targets, in random order.
_LIST_LUA = """
local targets = {{ {targets} }}
function setup(thread) end
function init(args) math.randomseed(os.time()) end
function request()
  return wrk.format("GET", targets[math.random(1, #targets)])
end
"""


@dataclass
class Node:
    """A proxy (or nginx) process: its public URL, and for proxies its metrics URL."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    metrics: str = ""
    peer_url: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Sample:
    """One wrk run."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_us: float  # CPU of the measured processes per request
    extra: tuple[float, ...] = ()


class Processes:
    """Every process this section starts; `stop` ends each by its PID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> Popen:
        log = (self.tmp / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=_ROOT, env=env
        )
        self.procs.append(proc)
        return proc

    def proxy(self, name: str, backend: str, env: dict[str, str], cpus: str = PROXY_CPUS) -> Node:
        port, health, metrics = free_port(), free_port(), free_port()
        full = base_env(
            {
                "BACKEND_URL": backend,
                "LISTEN_ADDR": f"127.0.0.1:{port}",
                "HEALTH_ADDR": f"127.0.0.1:{health}",
                "METRICS_ADDR": f"127.0.0.1:{metrics}",
                "GROUPCACHE_PEER_SECRET": PEER_SECRET,
                "CACHE_TTL": "3600s",
                "TRACE": "false",
                **env,
            }
        )
        proc = self.spawn(
            ["taskset", "-c", cpus, sys.executable, "-m", "tokencache.proxy"], name, full
        )
        wait_until(
            lambda: _status(f"http://127.0.0.1:{health}/ready") == 200, 60.0, f"{name} ready"
        )
        return Node(name, port, proc, f"http://127.0.0.1:{metrics}/metrics")

    def cluster(self, name: str, backend: str, env: dict[str, str]) -> list[Node]:
        peer_ports = [free_port() for _ in range(3)]
        peers = [f"http://127.0.0.1:{p}" for p in peer_ports]
        nodes = []
        for i, peer_port in enumerate(peer_ports):
            node_env = {
                "GROUPCACHE_PORT": f"127.0.0.1:{peer_port}",
                "GROUPCACHE_PEERS": ",".join(peers),
                **env,
            }
            node = self.proxy(f"{name}-{i}", backend, node_env)
            node.peer_url = peers[i]
            nodes.append(node)
        return nodes

    def nginx(self, name: str, backend_port: int) -> Node:
        port = free_port()
        home = self.tmp / name
        home.mkdir()
        user = "user root;" if os.geteuid() == 0 else ""
        conf = home / "nginx.conf"
        conf.write_text(
            nginx_conf(user=user, tmp=home, backend=backend_port, port=port, production=True)
        )
        proc = self.spawn(
            ["taskset", "-c", PROXY_CPUS, "nginx", "-c", str(conf), "-p", str(home)], name
        )
        wait_until(lambda: _status(f"http://127.0.0.1:{port}/") != 0, 30.0, f"{name} up")
        return Node(name, port, proc)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def _cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of ``pid`` and its live children (nginx's worker, proxy workers)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(c) for c in children.read_text().split()]
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _metric(node: Node, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` (whose labels contain ``labels``) on the node's scrape."""
    with urllib.request.urlopen(node.metrics, timeout=10.0) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in "{ ") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _hot_counters(node: Node) -> tuple[float, float, float]:
    """(hot hits, hot gets, peer loads) of the proxy's group on ``node``."""
    return (
        _metric(node, "groupcache_cache_hits_total", f'group="{GROUP}",type="hot"'),
        _metric(node, "groupcache_cache_gets_total", f'group="{GROUP}",type="hot"'),
        _metric(node, "groupcache_peer_loads_total", f'group="{GROUP}"'),
    )


def _lua(tmp: Path, text: str) -> Path:
    path = tmp / f"script-{time.monotonic_ns()}.lua"
    path.write_text(text)
    return path


def wrk(
    url: str,
    script: Path,
    *,
    duration: float,
    pids: list[int],
    threads: int = 2,
    connections: int = 64,
) -> Sample:
    """One wrk run against ``url`` with ``script``; CPU of ``pids`` per request."""
    argv = [
        *("taskset", "-c", WRK_CPUS, "wrk", f"-t{threads}", f"-c{connections}"),
        *(
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ),  # whole seconds only
    ]
    before = sum(_cpu_seconds(p) for p in pids)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + WRK_GRACE)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(
            f"wrk against {url} did not end within {duration + WRK_GRACE:.0f} s"
        ) from err
    if done.returncode != 0:
        raise RuntimeError(
            f"wrk against {url} exited {done.returncode}:\n{done.stderr}{done.stdout}"
        )
    out = done.stdout
    cpu = sum(_cpu_seconds(p) for p in pids) - before
    if re.search(r"Non-2xx or 3xx responses|Socket errors", out):
        raise RuntimeError(f"errors from {url}:\n{out}")

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m is not None, out
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return Sample(rps, pct("50"), pct("99"), requests, cpu / max(requests, 1) * 1e6)


def sweep(node: Node, prefix: str, n: int) -> None:
    """Request every key of the set once on ``node``; every answer must be a 200.

    Not wrk: its Lua ``wrk.thread:stop()`` stops the thread's loop but wrk's main thread still
    sleeps for the whole ``-d``, so a "sweep until n answers" with ``-d600s`` took 10 minutes per
    node (the hang of the unverified version). Here a few keep-alive connections, every read and
    the whole sweep bounded in time.
    """
    targets = [f"{prefix}{i}?size={BODY}" for i in range(n)]
    deadline = SWEEP_BASE_S + n * SWEEP_PER_KEY_S
    try:
        asyncio.run(asyncio.wait_for(_get_all(node.port, targets), deadline))
    except TimeoutError as err:
        raise RuntimeError(f"warming {n} keys on {node.name}: not within {deadline:.0f} s") from err


async def _get_all(port: int, targets: list[str], connections: int = 16) -> None:
    """GET every target over ``connections`` keep-alive HTTP/1.1 connections (Content-Length).

    A server may close a connection between answers (nginx after ``keepalive_requests``, 1000
    by default, or with ``Connection: close``): the connection is opened again and a request
    that got no answer head is sent once more (GETs of cached keys; bounded per target).
    """
    queue = iter(targets)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), IO_TIMEOUT_S)

    async def one_connection() -> None:
        reader, writer = await connect()
        try:
            for target in queue:
                request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
                for attempt in range(2):
                    writer.write(request)
                    try:
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT_S)
                        break
                    except (asyncio.IncompleteReadError, ConnectionError):
                        if attempt:
                            raise
                        writer.close()
                        reader, writer = await connect()
                status_line, *lines = head.decode("latin-1").split("\r\n")
                fields = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip()
                if "content-length" not in fields:
                    raise RuntimeError(f"{target} on port {port}: no Content-Length: {head!r}")
                length = int(fields["content-length"])
                await asyncio.wait_for(reader.readexactly(length), IO_TIMEOUT_S)
                if status_line.split(" ", 2)[1] != "200":
                    raise RuntimeError(f"{target} on port {port}: {status_line}")
                if fields.get("connection", "").lower() == "close":
                    writer.close()
                    reader, writer = await connect()
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))


def _med(values: Iterator[float] | list[float]) -> float:
    return statistics.median(list(values))


@contextmanager
def _timer(what: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    print(f"  ({what}: {time.monotonic() - started:.0f} s)", flush=True)


def run_keysets(
    procs: Processes,
    backend: BackendProcess,
    setups: dict[str, list[Node]],
    keysets: list[int],
    rounds: int,
    duration: float,
) -> None:
    """Lone vs node 0 of 3 vs nginx, per key set; prints the table."""
    tmp = procs.tmp
    for k, n in enumerate(keysets):
        prefix = f"/set{k}/"
        loads: dict[str, float] = {}
        with _timer(f"warming {n} keys on every node"):
            for name, nodes in setups.items():
                backend.reset()
                for node in nodes:
                    sweep(node, prefix, n)
                by_target = backend.stats()["by_target"]
                loads[name] = sum(c for t, c in by_target.items() if t.startswith(prefix)) / n
        script = _lua(tmp, _RANDOM_LUA.format(n=n, prefix=prefix, size=BODY))
        samples: dict[str, list[Sample]] = {name: [] for name in setups}
        names = list(setups)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                nodes = setups[name]
                before = _hot_counters(nodes[0]) if name in CLUSTERS else (0.0, 0.0, 0.0)
                s = wrk(nodes[0].url, script, duration=duration, pids=[x.proc.pid for x in nodes])
                if name in CLUSTERS:
                    after = _hot_counters(nodes[0])
                    hits, gets, peer = (a - b for a, b in zip(after, before, strict=True))
                    s = Sample(
                        s.rps,
                        s.p50_ms,
                        s.p99_ms,
                        s.requests,
                        s.cpu_us,
                        (hits / max(gets, 1), peer / s.requests),
                    )
                samples[name].append(s)
                print(
                    f"  round {r + 1} {n:>6} keys {name:>8}: {s.rps:9.0f} req/s "
                    f"p50 {s.p50_ms:6.2f} ms p99 {s.p99_ms:6.2f} ms {s.cpu_us:6.1f} CPU-us/req",
                    flush=True,
                )
        print(
            f"\n{n} keys     req/s   p50 ms   p99 ms  CPU-us/req  x lone req/s  x lone p99  "
            "backend loads/key"
        )
        lone = samples["lone"]
        for name, got in samples.items():
            ratio = _med(g.rps / base.rps for g, base in zip(got, lone, strict=True))
            p99 = _med(g.p99_ms / base.p99_ms for g, base in zip(got, lone, strict=True))
            print(
                f"  {name:>8} {_med(x.rps for x in got):9.0f} {_med(x.p50_ms for x in got):8.2f} "
                f"{_med(x.p99_ms for x in got):8.2f} {_med(x.cpu_us for x in got):11.1f} "
                f"{ratio:13.2f} {p99:11.2f}  {loads[name]:.2f}"
            )
        for name in CLUSTERS:
            hot = samples.get(name)
            if hot:
                print(
                    f"  {name} node 0: hot-cache hit ratio {_med(x.extra[0] for x in hot):.3f}, "
                    f"requests that went to an owner {_med(x.extra[1] for x in hot):.3%}"
                )


def owned_targets(nodes: list[Node], prefix: str, n: int, mine: bool) -> list[str]:
    """Targets of the set whose owner is (``mine``) or is not node 0, by the proxies' ring."""
    ring = tokencache.Ring([node.peer_url for node in nodes], 50, 8)
    out = []
    for i in range(n):
        target = f"{prefix}{i}?size={BODY}"
        if (ring.owner(f"GET {target}") == nodes[0].peer_url) == mine:
            out.append(target)
    return out


def run_hits(procs: Processes, nodes: list[Node], rounds: int, duration: float) -> None:
    """CPU per local and per remote hit, and the peer hop's latency, on the no-hot cluster."""
    tmp = procs.tmp
    prefix, n = "/hop/", 600
    for node in nodes:
        sweep(node, prefix, n)
    kinds = {
        "local": owned_targets(nodes, prefix, n, True),
        "remote": owned_targets(nodes, prefix, n, False),
    }
    scripts = {
        kind: _lua(tmp, _LIST_LUA.format(targets=", ".join(f'"{t}"' for t in targets)))
        for kind, targets in kinds.items()
    }
    pids = [x.proc.pid for x in nodes]
    load: dict[str, list[Sample]] = {k: [] for k in kinds}
    one: dict[str, list[Sample]] = {k: [] for k in kinds}
    for r in range(rounds):
        for kind in kinds if r % 2 == 0 else list(kinds)[::-1]:
            load[kind].append(wrk(nodes[0].url, scripts[kind], duration=duration, pids=pids))
            one[kind].append(
                wrk(
                    nodes[0].url,
                    scripts[kind],
                    duration=max(2.0, duration / 2),
                    pids=pids,
                    threads=1,
                    connections=1,
                )
            )
    local_cpu = _med(x.cpu_us for x in load["local"])
    remote_cpu = _med(x.cpu_us for x in load["remote"])
    print("\nremote hit vs local hit (node 0 of 3, no hot copies; CPU of all three nodes)")
    print(
        f"  CPU-us per local hit {local_cpu:.1f}, per remote hit {remote_cpu:.1f} "
        f"({remote_cpu / local_cpu:.1f}x; target <= 3x)"
    )
    print(
        f"  under load: local {_med(x.rps for x in load['local']):.0f} req/s, "
        f"remote {_med(x.rps for x in load['remote']):.0f} req/s"
    )
    p50 = _med(x.p50_ms for x in one["remote"]) - _med(x.p50_ms for x in one["local"])
    p99 = _med(x.p99_ms for x in one["remote"]) - _med(x.p99_ms for x in one["local"])
    print(
        f"  peer hop (one connection, remote minus local): p50 +{p50:.3f} ms, p99 +{p99:.3f} ms "
        f"(local p50 {_med(x.p50_ms for x in one['local']):.3f} ms)"
    )


def run_workers(procs: Processes, backend: str, rounds: int, duration: float) -> None:
    """A lone proxy with PROXY_WORKERS=1 vs 2 on both cores: req/s and CPU per request."""
    tmp = procs.tmp
    prefix, n = "/w/", 3000
    base = {"GROUPCACHE_SIZE_BYTES": str(LONE_BYTES), "PEER_DISCOVERY": "none"}
    nodes = {}
    for workers in (1, 2):
        env = {**base, "PROXY_WORKERS": str(workers), "GROUPCACHE_PORT": f"127.0.0.1:{free_port()}"}
        if workers > 1:
            env["GROUPCACHE_PORT"] = f"127.0.0.1:{free_port_range(workers)}"
        nodes[workers] = procs.proxy(f"workers-{workers}", backend, env, cpus="0,1")
        for _ in range(2 * workers):  # every worker's cache, whichever worker the kernel picks
            sweep(nodes[workers], prefix, n)
    script = _lua(tmp, _RANDOM_LUA.format(n=n, prefix=prefix, size=BODY))
    samples: dict[int, list[Sample]] = {1: [], 2: []}
    for r in range(rounds):
        for workers in (1, 2) if r % 2 == 0 else (2, 1):
            node = nodes[workers]
            samples[workers].append(wrk(node.url, script, duration=duration, pids=[node.proc.pid]))
    print("\nPROXY_WORKERS on both cores (wrk shares core 1), lone node, 3000 keys")
    for workers, got in samples.items():
        print(
            f"  PROXY_WORKERS={workers}: {_med(x.rps for x in got):9.0f} req/s, "
            f"p99 {_med(x.p99_ms for x in got):6.2f} ms, {_med(x.cpu_us for x in got):6.1f} "
            "CPU-us/req (supervisor and workers)"
        )


def _ensure_tools() -> None:
    missing = [tool for tool in ("nginx", "wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"missing {missing}: run `make bench` once as root (scripts.bench_proxy installs them)"
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point (see the module docstring); defaults when called from scripts/bench.py."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--keys", default="3000,30000", help="key set sizes, comma-separated")
    parser.add_argument(
        "--parts", default="keys,hits,workers", help="some of keys,hits,workers (comma-separated)"
    )
    args = parser.parse_args(argv or [])
    parts = set(args.parts.split(","))
    print("## Cluster (a node of 3 against a lone node and nginx)", flush=True)
    from scripts.bench_proxy import _ensure_tools as install

    install()
    _ensure_tools()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        procs = Processes(Path(tmp))
        backend = BackendProcess(Path(tmp))
        try:
            backend.start()
            url = backend.url
            lone_env = {"GROUPCACHE_SIZE_BYTES": str(LONE_BYTES), "PEER_DISCOVERY": "none"}
            node_env = {"GROUPCACHE_SIZE_BYTES": str(NODE_BYTES)}
            if "keys" in parts:
                setups = {
                    "lone": [procs.proxy("lone", url, lone_env)],
                    "cluster": procs.cluster("cluster", url, node_env),
                    "tight": procs.cluster(
                        "tight", url, {"GROUPCACHE_SIZE_BYTES": str(TIGHT_BYTES)}
                    ),
                    "nginx": [procs.nginx(f"nginx-{i}", backend.port) for i in range(3)],
                }
                keysets = [int(k) for k in args.keys.split(",") if k]
                run_keysets(procs, backend, setups, keysets, args.rounds, args.duration)
            if "hits" in parts:
                nohot = procs.cluster("nohot", url, {**node_env, "GROUPCACHE_HOT_FRACTION": "0"})
                run_hits(procs, nohot, args.rounds, args.duration)
            if "workers" in parts:
                run_workers(procs, url, args.rounds, args.duration)
        finally:
            procs.stop()
            backend.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
