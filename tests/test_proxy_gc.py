"""The collector's settings once a proxy has started (`proxy._gc.settle`)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from tokencache.proxy._gc import THRESHOLDS, collect_periodically, restore, settle


def test_settle_freezes_what_exists_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        made_before = [object() for _ in range(3)]
        assert settle() == before
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() >= len(made_before)
        # Cycles are still collected: a young one made after is found by a collection.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        restore(before)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_a_full_collection_runs_periodically() -> None:
    slept: list[float] = []
    collected: list[int] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) > 3:
            raise asyncio.CancelledError  # the service cancels it on shutdown

    with pytest.raises(asyncio.CancelledError):
        await collect_periodically(30.0, sleep=sleep, collect=lambda: collected.append(1))
    assert slept == [30.0] * 4
    assert len(collected) == 3  # one after each full interval
