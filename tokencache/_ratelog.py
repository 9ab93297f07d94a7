"""A log line per interval, not per event: refused peer input is counted, and logged rarely.

Anyone who can reach the peer port can send garbage as fast as the network allows; a line per
refusal would turn that into a disk flood. The counters (``ServerStats``) see every event; the log
sees the first one and then at most one line per ``interval`` saying how many followed.
"""

from __future__ import annotations

import logging

from ._clock import Clock, MonotonicClock


class RateLimitedLog:
    """Logs a refusal at most once per ``interval`` seconds, with the count of those it skipped."""

    __slots__ = ("_clock", "_interval", "_log", "_next", "_skipped")

    def __init__(
        self, log: logging.Logger, *, interval: float = 10.0, clock: Clock | None = None
    ) -> None:
        self._log = log
        self._interval = interval
        self._clock: Clock = clock or MonotonicClock()
        self._next = float("-inf")
        self._skipped = 0

    def refused(self, remote: str, reason: str) -> None:
        """Note one refused connection or frame (``reason`` never holds secrets or input bytes)."""
        now = self._clock.now()
        if now < self._next:
            self._skipped += 1
            return
        self._next = now + self._interval
        skipped, self._skipped = self._skipped, 0
        self._log.warning(
            "refused peer input from %s: %s (%d more refused since the last such line)",
            remote,
            reason,
            skipped,
        )
