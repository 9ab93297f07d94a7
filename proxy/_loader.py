"""The ``http`` group's loader: fetch one key's response from the backend, on the key's owner.

The loader sees nothing but the key (it usually runs in another process than the request's), so the
key carries what the backend request needs: method, request-target and the values of the headers
the backend varies on (`proxy._policy.parse_key`). ``Accept-Encoding: identity`` is sent unless the
key names an ``Accept-Encoding`` itself: a shared entry must not be compressed for one client's
taste without ``Vary`` saying so.

What it returns (`proxy._stored` records):

* a storable response: ``TCR1`` with the policy's ttl, or, for a base key whose response names
  ``Vary`` headers, a ``TCV1`` record holding the names and this (header-less) variant;
* a response the policy refuses to store (no-store, private, Set-Cookie, Vary: *, too large):
  a ``TCP1`` pass record kept for ``cache_ttl`` as a ``Kind.MARKER`` (stored, not a value: the
  engine never counts it as a load nor returns it from its value APIs); every request for the URI is then forwarded as it
  is — one client's private answer is never handed to another waiter of the same flight;
* a backend fault: ``TCS1`` around the stale entry when stale-if-error has one, else ``TCE1``;
  both ``Kind.TRANSIENT``: they reach this flight's waiters, are stored nowhere (whatever the
  TTL) and count as load errors.
"""

from __future__ import annotations

import logging

import httpx

import tokencache

from ._forward import backend_url_for, classify_fault
from ._metrics import ProxyMetrics
from ._policy import CachePolicy, parse_key
from ._stored import (
    RESPONSE,
    VARY,
    encode_error,
    encode_pass,
    encode_response,
    encode_stale,
    encode_vary,
)

__all__ = ["BackendLoader"]


class BackendLoader:
    """A `tokencache.Loader` for the ``http`` group. Assign `group` before the first load."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        backend_url: str,
        timeout: float,
        auth: httpx.Auth | None,
        policy: CachePolicy,
        stale_if_error: float,
        metrics: ProxyMetrics,
        logger: logging.Logger,
    ) -> None:
        self._client = client
        self._backend_url = backend_url
        self._timeout = httpx.Timeout(timeout).as_dict()
        self._auth = auth
        self._policy = policy
        self._stale_if_error = stale_if_error
        self._metrics = metrics
        self._logger = logger
        self.group: tokencache.Group | None = None

    async def __call__(self, key: str) -> tokencache.Entry:
        """Load `key` (see the module docstring for what comes back)."""
        method, target, varied = parse_key(key)
        headers = [(n, v) for n, v in varied]
        if not any(n == "accept-encoding" for n, _ in varied):
            headers.append(("accept-encoding", "identity"))
        request = httpx.Request(
            method,
            backend_url_for(self._backend_url, target),
            headers=headers,
            extensions={"timeout": self._timeout},
        )
        limit = self._policy.max_body_bytes
        try:
            if self._auth is not None:
                response = await self._client.send(request, stream=True, auth=self._auth)
            else:
                response = await self._client.send(request, stream=True)
            try:
                parts: list[bytes] = []
                size = 0
                async for chunk in response.aiter_raw():
                    parts.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        return _marker(encode_pass("too-large"), self._policy.cache_ttl)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            return self._fault(key, method, target, exc)
        return self._entry(key, method, response, b"".join(parts), base=not varied)

    def _entry(
        self, key: str, method: str, response: httpx.Response, body: bytes, *, base: bool
    ) -> tokencache.Entry:
        policy = self._policy
        headers = response.headers.raw
        ttl, why_not = policy.response_ttl(response.status_code, headers, len(body))
        if why_not == "ttl":  # caching switched off for this status: hand it to the waiters only
            ttl = 0.0
        elif why_not is not None:
            return _marker(encode_pass(why_not), policy.cache_ttl)
        reason = response.extensions.get("reason_phrase", b"")
        record = encode_response(
            response.status_code,
            headers,
            body,
            ttl=ttl,
            reason=reason if isinstance(reason, bytes) else b"",
            head_only=method == "HEAD",
        )
        names = policy.vary_names(headers)
        if base and names:
            return tokencache.Entry(encode_vary(names, record), ttl)
        return tokencache.Entry(record, ttl)

    def _fault(self, key: str, method: str, target: str, exc: httpx.HTTPError) -> tokencache.Entry:
        status, kind = classify_fault(exc)
        self._metrics.backend_error(kind)
        self._logger.warning(
            "backend fault",
            extra={"method": method, "path": target.split("?", 1)[0], "fault": kind},
        )
        if self._stale_if_error > 0 and self.group is not None:
            stale = self.group.peek_stale(key)
            if stale is not None and stale[0][:4] in (RESPONSE, VARY):
                value, ago = stale
                return _transient(encode_stale(status, ago, value))
        return _transient(encode_error(status, kind))


def _marker(record: bytes, ttl: float) -> tokencache.Entry:
    return tokencache.Entry(record, ttl, tokencache.Kind.MARKER)


def _transient(record: bytes) -> tokencache.Entry:
    return tokencache.Entry(record, 0, tokencache.Kind.TRANSIENT)
