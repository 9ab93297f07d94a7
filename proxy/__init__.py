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

from ._config import Address, Settings, guard_otel_import

# Before anything imports OpenTelemetry: an OTEL_PROPAGATORS name that is not installed must not
# crash the import (kubecache's chart sets b3multi), not even for --help.
guard_otel_import()

from ._app import ProxyApp  # noqa: E402 - after the guard above
from ._errors import ConfigError, ProxyError  # noqa: E402
from ._metrics import ProxyMetrics  # noqa: E402
from ._secrets import SecretReferenceError, SecretResolver  # noqa: E402
from ._service import ProxyService, main, run  # noqa: E402

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
