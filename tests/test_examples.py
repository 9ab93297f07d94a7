"""The README's runnable examples run and print what the README says."""

from __future__ import annotations

import subprocess
import sys

from tests.support.processes import ROOT


def test_engine_quickstart_loads_once() -> None:
    out = subprocess.run(
        [sys.executable, "examples/engine_quickstart.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "thumbnail of cat.jpg" in out
    assert out.strip().endswith("loads in the cluster: 1")
