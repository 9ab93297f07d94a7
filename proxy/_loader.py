"""The ``http`` group's loader: fetch or revalidate one key's response, on the key's owner.

The key names the response (method, target, varied header values: `proxy._policy.parse_key`);
the engine's load context carries the triggering client's request (`proxy._request_context`), so
the backend request is the client's own: its end-to-end headers and ``X-Forwarded-*``, the
varied values of the key, no conditionals or ``Range`` of the client's (the cache wants the whole
response). Without a context (a refresh started by the cache itself, or a peer of an older
version) only the key's headers are sent, with ``Accept-Encoding: identity`` unless the key
names ``Accept-Encoding``: a shared entry must not be compressed for one client's taste without
``Vary`` saying so.

Revalidation. When this process holds a (stale) entry for the key, its validators go upstream
(``If-None-Match``, ``If-Modified-Since``); a 304 refreshes the stored headers and freshness
(RFC 9111 §4.3.4) and keeps the body. Because the engine runs this loader once per key for the
whole cluster (on the owner, under its singleflight), a stale entry is validated once per cluster.

Trust. Keys also arrive from the peer port, so the loader trusts none: `proxy._keys.check_key`
accepts only a key this proxy could have made, and a variant key only with the header names the
base key's stored vary record lists (fetched through the group, from whichever peer owns it).
Anything else raises `proxy._keys.BadKey` (an ``InvalidArgument``: a bad request on the peer
port) and is counted, never sent to the backend.

What it returns (`proxy._stored` records):

* a storable response: ``TCR2`` whose engine ttl is its freshness plus the time it is kept stale
  (for revalidation, ``stale-while-revalidate``, ``stale-if-error``); for a base key whose
  response names ``Vary`` headers, a ``TCV2`` record holding the names, a generation and this
  variant;
* a shareable response that may not be reused (no freshness, no validators): ``TCR2`` with ttl
  0, handed to this flight's waiters and stored nowhere;
* a response that may not be stored or shared (no-store, private, Set-Cookie, Vary: *): a ``TCP1``
  pass record with ttl 0 holding the response for the triggering request only; every other
  waiter forwards its own request (Varnish's hit-for-pass);
* a body above ``CACHE_MAX_BODY_BYTES``: a ``TCP1`` record without a response, kept
  ``pass_seconds`` cluster-wide (nothing private in it) as a ``Kind.MARKER`` (stored, not a
  value: the engine counts it apart from loads and never returns it from its value APIs), so the
  URL is forwarded at once;
* a backend fault or a 5xx: ``TCS1`` around the stale entry when stale-if-error allows it, else
  ``TCE1`` for a fault (``connect``, ``timeout``, ``other``, or ``token`` when the OAuth2 plugin
  could get no token for the backend request), both ``Kind.TRANSIENT`` (they reach this flight's
  waiters, are stored nowhere and count as load errors); else the 5xx itself with ttl 0.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

import httpx

import tokencache

from ._forward import BACKEND_FAULTS, BackendSender, classify_fault, log_fault
from ._freshness import Assessment, assess
from ._keys import BadKey, ParsedKey, base_key, check_key
from ._metrics import ProxyMetrics
from ._policy import CachePolicy, variant_lines
from ._request_context import BadContext, decode_context
from ._reuse import stale_if_error
from ._stored import (
    MUST_REVALIDATE,
    NO_CACHE,
    RESPONSE,
    VARY,
    StoredResponse,
    decode_response,
    decode_vary,
    encode_error,
    encode_pass,
    encode_response,
    encode_stale,
    encode_vary,
    head_fields,
)
from ._target import backend_url

__all__ = ["BackendLoader"]

# Fields of a 304 that never replace the stored ones (RFC 9111 §3.2: framing stays the stored
# response's own).
_KEEP_STORED = frozenset({b"content-length", b"transfer-encoding", b"content-encoding"})


# Reasons not to store that still let the current waiters share the response: nothing in it is
# meant for one client only (unlike no-store, private, Set-Cookie or Vary: *).
_SHAREABLE = frozenset({"status"})


def _new_generation() -> str:
    return secrets.token_hex(4)


class BackendLoader:
    """A `tokencache.Loader` for the ``http`` group. Assign `group` before the first load."""

    def __init__(
        self,
        *,
        sender: BackendSender,
        backend_url: str,
        policy: CachePolicy,
        metrics: ProxyMetrics,
        logger: logging.Logger,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        new_generation: Callable[[], str] = _new_generation,
    ) -> None:
        self._sender = sender
        self._backend_url = httpx.URL(backend_url)
        self._policy = policy
        self._metrics = metrics
        self._logger = logger
        self._monotonic = monotonic
        self._wall = wall
        self._new_generation = new_generation
        self.group: tokencache.Group | None = None

    def _existing(self, key: str) -> tuple[bytes, float, float] | None:
        """This process's entry for `key`, live or within the stale window: (value, remaining
        engine ttl, seconds since the engine entry expired)."""
        if self.group is None:
            return None
        live = self.group.peek_with_ttl(key)
        if live is not None:
            return live[0], live[1] or 0.0, 0.0
        stale = self.group.peek_stale(key)
        return None if stale is None else (stale[0], 0.0, stale[1])

    async def __call__(self, key: str) -> tokencache.Entry:
        """Load `key` (see the module docstring for what comes back)."""
        try:
            parsed = check_key(key, self._policy.methods)
            if parsed.names:
                await self._check_vary(parsed)
        except BadKey:
            self._metrics.refused("key")
            raise
        method, target, varied = parsed.method, parsed.target, parsed.headers
        try:
            context = decode_context(
                tokencache.load_context(), credentials=self._policy.allow_auth_caching
            )
        except BadContext:
            self._metrics.refused("context")
            raise
        varied_names = {n.encode("latin-1") for n, _ in varied}
        headers: list[tuple[bytes, bytes]] = []
        if context is not None:
            headers.extend((n, v) for n, v in context.headers if n.lower() not in varied_names)
        headers.extend((n.encode("latin-1"), v.encode("latin-1")) for n, v in varied)
        if context is None and b"accept-encoding" not in varied_names:
            headers.append((b"accept-encoding", b"identity"))
        request_id = context.request_id if context is not None else b""

        existing = self._existing(key)
        current: StoredResponse | None = None
        generation = ""
        if existing is not None:
            value = existing[0]
            if value[:4] == RESPONSE:
                current = decode_response(value)
            elif value[:4] == VARY:
                vary = decode_vary(value)
                generation = vary.generation
                lower = {n.lower(): v for n, v in headers}
                mine = variant_lines(vary.names, [lower.get(n.encode()) for n in vary.names])
                if mine == vary.match:
                    current = decode_response(vary.default)
        send_headers = list(headers)
        if current is not None:
            fields = head_fields(current.head)
            for name, value in fields:
                lname = name.lower()
                if lname == b"etag":
                    send_headers.append((b"If-None-Match", value))
                elif lname == b"last-modified":
                    send_headers.append((b"If-Modified-Since", value))

        request = httpx.Request(
            method, backend_url(self._backend_url, target), headers=send_headers
        )
        limit = self._policy.max_body_bytes
        started = self._monotonic()
        # BACKEND_TIMEOUT bounds the whole fill (token, connect, head and every body read), as
        # kubecache's http.Client.Timeout did: peers wait for this owner BACKEND_TIMEOUT + 1 s
        # (the engine's max load time) and then load the key themselves, so a fill allowed to
        # run longer (a trickling body, a slow token endpoint) would turn one miss into N loads.
        try:
            async with asyncio.timeout(self._sender.timeout):
                response = await self._sender.send(request, retry=True)
                try:
                    parts: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_raw():
                        parts.append(chunk)
                        size += len(chunk)
                        if size > limit:
                            return _marker(encode_pass("too-large"), self._policy.pass_seconds)
                finally:
                    await self._sender.release(response)
        except BACKEND_FAULTS as exc:  # transport faults, and no OAuth2 token (kind "token")
            return self._fault(key, method, target, exc, existing)
        except TimeoutError:
            whole = httpx.ReadTimeout("the backend exchange took longer than BACKEND_TIMEOUT")
            return self._fault(key, method, target, whole, existing)
        finished = self._monotonic()
        status = response.status_code
        body = b"".join(parts)
        raw = list(response.headers.raw)
        reason = response.extensions.get("reason_phrase", b"")
        reason = reason if isinstance(reason, bytes) else b""
        if status == 304 and current is not None:
            raw = _updated(head_fields(current.head), raw)
            status, body = current.status, bytes(current.body)
            reason = bytes(current.head[: bytes(current.head).find(b"\r\n")]).split(b" ", 2)[-1]
        if status >= 500 and existing is not None:
            stale = self._stale(existing, status)
            if stale is not None:
                return stale
        a = assess(
            status,
            raw,
            request_time=started,
            response_time=finished,
            now_wall=self._wall(),
            default_ttl=self._policy.cache_ttl,
            default_error_ttl=self._policy.error_ttl,
            override=self._policy.ttl_override,
            targeted=self._policy.targeted_field,
            authorized=any(n.lower() == b"authorization" for n, _ in headers),
        )
        if a.why_not is None and len(body) > limit:
            return _marker(encode_pass("too-large"), self._policy.pass_seconds)
        head_only = method == "HEAD"
        if a.why_not is not None:
            record = encode_response(status, raw, body, ttl=0.0, reason=reason, head_only=head_only)
            if a.why_not in _SHAREABLE:
                return tokencache.Entry(record, 0)  # this flight's waiters may have it
            return tokencache.Entry(encode_pass(a.why_not, request_id, record), 0)
        ttl = self._keep(a, raw)
        record = encode_response(
            status,
            raw,
            body,
            ttl=ttl,
            age=a.age,
            fresh=a.fresh_for,
            flags=(NO_CACHE if a.no_cache else 0) | (MUST_REVALIDATE if a.must_revalidate else 0),
            stale_while_revalidate=a.stale_while_revalidate,
            stale_if_error=a.stale_if_error,
            reason=reason,
            head_only=head_only,
        )
        names = _vary_names(raw, headers)
        if not varied and names:
            lower = {n.lower(): v for n, v in headers}
            match = variant_lines(names, [lower.get(n.encode()) for n in names])
            gen = generation or self._new_generation()
            return tokencache.Entry(encode_vary(names, gen, match, record), ttl)
        return tokencache.Entry(record, ttl)

    async def _check_vary(self, parsed: ParsedKey) -> None:
        # A variant key names exactly the headers of its base key's vary record, in its order.
        if self.group is None:
            raise BadKey("key: no group to check the vary record in")
        try:
            value = await self.group.get(base_key(parsed.method, parsed.target))
        except tokencache.InvalidArgument:
            raise BadKey("key: base key refused") from None
        if value[:4] != VARY or tuple(decode_vary(value).names) != parsed.names:
            raise BadKey("key: header names are not the stored vary record's")

    def _keep(self, a: Assessment, headers: list[tuple[bytes, bytes]]) -> float:
        """The engine ttl: freshness plus how long the entry stays for stale uses."""
        has_validator = any(n.lower() in (b"etag", b"last-modified") for n, _ in headers)
        keep = self._policy.keep_for_revalidation if has_validator else 0.0
        if not a.must_revalidate:
            keep = max(
                keep, a.stale_while_revalidate, a.stale_if_error, self._policy.stale_if_error
            )
        if a.no_cache and not has_validator:
            return 0.0  # every reuse needs a full fetch: nothing to keep
        fresh = 0.0 if a.no_cache else a.fresh_for
        return fresh + keep if fresh + keep > 0 else 0.0

    def _stale(self, existing: tuple[bytes, float, float], status: int) -> tokencache.Entry | None:
        """A stale-if-error answer from `existing`, if its directives or the policy allow one."""
        value, remaining, expired_ago = existing
        inner = value
        if value[:4] == VARY:
            inner = decode_vary(value).default
        if inner[:4] != RESPONSE:
            return None
        stored = decode_response(inner)
        staleness = max(0.0, stored.ttl - remaining - stored.fresh) + expired_ago
        if not stale_if_error(
            staleness=staleness,
            flags=stored.flags,
            allowed=stored.stale_if_error,
            window=self._policy.stale_if_error,
        ):
            return None
        return _transient(encode_stale(status, staleness, value))

    def _fault(
        self,
        key: str,
        method: str,
        target: str,
        exc: BaseException,
        existing: tuple[bytes, float, float] | None,
    ) -> tokencache.Entry:
        status, kind = classify_fault(exc)
        self._metrics.backend_error(kind)
        log_fault(self._logger, "backend fault", exc, kind, method, target)
        if existing is not None:
            stale = self._stale(existing, status)
            if stale is not None:
                return stale
        return _transient(encode_error(status, kind))


def _updated(
    stored: list[tuple[bytes, bytes]], fresh: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """Stored header fields updated with a 304's (RFC 9111 §3.2): same names replaced."""
    replaced = {n.lower() for n, _ in fresh if n.lower() not in _KEEP_STORED}
    out = [(n, v) for n, v in stored if n.lower() not in replaced]
    out.extend((n, v) for n, v in fresh if n.lower() in replaced)
    return out


def _vary_names(
    response: list[tuple[bytes, bytes]], request: list[tuple[bytes, bytes]]
) -> list[str]:
    """The sorted varied header names; ``accept-encoding`` added when the response is encoded
    for a request that named encodings and ``Vary`` forgot to say so."""
    names: set[str] = set()
    encoded = False
    for name, value in response:
        lname = name.lower()
        if lname == b"vary":
            names.update(t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip())
        elif lname == b"content-encoding" and value.strip().lower() != b"identity":
            encoded = True
    if encoded and any(n.lower() == b"accept-encoding" for n, _ in request):
        names.add("accept-encoding")
    return sorted(names)


def _marker(record: bytes, ttl: float) -> tokencache.Entry:
    return tokencache.Entry(record, ttl, tokencache.Kind.MARKER)


def _transient(record: bytes) -> tokencache.Entry:
    return tokencache.Entry(record, 0, tokencache.Kind.TRANSIENT)
