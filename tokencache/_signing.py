"""Peer request authentication: HMAC-SHA256 over method, path, timestamp, nonce and body.

Tokens travel on the peer port, which every Go anchor left unauthenticated. With a shared secret
every peer request is signed; the receiver refuses (401) anything unsigned, badly signed, outside
the time window, or replayed (a nonce seen before within the window). The window compares wall
clocks, so peers need clocks within ``window`` seconds of each other (NTP gives far better).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

TIMESTAMP_HEADER = "X-Tokencache-Timestamp"
NONCE_HEADER = "X-Tokencache-Nonce"
SIGNATURE_HEADER = "X-Tokencache-Signature"


def _message(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    body_digest = hashlib.sha256(body).hexdigest()
    return "\n".join((method.upper(), path, timestamp, nonce, body_digest)).encode()


def _as_key(secret: bytes | str) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("peer secret must not be empty")
    return key


class Signer:
    """Adds signature headers to outgoing peer requests."""

    def __init__(self, secret: bytes | str, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._key = _as_key(secret)
        self._wall_clock = wall_clock

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """The headers that authenticate this request."""
        timestamp = f"{self._wall_clock():.3f}"
        nonce = secrets.token_hex(16)
        mac = hmac.new(self._key, _message(method, path, timestamp, nonce, body), hashlib.sha256)
        return {
            TIMESTAMP_HEADER: timestamp,
            NONCE_HEADER: nonce,
            SIGNATURE_HEADER: mac.hexdigest(),
        }


class Verifier:
    """Checks incoming peer requests; remembers nonces for the window to refuse replays."""

    def __init__(
        self,
        secret: bytes | str,
        *,
        window: float = 30.0,
        max_nonces: int = 200_000,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = _as_key(secret)
        self._window = window
        self._max_nonces = max_nonces
        self._wall_clock = wall_clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> when it stops mattering

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> str | None:
        """Return ``None`` when the request is authentic, else a short reason (never secret)."""
        timestamp = headers.get(TIMESTAMP_HEADER)
        nonce = headers.get(NONCE_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if not timestamp or not nonce or not signature:
            return "unsigned"
        if len(nonce) > 64 or len(signature) > 128:
            return "malformed signature"
        try:
            sent_at = float(timestamp)
        except ValueError:
            return "malformed timestamp"
        now = self._wall_clock()
        if not abs(now - sent_at) <= self._window:  # also refuses NaN
            return "timestamp outside window"
        expected = hmac.new(
            self._key, _message(method, path, timestamp, nonce, body), hashlib.sha256
        )
        if not hmac.compare_digest(expected.hexdigest(), signature):
            return "bad signature"
        self._forget(now)
        if nonce in self._seen:
            return "replayed"
        if len(self._seen) >= self._max_nonces:
            # Full: refuse rather than forget a nonce that is still inside its window.
            return "too many requests in window"
        self._seen[nonce] = now + 2 * self._window
        return None

    def _forget(self, now: float) -> None:
        seen = self._seen
        while seen:
            nonce, until = next(iter(seen.items()))
            if until > now:
                break
            del seen[nonce]
