"""Errors of the tokencache engine.

The tree::

    TokenCacheError                 base of everything the engine raises on purpose
    ├── NotFound                    a loader says the key does not exist; reaches the caller, never
    │                               retried locally (mailgun/groupcache's ErrNotFound)
    ├── Declined                    a loader cannot load this key in this process (it lacks what it
    │                               needs, e.g. credentials); a peer asking the owner is told so and
    │                               loads with its own loader
    ├── NotAValue                   a value API (``get``) met a marker or transient record; the
    │                               caller asked for a value and did not get one (``get_fetched``
    │                               returns such records with their kind)
    ├── PeerError                   a peer request failed; handled inside the engine (the caller loads
    │                               locally and a peer error is counted), never raised from ``get``
    └── InvalidArgument             a caller passed something the engine cannot take (a key or value
                                    over the configured size, a bad group name, a duplicate group)

Any other exception a loader raises reaches every concurrent waiter unchanged and is not cached.
"""

from __future__ import annotations


class TokenCacheError(Exception):
    """Base class of the errors the engine raises."""


class NotFound(TokenCacheError):
    """The loader reports that the key does not exist. Not retried locally."""


class Declined(TokenCacheError):
    """The loader cannot load this key in this process; another process should load it itself."""


class NotAValue(TokenCacheError):
    """The result for the key is a marker or a transient record, not a value (see ``Kind``)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"the result is a {kind} record, not a value")
        self.kind = kind


class PeerError(TokenCacheError):
    """A request to a peer failed (refused, timed out, bad answer, rejected)."""

    def __init__(self, peer: str, reason: str, *, unreachable: bool = False) -> None:
        super().__init__(f"peer {peer}: {reason}")
        self.peer = peer
        self.reason = reason
        # True only when the peer could not be reached at all (connection refused or reset,
        # connect timeout) or stopped answering past the transport's liveness timeout. A slow
        # answer, a read timeout of a live peer or an error answer is not "unreachable": only
        # unreachable peers are skipped for a while (a slow owner is not a dead one).
        self.unreachable = unreachable


class InvalidArgument(TokenCacheError, ValueError):
    """A key, value, group name or setting the engine cannot accept."""
