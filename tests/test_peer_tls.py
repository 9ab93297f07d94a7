"""Mutual TLS on the peer port, against real processes: a 3-peer cluster over mTLS loads each key
once; a client without a certificate, one with a certificate from another CA and one speaking
plain TCP are all refused (and told nothing)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from tests.support.engine_cluster import EnginePeer, start_engine_peers, stop_all
from tokencache import PeerError, WireTransport, peer_tls_contexts

SECRET = "cluster-test-secret"


def _write(tmp: Path, ca: trustme.CA, name: str) -> tuple[str, str, str]:
    cert = ca.issue_cert("127.0.0.1", "peer.cluster.local")
    paths = (tmp / f"{name}.crt", tmp / f"{name}.key", tmp / f"{name}-ca.crt")
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths[1]))
    cert.cert_chain_pems[0].write_to_path(str(paths[0]))
    ca.cert_pem.write_to_path(str(paths[2]))
    return str(paths[0]), str(paths[1]), str(paths[2])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str, str]]:
    tmp = tmp_path_factory.mktemp("pki")
    return {
        "cluster": _write(tmp, trustme.CA(), "cluster"),
        "other": _write(tmp, trustme.CA(), "other"),
    }


@pytest.fixture(scope="module")
def cluster(pki: dict[str, tuple[str, str, str]]) -> Iterator[list[EnginePeer]]:
    cert, key, ca = pki["cluster"]
    peers = start_engine_peers(
        3, "--load-delay", "0.3", "--tls-cert", cert, "--tls-key", key, "--tls-ca", ca
    )
    try:
        yield peers
    finally:
        stop_all(peers)


async def test_three_processes_over_mutual_tls_load_each_key_once(
    cluster: list[EnginePeer],
) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def get(peer: EnginePeer, key: str) -> bytes:
            async with session.post(peer.control_url + "/get", data=key.encode()) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.read()

        keys = [f"tls-key-{i}" for i in range(10)]
        values = await asyncio.wait_for(
            asyncio.gather(*(get(cluster[i % 3], keys[i % 10]) for i in range(300))), 30
        )
        for i, value in enumerate(values):
            assert value.startswith(keys[i % 10].encode() + b"|")
        assert len(set(values)) == 10
        stats = []
        for peer in cluster:
            async with session.get(peer.control_url + "/stats") as resp:
                stats.append(json.loads(await resp.read()))
    assert sum(s["loader_runs"] for s in stats) == 10  # once per key for the cluster
    assert sum(s["peer_errors"] for s in stats) == 0
    assert sum(s["peer_loads"] for s in stats) >= 1  # keys did cross the TLS hop


async def test_clients_without_a_cluster_certificate_are_refused(
    cluster: list[EnginePeer], pki: dict[str, tuple[str, str, str]]
) -> None:
    cert, key, ca = pki["cluster"]
    url = cluster[0].url
    no_cert = ssl.create_default_context(cafile=ca)  # trusts the server, presents nothing
    _, other_client = peer_tls_contexts(*pki["other"])  # a certificate from another CA
    other_client.load_verify_locations(ca)  # ...even trusting ours for the server side
    for context in (no_cert, other_client, None):  # None: plain TCP to a TLS port
        transport = WireTransport(secret=SECRET, ssl=context, liveness_timeout=2.0)
        try:
            with pytest.raises(PeerError) as caught:
                await transport.fetch(url, "g", "k")
            assert caught.value.unreachable
        finally:
            await transport.close()
    _, good = peer_tls_contexts(cert, key, ca)
    transport = WireTransport(secret=SECRET, ssl=good)
    try:  # the same port still serves a member
        assert (await transport.fetch(url, "g", "member")).value.startswith(b"member|")
    finally:
        await transport.close()
    assert all(p.proc.alive() for p in cluster)
    assert "Traceback" not in cluster[0].proc.output()
