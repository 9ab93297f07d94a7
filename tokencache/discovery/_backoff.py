"""Exponential backoff with jitter for retrying the Kubernetes API.

Every pod of a deployment loses the API at the same moment (an API server restart, a network
blip); without jitter they would all come back in lock-step. Each delay is drawn from the upper
half of the current exponential step ("equal jitter"): never shorter than half the step, so a
broken API is not hammered, and never longer than ``maximum``.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays ``initial, 2*initial, 4*initial, ...`` capped at ``maximum``, each jittered."""

    __slots__ = ("_attempt", "_initial", "_maximum", "_rng")

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self._initial = initial
        self._maximum = maximum
        self._rng = rng if rng is not None else random.Random()
        self._attempt = 0

    def next_delay(self) -> float:
        """Return the delay before the next retry and advance the step."""
        step = min(self._maximum, self._initial * (2.0 ** min(self._attempt, 62)))
        self._attempt += 1
        return step / 2 + self._rng.uniform(0.0, step / 2)

    def reset(self) -> None:
        """Start again from ``initial`` (call after a request succeeded)."""
        self._attempt = 0
