"""The proxy's error base classes.

Every error the proxy raises on purpose derives from :class:`ProxyError`::

    ProxyError
    └── ConfigError                 the configuration cannot be used; the proxy must not start
        └── SecretReferenceError    a secret reference could not be resolved (proxy._secrets)

Foreign errors (botocore, OSError, json) are translated into these at the boundary that meets them.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ProxyError"]


class ProxyError(Exception):
    """Base class of every error the proxy raises on purpose."""


class ConfigError(ProxyError):
    """The configuration is invalid or incomplete; the proxy refuses to start with it."""
