"""Loopback helpers shared by the tests."""

from __future__ import annotations

import random
import socket


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_LOW = 10000
_HIGH = max(_LOW + 1000, _ephemeral_low())  # exclusive: the kernel's ephemeral range starts here
_PICK = random.Random()
_HANDED_OUT: set[int] = set()  # this test process's picks, never handed out twice


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, below the kernel's ephemeral range.

    A port from bind(("127.0.0.1", 0)) lies in the ephemeral range, so between the moment it is
    handed out and the moment a child process binds it, any outgoing connection on the machine
    (a proxy's peer ping, a test client) may take it as its source port: "address already in
    use". Below that range only listeners compete, and the bind check rules them out.
    """
    for _ in range(200):
        port = _PICK.randrange(_LOW, _HIGH)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range in 200 attempts")


def free_port_range(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive TCP ports on 127.0.0.1 that are all free right now."""
    for _ in range(attempts):
        base = free_port()
        if base + count > 65536:
            continue
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            _HANDED_OUT.update(range(base, base + count))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports in {attempts} attempts")
