"""Capped exponential backoff with full jitter: attempt n waits a uniformly
random time in [0, min(max, initial * 2**n)), so a fleet that lost its
server comes back spread over the window instead of in waves."""

from __future__ import annotations

import random


class Backoff:
    """Delays of successive reconnection attempts, in seconds."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._max = maximum
        self._attempt = 0

    def next_delay(self) -> float:
        """The next delay."""
        bound = min(self._max, self._initial * (1 << min(self._attempt, 62)))
        self._attempt += 1
        return bound * random.random()


def second_half(interval: float) -> float:
    """A uniformly random time in the second half of `interval` ("equal
    jitter"): how long reports and moves back to the preferred address wait,
    so that a fleet does not act in one wave."""
    return interval / 2 + interval / 2 * random.random()
