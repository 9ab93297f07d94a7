"""Singleflight with event gates: one execution, shared errors, cancellation isolation."""

from __future__ import annotations

import asyncio

import pytest

from tokencache import SingleFlight


async def test_concurrent_calls_share_one_execution() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    tasks = [asyncio.create_task(flight.do("k", work)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert runs == 1
    assert [r for r, _ in results] == [42] * 50
    assert sum(shared for _, shared in results) == 49
    assert len(flight) == 0


async def test_error_reaches_every_waiter_and_is_not_remembered() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    runs = 0

    async def failing() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        raise RuntimeError("boom")

    tasks = [asyncio.create_task(flight.do("k", failing)) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert runs == 1

    async def ok() -> int:
        return 7

    assert await flight.do("k", ok) == (7, False)


async def test_cancelled_caller_does_not_cancel_shared_work() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    gate = asyncio.Event()
    finished = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        finished.set()
        return "done"

    first = asyncio.create_task(flight.do("k", work))
    second = asyncio.create_task(flight.do("k", work))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == ("done", True)
    assert finished.is_set()


async def test_work_completes_even_when_every_caller_gives_up() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    gate = asyncio.Event()
    finished = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        finished.set()
        return "stored"

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(flight.do("k", work), timeout=0.01)
    gate.set()
    await asyncio.wait_for(finished.wait(), timeout=5)


async def test_different_keys_run_independently() -> None:
    flight: SingleFlight[str, str] = SingleFlight()

    async def work(name: str) -> str:
        return name

    a, b = await asyncio.gather(
        flight.do("a", lambda: work("a")), flight.do("b", lambda: work("b"))
    )
    assert (a, b) == (("a", False), ("b", False))
