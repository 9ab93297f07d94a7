"""Scenario 3: a partitioned and a slow peer, engine peers in network namespaces (needs root).

There is no skip: CI runs as root with iproute2, so a lab that cannot be built fails the test.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.chaos_partition import partition
from tests.support.netns import NetLab
from tests.support.proxy_cluster import base_env

pytestmark = pytest.mark.slow


def test_partitioned_and_slow_peers_cost_at_most_the_peer_timeout() -> None:
    report = partition(keys=60, peer_timeout=0.5)
    assert not report.failed(), str(report)


def test_lab_is_private_and_torn_down() -> None:
    lab = NetLab(2)
    with lab:
        # The lab's /24 is not routed from the machine's own namespace.
        route = subprocess.run(
            ["ip", "route", "get", lab.address(0)], capture_output=True, text=True, check=False
        )
        assert "dev tchub" not in route.stdout
        local = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True)
        assert lab.prefix not in local.stdout
        # Inside, host 0 reaches host 1 (a real listener there, a real connect from here).
        env = base_env()
        server = [sys.executable, "-m", "tests.support.chaos_netpeer", "serve"]
        server += ["--host", lab.address(1), "--peers", f"http://{lab.address(1)}:7000"]
        lab.spawn(1, server, env)
        probe = (
            "import socket,sys,time\n"
            "for _ in range(100):\n"
            "    try:\n"
            f"        socket.create_connection(('{lab.address(1)}', 7000), 1).close(); sys.exit(0)\n"
            "    except OSError: time.sleep(0.1)\n"
            "sys.exit(1)\n"
        )
        assert lab.spawn(0, [sys.executable, "-c", probe], env).wait(timeout=30) == 0
    assert lab.leftovers() == []
