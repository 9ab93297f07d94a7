"""Cache-hit throughput of the proxy side by side with nginx ``proxy_cache``, same conditions.

    .venv/bin/python -m scripts.bench_proxy [--rounds 5] [--duration 4]

What it does: installs nginx and wrk with apt when they are missing; starts a backend (core 1),
the proxy (one process under uvloop, pinned to core 0) and two nginx instances (one worker each,
pinned to core 0, ``proxy_cache`` in a temp dir, run as the current user); warms every cache;
then, for 1 KiB and 100 KiB bodies, measures each server with wrk on core 1 in two setups,
alternating the servers' order every round:

- **light**: ``wrk -t1 -c50`` against nginx as configured by default (``sendfile off``), the
  setup ``make bench`` always had;
- **hard**: ``wrk -t2 -c64`` against a production-style nginx (Debian's stock ``sendfile on;
  tcp_nopush on;`` and ``proxy_cache_lock on``), the setup of the independent run in issue 11.

It prints req/s, p50 and p99 of each and the proxy/nginx ratio per setup (medians of the
per-round ratios), plus each server's CPU time per request (from /proc, so less sensitive to
other load on a shared machine). Targets: 1 KiB >= 1.5x, 100 KiB >= 1.0x nginx, in both setups.
Why the two setups disagreed: with one wrk thread on the client core, wrk itself saturates
before either server does at 100 KiB, so the ratio compresses towards 1 and says more about wrk
than about the servers; two wrk threads and 64 connections keep both servers busy. Every process
it started is stopped by PID at the end. Only 127.0.0.1 is used.

Then, in the same run, two cluster figures (scripts/bench_proxy_cluster.py): the backend requests
of a 500-way herd on one fresh URL over 3 proxies versus 3 nginx instances with
``proxy_cache_lock`` (expected 1 versus 3), and the added latency of the peer hop (p50/p99 of the
first request on a non-owner versus a hit on the owner). ``--rounds 0``, ``--herd 0`` and
``--hops 0`` skip a part.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from scripts._nginx import nginx_conf
from scripts.bench_proxy_cluster import report_cluster, run_cluster
from tests.support.net import free_port
from tests.support.processes import wait_http

SIZES = {"1k": 1024, "100k": 100 * 1024}
_ROOT = Path(__file__).resolve().parent.parent


def _ensure_tools() -> None:
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {missing}; run as root once to apt-get install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdin=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "nginx", "wrk"],
        check=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )


# --- the processes ----------------------------------------------------------------------------


def serve_backend(port: int) -> None:
    """A trivial backend: /1k and /100k with fixed bodies."""
    from aiohttp import web

    bodies = {f"/{name}": b"x" * size for name, size in SIZES.items()}

    async def handle(request: web.Request) -> web.Response:
        body = bodies.get(request.path)
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_proxy(port: int, backend_url: str) -> None:
    """The proxy's data path alone, single node, under uvloop when available."""
    import tokencache
    from tests.support.proxy_app import proxy_app
    from tokencache.proxy._gc import settle as settle_gc

    async def run() -> None:
        ws = tokencache.Workspace()
        app = proxy_app(
            backend_url, ws, backend_timeout=30.0, cache_ttl=3600.0, group_bytes=64 << 20
        )
        await app.start("127.0.0.1", port)
        settle_gc()  # as the service does once started (proxy._service)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await app.close()
        await ws.close()

    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


