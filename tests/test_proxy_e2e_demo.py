"""`python -m tokencache.proxy.demo`: the demo runs end to end, reports one backend and one token
request, needs nothing from the test tree, and stops on SIGINT even when a script started it in the
background (where SIGINT starts out ignored)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.proxy_cluster import base_env

pytestmark = pytest.mark.slow


def test_demo_once_shows_miss_hit_and_single_fetches(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tokencache.proxy.demo", "--once"],
        cwd=tmp_path,  # not the repository: the test tree cannot be imported
        env=_no_repo_path(),
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


def _no_repo_path() -> dict[str, str]:
    env = base_env()
    env.pop("PYTHONPATH", None)
    return env


def test_sigint_stops_a_demo_started_in_the_background_by_a_script(tmp_path: Path) -> None:
    # A non-interactive shell starts background jobs with SIGINT ignored.
    script = f"{sys.executable} -m tokencache.proxy.demo & echo demo-pid $!; wait"
    shell = subprocess.Popen(
        ["sh", "-c", script],
        cwd=tmp_path,
        env=_no_repo_path(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert shell.stdout is not None
    lines: list[str] = []
    demo_pid = 0
    try:
        end = time.monotonic() + 120
        for line in shell.stdout:
            lines.append(line)
            if line.startswith("demo-pid "):
                demo_pid = int(line.split()[1])
            if line.startswith("running;") or time.monotonic() > end:
                break
        assert demo_pid and any(x.startswith("running;") for x in lines), "".join(lines)
        os.kill(demo_pid, signal.SIGINT)
        rest, _ = shell.communicate(timeout=60)
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
    out = "".join(lines) + rest
    assert shell.returncode == 0, out
    assert out.rstrip().endswith("stopped"), out
    for pid in re.findall(r"PID (\d+)", out):
        assert subprocess.run(["kill", "-0", pid], capture_output=True, check=False).returncode != 0
