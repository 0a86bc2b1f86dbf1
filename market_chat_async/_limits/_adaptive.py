"""The cabinet's parallel cap as this process adapts it, and the answer times it keeps.

Both stores use these two classes as they are: the cap is lowered and raised per process (the
server's refusal is the only signal of others' load, and it reaches the process that got it),
and an abandoned request keeps its slot until the slowest recent answer would have come back.
Neither knows of locks or clocks: the caller holds its own lock and passes times in.
"""

from __future__ import annotations

from collections import deque

__all__ = ["AdaptiveCap", "LatencyTracker"]

# Answers without a parallel-cap refusal before a lowered cap is raised by one; doubled (up to
# the maximum) each time a raise is refused, like TCP's congestion window.
RAISE_AFTER = 8
RAISE_AFTER_MAX = 1024
# How many recent answer times are remembered, and the one assumed before any answer came.
LATENCY_SAMPLES = 32
DEFAULT_LATENCY = 1.0


class AdaptiveCap:
    """How many of the cabinet's ``max_parallel`` slots this process may use now.

    A refusal for the parallel cap means others hold slots: what this process had in flight
    less the refused request is what fits. Calm answers raise the cap by one again.

    >>> cap = AdaptiveCap(4)
    >>> cap.answered(refused=True, in_flight=3)
    >>> cap.value
    2
    >>> for _ in range(RAISE_AFTER):
    ...     cap.answered(refused=False, in_flight=1)
    >>> cap.value
    3
    """

    __slots__ = ("_calm", "_raise_after", "_raised", "max_parallel", "value")

    def __init__(self, max_parallel: int) -> None:
        if not isinstance(max_parallel, int) or max_parallel < 1:
            raise ValueError(f"max_parallel must be an int of at least 1, got {max_parallel!r}")
        self.max_parallel = max_parallel
        self.value = max_parallel
        self._raise_after = RAISE_AFTER
        self._calm = 0  # answers without a refusal since the cap last changed
        self._raised = False  # the cap was raised and no refusal came since

    def answered(self, *, refused: bool, in_flight: int) -> None:
        """Take in one answer; ``in_flight`` counts this process's requests, the answered one
        included."""
        if refused:
            if self._raised:
                self._raise_after = min(2 * self._raise_after, RAISE_AFTER_MAX)
            self.value = max(1, min(self.value, in_flight - 1))
            self._calm, self._raised = 0, False
        elif self.value < self.max_parallel:
            self._calm += 1
            if self._calm >= self._raise_after:
                self.value += 1
                self._calm, self._raised = 0, True
        else:
            self._raise_after = RAISE_AFTER

    @property
    def at_rest(self) -> bool:
        """Whether the cap is back at ``max_parallel`` with nothing to remember."""
        return self.value == self.max_parallel and self._raise_after == RAISE_AFTER


class LatencyTracker:
    """The slowest of the last :data:`LATENCY_SAMPLES` answer times.

    >>> latency = LatencyTracker()
    >>> latency.slowest()
    1.0
    >>> latency.record(0.25); latency.record(0.5)
    >>> latency.slowest()
    0.5
    """

    __slots__ = ("_samples",)

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    def record(self, seconds: float) -> None:
        """One request took ``seconds`` from its grant to its answer."""
        self._samples.append(max(0.0, seconds))

    def slowest(self) -> float:
        """How long an answer may still take; :data:`DEFAULT_LATENCY` before any came."""
        return max(self._samples, default=DEFAULT_LATENCY)
