"""Token metrics: plain counters updated on the request path, turned into Prometheus at scrape time.

Counters are integers behind a lock (threads of a sync client update them too); the collector reads
them when Prometheus scrapes, so a cached-token request pays an increment, not a metrics call.
Labels are bounded: ``group`` (configured names) and ``kind`` (the fixed :data:`ERROR_KINDS`).

Exported (with an optional ``namespace`` prefix, ``<ns>_oauth2_…``):

- ``oauth2_token_fetches_total{group}``: tokens fetched from a token endpoint by this process
- ``oauth2_token_fetch_errors_total{group,kind}``: failed fetches (after retries) by kind
- ``oauth2_token_cache_hits_total{group}`` / ``…_misses_total``: requests served from / not from
  this process's copy
- ``oauth2_token_refreshes_total{group}``: background refresh-ahead reloads that completed
- ``oauth2_token_cooldown_rejections_total{group}``: callers answered from a failure cooldown
- ``oauth2_unauthorized_retries_total{group}``: requests retried after a 401 with a new token
- ``oauth2_unauthorized_cooldowns_total{group}``: 401s that did not renew the token (persistent-401
  cooldown, in this process or at the owner)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from tokencache.plugin._errors import ERROR_KINDS

if TYPE_CHECKING:
    from tokencache.plugin._cache import TokenCache


class TokenStats:
    """Counters of one token group in one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # increments come from any thread
        self.fetches = 0
        self.hits = 0
        self.misses = 0
        self.refreshes = 0
        self.cooldown_rejections = 0
        self.unauthorized_retries = 0
        self.unauthorized_cooldowns = 0
        self.fetch_errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)

    def count_fetch(self) -> None:
        with self._lock:
            self.fetches += 1

    def count_error(self, kind: str) -> None:
        with self._lock:
            label = kind if kind in self.fetch_errors else "other"
            self.fetch_errors[label] += 1

    def count_hit(self) -> None:
        with self._lock:
            self.hits += 1

    def count_miss(self) -> None:
        with self._lock:
            self.misses += 1

    def count_refresh(self) -> None:
        with self._lock:
            self.refreshes += 1

    def count_cooldown(self) -> None:
        with self._lock:
            self.cooldown_rejections += 1

    def count_unauthorized_retry(self) -> None:
        with self._lock:
            self.unauthorized_retries += 1

    def count_unauthorized_cooldown(self) -> None:
        with self._lock:
            self.unauthorized_cooldowns += 1


class TokenMetricsCollector(Collector):
    """A prometheus_client collector over token caches: ``registry.register(collector)``.

    ``caches`` is an iterable of :class:`TokenCache` or a callable returning one (read per scrape).
    """

    def __init__(
        self,
        caches: Iterable[TokenCache] | Callable[[], Iterable[TokenCache]],
        namespace: str = "",
    ) -> None:
        self._caches = caches
        self._prefix = f"{namespace}_" if namespace else ""

    def _all(self) -> list[TokenCache]:
        source = self._caches
        return list(source() if callable(source) else source)

    def collect(self) -> Iterator[CounterMetricFamily]:
        """Yield one family per counter, one sample per group (and kind)."""
        p = self._prefix
        simple = {
            "oauth2_token_fetches": ("fetches", "Tokens fetched from a token endpoint."),
            "oauth2_token_cache_hits": ("hits", "Requests served with this process's copy."),
            "oauth2_token_cache_misses": ("misses", "Requests that had to ask the cache group."),
            "oauth2_token_refreshes": ("refreshes", "Background refresh-ahead reloads."),
            "oauth2_token_cooldown_rejections": (
                "cooldown_rejections",
                "Callers answered with the last error during a failure cooldown.",
            ),
            "oauth2_unauthorized_retries": (
                "unauthorized_retries",
                "Requests retried once with a new token after a 401.",
            ),
            "oauth2_unauthorized_cooldowns": (
                "unauthorized_cooldowns",
                "401s answered without a token request during the persistent-401 cooldown.",
            ),
        }
        caches = self._all()
        for name, (attr, doc) in simple.items():
            family = CounterMetricFamily(p + name, doc, labels=["group"])
            for cache in caches:
                family.add_metric([cache.name], getattr(cache.stats, attr))
            yield family
        errors = CounterMetricFamily(
            p + "oauth2_token_fetch_errors",
            "Failed token fetches (after retries) by kind.",
            labels=["group", "kind"],
        )
        for cache in caches:
            for kind, count in sorted(cache.stats.fetch_errors.items()):
                errors.add_metric([cache.name, kind], count)
        yield errors
