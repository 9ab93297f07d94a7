"""The garbage collector's settings for a started proxy.

A cache process holds many long-lived container objects — cache entries, remembered request heads,
ready hit responses — and makes more as its working set turns over. With CPython's default
thresholds (700, 10, 10) every few tens of thousands of allocations a full collection walks all of
them: a lone proxy serving 30,000 cached 1 KiB URLs spent about a fifth of its CPU in the collector,
with 100-150 ms pauses at p99 (wrk, 64 connections). So, once started:

- everything made so far (modules, settings, the app) is frozen out of the collector's sight;
- a young collection runs every 20,000 net allocations instead of 700, and a full one is considered
  every 100 middle ones instead of 10 (CPython still runs it only when the objects that survived
  since the last one are a quarter of all). Reference cycles are still found, later: most of the
  ones a request leaves (an exception's traceback, a cancelled task) die young;
- the ones that survive to the oldest generation would now wait for a full collection far longer
  (a review measured 35,700 objects of cyclic garbage waiting after 10,000 failing requests, against
  3,800 with the defaults), so a full collection also runs every `FULL_EVERY` seconds
  (`collect_periodically`): one pause a minute, garbage bounded by about a minute of traffic.

Measured side by side on a lone proxy started as `scripts.bench_cluster` starts it (30,000 cached
1 KiB URLs, wrk -t2 -c64 with its random-URL script, the thresholds set per run from a
``sitecustomize``): 12,300-14,600 req/s at p99 118-152 ms with the defaults, 18,900-22,200 req/s
at p99 10-12 ms with these — the same as with the collector off. `make bench`'s lone 30,000-key
row moved from 10,740 req/s (p99 171 ms) to 15,937-18,044 req/s (p99 15-20 ms) across runs.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable

__all__ = ["FULL_EVERY", "THRESHOLDS", "collect_periodically", "restore", "settle"]

THRESHOLDS = (20_000, 20, 100)
FULL_EVERY = 60.0


def settle() -> tuple[int, int, int]:
    """Collect, freeze what exists and set `THRESHOLDS` (call once the process has started);
    the thresholds before, for `restore`."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    return before


def restore(before: tuple[int, int, int]) -> None:
    """Undo `settle` (a service stopped in a process that goes on: an embedding, a test)."""
    gc.set_threshold(*before)
    gc.unfreeze()


async def collect_periodically(
    every: float = FULL_EVERY,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    collect: Callable[[], object] = gc.collect,
) -> None:
    """A full collection every `every` seconds, until cancelled."""
    while True:
        await sleep(every)
        collect()
