"""`make engine-demo`: three engine peers as real processes on loopback, one load serving all.

Starts three processes (tests/support/engine_peer.py: a Workspace with a loader that takes 0.5 s),
asks each of them for the same key 100 times at once, and shows that the loader ran once in the
whole cluster and that every caller got the same value.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.support.net import free_port
from tests.support.processes import Process, wait_http


async def run() -> None:
    ports = [(free_port(), free_port()) for _ in range(3)]
    urls = ",".join(f"http://127.0.0.1:{p}" for p, _ in ports)
    procs = [
        Process.python(
            "tests.support.engine_peer",
            "--port",
            str(p),
            "--control-port",
            str(c),
            "--peers",
            urls,
            "--load-delay",
            "0.5",
            "--secret",
            "demo-peer-secret",
        )
        for p, c in ports
    ]
    try:
        for proc, (_, c) in zip(procs, ports, strict=True):
            wait_http(f"http://127.0.0.1:{c}/stats", proc=proc)
        print(f"3 peers up: {urls}")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def get(i: int) -> bytes:
                url = f"http://127.0.0.1:{ports[i % 3][1]}/get"
                async with session.post(url, data=b"user/42/avatar") as resp:
                    return await resp.read()

            values = await asyncio.gather(*(get(i) for i in range(300)))
            print(
                f"300 concurrent gets of one key over 3 peers -> {len(set(values))} distinct value"
            )
            for i, (_, c) in enumerate(ports):
                async with session.get(f"http://127.0.0.1:{c}/stats") as resp:
                    stats = json.loads(await resp.read())
                print(
                    f"  peer {i}: loader runs {stats['loader_runs']}, gets {stats['gets']}, "
                    f"fetched from owner {stats['peer_loads']}, answered peers {stats['server_requests']}"
                )
    finally:
        for proc in procs:
            proc.stop()


if __name__ == "__main__":
    asyncio.run(run())
