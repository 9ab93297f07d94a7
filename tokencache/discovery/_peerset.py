"""Pure peer-set logic: which pods are peers, and how watch events change the set.

Theory of operation: the watch thread keeps a :class:`PodTable` that maps every pod the
label selector matches (``namespace/name``) to its peer URLs, or to none while the pod is not
a usable peer. A pod is a peer only when all of these hold (udhos/kubegroup counted pods that were
not ready yet and kept pods that were already shutting down; both send traffic to a process that
cannot answer):

- ``status.conditions`` has ``Ready`` = ``"True"``;
- ``status.podIP`` is set;
- ``metadata.deletionTimestamp`` is absent (a terminating pod leaves the ring at once, before its
  readiness probe notices).

A pod may run several worker processes, each a peer with its own port (``port + i``): the pod
then yields one URL per worker. The count is the pod's ``tokencache.io/workers`` annotation (so
pods of a rollout that changes the count are each read right), else the table's ``workers``.

Pods arrive either as the raw JSON dicts of the wire format (camelCase) or as the ``kubernetes``
client's model objects (snake_case attributes); both are accepted. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from tokencache.discovery._errors import DiscoveryConfigError


def _field(obj: Any, json_name: str, attr_name: str) -> Any:
    # Raw wire dicts use the JSON names; client models use Python attribute names.
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(json_name)
    return getattr(obj, attr_name, None)


def parse_port(port: int | str) -> int:
    """Return the port number of ``5000``, ``"5000"`` or ``":5000"``; raise on anything else."""
    text = str(port).strip()
    text = text.removeprefix(":")
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise DiscoveryConfigError(f"peer port must be 1..65535, got {port!r}")
    return int(text)


def peer_url(ip: str, port: int, scheme: str = "http") -> str:
    """Return the peer URL of a pod IP (IPv6 addresses are bracketed)."""
    try:
        is_v6 = ipaddress.ip_address(ip).version == 6
    except ValueError:
        is_v6 = False  # a host name: used as it is
    host = f"[{ip}]" if is_v6 else ip
    return f"{scheme}://{host}:{port}"


def pod_is_ready(pod: Any) -> bool:
    """Return True when the pod's ``Ready`` condition is ``"True"``."""
    status = _field(pod, "status", "status")
    for condition in _field(status, "conditions", "conditions") or ():
        if _field(condition, "type", "type") == "Ready":
            return bool(_field(condition, "status", "status") == "True")
    return False


WORKERS_ANNOTATION = "tokencache.io/workers"
MAX_WORKERS = 256


def pod_workers(pod: Any, default: int = 1) -> int:
    """The worker count a pod declares in its annotation, else ``default`` (bad values too)."""
    annotations = _field(_field(pod, "metadata", "metadata"), "annotations", "annotations")
    text = annotations.get(WORKERS_ANNOTATION) if isinstance(annotations, Mapping) else None
    if isinstance(text, str) and text.strip().isdigit() and 0 < int(text) <= MAX_WORKERS:
        return int(text)
    return default


def pod_peer(pod: Any, *, port: int, scheme: str = "http") -> str | None:
    """Return the pod's (first worker's) peer URL, or None when the pod must not be in the ring."""
    metadata = _field(pod, "metadata", "metadata")
    if _field(metadata, "deletionTimestamp", "deletion_timestamp") is not None:
        return None
    ip = _field(_field(pod, "status", "status"), "podIP", "pod_ip")
    if not ip or not pod_is_ready(pod):
        return None
    return peer_url(str(ip), port, scheme)


def pod_peers(pod: Any, *, port: int, workers: int = 1, scheme: str = "http") -> tuple[str, ...]:
    """Every worker's peer URL of a usable pod (ports ``port .. port+n-1``), else ``()``."""
    first = pod_peer(pod, port=port, scheme=scheme)
    if first is None:
        return ()
    count = min(pod_workers(pod, workers), 65536 - port)
    ip = str(_field(_field(pod, "status", "status"), "podIP", "pod_ip"))
    return (first, *(peer_url(ip, port + i, scheme) for i in range(1, count)))


def pod_key(pod: Any) -> str:
    """Return ``namespace/name``, the identity of a pod across its events."""
    metadata = _field(pod, "metadata", "metadata")
    namespace = _field(metadata, "namespace", "namespace") or ""
    return f"{namespace}/{_field(metadata, 'name', 'name') or ''}"


def resource_version(obj: Any) -> str | None:
    """Return ``metadata.resourceVersion`` of a pod, a list or a bookmark, if present."""
    version = _field(_field(obj, "metadata", "metadata"), "resourceVersion", "resource_version")
    return str(version) if version else None


class PodTable:
    """The pods a watch sees, each mapped to its peer URL or None.

    Invariant: ``_peers`` holds one entry per pod the last list or watch event reported and not
    deleted since; :meth:`peers` derives the ring list from it, so the list is never edited
    piecemeal and cannot drift from the pods.
    """

    __slots__ = ("_peers", "_port", "_scheme", "_workers")

    def __init__(self, *, port: int, scheme: str = "http", workers: int = 1) -> None:
        self._port = port
        self._scheme = scheme
        self._workers = workers
        self._peers: dict[str, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def peer_of(self, pod: Any) -> str | None:
        """Return the (first worker's) peer URL this table would give ``pod``."""
        return pod_peer(pod, port=self._port, scheme=self._scheme)

    def peers_of(self, pod: Any) -> tuple[str, ...]:
        """Return every worker's peer URL this table would give ``pod`` (empty: not a peer)."""
        return pod_peers(pod, port=self._port, workers=self._workers, scheme=self._scheme)

    def replace(self, pods: Iterable[Any]) -> bool:
        """Rebuild from a full list; return True when the peer list changed."""
        before = self.peers()
        self._peers = {pod_key(pod): self.peers_of(pod) for pod in pods}
        return self.peers() != before

    def apply(self, event_type: str, pod: Any) -> bool:
        """Apply one watch event; return True when the peer list changed.

        ADDED and MODIFIED store the pod's current peer (or None); DELETED forgets it. Other
        types (BOOKMARK, unknown ones) change nothing.
        """
        before = self.peers()
        key = pod_key(pod)
        if event_type in ("ADDED", "MODIFIED"):
            self._peers[key] = self.peers_of(pod)
        elif event_type == "DELETED":
            self._peers.pop(key, None)
        else:
            return False
        return self.peers() != before

    def peers(self) -> list[str]:
        """Return the peer URLs, sorted and without duplicates (two pods may share an IP)."""
        return sorted({peer for urls in self._peers.values() for peer in urls})
