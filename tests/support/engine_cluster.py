"""Start N engine peers (tests/support/engine_peer.py) as real processes on loopback."""

from __future__ import annotations

from tests.support.net import free_port
from tests.support.processes import Process, wait_http


class EnginePeer:
    """One running engine peer: its peer URL, its control URL and its process."""

    def __init__(self, port: int, control: int, proc: Process) -> None:
        self.port, self.control, self.proc = port, control, proc
        self.url = f"http://127.0.0.1:{port}"
        self.control_url = f"http://127.0.0.1:{control}"


def start_engine_peers(
    n: int, *extra: str, secret: str = "cluster-test-secret"
) -> list[EnginePeer]:
    """Start ``n`` peers that all know each other; wait until each answers; stop all on failure."""
    ports = [(free_port(), free_port()) for _ in range(n)]
    urls = ",".join(f"http://127.0.0.1:{p}" for p, _ in ports)
    peers: list[EnginePeer] = []
    try:
        for port, control in ports:
            proc = Process.python(
                "tests.support.engine_peer",
                *("--port", str(port), "--control-port", str(control), "--peers", urls),
                *("--secret", secret, *extra),
            )
            peers.append(EnginePeer(port, control, proc))
        for peer in peers:
            wait_http(peer.control_url + "/stats", proc=peer.proc)
    except BaseException:
        stop_all(peers)
        raise
    return peers


def stop_all(peers: list[EnginePeer]) -> None:
    """Stop every peer's process."""
    for peer in peers:
        peer.proc.stop()
