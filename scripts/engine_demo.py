"""`make engine-demo`: three engine peers as real processes on loopback, one load serving all.

Starts three processes (tests/support/engine_peer.py: a Workspace with a loader that takes 0.5 s),
asks each of them for the same key 100 times at once, and shows that the loader ran once in the
whole cluster and that every caller got the same value.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.support.engine_cluster import start_engine_peers, stop_all


async def run() -> None:
    peers = start_engine_peers(3, "--load-delay", "0.5", secret="demo-peer-secret")
    try:
        print("3 peers up:", ", ".join(p.url for p in peers))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def get(i: int) -> bytes:
                async with session.post(
                    peers[i % 3].control_url + "/get", data=b"user/42/avatar"
                ) as resp:
                    return await resp.read()

            values = await asyncio.gather(*(get(i) for i in range(300)))
            print(
                f"300 concurrent gets of one key over 3 peers -> {len(set(values))} distinct value"
            )
            for i, peer in enumerate(peers):
                async with session.get(peer.control_url + "/stats") as resp:
                    stats = json.loads(await resp.read())
                print(
                    f"  peer {i}: loader runs {stats['loader_runs']}, gets {stats['gets']}, "
                    f"fetched from owner {stats['peer_loads']}, answered peers {stats['server_requests']}"
                )
    finally:
        stop_all(peers)


if __name__ == "__main__":
    asyncio.run(run())
