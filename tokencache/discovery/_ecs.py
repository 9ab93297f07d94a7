"""Amazon ECS peer discovery: the running tasks of one ECS service are the peers (kubecache's
``COMPUTE=ecs``, from udhos/ecs-task-discovery).

Theory of operation: every ``interval`` (20 s, as in Go) the ECS API is asked, in a worker thread
because boto3 blocks: ``ListTasks(cluster, serviceName, desiredStatus=RUNNING)`` page by page, then
``DescribeTasks`` (at most 100 ARNs per call); a task's address is the ``privateIPv4Address`` of its
network attachment (awsvpc mode). The peer URLs ``http://<address>:<port>``, sorted, go to
``on_peers`` on the event loop when they changed and are not empty (an API failure or an empty
answer keeps the last known peers, as in Go). With ``force_single_task`` the only peer is that
address and the API is never called (Go's FORCE_SINGLE_TASK, for running outside ECS).

The cluster is this task's: the ECS agent's task metadata (``$ECS_CONTAINER_METADATA_URI_V4/task``,
field ``Cluster``, an ARN whose last segment is the name). kubecache first asked its separate
discovery agent and fell back to the ECS API; the answer is the same, so only the API is asked.

Metrics (Go's names, ``{namespace}_peers`` and ``{namespace}_events`` with ecs-task-discovery's
empty subsystem): tasks found at the last poll, and peer updates delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

from tokencache.discovery._errors import DiscoveryConfigError, DiscoveryError
from tokencache.discovery._peerset import parse_port, peer_url

logger = logging.getLogger("tokencache.discovery")

_PAGE = 100  # ListTasks maxResults and DescribeTasks' limit


def task_addresses(tasks: Iterable[dict[str, Any]]) -> list[str]:
    """The private IPv4 address of each described task that has one (others are skipped)."""
    out = []
    for task in tasks:
        for attachment in task.get("attachments") or ():
            found = [
                d.get("value")
                for d in attachment.get("details") or ()
                if d.get("name") == "privateIPv4Address" and d.get("value")
            ]
            if found:
                out.append(str(found[0]))
                break
        else:
            logger.warning(
                "ecs discovery: task without privateIPv4Address",
                extra={"task": task.get("taskArn", "")},
            )
    return out


def list_task_addresses(client: Any, cluster: str, service: str) -> list[str]:
    """Every RUNNING task of `service` in `cluster`, by address (blocking boto3 calls)."""
    addresses: list[str] = []
    kwargs: dict[str, Any] = {
        "cluster": cluster,
        "serviceName": service,
        "desiredStatus": "RUNNING",
        "maxResults": _PAGE,
    }
    for _ in range(10_000):  # bounded: 10,000 pages of 100 tasks is past any ECS quota
        page = client.list_tasks(**kwargs)
        arns = page.get("taskArns") or []
        for start in range(0, len(arns), _PAGE):
            described = client.describe_tasks(cluster=cluster, tasks=arns[start : start + _PAGE])
            addresses.extend(task_addresses(described.get("tasks") or ()))
        token = page.get("nextToken")
        if not token:
            break
        kwargs["nextToken"] = token
    return addresses


def cluster_from_metadata(metadata_uri: str, *, timeout: float = 5.0) -> str:
    """This task's cluster name, from the ECS task metadata endpoint (v4)."""
    if not metadata_uri:
        raise DiscoveryConfigError(
            "ECS_CONTAINER_METADATA_URI_V4 is empty: not running as an ECS task "
            "(set FORCE_SINGLE_TASK=true to run alone)"
        )
    try:
        with urllib.request.urlopen(metadata_uri.rstrip("/") + "/task", timeout=timeout) as r:  # noqa: S310 - the agent's URL
            document = json.loads(r.read())
    except (OSError, ValueError) as exc:
        raise DiscoveryConfigError(f"ECS task metadata: {type(exc).__name__}") from None
    arn = document.get("Cluster") if isinstance(document, dict) else None
    if not isinstance(arn, str) or not arn:
        raise DiscoveryConfigError("ECS task metadata has no Cluster")
    return arn.rsplit("/", 1)[-1]