class Bench:
    """The three servers of one run; `stop` ends each by its PID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.backend_port = free_port()
        self.proxy_port = free_port()
        self.nginx_port = free_port()
        self.nginx_prod_port = free_port()

    def _spawn(self, argv: list[str], name: str) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=_ROOT
            )
        )

    def start(self) -> None:
        me = [sys.executable, "-m", "scripts.bench_proxy"]
        backend = f"http://127.0.0.1:{self.backend_port}"
        self._spawn(["taskset", "-c", "1", *me, "--serve-backend", str(self.backend_port)], "be")
        self._spawn(
            ["taskset", "-c", "0", *me, "--serve-proxy", str(self.proxy_port), backend], "proxy"
        )
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        conf = self.tmp / "nginx.conf"
        conf.write_text(
            nginx_conf(user=user, tmp=self.tmp, backend=self.backend_port, port=self.nginx_port)
        )
        self._spawn(["taskset", "-c", "0", "nginx", "-c", str(conf), "-p", str(self.tmp)], "nginx")
        prod = self.tmp / "prod"
        prod.mkdir()
        conf = prod / "nginx.conf"
        conf.write_text(
            nginx_conf(
                user=user,
                tmp=prod,
                backend=self.backend_port,
                port=self.nginx_prod_port,
                production=True,
            )
        )
        self._spawn(["taskset", "-c", "0", "nginx", "-c", str(conf), "-p", str(prod)], "nginx2")
        for port in (self.backend_port, self.proxy_port, self.nginx_port, self.nginx_prod_port):
            wait_http(f"http://127.0.0.1:{port}/1k", timeout=30.0)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of `pid` and its children that are still alive (nginx's worker)."""
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
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """One wrk run against one server."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float


def _wrk(url: str, duration: int, connections: int, pid: int, threads: int = 1) -> Sample:
    argv = ["taskset", "-c", "1", "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s"]
    cpu_before = _cpu_seconds(pid)
    out = subprocess.run(
        [*argv, "--latency", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=duration + 60,
    ).stdout
    cpu = _cpu_seconds(pid) - cpu_before
    if re.search(r"Non-2xx or 3xx responses|Socket errors", out):
        raise RuntimeError(f"errors from {url}:\n{out}")

    def number(pattern: str) -> float:
        m = re.search(pattern, out, re.M)
        assert m is not None, out
        return float(m.group(1))

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m is not None, out
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    requests = number(r"(\d+) requests in")
    return Sample(
        rps=number(r"Requests/sec:\s+([\d.]+)"),
        p50_ms=pct("50"),
        p99_ms=pct("99"),
        cpu_us_per_request=cpu / max(requests, 1) * 1e6,
    )


# (setup, size) -> server -> samples in round order
Results = dict[tuple[str, str], dict[str, list[Sample]]]
# setup -> (wrk threads, connections, the nginx it is compared with)
SETUPS = {"light": (1, 50, "nginx"), "hard": (2, 64, "nginx-prod")}
TARGETS = {"1k": 1.5, "100k": 1.0}


def run(rounds: int, duration: int) -> Results:
    """Run the comparison; return every sample per setup, size and server, in round order."""
    _ensure_tools()
    results: Results = {}
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        bench = Bench(Path(tmp))
        try:
            bench.start()
            servers = {
                "proxy": (bench.proxy_port, bench.procs[1].pid),
                "nginx": (bench.nginx_port, bench.procs[2].pid),
                "nginx-prod": (bench.nginx_prod_port, bench.procs[3].pid),
            }
            for size in SIZES:
                for port, pid in servers.values():  # warm: fill every cache, then a short burst
                    for _ in range(3):
                        wait_http(f"http://127.0.0.1:{port}/{size}", timeout=30.0)
                    _wrk(f"http://127.0.0.1:{port}/{size}", 1, 50, pid)
            for r in range(rounds):
                for setup, (threads, conns, nginx) in SETUPS.items():
                    pair = ["proxy", nginx] if r % 2 == 0 else [nginx, "proxy"]
                    for size in SIZES:
                        by_name = results.setdefault((setup, size), {"proxy": [], "nginx": []})
                        for name in pair:
                            port, pid = servers[name]
                            url = f"http://127.0.0.1:{port}/{size}"
                            res = _wrk(url, duration, conns, pid, threads)
                            by_name["proxy" if name == "proxy" else "nginx"].append(res)
                            print(
                                f"round {r + 1} {setup:>5} {size:>5} {name:>10}: "
                                f"{res.rps:10.0f} req/s {res.cpu_us_per_request:7.1f} CPU-us/req",
                                flush=True,
                            )
        finally:
            bench.stop()
    return results


def report(results: Results) -> None:
    """Print medians per server and the proxy/nginx ratios (medians of per-round ratios)."""
    print(
        f"\n{'setup':>5} {'size':>5} {'server':>6} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU-us/req':>11}"
    )
    for (setup, size), by_name in results.items():
        for name, samples in by_name.items():
            print(
                f"{setup:>5} {size:>5} {name:>6} {statistics.median(x.rps for x in samples):10.0f} "
                f"{statistics.median(x.p50_ms for x in samples):8.2f} "
                f"{statistics.median(x.p99_ms for x in samples):8.2f} "
                f"{statistics.median(x.cpu_us_per_request for x in samples):11.1f}"
            )
        pairs = list(zip(by_name["proxy"], by_name["nginx"], strict=True))
        rps_ratio = statistics.median(p.rps / n.rps for p, n in pairs)
        cpu_ratio = statistics.median(n.cpu_us_per_request / p.cpu_us_per_request for p, n in pairs)
        verdict = "meets" if rps_ratio >= TARGETS[size] else "misses"
        print(
            f"{setup:>5} {size:>5} proxy/nginx: throughput {rps_ratio:.2f} ({verdict} the "
            f"{TARGETS[size]}x target), requests per CPU-second {cpu_ratio:.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point (see the module docstring); defaults when called from scripts/bench.py."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (0: skip)")
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--herd", type=int, default=500, help="herd size (0: skip the herd)")
    parser.add_argument("--herd-delay", type=float, default=0.3, help="backend answer, seconds")
    parser.add_argument("--herd-rounds", type=int, default=3)
    parser.add_argument("--hops", type=int, default=300, help="peer-hop URLs (0: skip)")
    parser.add_argument("--serve-backend", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-proxy", nargs=2, help=argparse.SUPPRESS)
    # Not sys.argv when called as a function: scripts/bench.py has arguments of its own.
    args = parser.parse_args(argv or [])
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return
    if args.serve_proxy:
        serve_proxy(int(args.serve_proxy[0]), args.serve_proxy[1])
        return
    print("## Proxy (proxy/)", flush=True)
    _ensure_tools()
    if args.rounds > 0:
        report(run(args.rounds, args.duration))
    if args.herd > 0 or args.hops > 0:
        with tempfile.TemporaryDirectory(prefix="bench-proxy-cluster-") as tmp:
            cluster = run_cluster(
                Path(tmp),
                herd=args.herd,
                herd_delay=args.herd_delay,
                rounds=args.herd_rounds,
                hops=args.hops,
            )
        report_cluster(cluster)


if __name__ == "__main__":
    main(sys.argv[1:])
