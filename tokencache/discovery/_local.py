"""Facts about the pod this process runs in: its namespace and its own peer address.

Only the proxy's config module reads the environment; it passes ``POD_IP`` in. The namespace file
is the one Kubernetes mounts into every pod with a service account.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from tokencache.discovery._errors import DiscoveryConfigError
from tokencache.discovery._peerset import parse_port, peer_url

NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def read_namespace(path: str | Path = NAMESPACE_FILE) -> str:
    """Return the pod's namespace from the service-account mount; raise when it is unusable."""
    try:
        namespace = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise DiscoveryConfigError(
            f"cannot read the pod namespace from {path}; pass namespace= explicitly"
        ) from exc
    if not namespace:
        raise DiscoveryConfigError(f"the namespace file {path} is empty")
    return namespace


def self_address(
    pod_ip: str | None = None,
    *,
    peer_port: int | str,
    scheme: str = "http",
    hostname: str | None = None,
    resolve: Callable[[str], str] = socket.gethostbyname,
) -> str:
    """Return this process's peer URL, in the same form discovery gives its peers.

    ``pod_ip`` (the downward-API ``POD_IP``) wins; without it the host name (``hostname`` or
    :func:`socket.gethostname`) is resolved, which in a pod yields the pod IP.
    """
    ip = (pod_ip or "").strip()
    if not ip:
        name = hostname or socket.gethostname()
        try:
            ip = resolve(name)
        except OSError as exc:
            raise DiscoveryConfigError(f"cannot resolve own host name {name!r}") from exc
    return peer_url(ip, parse_port(peer_port), scheme)
