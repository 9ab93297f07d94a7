"""Three real proxy processes find each other through Kubernetes discovery, end to end.

Nothing here is a stand-in on the proxy's side: each ``python -m tokencache.proxy`` runs
``kubernetes.config.load_incluster_config()`` unmodified, reading the fixed service-account paths
``/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace}`` and
``KUBERNETES_SERVICE_HOST``/``_PORT``, and lists and watches pods over https at `FakeKube` (the
wire-faithful fake API server, a trustme CA, a bearer token).

How the fixed path is provided without touching the host: every proxy starts as
``unshare --mount --propagation private sh -c '…; exec python -m tokencache.proxy'``. Inside that private
mount namespace a tmpfs covers ``/var/run`` (so no directory is ever created on the host's file
system), the service-account directory is made on the tmpfs, and the test's temp directory is
bind-mounted onto it. ``unshare`` (without ``--fork``) and ``sh`` both exec, so the PID the test
holds is the proxy's own and SIGTERM reaches it. Needs root and util-linux; a missing ``unshare``
fails the test (it does not skip).

Each proxy is one "pod": its own loopback IP (127.0.0.2, .3, .4; all of 127/8 is on ``lo``) as
``POD_IP``, the same ``GROUPCACHE_PORT`` number bound on that IP (discovery builds peer URLs as
``http://{podIP}:{GROUPCACHE_PORT port}``, the self URL is ``http://{POD_IP}:{port}``), distinct
public/health/metrics ports on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import tokencache
from tests.support.fake_kube import FakeKube
from tests.support.proxy_cluster import (
    REPO,
    BackendProcess,
    ProxyNode,
    base_env,
    free_port,
    http_get,
    wait_until,
)

pytestmark = pytest.mark.slow

NAMESPACE = "tokencache-e2e"
LABELS = {"app": "tokencache-proxy-e2e"}
SELECTOR = "app=tokencache-proxy-e2e"
POD_IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PEER_SECRET = "kube-e2e-peer-secret-do-not-log"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
DEADLINE = 30.0  # bound of every wait; the expected path takes a few seconds at most
BURST = 150

# $1: the service-account directory to show at SA_MOUNT; $2: the Python interpreter.
# The tmpfs keeps mkdir off the host's /run; the namespace and its mounts vanish with the process.
_WRAPPER = (
    "set -e; "
    "mount -t tmpfs -o mode=0755,size=1m tokencache-e2e-run /var/run; "
    f"mkdir -p {SA_MOUNT}; "
    f'mount --bind "$1" {SA_MOUNT}; '
    'exec "$2" -m tokencache.proxy'
)


@dataclass
class KubeProxyNode(ProxyNode):
    """A proxy "pod": runs in its own mount namespace with `sa_dir` as its service account."""

    pod_ip: str = ""
    pod_name: str = ""
    sa_dir: Path | None = None

    @property
    def peer_url(self) -> str:
        """The URL discovery builds for this pod (and the proxy's own self URL)."""
        return f"http://{self.pod_ip}:{self.peer_port}"

    def start(self) -> None:
        """Start ``unshare … exec python -m tokencache.proxy`` (the PID is the proxy's)."""
        assert self.sa_dir is not None
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _WRAPPER]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "sh", str(self.sa_dir), sys.executable],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, keyed by (sample name, sorted labels)."""
        status, body, _ = http_get(self.metrics_url)
        assert status == 200, f"metrics of proxy {self.index}: {status}"
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }

    def kube_peers(self) -> float | None:
        """The ``kubegroup_ready_peers`` gauge, the ring's size (None while absent)."""
        return self.metrics().get(("kubegroup_ready_peers", ()))

    def http_counter(self, name: str) -> float:
        """``groupcache_<name>_total{group="path"}``."""
        return self.metrics().get((f"groupcache_{name}_total", (("group", "path"),)), 0.0)


