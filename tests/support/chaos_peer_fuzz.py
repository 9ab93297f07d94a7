"""Scenario 5 for the peer port: hostile bytes against a real process speaking the peer protocol.

`fuzz_peer` drives hypothesis (bounded by ``examples``) over whole connections written to a socket:
random bytes from the first byte, hellos with any one byte replaced (versions, flags, magic),
random bytes after a good handshake, oversized and undersized length prefixes, every frame type
byte 0x00-0xFF, and valid-looking frames whose MACs come from a key the server never issued. The
server must refuse every one of them (a refusal hello, an ERROR frame or a closed connection, never
a VALUE or OK), stay alive and answer quickly; RSS is read before and after.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import peer_wire as pw
from tests.support.chaos_load import rss_kib

__all__ = ["PeerFuzzResult", "fuzz_peer"]


@dataclass
class PeerFuzzResult:
    """What a peer fuzz run saw."""

    tried: int = 0
    served: list[bytes] = field(default_factory=list)  # inputs that got a VALUE or OK: must be []
    slow: list[bytes] = field(default_factory=list)  # connections not settled within 2 s
    rss_before_kib: int = 0
    rss_after_kib: int = 0


_frame = st.tuples(
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=64),
    st.integers(0, 2**32 - 1),
)


def _connection(
    port: int, secret: bytes, stage: str, byte: int, data: bytes, frames: list
) -> list[int]:
    kinds: list[int] = []
    with pw.WireClient(port, secret, timeout=5.0) as c:
        try:
            if stage == "raw":
                c.send(bytes([byte]) + data)
            elif stage == "hello":
                hello = bytearray(pw.client_hello())
                hello[byte % len(hello)] = byte
                c.send(bytes(hello) + data)
            else:
                c.handshake()
                if stage == "session":
                    c.send(bytes([byte]) + data)
                elif stage == "length":
                    length = frames[0][3] if frames else byte
                    c.send(struct.pack("!IBI", length, byte, 1) + data)
                else:
                    c.send_key = bytes(32)  # MACs from a key the server never issued
                    c.send(b"".join(c.frame(k, r, p) for k, r, p, _ in frames) + data)
            c.sock.shutdown(socket.SHUT_WR)  # EOF: the server settles what it got
            for _ in range(4):
                kinds.append(c.read_frame()[0])
        except (pw.WireError, OSError, AssertionError):
            pass
    return kinds


def fuzz_peer(port: int, pid: int, secret: bytes, *, examples: int) -> PeerFuzzResult:
    """Fuzz the peer port of process ``pid`` with ``examples`` connections."""
    result = PeerFuzzResult(rss_before_kib=rss_kib(pid))

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.sampled_from(["raw", "hello", "session", "length", "frames"]),
        st.integers(0, 255),
        st.binary(max_size=512),
        st.lists(_frame, max_size=4),
    )
    def one(stage: str, byte: int, data: bytes, frames: list) -> None:
        began = time.monotonic()
        kinds = _connection(port, secret, stage, byte, data, frames)
        result.tried += 1
        if time.monotonic() - began > 2.0:
            result.slow.append(bytes([byte]) + data[:100])
        if pw.VALUE in kinds or pw.OK in kinds:
            result.served.append(bytes([byte]) + data[:100])

    one()
    result.rss_after_kib = rss_kib(pid)
    return result
