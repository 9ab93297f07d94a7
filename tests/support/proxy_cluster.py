"""Real proxy processes (and the counting backend) on loopback, for black-box tests and the demo.

Theory of operation: `ProxyCluster` asks the OS for free ports (bind 127.0.0.1:0, read, close),
starts N ``python -m tokencache.proxy`` processes with a clean environment (PATH and PYTHONPATH only, plus the
settings given), static peers (every node lists all N peer URLs) and a peer secret, then polls each
node's readiness URL, bounded in count and time. `stop()` sends SIGTERM to each PID, waits bounded,
then SIGKILLs. Logs go to files in a work directory so a failing test can print them.
`BackendProcess` does the same for tests/support/demo_backend.py.

    with BackendProcess(work) as backend, ProxyCluster(3, backend.url, work) as cluster:
        httpx.get(cluster.nodes[0].url + "/x")
        backend.stats()["requests"]
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.support.net import free_port

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE = 30.0
STOP_DEADLINE = 30.0
POLL = 0.05
PEER_SECRET = "cluster-test-peer-secret"


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for a child process: no inherited OTEL_*, AWS_*, proxies."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "HOME": os.environ.get("HOME", str(REPO)),
        # One process per node unless a test asks for workers (the default is one per CPU).
        "PROXY_WORKERS": "1",
    }
    env.update(extra or {})
    return env


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes, dict[str, str]]:
    """GET `url`: (status, body, headers); HTTP errors are answers, not exceptions."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers.items())
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers.items())


def wait_until(check: Any, deadline: float, what: str) -> Any:
    """Poll `check()` until it returns a truthy value; bounded in count and time."""
    end = time.monotonic() + deadline
    for _ in range(int(deadline / POLL) + 1):
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            break
        time.sleep(POLL)
    raise TimeoutError(f"{what}: not within {deadline}s")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_DEADLINE)
    return int(proc.returncode)


@dataclass
class ProxyNode:
    """One proxy process: its ports, URLs, log file and PID."""

    index: int
    port: int
    peer_port: int
    health_port: int
    metrics_port: int
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The public listener."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def peer_url(self) -> str:
        """This node's peer URL (as listed in GROUPCACHE_PEERS)."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def health_url(self) -> str:
        """Base URL of the health server."""
        return f"http://127.0.0.1:{self.health_port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus scrape URL."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int:
        """The process id (the node must be started)."""
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start the process (logs to `log`)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tokencache.proxy"],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        """True once /ready answers 200."""
        try:
            return http_get(self.health_url + "/ready", timeout=1.0)[0] == 200
        except OSError:
            return False

    def wait_ready(self) -> None:
        """Poll /ready (bounded); fail early when the process died."""

        def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"proxy {self.index} exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            return self.ready()

        wait_until(check, START_DEADLINE, f"proxy {self.index} ready")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the PID and wait (bounded; SIGKILL after STOP_DEADLINE). Returns the exit code."""
        return _stop(self.proc, sig) if self.proc is not None else 0

    def log_text(self) -> str:
        """Everything the process wrote."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class ProxyCluster:
    """N proxies with static peers in front of `backend_url`; a context manager."""

    size: int
    backend_url: str
    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    peer_secret: str = PEER_SECRET
    nodes: list[ProxyNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        peer_ports = [free_port() for _ in range(self.size)]
        peers = ",".join(f"http://127.0.0.1:{p}" for p in peer_ports)
        for i, peer_port in enumerate(peer_ports):
            port, health, metrics = free_port(), free_port(), free_port()
            env = base_env(
                {
                    "BACKEND_URL": self.backend_url,
                    "LISTEN_ADDR": f"127.0.0.1:{port}",
                    "GROUPCACHE_PORT": f"127.0.0.1:{peer_port}",
                    "GROUPCACHE_PEERS": peers,
                    "GROUPCACHE_PEER_SECRET": self.peer_secret,
                    "HEALTH_ADDR": f"127.0.0.1:{health}",
                    "METRICS_ADDR": f"127.0.0.1:{metrics}",
                    "BACKEND_TIMEOUT": "10s",
                    **self.env,
                }
            )
            if self.size == 1 and "PEER_DISCOVERY" not in self.env:
                env["PEER_DISCOVERY"] = "static"
            log = self.workdir / f"proxy-{i}.log"
            self.nodes.append(ProxyNode(i, port, peer_port, health, metrics, log, env))

    def start(self) -> Self:
        """Start every node, then wait until each is ready."""
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                node.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> list[int]:
        """SIGTERM every node (all at once, then wait on each PID); their exit codes."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        return [node.stop() for node in self.nodes]

    def logs(self) -> str:
        """Every node's log, labelled."""
        return "\n".join(f"--- proxy {n.index} ---\n{n.log_text()}" for n in self.nodes)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BackendProcess:
    """tests/support/demo_backend.py (or another backend `module` with the same command line:
    ``--port``, ``--ready-file``) as a real process; `url`, `stats()`, `reset()`, `stop()`."""

    def __init__(
        self, workdir: Path, *args: str, module: str = "tests.support.demo_backend"
    ) -> None:
        self.workdir = workdir
        self.args = args
        self.module = module
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL of the backend."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> Self:
        """Start it (on `port`, else a free one) and wait for its ready file."""
        ready = self.workdir / f"backend-{time.monotonic_ns()}.json"
        with (self.workdir / "backend.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", self.module, "--port", str(port)),
                    *("--ready-file", str(ready), *self.args),
                ],
                cwd=REPO,
                env=base_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def check() -> int:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited with {self.proc.returncode}")
            return int(json.loads(ready.read_text())["port"]) if ready.exists() else 0

        self.port = wait_until(check, START_DEADLINE, "backend ready")
        return self

    def stats(self) -> dict[str, Any]:
        """The backend's counters (GET /_control/stats)."""
        status, body, _ = http_get(self.url + "/_control/stats")
        assert status == 200
        return dict(json.loads(body))

    def reset(self) -> None:
        """Zero the counters."""
        req = urllib.request.Request(self.url + "/_control/reset", method="POST")
        with urllib.request.urlopen(req, timeout=5.0) as resp:
            assert resp.status == 200

    def stop(self) -> None:
        """SIGTERM the PID (SIGKILL after the deadline). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _stop(proc)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(Exception):
            self.stop()
