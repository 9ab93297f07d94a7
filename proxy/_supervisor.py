"""The supervisor: with ``PROXY_WORKERS`` = N > 1 the pod's main process runs N workers.

Theory of operation. The supervisor serves no proxy traffic and holds no cache. It starts N
``python -m proxy`` workers, each with ``TOKENCACHE_PROXY_WORKER=i`` and a private Unix socket
(``TOKENCACHE_PROXY_CONTROL``) in the environment; everything else they read as the supervisor
did. Each worker binds the public port with ``SO_REUSEPORT`` (the kernel spreads new connections
over the workers) and its own peer port ``GROUPCACHE_PORT + i`` (proxy/_workers.py derives the
ring). The supervisor then:

- **restarts** a worker that exits while the pod runs, after a back-off that doubles while the
  worker keeps dying young (0.5 s up to 10 s; reset once it stayed up 30 s). A worker that exits
  with code 2 (bad configuration) stops the pod with code 2; a worker that cannot start before the
  pod was ever ready (say, the port is taken) stops it with code 1: restarting cannot help.
- **drains** on SIGTERM/SIGINT: readiness turns 503 at once, every worker gets SIGTERM and drains
  as a lone proxy does (``SHUTDOWN_TIMEOUT``); the supervisor exits 0 when all exited 0. A worker
  still running ``SHUTDOWN_TIMEOUT`` + 5 s later is killed (exit 1).
- **answers for the pod** on ``HEALTH_ADDR`` and ``METRICS_ADDR`` (proxy/_fleet.py): liveness is
  its own; readiness is true once every worker has been ready and while at least one is; metrics
  are every worker's, scraped over its socket at scrape time, with a ``worker`` label, plus the
  supervisor's own (workers, restarts). One scrape target per pod, exact counters (prometheus
  multiprocess mode cannot carry the engine's collect-time collectors).

Workers watch their parent and drain if it disappears, so a killed supervisor leaves no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._config import Settings
from ._fleet import FleetView, WorkerState, build_fleet_app
from ._health import AppServer

_log = logging.getLogger("proxy.supervisor")
RESTART_BACKOFF = (0.5, 10.0)  # seconds: first delay, cap (doubling while a worker dies young)
STABLE_AFTER = 30.0  # seconds up after which a worker's next restart starts from the first delay
KILL_MARGIN = 5.0  # seconds past SHUTDOWN_TIMEOUT before a draining worker is killed
READY_POLL = 0.05  # seconds between checks that a starting worker is ready


@dataclass
class _Worker:
    state: WorkerState
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    backoff: float = RESTART_BACKOFF[0]
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Starts, restarts and drains the workers of one pod; `run` until a stop event."""

    def __init__(
        self,
        settings: Settings,
        *,
        command: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._command = list(command or (sys.executable, "-m", "tokencache.proxy"))
        self._clock = clock
        self._dir = Path(tempfile.mkdtemp(prefix="tokencache-proxy-"))
        self._workers = [
            _Worker(WorkerState(i, str(self._dir / f"worker-{i}.sock")))
            for i in range(settings.proxy_workers)
        ]
        self.fleet = FleetView([w.state for w in self._workers], settings)
        self._stop = asyncio.Event()
        self._exit_code = 0

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until ``stop`` is set (or a worker fails fatally); the process exit code."""
        servers: list[AppServer] = []
        try:
            try:
                for addr, app in build_fleet_app(self.fleet, self.settings):
                    server = AppServer(app)
                    servers.append(server)
                    await server.start(addr.bind_host, addr.port)
            except OSError as exc:
                _log.error("cannot start: %s", exc)
                return 1
            for worker in self._workers:
                worker.watcher = asyncio.create_task(self._keep(worker))
            _log.info("supervisor started", extra={"workers": len(self._workers)})
            stopper = asyncio.create_task(stop.wait())
            fatal = asyncio.create_task(self._stop.wait())
            await asyncio.wait({stopper, fatal}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            fatal.cancel()
            return await self._drain()
        finally:
            for server in servers:
                await server.close()
            await self.fleet.close()
            shutil.rmtree(self._dir, ignore_errors=True)

    async def _keep(self, worker: _Worker) -> None:
        """Run one worker for as long as the pod runs, restarting it when it exits."""
        state = worker.state
        while not self._stop.is_set() and not self._draining():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state.control)  # a dead worker's socket
            worker.proc = await asyncio.create_subprocess_exec(
                *self._command,
                env=self.settings.worker_environment(state.index, state.control),
                stdin=asyncio.subprocess.DEVNULL,
            )
            if self._draining():  # SIGTERM arrived while this one was being started
                worker.proc.send_signal(signal.SIGTERM)
            worker.started_at = self._clock()
            state.pid = worker.proc.pid
            state.ready = False
            waiting = asyncio.create_task(self._await_ready(state))
            code = await worker.proc.wait()
            waiting.cancel()
            state.ready = False
            if self._draining():
                return
            if code == 2 or (not self.fleet.started and not state.ready_once):
                _log.error(
                    "worker failed to start: stopping",
                    extra={"worker": state.index, "exit_code": code},
                )
                self._exit_code = 2 if code == 2 else 1
                self._stop.set()
                return
            if self._clock() - worker.started_at >= STABLE_AFTER:
                worker.backoff = RESTART_BACKOFF[0]
            _log.warning(
                "worker exited: restarting",
                extra={"worker": state.index, "exit_code": code, "delay_s": worker.backoff},
            )
            state.restarts += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(worker.backoff):
                    await self._stop.wait()
            worker.backoff = min(worker.backoff * 2, RESTART_BACKOFF[1])

    def _draining(self) -> bool:
        return self.fleet.draining

    async def _await_ready(self, state: WorkerState) -> None:
        # Cancelled when the worker exits; a worker that never gets ready keeps the pod unready.
        while not await self.fleet.ask_ready(state):  # noqa: ASYNC110 - polls another process
            await asyncio.sleep(READY_POLL)
        state.ready = state.ready_once = True
        self.fleet.note_ready()

    async def _drain(self) -> int:
        self.fleet.draining = True
        _log.info("shutting down: draining workers", extra={"workers": len(self._workers)})
        running = [w for w in self._workers if w.proc is not None and w.proc.returncode is None]
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                assert worker.proc is not None
                worker.proc.send_signal(signal.SIGTERM)
        deadline = self.settings.shutdown_timeout + KILL_MARGIN
        codes = await asyncio.gather(*(self._reap(w, deadline) for w in self._workers))
        for worker in self._workers:
            if worker.watcher is not None:
                worker.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.watcher
        if self._exit_code:
            return self._exit_code
        # -SIGTERM: a worker still importing when the signal came (it had served nothing yet).
        clean = all(code in (0, None, -signal.SIGTERM) for code in codes)
        _log.info("stopped", extra={"clean": clean})
        return 0 if clean else 1

    async def _reap(self, worker: _Worker, deadline: float) -> int | None:
        proc = worker.proc
        if proc is None:
            return None
        try:
            async with asyncio.timeout(deadline):
                return await proc.wait()
        except TimeoutError:
            _log.error("worker did not drain in time: killed", extra={"worker": worker.state.index})
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return -9


async def supervise(settings: Settings) -> int:
    """Run the pod's workers until SIGTERM or SIGINT; the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await Supervisor(settings).run(stop)
