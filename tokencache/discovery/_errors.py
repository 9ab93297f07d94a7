"""Errors of the Kubernetes peer discovery.

The tree::

    TokenCacheError                 (tokencache's base)
    └── DiscoveryError              base of everything discovery raises on purpose
        ├── DiscoveryConfigError    a setting discovery cannot use: a bad peer port, a namespace
        │                           file that cannot be read, no in-cluster configuration
        └── WatchExpired            the API answered 410 Gone: the resourceVersion we hold is
                                    older than its history; the only way on is a fresh list

API and connection failures never leave the watch thread: they are logged (status and reason only,
never headers or bodies), counted, and retried with backoff while the last known peers stay in place.
"""

from __future__ import annotations

from tokencache._errors import TokenCacheError


class DiscoveryError(TokenCacheError):
    """Base class of the errors peer discovery raises."""


class DiscoveryConfigError(DiscoveryError, ValueError):
    """A discovery setting cannot be used (bad port, unreadable namespace, no cluster config)."""


class WatchExpired(DiscoveryError):
    """The resourceVersion being watched from is gone (HTTP 410): re-list and rebuild."""
