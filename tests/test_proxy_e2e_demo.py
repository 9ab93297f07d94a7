"""`python -m proxy.demo --once`: the demo runs end to end and reports one backend and one token request."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.proxy_cluster import REPO, base_env

pytestmark = pytest.mark.slow


def test_demo_once_shows_miss_hit_and_single_fetches() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy.demo", "--once"],
        cwd=REPO,
        env=base_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr + out
    statuses = re.findall(r"Cache-Status: (tokencache; [^,]+),", out)
    assert len(statuses) == 3
    assert statuses[0].startswith("tokencache; fwd=miss")
    assert all(s.startswith("tokencache; hit") for s in statuses[1:])
    assert "backend requests: 1\n" in out
    assert "token requests: 1\n" in out
    assert out.rstrip().endswith("stopped")
    # Every process it started is gone: their PIDs no longer exist.
    for pid in re.findall(r"PID (\d+)", out):
        assert subprocess.run(["kill", "-0", pid], capture_output=True, check=False).returncode != 0
