"""The plain values the limiter speaks in: a quota, a snapshot of it, the server's answer."""

from __future__ import annotations

import math
from typing import Protocol

import attrs

__all__ = ["Answer", "Lease", "Limiter", "Quota", "QuotaState"]

# How far two clocks may drift apart, as a share of the time measured (10 ppm: a quartz clock
# without NTP does better than 50 ppm, one with NTP far better).
CLOCK_RATE_TOLERANCE = 1e-5
# The X-RateLimit-Resource-Until and Date headers are whole seconds.
HEADER_RESOLUTION = 1.0


@attrs.frozen
class Quota:
    """A resource quota: at most ``limit`` requests per any ``period`` seconds, per cabinet.

    ``margin`` is extra time each token is held beyond the period. The period already starts
    when the answer arrived, after the server counted the request whatever the latency, so by
    default the margin only allows for clocks that run at slightly different rates
    (:data:`CLOCK_RATE_TOLERANCE` of the period, at least 1 ms: 36 ms an hour); a reset time
    read from the whole-second rate-limit headers is held :data:`HEADER_RESOLUTION` longer
    instead. Every second of margin costs about ``max_parallel / latency`` requests a window
    against a fixed-window server (the burst a window edge cuts drifts by it each period).
    Given, ``margin`` is used for both. ``burst``, if set, paces requests to ``limit / period``
    per second with bursts of up to ``burst`` (off by default: full speed).

    >>> Quota()
    Quota(limit=1000, period=3600.0, margin=None, burst=None)
    >>> Quota().effective_margin, Quota().reset_margin
    (0.036, 1.0)
    """

    limit: int = attrs.field(default=1000, validator=[attrs.validators.instance_of(int)])
    period: float = attrs.field(default=3600.0, converter=float)
    margin: float | None = attrs.field(default=None)
    burst: int | None = attrs.field(default=None)

    @limit.validator
    def _check_limit(self, _: attrs.Attribute[int], value: int) -> None:
        if value < 1:
            raise ValueError(f"Quota.limit must be at least 1, got {value}")

    @period.validator
    def _check_period(self, _: attrs.Attribute[float], value: float) -> None:
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"Quota.period must be a positive number of seconds, got {value}")

    @margin.validator
    def _check_margin(self, _: attrs.Attribute[float | None], value: float | None) -> None:
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"Quota.margin must be >= 0 seconds, got {value}")

    @burst.validator
    def _check_burst(self, _: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None and not (isinstance(value, int) and 1 <= value <= self.limit):
            raise ValueError(f"Quota.burst must be None or 1..limit, got {value!r}")

    @property
    def effective_margin(self) -> float:
        """Seconds a token is held beyond the period: ``margin`` if given, else the clock-rate
        allowance."""
        if self.margin is not None:
            return self.margin
        return round(max(0.001, self.period * CLOCK_RATE_TOLERANCE), 6)

    @property
    def reset_margin(self) -> float:
        """Seconds added to a reset time the server gave (whole-second headers): ``margin``
        if given, else :data:`HEADER_RESOLUTION`."""
        return self.margin if self.margin is not None else HEADER_RESOLUTION

    @property
    def pace_interval(self) -> float:
        """Seconds between paced requests (``period / limit``); pacing is on only with ``burst``.

        >>> Quota(limit=100, period=100.0, burst=10).pace_interval
        1.0
        """
        return self.period / self.limit


@attrs.frozen
class QuotaState:
    """A snapshot of one cabinet's limits for one resource, as the limiter sees them.

    ``remaining`` is how many requests may start now without waiting, ``frees_in`` the seconds
    until the next one may (``0.0`` when ``remaining > 0``), ``server_remaining`` the last
    ``Remaining`` while it is lower than what this process's own tokens leave
    (someone else is using the cabinet), else ``None``. ``in_flight`` and ``max_parallel`` are
    the cabinet's, shared by every resource.

    >>> QuotaState(limit=1000, remaining=0, in_flight=4, max_parallel=4, frees_in=12.5,
    ...            server_remaining=None).frees_in
    12.5
    """

    limit: int
    remaining: int
    in_flight: int
    max_parallel: int
    frees_in: float
    server_remaining: int | None


@attrs.frozen(slots=False)  # one per request: attrs inits a dict-backed frozen class faster
class Answer:
    """What an answer's headers told the limiter: ``remaining`` calls of the resource are left
    until ``resets_in`` seconds from now (each ``None`` when the server did not say), and
    whether it was a 420 for the cabinet's parallel cap.

    >>> Answer(remaining=998, resets_in=162.0)
    Answer(remaining=998, resets_in=162.0, parallel_refused=False)
    """

    remaining: int | None
    resets_in: float | None
    parallel_refused: bool = False


class Lease(Protocol):
    """The right to have one request of one resource in flight; give it back once."""

    @property
    def resource(self) -> str:
        """The resource (API operation) whose quota token this lease holds."""

    async def release(self, answer: Answer | None = None, *, sent: bool = True) -> None:
        """The request is over. ``answer``: what the server said (``None``: no answer came,
        the request was abandoned in flight); ``sent=False``: it never left this process, so
        it counts for nothing. Safe to call twice."""


class Limiter(Protocol):
    """One cabinet's limits, in-process or shared through Redis: what the client needs."""

    async def acquire(self, resource: str) -> Lease:
        """Wait for a parallel slot and a quota token of ``resource``; cancelling takes nothing."""

    async def state(self, resource: str) -> QuotaState:
        """How much of ``resource``'s quota is left and when more frees."""
