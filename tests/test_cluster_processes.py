"""Real OS processes on loopback: one load per key for the cluster, kill -9 under load, split rings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.engine_cluster import EnginePeer as Peer
from tests.support.engine_cluster import start_engine_peers, stop_all


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[list[Peer]]:
    extra = getattr(request, "param", ())
    peers = start_engine_peers(3, *extra)
    try:
        yield peers
    finally:
        stop_all(peers)


async def _get(session: aiohttp.ClientSession, peer: Peer, key: str) -> tuple[int, bytes]:
    async with session.post(peer.control_url + "/get", data=key.encode()) as resp:
        return resp.status, await resp.read()


async def _stats(session: aiohttp.ClientSession, peer: Peer) -> dict[str, float]:
    async with session.get(peer.control_url + "/stats") as resp:
        return json.loads(await resp.read())


@pytest.mark.parametrize("cluster", [("--load-delay", "0.3")], indirect=True)
async def test_300_concurrent_gets_one_load_cluster_wide(cluster: list[Peer]) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        results = await asyncio.wait_for(
            asyncio.gather(*(_get(session, cluster[i % 3], "one key") for i in range(300))), 30
        )
        assert {status for status, _ in results} == {200}
        assert len({body for _, body in results}) == 1
        stats = [await _stats(session, peer) for peer in cluster]
    assert sum(s["loader_runs"] for s in stats) == 1
    assert sum(s["peer_errors"] for s in stats) == 0


@pytest.mark.parametrize("cluster", [("--load-delay", "0.5", "--peer-timeout", "5")], indirect=True)
async def test_kill_9_of_a_peer_while_gets_are_in_flight(cluster: list[Peer]) -> None:
    victim, survivors = cluster[2], cluster[:2]
    keys = [f"key-{i}" for i in range(30)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [
            asyncio.create_task(_get(session, survivors[i % 2], keys[i % len(keys)]))
            for i in range(200)
        ]
        await asyncio.sleep(0.2)  # gets are now waiting on loaders, some on the victim
        victim.proc.kill9()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert [status for status, _ in results] == [200] * len(results)
        for (_, body), i in zip(results, range(200), strict=True):
            assert body.decode().startswith(keys[i % len(keys)] + "|")
        stats = [await _stats(session, peer) for peer in survivors]
    # keys the victim owned were loaded locally by the survivors, and counted as peer errors
    assert sum(s["peer_errors"] for s in stats) >= 1


@pytest.mark.parametrize(
    "cluster", [("--load-delay", "0.05", "--peer-timeout", "2")], indirect=True
)
async def test_disagreeing_rings_complete_within_the_peer_timeout(cluster: list[Peer]) -> None:
    a, b, _ = cluster
    async with aiohttp.ClientSession() as session:
        # a believes b owns everything; b believes a does.
        await session.post(a.control_url + "/peers", json=[b.url])
        await session.post(b.control_url + "/peers", json=[a.url])
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.wait_for(
            asyncio.gather(*(_get(session, (a, b)[i % 2], f"k{i % 7}") for i in range(60))), 10
        )
        elapsed = loop.time() - started
        assert {status for status, _ in results} == {200}
        stats = [await _stats(session, p) for p in (a, b)]
    assert elapsed < 2.0 + 1.0  # bounded by the peer timeout, not hung
    assert sum(s["crosstalk_refusals"] for s in stats) >= 1
