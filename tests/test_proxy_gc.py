"""The collector's settings once a proxy has started (`proxy._gc.settle`)."""

from __future__ import annotations

import gc

from tokencache.proxy._gc import THRESHOLDS, settle


def test_settle_freezes_what_exists_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        made_before = [object() for _ in range(3)]
        settle()
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() >= len(made_before)
        # Cycles are still collected: a young one made after is found by a collection.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
