"""One end of a peer connection as a state machine without I/O (the h11 idea): bytes in, frames out.

States: ``hello`` (waiting for the other side's hello) → ``auth`` (server only, authenticated mode:
waiting for the client's proof) → ``open`` (frames) → ``closed`` (after any error: the caller sends
whatever :meth:`Channel.refusal` returns and closes the connection; nothing more is parsed).

Handshake (fixed-size messages, before any frame; see docs/peer-protocol.md)::

    client hello  40 bytes  magic "TKCP" | version u8 | flags u8 | heartbeat ms u16 | nonce 32
    server hello  72 bytes  magic | version u8 | status u8 | flags u8 | 0 u8 | nonce 32 | proof 32
    client proof  32 bytes  (authenticated mode only)

Frame::

    length u32 (of everything after it) | type u8 | request id u32 | payload | MAC 16 (auth mode)

Invariants: a frame is handed out only after its length was checked against the limit for its
type *before* its body was buffered, and (authenticated mode) after its MAC verified under the
next receive sequence number; so at most one oversized header's worth of bytes is ever buffered
beyond the limit, and no unauthenticated payload reaches a decoder.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from . import _protocol as p
from . import _signing as sig

MAGIC = b"TKCP"
VERSION = 1
CLIENT_HELLO = struct.Struct("!4sBBH32s")
SERVER_HELLO = struct.Struct("!4sBBBx32s32s")
FRAME_HEAD = struct.Struct("!IBI")
HEAD_BYTES = FRAME_HEAD.size  # 9
_AUTH = 0x01

# server hello status
STATUS_OK = 0
STATUS_UNSUPPORTED_VERSION = 1
STATUS_BAD_HELLO = 2
STATUS_AUTH_MISMATCH = 3
_STATUS_ERRORS = {
    STATUS_UNSUPPORTED_VERSION: (p.UNSUPPORTED_VERSION, "peer speaks another protocol version"),
    STATUS_BAD_HELLO: (p.BAD_REQUEST, "peer refused the hello"),
    STATUS_AUTH_MISMATCH: (p.UNAUTHORIZED, "peer secret configured on one side only"),
}

# The frame keys before the handshake derived them: a key nobody holds, so a frame sealed or
# checked too early (never, by the state machine) could only fail.
_NO_KEY = sig.FrameKey(os.urandom(32))
Frame = tuple[int, int, bytes]  # (type, request id, payload)
Limits = Callable[[int], int | None]  # frame type -> max payload bytes, None: not allowed here


class Channel:
    """The protocol state of one connection; the owner moves bytes between it and a socket."""

    __slots__ = (
        "_buf",
        "_client",
        "_hello",
        "_key",
        "_limits",
        "_mac",
        "_nonce",
        "_opened",
        "_out",
        "_recv_key",
        "_recv_seq",
        "_send_key",
        "_send_seq",
        "heartbeat_ms",
        "state",
    )

    def __init__(
        self,
        *,
        client: bool,
        secret: bytes | None,
        limits: Limits,
        heartbeat_ms: int = 1000,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._client = client
        self._key = secret
        self._limits = limits
        self._mac = sig.MAC_BYTES if secret else 0
        self._nonce = random_bytes(sig.NONCE_BYTES)
        self._buf = bytearray()
        self._out = bytearray()
        self._hello = b""
        self._send_key = self._recv_key = _NO_KEY
        self._send_seq = self._recv_seq = 0
        self.heartbeat_ms = max(0, min(heartbeat_ms, 0xFFFF))
        self._opened = False
        self.state = "hello"

    def _open(self) -> None:
        self.state = "open"
        self._opened = True

    @property
    def authenticated(self) -> bool:
        """True when frames carry MACs (a secret is configured)."""
        return self._key is not None

    def start(self) -> bytes:
        """The bytes this side sends first (the client hello; nothing for a server)."""
        if not self._client:
            return b""
        flags = _AUTH if self._key else 0
        self._hello = CLIENT_HELLO.pack(MAGIC, VERSION, flags, self.heartbeat_ms, self._nonce)
        return self._hello

    def data_to_send(self) -> bytes:
        """Handshake bytes produced by :meth:`receive` that must go out now."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- input -------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Frame]:
        """Feed bytes; return the complete, authenticated frames. Raises ``ProtocolError``."""
        if self.state == "closed":
            return []
        self._buf += data
        try:
            if self.state == "hello" and not self._take_hello():
                return []
            if self.state == "auth" and not self._take_proof():
                return []
            return self._take_frames()
        except p.ProtocolError:
            self.state = "closed"
            self._buf.clear()
            raise

    def _take_hello(self) -> bool:
        buf = self._buf
        magic = bytes(buf[:4])
        if not MAGIC.startswith(magic):  # refuse at the first wrong byte (say, "GET ")
            self._refuse_hello(STATUS_BAD_HELLO)
            raise p.ProtocolError(p.BAD_REQUEST, "not the tokencache peer protocol")
        if self._client:
            return self._take_server_hello()
        if len(buf) < CLIENT_HELLO.size:
            return False
        hello = bytes(buf[: CLIENT_HELLO.size])
        del buf[: CLIENT_HELLO.size]
        _, version, flags, heartbeat_ms, _nonce = CLIENT_HELLO.unpack(hello)
        if version != VERSION:
            self._refuse_hello(STATUS_UNSUPPORTED_VERSION)
            raise p.ProtocolError(p.UNSUPPORTED_VERSION, f"client speaks version {version}")
        if flags & ~_AUTH:
            self._refuse_hello(STATUS_BAD_HELLO)
            raise p.ProtocolError(p.BAD_REQUEST, "unknown hello flags")
        if bool(flags & _AUTH) != (self._key is not None):
            self._refuse_hello(STATUS_AUTH_MISMATCH)
            raise p.ProtocolError(p.UNAUTHORIZED, "client without the peer secret")
        self.heartbeat_ms = heartbeat_ms
        head = SERVER_HELLO.pack(MAGIC, VERSION, STATUS_OK, flags, self._nonce, bytes(32))[:-32]
        transcript = hello + head
        if self._key is None:
            self._out += head + bytes(sig.PROOF_BYTES)
            self._open()
            return True
        self._out += head + sig.server_proof(self._key, transcript)
        self._hello = transcript
        self.state = "auth"
        return True

    def _refuse_hello(self, status: int) -> None:
        if not self._client:
            self._out += SERVER_HELLO.pack(MAGIC, VERSION, status, 0, bytes(32), bytes(32))

    def _take_server_hello(self) -> bool:
        buf = self._buf
        if len(buf) < SERVER_HELLO.size:
            return False
        hello = bytes(buf[: SERVER_HELLO.size])
        del buf[: SERVER_HELLO.size]
        _, version, status, flags, _, proof = SERVER_HELLO.unpack(hello)
        if status != STATUS_OK:
            code, text = _STATUS_ERRORS.get(status, (p.BAD_REQUEST, "peer refused the hello"))
            raise p.ProtocolError(code, text)
        if version != VERSION:
            raise p.ProtocolError(p.UNSUPPORTED_VERSION, f"peer speaks version {version}")
        if flags != (_AUTH if self._key else 0):
            raise p.ProtocolError(p.UNAUTHORIZED, "peer secret configured on one side only")
        transcript = self._hello + hello[:-32]
        if self._key is not None:
            if not sig.proof_matches(sig.server_proof(self._key, transcript), proof):
                raise p.ProtocolError(p.UNAUTHORIZED, "peer did not prove the secret")
            self._out += sig.client_proof(self._key, transcript)
            send, recv = sig.session_keys(self._key, transcript)
            self._send_key, self._recv_key = sig.FrameKey(send), sig.FrameKey(recv)
        self._open()
        return True

    def _take_proof(self) -> bool:
        buf = self._buf
        if len(buf) < sig.PROOF_BYTES:
            return False
        proof = bytes(buf[: sig.PROOF_BYTES])
        del buf[: sig.PROOF_BYTES]
        assert self._key is not None
        if not sig.proof_matches(sig.client_proof(self._key, self._hello), proof):
            raise p.ProtocolError(p.UNAUTHORIZED, "client did not prove the secret")
        recv, send = sig.session_keys(self._key, self._hello)
        self._recv_key, self._send_key = sig.FrameKey(recv), sig.FrameKey(send)
        self._open()
        return True

    def _take_frames(self) -> list[Frame]:
        buf = self._buf
        frames: list[Frame] = []
        pos = 0
        mac = self._mac
        size = len(buf)
        while size - pos >= HEAD_BYTES:
            length, kind, rid = FRAME_HEAD.unpack_from(buf, pos)
            limit = self._limits(kind)
            if limit is None:
                raise p.ProtocolError(p.BAD_REQUEST, f"unexpected frame type {kind:#04x}")
            body = length - 5 - mac  # payload bytes
            if body < 0:
                raise p.ProtocolError(p.BAD_REQUEST, "frame shorter than its header")
            if body > limit:
                raise p.ProtocolError(p.TOO_LARGE, f"frame of {body} bytes over the limit")
            end = pos + 4 + length
            if end > size:
                break
            if mac:
                signed = memoryview(buf)[pos : end - mac]
                ok = self._recv_key.matches(self._recv_seq, signed, buf[end - mac : end])
                signed.release()
                if not ok:
                    raise p.ProtocolError(p.UNAUTHORIZED, "bad frame MAC")
                self._recv_seq += 1
            frames.append((kind, rid, bytes(buf[pos + HEAD_BYTES : end - mac])))
            pos = end
        if pos:
            del buf[:pos]
        return frames

    # -- output ------------------------------------------------------------------------------

    def frame(self, kind: int, rid: int, payload: bytes = b"") -> bytes:
        """One frame ready to write (MAC'd under the next send sequence number)."""
        head = FRAME_HEAD.pack(5 + len(payload) + self._mac, kind, rid)
        if not self._mac:
            return head + payload
        data = head + payload
        mac = self._send_key.mac(self._send_seq, data)
        self._send_seq += 1
        return data + mac

    def refusal(self, code: int, message: str) -> bytes:
        """What to send before closing after ``ProtocolError(code)``: the handshake's refusal,
        or (server, once open) an ERROR frame about the connection (request id 0). Nothing when
        the other side never proved the secret: it could not check the frame anyway."""
        pending = self.data_to_send()
        if self._client or not self._opened:
            return pending
        # (pending: a hello that opened the connection in the same read as the bad frame)
        return pending + self.frame(p.ERROR, 0, p.encode_error(code, message))
