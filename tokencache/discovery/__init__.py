"""Peer discovery for tokencache: Kubernetes (list+watch of pods) and Amazon ECS (the tasks of a
service, polled; needs boto3, the ``aws`` extra).

Peers are the Ready, not-terminating pods with an IP that a label selector matches, found with
list+watch and handed to a callback such as ``Workspace.set_peers``::

    source = KubernetesPeerSource(ws.set_peers, label_selector="app=my-service", peer_port=5000)
    await source.start()
    ...
    await source.stop()

The pure pieces (the peer rule, the pod table, the debouncer, the backoff) are exported for
reuse and tests; see docs/discovery.md for RBAC and metrics.
"""

from __future__ import annotations

from tokencache.discovery._backoff import Backoff
from tokencache.discovery._debounce import Debouncer
from tokencache.discovery._ecs import (
    EcsPeerSource,
    cluster_from_metadata,
    list_task_addresses,
    task_addresses,
)
from tokencache.discovery._errors import DiscoveryConfigError, DiscoveryError, WatchExpired
from tokencache.discovery._kube import KubernetesPeerSource
from tokencache.discovery._local import NAMESPACE_FILE, read_namespace, self_address
from tokencache.discovery._metrics import DiscoveryStats
from tokencache.discovery._peerset import (
    WORKERS_ANNOTATION,
    PodTable,
    parse_port,
    peer_url,
    pod_is_ready,
    pod_key,
    pod_peer,
    pod_peers,
    pod_workers,
    resource_version,
)

__all__ = [
    "Backoff",
    "Debouncer",
    "DiscoveryConfigError",
    "DiscoveryError",
    "DiscoveryStats",
    "EcsPeerSource",
    "KubernetesPeerSource",
    "NAMESPACE_FILE",
    "PodTable",
    "WORKERS_ANNOTATION",
    "WatchExpired",
    "cluster_from_metadata",
    "list_task_addresses",
    "parse_port",
    "peer_url",
    "pod_is_ready",
    "pod_key",
    "pod_peer",
    "pod_peers",
    "pod_workers",
    "read_namespace",
    "resource_version",
    "self_address",
    "task_addresses",
]