def _shared_free_port(ips: tuple[str, ...]) -> int:
    """A port number free on every one of `ips` right now (bounded retries)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            first.bind((ips[0], 0))
            port = int(first.getsockname()[1])
            try:
                for ip in ips[1:]:
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
                        other.bind((ip, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free on all of {ips}")


def _assert_cert_valid_for_loopback(fake: FakeKube) -> None:
    """The proxies verify the API's certificate against ca.crt for host 127.0.0.1: check first."""
    context = ssl.create_default_context(cafile=str(fake.ca_path))
    with (
        socket.create_connection(("127.0.0.1", fake.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() is not None


def _assert_unshare_works(workdir: Path) -> None:
    """Fail loudly (never skip) when this machine cannot give a process a private mount."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.fail("unshare/mount (util-linux) are required: install util-linux and run as root")
    probe = "mount -t tmpfs -o size=1m probe /var/run && test ! -e /var/run/probe"
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", probe],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        cwd=workdir,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot make a private mount namespace (root needed): {done.stderr.strip()}")


@dataclass
class KubeCluster:
    """The fake API, the counting backend and three proxy pods."""

    fake: FakeKube
    backend: BackendProcess
    nodes: list[KubeProxyNode]

    def logs(self) -> str:
        return "\n".join(f"--- proxy {n.index} ---\n{n.log_text()}" for n in self.nodes)

    def wait(self, check: Callable[[], bool], what: str) -> None:
        """Poll `check` (bounded by DEADLINE); fail with every log when a proxy died or time ran out."""

        def alive_and(check: Callable[[], bool] = check) -> bool:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise AssertionError(f"proxy {node.index} exited:\n{self.logs()}")
            return check()

        try:
            wait_until(alive_and, DEADLINE, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None


@pytest.fixture
def kube_cluster() -> Iterator[KubeCluster]:
    with running_kube_cluster() as cluster:
        yield cluster


@contextlib.contextmanager
def running_kube_cluster() -> Iterator[KubeCluster]:
    """Three proxy "pods" with Kubernetes discovery against the fake API (mount namespaces:
    root), started; every process stopped on exit (the fixture, and `make chaos` scenario 2k)."""
    workdir = Path(tempfile.mkdtemp(prefix="tokencache-kube-e2e-"))
    fake: FakeKube | None = None
    backend: BackendProcess | None = None
    nodes: list[KubeProxyNode] = []
    try:
        _assert_unshare_works(workdir)
        fake = FakeKube(workdir, namespace=NAMESPACE).start()
        _assert_cert_valid_for_loopback(fake)
        sa_dir = workdir / "serviceaccount"
        sa_dir.mkdir()
        (sa_dir / "token").write_text(fake.token)
        (sa_dir / "ca.crt").write_bytes(fake.ca_path.read_bytes())
        (sa_dir / "namespace").write_text(NAMESPACE)
        backend = BackendProcess(workdir).start()
        peer_port = _shared_free_port(POD_IPS)
        for i, ip in enumerate(POD_IPS):
            name = f"tokencache-proxy-{i}"
            fake.add_pod(name, ip=ip, labels=LABELS, ready=True)
            port, health, metrics = free_port(), free_port(), free_port()
            env = base_env(
                {
                    "BACKEND_URL": backend.url,
                    "BACKEND_TIMEOUT": "10s",
                    "LISTEN_ADDR": f"127.0.0.1:{port}",
                    "GROUPCACHE_PORT": f"{ip}:{peer_port}",
                    "GROUPCACHE_PEER_SECRET": PEER_SECRET,
                    "HEALTH_ADDR": f"127.0.0.1:{health}",
                    "METRICS_ADDR": f"127.0.0.1:{metrics}",
                    "POD_IP": ip,
                    "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                    "KUBERNETES_SERVICE_PORT": str(fake.port),
                    "KUBEGROUP_LABEL_SELECTOR": SELECTOR,
                    "KUBEGROUP_DEBOUNCE": "100ms",
                    "SHUTDOWN_TIMEOUT": "5s",
                    "TRACE": "false",
                }
            )
            # The last pod leaves PEER_DISCOVERY at its default (auto): KUBERNETES_SERVICE_HOST
            # alone must select Kubernetes discovery.
            if i < len(POD_IPS) - 1:
                env["PEER_DISCOVERY"] = "kubernetes"
            log = workdir / f"proxy-{i}.log"
            nodes.append(
                KubeProxyNode(
                    *(i, port, peer_port, health, metrics, log, env),
                    pod_ip=ip,
                    pod_name=name,
                    sa_dir=sa_dir,
                )
            )
        # A pod of another app with an IP of its own: the selector must leave it out.
        fake.add_pod("unrelated", ip="127.0.0.9", labels={"app": "other"}, ready=True)
        for node in nodes:
            node.start()
        yield KubeCluster(fake, backend, nodes)
    finally:
        for node in nodes:  # SIGTERM every PID first, so they drain in parallel
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in nodes:
            node.stop()
        if backend is not None:
            backend.stop()
        if fake is not None:
            fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _count(backend: BackendProcess, target: str) -> int:
    return int(backend.stats()["by_target"].get(target, 0))


async def _burst(urls: list[str]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(urls), max_keepalive_connections=len(urls))
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        return await asyncio.gather(*(client.get(u) for u in urls))


def _started_record(node: KubeProxyNode) -> dict[str, object]:
    for line in node.log_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("msg") == "proxy started":
                return dict(record)
    raise AssertionError(f"proxy {node.index} never logged 'proxy started':\n{node.log_text()}")


def _has_peers(node: KubeProxyNode, peers: int) -> bool:
    return node.kube_peers() == peers


def _owner(peer_urls: list[str], target: str) -> str:
    # The http group's key for a plain GET without Vary (as tests/test_proxy_e2e.py uses).
    return tokencache.Ring(peer_urls).owner(f"GET {target}") or ""


def test_proxies_discover_each_other_through_the_kubernetes_api(
    kube_cluster: KubeCluster,
) -> None:
    c = kube_cluster
    nodes = c.nodes
    for node in nodes:
        c.wait(node.ready, f"proxy {node.index} ready")
    for node in nodes:
        c.wait(
            functools.partial(_has_peers, node, 3), f"proxy {node.index}: kubegroup_ready_peers 3"
        )
    for node in nodes:
        # unshare and sh exec'd: the PID teardown signals is the proxy itself.
        argv = Path(f"/proc/{node.pid}/cmdline").read_bytes().split(b"\0")
        assert argv[1:3] == [b"-m", b"tokencache.proxy"], argv
        started = _started_record(node)
        assert started["peer_discovery"] == "kubernetes"
        assert started["self_url"] == node.peer_url
    # The bind mounts are private to the proxies: the host's path does not show the test token.
    host_token = Path(SA_MOUNT, "token")
    assert not host_token.exists() or host_token.read_text() != c.fake.token
    # The real client authenticated with the mounted token and verified the mounted CA.
    requests = c.fake.requests()
    assert requests.get("unauthorized", 0) == 0
    assert requests.get("list", 0) >= 3
    assert requests.get("watch", 0) >= 3

    # One URL, 150 concurrent GETs over the three pods: the key's owner loads it once.
    target = "/kube/burst?delay=1&size=512"
    responses = asyncio.run(_burst([nodes[i % 3].url + target for i in range(BURST)]))
    assert [r.status_code for r in responses] == [200] * BURST
    assert len({r.content for r in responses}) == 1
    assert responses[0].content.startswith(f"{target} #1\n".encode())
    assert _count(c.backend, target) == 1
    # Every pod built the same ring from the API: the owner it predicts did the one load.
    ring_urls = [n.peer_url for n in nodes]
    owner = _owner(ring_urls, target)
    loads = {n.peer_url: n.http_counter("local_load") for n in nodes}
    assert loads == {u: (1.0 if u == owner else 0.0) for u in ring_urls}

    # Pod 2 turns not Ready: the other two drop it from their rings.
    leaving = nodes[2]
    c.fake.set_ready(leaving.pod_name, False)
    survivors = nodes[:2]
    for node in survivors:
        c.wait(
            functools.partial(_has_peers, node, 2), f"proxy {node.index}: kubegroup_ready_peers 2"
        )
    # A fresh URL the three-pod ring gave to the leaving pod: it must now be loaded by a survivor,
    # once, and the leaving pod (still running) must not be asked.
    fresh = next(
        t
        for t in (f"/kube/fresh/{i}?delay=0.5" for i in range(1000))
        if _owner(ring_urls, t) == leaving.peer_url
    )
    asked_before = leaving.http_counter("server_requests")
    loads_before = leaving.http_counter("local_load")
    urls = [survivors[i % 2].url + fresh for i in range(40)]
    responses = asyncio.run(_burst(urls))
    assert [r.status_code for r in responses] == [200] * len(urls)
    assert len({r.content for r in responses}) == 1
    assert _count(c.backend, fresh) == 1
    assert leaving.http_counter("server_requests") == asked_before
    assert leaving.http_counter("local_load") == loads_before
    new_owner = _owner([n.peer_url for n in survivors], fresh)
    survivor_loads = {n.peer_url: n.http_counter("local_load") for n in survivors}
    assert survivor_loads[new_owner] == loads[new_owner] + 1

    # Clean exits, and neither the service-account token nor the peer secret reached a log.
    codes = []
    for node in nodes:
        codes.append(node.stop())
    assert codes == [0, 0, 0], c.logs()
    logs = c.logs()
    assert c.fake.token not in logs
    assert PEER_SECRET not in logs
