"""Real proxies whose peer port runs mutual TLS (GROUPCACHE_TLS_CERT/KEY/CA, as the chart mounts a
cert-manager Secret): the cluster still loads each key once, and a client without a certificate
gets nothing from the peer port."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Iterator

import httpx
import pytest
import trustme

from tests.support.proxy_cluster import PEER_SECRET, BackendProcess, ProxyCluster
from tokencache import PeerError, WireTransport


@pytest.fixture(scope="module")
def tls_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ProxyCluster, BackendProcess, str]]:
    work = tmp_path_factory.mktemp("peer-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("tokencache-peer.shop.svc")  # a name no peer URL carries: not checked
    cert.cert_chain_pems[0].write_to_path(str(work / "tls.crt"))
    cert.private_key_pem.write_to_path(str(work / "tls.key"))
    ca.cert_pem.write_to_path(str(work / "ca.crt"))
    env = {
        "GROUPCACHE_TLS_CERT": str(work / "tls.crt"),
        "GROUPCACHE_TLS_KEY": str(work / "tls.key"),
        "GROUPCACHE_TLS_CA": str(work / "ca.crt"),
        "BACKEND_TIMEOUT": "5s",
    }
    with BackendProcess(work) as backend, ProxyCluster(3, backend.url, work, env=env) as cluster:
        yield cluster, backend, str(work / "ca.crt")


async def test_three_proxies_over_mutual_tls_make_one_backend_request_per_key(
    tls_cluster: tuple[ProxyCluster, BackendProcess, str],
) -> None:
    cluster, backend, _ = tls_cluster
    targets = [f"/tls/{uuid.uuid4().hex[:12]}?delay=0.3" for _ in range(6)]
    async with httpx.AsyncClient(timeout=30.0) as client:
        responses = await asyncio.gather(
            *(client.get(cluster.nodes[i % 3].url + targets[i % 6]) for i in range(90))
        )
    assert [r.status_code for r in responses] == [200] * 90
    by_target = backend.stats()["by_target"]
    assert [int(by_target.get(t, 0)) for t in targets] == [1] * 6
    assert "Traceback" not in cluster.logs()


async def test_the_peer_port_refuses_a_client_without_a_certificate(
    tls_cluster: tuple[ProxyCluster, BackendProcess, str],
) -> None:
    cluster, _, ca = tls_cluster
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    transport = WireTransport(secret=PEER_SECRET, ssl=context, liveness_timeout=3.0)
    try:
        with pytest.raises(PeerError) as caught:
            await transport.fetch(cluster.nodes[0].peer_url, "http", "GET /tls/x")
        assert caught.value.unreachable
    finally:
        await transport.close()
