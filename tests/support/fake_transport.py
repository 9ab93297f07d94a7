"""An in-process stand-in for an asyncio transport under a public-port `Connection` (unit tests)."""

from __future__ import annotations

from typing import Any


class FakeTransport:
    """What a Connection needs of a transport, recording what is written."""

    def __init__(self, peer: str = "127.0.0.1") -> None:
        self.out = bytearray()
        self.closed = False
        self.peer = peer

    def write(self, data: bytes) -> None:
        self.out += data

    def get_extra_info(self, name: str) -> Any:
        return (self.peer, 40000) if name == "peername" else None

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass
