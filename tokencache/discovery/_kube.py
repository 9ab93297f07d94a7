"""KubernetesPeerSource: the asyncio face of the list+watch thread.

The official ``kubernetes`` client is synchronous, so :class:`~._watch.PodWatcher` runs in one
daemon thread. Every peer list it computes crosses to the event loop with
``loop.call_soon_threadsafe``; everything after that (debounce, ``on_peers``, metrics of the
delivered set) runs on the loop, so ``on_peers`` may touch loop-bound objects such as a
``tokencache.Workspace``.

The first list is delivered at once (a starting process should join the ring without waiting);
later changes go through the :class:`~._debounce.Debouncer`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from tokencache._clock import Clock, MonotonicClock
from tokencache.discovery._backoff import Backoff
from tokencache.discovery._debounce import Debouncer
from tokencache.discovery._errors import DiscoveryConfigError
from tokencache.discovery._local import NAMESPACE_FILE, read_namespace
from tokencache.discovery._metrics import DiscoveryStats, Recorder
from tokencache.discovery._peerset import MAX_WORKERS, PodTable, parse_port

if TYPE_CHECKING:
    from kubernetes import client as k8s_client

    from tokencache.discovery._watch import PodWatcher

logger = logging.getLogger("tokencache.discovery")

MISSING_CLIENT = (
    "kubernetes discovery needs the kubernetes client: install tokencache[kubernetes] "
    "(pip install 'tokencache[kubernetes]')"
)


def kubernetes_client() -> tuple[ModuleType, ModuleType]:
    """The ``kubernetes`` client and config modules, imported on first use (an optional extra:
    the engine and the rest of discovery import without it)."""
    try:
        from kubernetes import client, config
    except ImportError as exc:
        raise DiscoveryConfigError(MISSING_CLIENT) from exc
    return client, config


class KubernetesPeerSource:
    """Find peers among the Ready pods of a label selector and report them to ``on_peers``.

    ``on_peers`` is called on the event loop that ran :meth:`start`, with the sorted peer URLs,
    only when the set changed, and never with an empty set merely because the API is unreachable.

    Args:
        on_peers: e.g. ``workspace.set_peers``.
        namespace: pods' namespace; default: this pod's own (read from ``namespace_file``).
        label_selector: selects the peer pods, e.g. ``"app=tokencache-proxy"``.
        peer_port: the peer port, ``5000`` or ``":5000"``.
        workers: peer processes per pod (ports ``peer_port + i``), unless a pod's
            ``tokencache.io/workers`` annotation says otherwise.
        scheme: URL scheme of the peer URLs.
        debounce: seconds a burst of changes is collected before one ``on_peers`` call.
        watch_timeout: server-side ``timeoutSeconds`` of each watch (rounded up to whole seconds).
        read_timeout: client read timeout; a watch silent for longer is restarted. Keep it above
            the API server's bookmark interval (about a minute) or above ``watch_timeout``.
        backoff: ``(initial, max)`` seconds between retries after API errors.
        api_client: a configured client; default: in-cluster configuration.
        clock: monotonic time for debouncing (``tokencache.Clock``).
        sleep: waits between retries in the worker thread; default: wakes early on stop.
        rng: jitter source.
        registry: register the ``kubegroup_*`` metrics there (none when None).
        metrics_namespace: prefix of the metric names.
        namespace_file: where the pod namespace is read from.
    """

    def __init__(
        self,
        on_peers: Callable[[list[str]], None],
        *,
        namespace: str | None = None,
        label_selector: str,
        peer_port: int | str,
        workers: int = 1,
        scheme: str = "http",
        debounce: float = 1.0,
        watch_timeout: float = 120.0,
        read_timeout: float = 150.0,
        backoff: tuple[float, float] = (0.5, 30.0),
        api_client: k8s_client.ApiClient | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
        registry: CollectorRegistry | None = None,
        metrics_namespace: str = "",
        namespace_file: str | Path = NAMESPACE_FILE,
    ) -> None:
        if not label_selector.strip():
            raise DiscoveryConfigError("label_selector is required (it names the peer pods)")
        if not 0 < workers <= MAX_WORKERS:
            raise DiscoveryConfigError(f"workers must be 1..{MAX_WORKERS}, got {workers!r}")
        kubernetes_client()  # fail at construction, with the fix, when the extra is missing
        if read_timeout <= 0 or watch_timeout <= 0 or debounce < 0:
            raise DiscoveryConfigError("timeouts must be > 0 and debounce >= 0")
        self._on_peers = on_peers
        self._namespace = namespace or read_namespace(namespace_file)
        self._selector = label_selector
        self._table = PodTable(port=parse_port(peer_port), scheme=scheme, workers=workers)
        self._debouncer = Debouncer(debounce)
        self._watch_timeout = max(1, math.ceil(watch_timeout))  # the API takes whole seconds
        self._read_timeout = read_timeout
        self._backoff = Backoff(*backoff, rng=rng)
        self._api_client = api_client
        self._owns_client = api_client is None
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._stopping = threading.Event()
        self._sleep = sleep if sleep is not None else self._stopping.wait
        self._recorder = Recorder(registry, metrics_namespace)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._watcher: PodWatcher | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._synced: asyncio.Event | None = None

    @property
    def namespace(self) -> str:
        """The namespace whose pods are watched."""
        return self._namespace

    @property
    def peers(self) -> list[str]:
        """The last peer list handed to ``on_peers`` (empty before the first)."""
        return list(self._debouncer.delivered or ())

    @property
    def stats(self) -> DiscoveryStats:
        """A snapshot of the source's counters (lists, watches, events, errors, ...)."""
        return self._recorder.snapshot()

    async def start(self) -> None:
        """Start listing and watching in a worker thread; returns at once."""
        if self._thread is not None or self._stopping.is_set():
            raise RuntimeError("KubernetesPeerSource already started (make a new one to restart)")
        self._loop = asyncio.get_running_loop()
        self._synced = asyncio.Event()
        client, config = kubernetes_client()
        from tokencache.discovery._watch import PodWatcher  # imports the client too

        if self._api_client is None:
            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException as exc:
                raise DiscoveryConfigError("not running in a Kubernetes pod") from exc
            self._api_client = client.ApiClient(configuration)
        self._watcher = PodWatcher(
            client.CoreV1Api(self._api_client),
            namespace=self._namespace,
            label_selector=self._selector,
            table=self._table,
            publish=self._publish,
            recorder=self._recorder,
            watch_timeout=self._watch_timeout,
            read_timeout=self._read_timeout,
            backoff=self._backoff,
            sleep=self._sleep,
            stopping=self._stopping,
        )
        self._thread = threading.Thread(
            target=self._watcher.run, name="tokencache-kube-discovery", daemon=True
        )
        self._thread.start()

    async def wait_synced(self) -> None:
        """Wait until the first pod list was delivered (bound it with ``asyncio.timeout``)."""
        if self._synced is None:
            raise RuntimeError("KubernetesPeerSource not started")
        await self._synced.wait()

    async def stop(self) -> None:
        """Stop the worker thread and drop any change not yet delivered. Idempotent."""
        self._stopping.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        thread, self._thread = self._thread, None
        if thread is not None and self._watcher is not None:
            self._watcher.abort()
            # A list request in flight cannot be interrupted; it ends within its timeouts.
            await asyncio.to_thread(thread.join, 2 * self._read_timeout + 1.0)
            if thread.is_alive():
                logger.warning("kubernetes discovery: worker thread still busy after stop")
        if self._owns_client and self._api_client is not None:
            self._api_client.close()  # type: ignore[no-untyped-call]
            self._api_client = None

    async def __aenter__(self) -> KubernetesPeerSource:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- worker thread -> loop --------------------------------------------------------------

    def _publish(self, peers: list[str], full_list: bool) -> None:
        # Runs in the worker thread. The loop may already be closed when stop raced a change.
        loop = self._loop
        if loop is None or self._stopping.is_set():
            return
        try:
            loop.call_soon_threadsafe(self._offer, peers, full_list)
        except RuntimeError:
            return

    # -- loop side ----------------------------------------------------------------------------

    def _offer(self, peers: list[str], full_list: bool) -> None:
        if self._stopping.is_set():
            return
        assert self._synced is not None
        if full_list and not self._synced.is_set():
            self._synced.set()
            self._deliver(self._debouncer.deliver_now(peers))
            return
        self._debouncer.offer(peers, self._clock.now())
        self._schedule()

    def _schedule(self) -> None:
        due = self._debouncer.deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is None or self._loop is None:
            return
        self._timer = self._loop.call_later(max(0.0, due - self._clock.now()), self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._stopping.is_set():
            return
        self._deliver(self._debouncer.poll(self._clock.now()))
        self._schedule()

    def _deliver(self, peers: list[str] | None) -> None:
        if peers is None:
            return
        self._recorder.changed(len(peers))
        logger.info("kubernetes discovery: %d peers", len(peers))
        try:
            self._on_peers(peers)
        except Exception:  # a failing callback must not stop discovery
            logger.exception("kubernetes discovery: on_peers failed")
