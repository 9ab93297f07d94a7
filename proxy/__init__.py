"""tokencache-proxy: a caching reverse proxy whose replicas share one cache (kubecache in Python).

Public API::

    settings = proxy.Settings.from_env(os.environ)   # the only place the environment is read
    exit_code = proxy.main()                          # the `tokencache-proxy` console script
    await proxy.run(settings)                         # the same, inside a running event loop
    app = proxy.ProxyApp(...)                         # the data path alone, for embedding

Errors::

    ProxyError
    └── ConfigError                 the configuration cannot be used; the proxy must not start
        └── SecretReferenceError    a secret reference could not be resolved
"""

from __future__ import annotations

from ._app import ProxyApp
from ._config import Address, Settings
from ._errors import ConfigError, ProxyError
from ._metrics import ProxyMetrics
from ._secrets import SecretReferenceError, SecretResolver
from ._service import ProxyService, main, run

__all__ = [
    "Address",
    "ConfigError",
    "ProxyApp",
    "ProxyError",
    "ProxyMetrics",
    "ProxyService",
    "SecretReferenceError",
    "SecretResolver",
    "Settings",
    "main",
    "run",
]
