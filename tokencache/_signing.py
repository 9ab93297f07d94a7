"""Peer authentication, without I/O: the handshake's proofs, the session keys and frame MACs.

Each connection starts with a challenge/response in which both sides contribute a fresh random
nonce and each proves it knows the shared peer secret (HMAC-SHA256 over the whole handshake
transcript, with a different label per role, so one side's proof is never valid as the other's).
Both sides then derive two session keys from the secret and the transcript, one per direction.

Every frame after the handshake carries ``HMAC-SHA256(direction key, seq || frame)`` truncated to
16 bytes, where ``seq`` is the 64-bit count of frames sent so far in that direction. The sequence
number is not transmitted (SSH does the same): both sides count, so a replayed, dropped, reordered
or cross-connection frame fails its MAC. That is the whole replay defence: no nonce store, no
wall clock, no throughput cap.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

MAC_BYTES = 16
NONCE_BYTES = 32
PROOF_BYTES = 32

_SEQ = struct.Struct("!Q")
_SERVER_LABEL = b"tokencache/1 server proof\x00"
_CLIENT_LABEL = b"tokencache/1 client proof\x00"
_KEYS_LABEL = b"tokencache/1 session keys\x00"
_BLOCK = 64  # SHA-256's block size, HMAC's key padding
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def as_key(secret: bytes | str) -> bytes:
    """The secret as bytes; an empty secret is refused (it would authenticate nothing)."""
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("peer secret must not be empty")
    return key


def server_proof(secret: bytes, transcript: bytes) -> bytes:
    """What the server sends to prove it holds ``secret`` for this handshake."""
    return hmac.digest(secret, _SERVER_LABEL + transcript, "sha256")


def client_proof(secret: bytes, transcript: bytes) -> bytes:
    """What the client sends to prove it holds ``secret`` for this handshake."""
    return hmac.digest(secret, _CLIENT_LABEL + transcript, "sha256")


def proof_matches(expected: bytes, received: bytes) -> bool:
    """Constant-time comparison of a proof."""
    return hmac.compare_digest(expected, received)


def session_keys(secret: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """The (client-to-server, server-to-client) frame keys of one connection."""
    master = hmac.digest(secret, _KEYS_LABEL + transcript, "sha256")
    return hmac.digest(master, b"c2s", "sha256"), hmac.digest(master, b"s2c", "sha256")


class FrameKey:
    """One direction's frame key: ``mac(seq, frame)`` is ``HMAC-SHA256(key, seq || frame)``
    truncated to `MAC_BYTES`.

    HMAC is ``H((K ^ opad) || H((K ^ ipad) || m))``: the hash states after the first block of
    each ``H`` depend on the key alone, so they are worked out once per connection and copied
    per frame (RFC 2104's precomputation). ``hmac.digest`` keys a new HMAC every call, under
    OpenSSL 3 with an algorithm fetch and locks: measured here 1.3-1.8 us a frame against
    0.6-1.1 us this way, at four MACs per remote hit. The output is the same bytes.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        key = bytes(key)
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\x00")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def mac(self, seq: int, frame: bytes | memoryview) -> bytes:
        """The MAC of the ``seq``-th frame sent with this key (``frame``: length prefix to
        payload)."""
        inner = self._inner.copy()
        inner.update(_SEQ.pack(seq))
        inner.update(frame)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:MAC_BYTES]

    def matches(self, seq: int, frame: bytes | memoryview, mac: bytes | bytearray) -> bool:
        """Whether ``mac`` authenticates ``frame`` as the ``seq``-th frame under this key."""
        return hmac.compare_digest(self.mac(seq, frame), mac)
