"""Fetch one token with bounded retries: the only place that decides whether to try again.

Rules: a 2xx is parsed (a bad body is final); 4xx is final (no retry: the answer will not change);
429, 5xx, timeouts and connection errors are retried up to ``max_attempts`` in total, sleeping the
``Retry-After`` the endpoint asked for, or exponential backoff with jitter when it did not. A
``Retry-After`` longer than ``max_retry_after`` ends the retries at once (the caller's cooldown then
keeps everyone away). Sleep, wall clock and randomness are injected: tests never really sleep.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from tokencache.plugin._errors import TokenEndpointError, TokenError, TokenThrottledError
from tokencache.plugin._key import Credentials
from tokencache.plugin._request import TokenSender, build_token_request
from tokencache.plugin._token import (
    BEARER_ONLY,
    Token,
    is_retryable_status,
    parse_token,
    rejection,
    retry_after,
    transient,
)

Sleep = Callable[[float], Awaitable[None]]


class TokenFetcher:
    """Fetches tokens for one set of credentials through one sender."""

    def __init__(
        self,
        creds: Credentials,
        sender: TokenSender,
        *,
        max_attempts: int = 3,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        max_retry_after: float = 30.0,
        default_lifetime: float = 300.0,
        token_types: tuple[str, ...] = BEARER_ONLY,
        sleep: Sleep | None = None,
        wall_clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.creds = creds
        self.sender = sender
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.default_lifetime = default_lifetime
        self.token_types = token_types
        self._sleep: Sleep = sleep or asyncio.sleep
        self._wall_clock = wall_clock or time.time
        self._rng = rng or random.Random()
        self.requests = 0  # HTTP requests sent to the token endpoint (attempts, not fetches)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2.0**attempt)
        return ceiling * (0.5 + 0.5 * self._rng.random())

    async def fetch(self) -> Token:
        """Return a fresh token or raise the :class:`TokenError` of the last attempt."""
        creds = self.creds
        endpoint = creds.endpoint
        last: TokenError | None = None
        for attempt in range(self.max_attempts):
            delay: float | None = None
            self.requests += 1
            try:
                response = await self.sender.send(build_token_request(creds))
            except TokenEndpointError as exc:  # timeout or connection failure, already translated
                last = exc
            else:
                status = response.status
                if 200 <= status <= 299:
                    return parse_token(
                        response.body,
                        default_lifetime=self.default_lifetime,
                        client_id=creds.client_id,
                        endpoint=endpoint,
                        token_types=self.token_types,
                    )
                if not is_retryable_status(status):
                    raise rejection(
                        status,
                        response.body,
                        client_id=creds.client_id,
                        secret=creds.client_secret,
                        endpoint=endpoint,
                    )
                last = transient(status, client_id=creds.client_id, endpoint=endpoint)
                delay = retry_after(response.headers, now_epoch=self._wall_clock())
                if isinstance(last, TokenThrottledError):
                    last.retry_after = delay
                if delay is not None and delay > self.max_retry_after:
                    raise last
            if attempt + 1 < self.max_attempts:
                await self._sleep(self._backoff(attempt) if delay is None else delay)
        assert last is not None  # the loop ran at least once and did not return
        raise last
