"""An in-process `ProxyApp` with the settings the proxy's in-process tests share."""

from __future__ import annotations

from typing import Any

import tokencache
from tokencache.proxy._app import ProxyApp
from tokencache.proxy._metrics import ProxyMetrics


def proxy_app(backend_url: str, workspace: tokencache.Workspace, **overrides: Any) -> ProxyApp:
    """A single-node app for `backend_url` (GET/HEAD cached for 300 s, errors 60 s, 1 MiB
    bodies, an 8 MiB group); `overrides` replace any of these (`backend_url` and `workspace`
    too) or add other options."""
    options: dict[str, Any] = {
        "backend_url": backend_url,
        "backend_timeout": 5.0,
        "cache_ttl": 300.0,
        "cache_error_ttl": 60.0,
        "restrict_methods": ["GET", "HEAD"],
        "route_regexp": None,
        "max_body_bytes": 1 << 20,
        "stale_if_error": 0.0,
        "workspace": workspace,
        "group_bytes": 8 << 20,
        "metrics": ProxyMetrics(),
    }
    options.update(overrides)
    return ProxyApp(**options)
