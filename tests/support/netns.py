"""Several hosts on one machine: network namespaces on a private bridge, for partition tests.

Theory of operation: `NetLab` makes one hub namespace holding a bridge and N host namespaces, each
joined to the bridge by a veth pair and given ``<prefix>.<i+1>/24``. That /24 exists only inside the
namespaces the lab created: the machine's own namespace gets no address and no route to it, so
nothing a test sends can reach anything else. Faults are applied inside one host's namespace:
`cut` takes its interface down (packets vanish; connections time out), `rate_limit` adds a ``tc
tbf`` qdisc. `close` kills the processes started through `spawn` (by PID) and deletes every
namespace (which destroys the veths), and is safe to call after a half-finished `open`.

Needs root and iproute2. A failing ``ip`` command raises `NetLabError` (tests must fail, not skip).
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Self

__all__ = ["NetLab", "NetLabError"]

_IP_TIMEOUT = 20.0


class NetLabError(RuntimeError):
    """An ``ip``/``tc`` command failed: no root, no iproute2, or a kernel without the feature."""


def _run(*args: str) -> str:
    done = subprocess.run(
        list(args), capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise NetLabError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


class NetLab:
    """``hosts`` namespaces on one private bridge; a context manager."""

    def __init__(self, hosts: int, prefix: str = "10.213.77") -> None:
        tag = uuid.uuid4().hex[:6]
        self.tag = tag
        self.prefix = prefix
        self.hub = f"tchub{tag}"
        self.names = [f"tch{tag}n{i}" for i in range(hosts)]
        self._made: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def address(self, host: int) -> str:
        """The IPv4 address of ``host`` (only reachable from inside the lab)."""
        return f"{self.prefix}.{host + 1}"

    def open(self) -> Self:
        """Create the hub, the hosts and their links."""
        try:
            self._add_ns(self.hub)
            _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.hub, "link", "set", "br0", "up")
            for i, ns in enumerate(self.names):
                self._add_ns(ns)
                hub_end, host_end = f"v{self.tag}h{i}", f"v{self.tag}p{i}"
                _run("ip", "link", "add", hub_end, "type", "veth", "peer", "name", host_end)
                _run("ip", "link", "set", hub_end, "netns", self.hub)
                _run("ip", "link", "set", host_end, "netns", ns)
                _run("ip", "-n", self.hub, "link", "set", hub_end, "master", "br0")
                _run("ip", "-n", self.hub, "link", "set", hub_end, "up")
                _run("ip", "-n", ns, "link", "set", host_end, "name", "eth0")
                _run("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def _add_ns(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self._made.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def spawn(self, host: int, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``args`` inside ``host``'s namespace (``ip netns exec`` execs it: same PID)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.names[host], *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._procs.append(proc)
        return proc

    def cut(self, host: int) -> None:
        """Partition ``host``: its link goes down, what is sent to it is lost."""
        _run("ip", "-n", self.names[host], "link", "set", "eth0", "down")

    def rate_limit(self, host: int, rate: str = "128kbit") -> None:
        """Slow ``host``'s egress with a token bucket (``tc tbf``)."""
        _run(
            *("ip", "netns", "exec", self.names[host], "tc", "qdisc", "add", "dev", "eth0"),
            *("root", "tbf", "rate", rate, "burst", "4kb", "latency", "5s"),
        )

    def close(self) -> None:
        """Kill what `spawn` started (by PID), then delete every namespace. Idempotent."""
        procs, self._procs = self._procs, []
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        made, self._made = self._made, []
        for ns in reversed(made):
            with contextlib.suppress(NetLabError, subprocess.TimeoutExpired):
                _run("ip", "netns", "del", ns)

    def leftovers(self) -> list[str]:
        """Namespaces of this lab that still exist (empty after `close`)."""
        listed = _run("ip", "netns", "list")
        return [ns for ns in (self.hub, *self.names) if ns in listed]

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
