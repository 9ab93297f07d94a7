"""Slow is not dead, frozen is found in seconds: real peer processes on loopback.

A load that takes longer than the liveness timeout is kept alive by heartbeats (one load for the
cluster, no peer error); an owner frozen with SIGSTOP under a pooled connection costs its callers
the liveness timeout, after which they get their value loaded locally.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.support.engine_cluster import EnginePeer, start_engine_peers, stop_all
from tokencache import Ring

LIVENESS = 1.0
LOAD = 2.0  # twice the liveness timeout


@pytest.fixture
def cluster() -> Iterator[list[EnginePeer]]:
    peers = start_engine_peers(
        3, "--liveness", str(LIVENESS), "--peer-timeout", "30", "--load-delay", str(LOAD)
    )
    try:
        yield peers
    finally:
        for peer in peers:  # a stopped process must run again to handle SIGTERM
            if peer.proc.alive():
                os.kill(peer.proc.pid, signal.SIGCONT)
        stop_all(peers)


async def _get(session: aiohttp.ClientSession, peer: EnginePeer, key: str) -> bytes:
    async with session.post(peer.control_url + "/get", data=key.encode()) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def _stats(session: aiohttp.ClientSession, peer: EnginePeer) -> dict[str, float]:
    async with session.get(peer.control_url + "/stats") as resp:
        return json.loads(await resp.read())


def _owned_by(owner: EnginePeer, cluster: list[EnginePeer], n: int) -> list[str]:
    ring = Ring([p.url for p in cluster])
    keys = (f"key-{i}" for i in range(10_000))
    return [k for k in keys if ring.owner(k) == owner.url][:n]


async def test_a_load_slower_than_the_liveness_timeout_is_not_a_dead_owner(
    cluster: list[EnginePeer],
) -> None:
    caller, owner = cluster[0], cluster[1]
    (key,) = _owned_by(owner, cluster, 1)
    async with aiohttp.ClientSession() as session:
        values = await asyncio.wait_for(
            asyncio.gather(*(_get(session, cluster[i % 3], key) for i in range(60))), 30
        )
        stats = [await _stats(session, p) for p in cluster]
    assert len(set(values)) == 1
    assert str(owner.proc.pid).encode() in values[0]  # the owner loaded it
    assert sum(s["loader_runs"] for s in stats) == 1
    assert sum(s["peer_errors"] for s in stats) == 0
    assert stats[0]["peer_loads"] >= 1 and caller is cluster[0]


async def test_an_owner_frozen_under_a_pooled_connection_costs_the_liveness_timeout(
    cluster: list[EnginePeer],
) -> None:
    caller, owner = cluster[0], cluster[1]
    warm, frozen_key = _owned_by(owner, cluster, 2)
    async with aiohttp.ClientSession() as session:
        await _get(session, caller, warm)  # opens and pools the caller's connection to the owner
        os.kill(owner.proc.pid, signal.SIGSTOP)
        began = time.monotonic()
        value = await asyncio.wait_for(_get(session, caller, frozen_key), 30)
        elapsed = time.monotonic() - began
        stats = await _stats(session, caller)
        os.kill(owner.proc.pid, signal.SIGCONT)
    assert value.startswith(frozen_key.encode() + b"|" + str(caller.proc.pid).encode())
    # liveness timeout to give up on the owner, then the caller's own load, plus scheduling
    assert elapsed < LIVENESS + LOAD + 1.0, elapsed
    assert elapsed >= LIVENESS
    assert stats["peer_errors"] >= 1
