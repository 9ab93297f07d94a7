"""Issue 12's rollout figure, asserted: a rolling restart of two of three real proxies (static
peers, 300 keys cached, load in rotation) reloads at most 1 % of the keys, with 0 client errors.

The scenario lives in tests/support/chaos_rollout.py; `make chaos` prints the same figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chaos_rollout import rollout

pytestmark = pytest.mark.slow


async def test_rolling_restart_reloads_at_most_one_percent_of_the_keys(tmp_path: Path) -> None:
    report = await rollout(tmp_path, keys=300, restarts=2, gap=1.0)
    assert not report.failed(), str(report)
    assert report.value("keys loaded once before the rollout") == 300, str(report)
    assert report.value("client errors") == 0, str(report)
    assert int(report.value("keys loaded again during the rollout")) <= 3, str(report)
    assert int(report.value("requests sent")) > 300, str(report)