class EcsPeerSource:
    """Poll the ECS API for the tasks of `service`; report their peer URLs to `on_peers`.

    `client` is a boto3 ECS client (made on start from `client_factory` when not given);
    `cluster` the cluster name (default: from `metadata_uri`). `sleep` waits between polls
    (tests pass a fast one).
    """

    def __init__(
        self,
        on_peers: Callable[[list[str]], None],
        *,
        service: str,
        peer_port: int | str,
        cluster: str = "",
        metadata_uri: str = "",
        client: Any = None,
        client_factory: Callable[[], Any] | None = None,
        interval: float = 20.0,
        force_single_task: str = "",
        registry: CollectorRegistry | None = None,
        metrics_namespace: str = "",
    ) -> None:
        if not service and not force_single_task:
            raise DiscoveryConfigError("ECS_TASK_DISCOVERY_SERVICE is required with COMPUTE=ecs")
        if interval <= 0:
            raise DiscoveryConfigError("the poll interval must be > 0")
        self._on_peers = on_peers
        self._service = service
        self._port = parse_port(peer_port)
        self._cluster = cluster
        self._metadata_uri = metadata_uri
        self._client = client
        self._client_factory = client_factory
        self._interval = interval
        self._force = force_single_task
        self._last: list[str] = []
        self.tasks_found = 0  # tasks seen by the last successful poll
        self.updates = 0  # peer lists delivered
        self.errors = 0  # failed polls
        self._task: asyncio.Task[None] | None = None
        if registry is not None:
            prefix = f"{metrics_namespace}_" if metrics_namespace else ""
            registry.register(_EcsMetrics(self, prefix))

    async def start(self) -> None:
        """Resolve the cluster and the client, poll once, then keep polling in the background."""
        if not self._force:
            if not self._cluster:
                self._cluster = await asyncio.to_thread(cluster_from_metadata, self._metadata_uri)
            if self._client is None:
                factory = self._client_factory or _default_client
                self._client = await asyncio.to_thread(factory)
        await self.poll_once()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop polling (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def poll_once(self) -> list[str]:
        """Ask once; deliver and return the peers when they changed (else the last ones)."""
        if self._force:
            addresses = [self._force]
        else:
            try:
                addresses = await asyncio.to_thread(
                    list_task_addresses, self._client, self._cluster, self._service
                )
            except Exception as exc:  # noqa: BLE001 - any API failure keeps the last peers
                self.errors += 1
                logger.warning(
                    "ecs discovery: poll failed; keeping the last peers",
                    extra={"error": type(exc).__name__, "service": self._service},
                )
                return self._last
        self.tasks_found = len(addresses)
        peers = sorted({peer_url(a, self._port) for a in addresses})
        if peers and peers != self._last:
            self._last = peers
            self.updates += 1
            logger.info("ecs discovery: %d peers", len(peers))
            try:
                self._on_peers(list(peers))
            except Exception:  # a failing callback must not stop discovery
                logger.exception("ecs discovery: on_peers failed")
        return self._last

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.poll_once()


def _default_client() -> Any:
    try:
        import boto3
    except ImportError:
        raise DiscoveryError(
            "COMPUTE=ecs needs boto3 (install the tokencache[aws] extra)"
        ) from None
    return boto3.client("ecs")


class _EcsMetrics(Collector):
    def __init__(self, source: EcsPeerSource, prefix: str) -> None:
        self._source = source
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        peers = GaugeMetricFamily(f"{self._prefix}peers", "Number of peers discovered.")
        peers.add_metric([], float(self._source.tasks_found))
        yield peers
        events = UnknownMetricFamily(f"{self._prefix}events", "Number of events received.")
        events.add_metric([], float(self._source.updates))
        yield events
