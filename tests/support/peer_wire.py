"""A blocking client of the peer protocol written from docs/peer-protocol.md, not from engine code.

Tests use it as the attacker (and the standard) would: craft hellos, proofs and frames byte by
byte, with the right secret or a wrong one, replay or reorder frames, and read what comes back.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import socket
import struct

MAGIC = b"TKCP"
GET, LOOKUP, REMOVE, PUT, LEAVE, PING = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
VALUE, OK, MISS, ERROR, HEARTBEAT = 0x81, 0x82, 0x83, 0x84, 0x85
ERR_NOT_FOUND, ERR_BAD_REQUEST, ERR_TOO_LARGE, ERR_UNAUTHORIZED = 1, 4, 5, 6


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def group_key(group: str, key: bytes) -> bytes:
    """``u8 len | group | u32 len | key``."""
    g = group.encode()
    return struct.pack("!B", len(g)) + g + struct.pack("!I", len(key)) + key


def get_payload(group: str, key: bytes, min_ttl: float = 0.0) -> bytes:
    """A GET payload without context or trace fields."""
    return group_key(group, key) + struct.pack("!d", min_ttl) + b"\x00" + b"\x00"


def client_hello(version: int = 1, flags: int = 1, heartbeat_ms: int = 1000) -> bytes:
    """A client hello with a fresh nonce."""
    return MAGIC + struct.pack("!BBH", version, flags, heartbeat_ms) + os.urandom(32)


class WireError(Exception):
    """The server refused (closed, refusal hello or error frame)."""


class WireClient:
    """One connection to a peer port."""

    def __init__(
        self, port: int, secret: bytes | None, *, timeout: float = 5.0, host: str = "127.0.0.1"
    ) -> None:
        self.secret = secret
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.send_key = self.recv_key = b""
        self.send_seq = self.recv_seq = 0
        self._buf = b""

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def recv_exactly(self, n: int) -> bytes:
        """``n`` bytes, or raise ``WireError`` when the server closes first."""
        while len(self._buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise WireError("reset") from exc
            if not chunk:
                raise WireError(f"closed after {len(self._buf)} bytes")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def handshake(self, *, proof_secret: bytes | None = None) -> bytes:
        """Hello, server hello, proof (signed with ``proof_secret`` if given); the server hello."""
        hello = client_hello(flags=1 if self.secret else 0)
        self.sock.sendall(hello)
        server = self.recv_exactly(72)
        if server[5] != 0:
            raise WireError(f"refused with status {server[5]}")
        transcript = hello + server[:40]
        if self.secret:
            expected = _hmac(self.secret, b"tokencache/1 server proof\x00" + transcript)
            if not hmac.compare_digest(expected, server[40:]):
                raise WireError("server did not prove the secret")
            key = proof_secret or self.secret
            self.sock.sendall(_hmac(key, b"tokencache/1 client proof\x00" + transcript))
            master = _hmac(self.secret, b"tokencache/1 session keys\x00" + transcript)
            self.send_key, self.recv_key = _hmac(master, b"c2s"), _hmac(master, b"s2c")
        return server

    def frame(self, kind: int, rid: int, payload: bytes, *, seq: int | None = None) -> bytes:
        """A frame MAC'd as the ``seq``-th (default: the next) frame of this connection."""
        mac_len = 16 if self.secret else 0
        data = struct.pack("!IBI", 5 + len(payload) + mac_len, kind, rid) + payload
        if not self.secret:
            return data
        if seq is None:
            seq = self.send_seq
            self.send_seq += 1
        return data + _hmac(self.send_key, struct.pack("!Q", seq) + data)[:16]

    def send(self, data: bytes) -> None:
        """Write raw bytes."""
        self.sock.sendall(data)

    def read_frame(self) -> tuple[int, int, bytes]:
        """The next frame from the server, its MAC checked."""
        (length,) = struct.unpack("!I", self.recv_exactly(4))
        rest = self.recv_exactly(length)
        mac_len = 16 if self.secret else 0
        kind, rid = struct.unpack("!BI", rest[:5])
        if mac_len:
            signed = struct.pack("!I", length) + rest[:-mac_len]
            expected = _hmac(self.recv_key, struct.pack("!Q", self.recv_seq) + signed)[:16]
            if not hmac.compare_digest(expected, rest[-mac_len:]):
                raise AssertionError("server frame with a bad MAC")
            self.recv_seq += 1
        return kind, rid, rest[5 : len(rest) - mac_len]

    def answer(self, rid: int) -> tuple[int, bytes]:
        """The answer to ``rid``, skipping heartbeats; ``WireError`` on a connection error."""
        for _ in range(10_000):
            kind, got, payload = self.read_frame()
            if kind == HEARTBEAT:
                continue
            if got == 0 and kind == ERROR:
                raise WireError(f"connection error {payload[0]}")
            if got == rid:
                return kind, payload
        raise AssertionError("no answer")

    def request_frame(self, frame: bytes, rid: int) -> tuple[int, bytes]:
        """Send a prepared frame and read the answer to ``rid``."""
        self.send(frame)
        return self.answer(rid)

    def request(self, kind: int, rid: int, payload: bytes) -> tuple[int, bytes]:
        """Send one request and read its answer."""
        self.send(self.frame(kind, rid, payload))
        return self.answer(rid)


KINDS = ("value", "marker", "transient")  # the kind code in bits 2-3 of the flags


def value_of(payload: bytes) -> tuple[bytes, float | None, bool, str]:
    """A VALUE payload: (value, ttl or None, loaded, kind)."""
    flags, ttl = struct.unpack("!Bd", payload[:9])
    return payload[9:], ttl if flags & 1 else None, bool(flags & 2), KINDS[(flags >> 2) & 3]
