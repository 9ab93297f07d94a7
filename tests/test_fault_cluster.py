"""Scenarios 1 and 2: a peer killed under load, and a rolling restart (real proxies on loopback).

Short versions of what `make chaos` runs for longer; each is bounded in requests and seconds.
The figures come from tests/support/chaos_cluster.py; a failing figure prints the whole table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chaos_cluster import peer_killed, rolling_restart

pytestmark = pytest.mark.slow


async def test_peer_killed_under_load_keeps_survivors_whole(tmp_path: Path) -> None:
    report = await peer_killed(tmp_path, duration=5.0, max_requests=2500, keys=40)
    assert not report.failed(), str(report)
    assert report.value("requests sent") > 100, str(report)
    assert report.value("keys never loaded") == 0, str(report)
    assert report.value("keys owned by the killed node") > 0, str(report)


async def test_rolling_restart_loses_and_hangs_nothing(tmp_path: Path) -> None:
    report = await rolling_restart(tmp_path, duration=60.0, max_requests=20_000, keys=40, gap=0.3)
    assert not report.failed(), str(report)
    assert report.value("requests sent") > 100, str(report)
