"""The backend client is never handed more requests than its pool holds (issue 9).

httpcore's pool re-scans every queued request on each event: 20,000 concurrent misses queued
there stalled a real proxy's event loop for minutes (no /ready, no hits). `BackendSender` keeps
the excess waiting on its own semaphore instead, for at most the backend timeout.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tokencache.proxy._forward import MAX_BACKEND_CONNECTIONS, BackendSender
from tokencache.proxy._metrics import ProxyMetrics


def sender_for(handler: httpx.AsyncBaseTransport, timeout: float) -> BackendSender:
    client = httpx.AsyncClient(transport=handler)
    return BackendSender(
        client=client, fresh_client=client, timeout=timeout, auth=None, metrics=ProxyMetrics()
    )


async def test_at_most_the_pool_size_is_inside_the_client_at_once() -> None:
    inside = peak = 0
    release = asyncio.Event()

    async def handle(_: httpx.Request) -> httpx.Response:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await release.wait()
        inside -= 1
        return httpx.Response(200, content=b"ok")

    sender = sender_for(httpx.MockTransport(handle), timeout=30.0)
    n = MAX_BACKEND_CONNECTIONS * 3

    async def one(i: int) -> int:
        response = await sender.send(httpx.Request("GET", f"http://b/{i}"), retry=False)
        await sender.release(response)
        return response.status_code

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    for _ in range(50):
        await asyncio.sleep(0)
    assert peak == MAX_BACKEND_CONNECTIONS
    release.set()
    async with asyncio.timeout(30):
        assert await asyncio.gather(*tasks) == [200] * n
    assert peak == MAX_BACKEND_CONNECTIONS


async def test_a_request_that_waits_longer_than_the_timeout_is_a_pool_timeout() -> None:
    release = asyncio.Event()

    async def handle(_: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200)

    sender = sender_for(httpx.MockTransport(handle), timeout=0.2)
    busy = [
        asyncio.create_task(sender.send(httpx.Request("GET", f"http://b/{i}"), retry=False))
        for i in range(MAX_BACKEND_CONNECTIONS)
    ]
    await asyncio.sleep(0.01)
    with pytest.raises(httpx.PoolTimeout):
        await sender.send(httpx.Request("GET", "http://b/late"), retry=False)
    release.set()
    async with asyncio.timeout(10):
        await asyncio.gather(*busy)
