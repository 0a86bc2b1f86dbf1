"""Per-cabinet limits: the resource quota and the parallel cap, kept exactly.

The guarantee, for one cabinet (``businessId``) and the requests made through one limiter: **no
more than ``quota.limit`` requests in any window of ``quota.period`` seconds, whether the server
counts fixed or sliding windows, and never more than ``max_parallel`` in flight.**

How it is kept. There are ``limit`` quota tokens. A request takes one before it is sent and gives
it back ``period`` (+ a small ``margin``) seconds *after its response arrived* (or after it was
abandoned). The server counts a request at some moment between sending and response, so for any
``limit + 1`` requests it counts within ``period`` seconds, the last one sent would have needed a
token while the other ``limit`` still held theirs: impossible. A token bucket such as
``aiolimiter.AsyncLimiter(1000, 3600)`` starts full and refills continuously, so it admits about
2,000 requests in the first hour; this does not.

Server feedback covers what this process cannot see (other processes, a restart mid-window).
When a response's ``Remaining`` is no less than what our own tokens leave, the server knows of
nothing we do not, and the tokens alone decide (own requests are never counted twice). When it
is less, someone else is using the cabinet, and ``Remaining`` gives a safe lower bound of what
is left: ``Remaining`` minus every request of ours that overlapped it in flight (they may or may
not be counted yet) minus every request started since. The best such bound, while its window
lasts, caps admissions too. With no bound known (first contact, or its window has passed) one
request at a time goes out to learn it, so a restarted process overshoots a nearly spent quota
by at most one request.

The parallel cap is shared with whoever else calls for the cabinet. When the server refuses a
request for it (someone else holds slots), this limiter lowers its own cap to what it had in
flight less one, and raises it again by one after ``_RAISE_AFTER`` answers without a refusal,
doubling that wait whenever a raise is refused again (like TCP's congestion window), so other
users' load costs a few refused calls, not a stream of them.

Optionally the quota can also be *paced*: ``Quota(burst=N)`` puts aiolimiter's token bucket
(``N`` tokens, refilled at ``limit / period``) in front, so a service spreads its calls over the
hour instead of spending them in the first seconds. The bucket only shapes the rate; the tokens
held above are what keep the guarantee, since a bucket alone overshoots.

Waiters are served first come, first served; a cancelled waiter takes nothing. A request
abandoned in flight (cancelled, timed out) keeps its token as if it had completed then, and its
parallel slot until the slowest recent answer would have come back: the server may still be
serving it, and a new request in its place would be refused for the parallel cap. The module knows
nothing of HTTP: the client reports what the server said through :meth:`CabinetLimiter.observe`.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import deque
from collections.abc import Hashable
from typing import Protocol

import attrs
from aiolimiter import AsyncLimiter

__all__ = ["CabinetLimiter", "Lease", "Limiter", "Quota", "QuotaState", "limiter_for"]

# With no server figure at hand, a 420 for the quota that named no reset time is waited out
# this long (capped by the period) before one request probes again.
_UNKNOWN_RESET_WAIT = 60.0
# Answers without a parallel-cap refusal before a lowered cap is raised by one; doubled (up to
# the maximum) each time a raise is refused.
_RAISE_AFTER = 8
# An abandoned request keeps its parallel slot until the slowest of the last answers' times
# has passed since it was sent (this long before any answer came).
_LATENCY_SAMPLES = 32
_DEFAULT_LATENCY = 1.0
_RAISE_AFTER_MAX = 1024


@attrs.frozen
class Quota:
    """A resource quota: at most ``limit`` requests per any ``period`` seconds, per cabinet.

    ``margin`` is extra time each token is held beyond the period, for whole-second server clocks
    and network delay; by default ``min(1 s, period / 1000)``. ``burst``, if set, paces requests
    to ``limit / period`` per second with bursts of up to ``burst`` (off by default: full speed).

    >>> Quota()
    Quota(limit=1000, period=3600.0, margin=None, burst=None)
    >>> Quota(limit=30, period=3.0).effective_margin
    0.003
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
        """The margin in force: ``margin`` if given, else ``min(1.0, period / 1000)``."""
        return self.margin if self.margin is not None else min(1.0, self.period / 1000)


@attrs.frozen
class QuotaState:
    """A snapshot of one cabinet's limits, as the limiter sees them.

    ``remaining`` is how many requests may start now without waiting, ``frees_in`` the seconds
    until the next one may (``0.0`` when ``remaining > 0``), ``server_remaining`` the last
    ``Remaining`` while it is lower than what this process's own tokens leave
    (someone else is using the cabinet), else ``None``.

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


class Lease(Protocol):
    """The right to have one request in flight; give it back with :meth:`release`."""

    async def release(self) -> None:
        """The request is over (answered, failed or cancelled). Safe to call twice."""


class Limiter(Protocol):
    """What the client needs from a per-cabinet limiter (in-process or shared through Redis)."""

    async def acquire(self) -> Lease:
        """Wait for a parallel slot and a quota token; cancellation takes nothing."""

    async def observe(
        self,
        lease: Lease,
        remaining: int | None,
        resets_in: float | None,
        *,
        parallel_refused: bool = False,
    ) -> None:
        """The server answered ``lease``'s request saying ``remaining`` calls are left until
        ``resets_in`` seconds from now (each ``None`` when it did not say);
        ``parallel_refused`` when the answer was a 420 for the parallel cap."""

    async def state(self) -> QuotaState:
        """How much quota is left and when more frees."""


class _InProcessLease:
    __slots__ = ("_limiter", "answered", "granted_at", "overlap", "released")

    def __init__(self, limiter: CabinetLimiter, overlap: int, granted_at: float) -> None:
        self._limiter = limiter
        self.granted_at = granted_at
        self.answered = False
        # Requests of ours in flight at some moment during this one's flight: the server may
        # count any of them after this one, so its Remaining may not include them yet.
        self.overlap = overlap
        self.released = False

    async def release(self) -> None:
        self._limiter._release(self)


@attrs.define
class _ServerBound:
    """``budget`` more starts are safe, less those started since ``starts``, until ``until``."""

    budget: int
    starts: int
    until: float
    reported: int


class CabinetLimiter:
    """The in-process limiter for one cabinet; see the module docstring for the guarantee.

    Use :func:`limiter_for` so that every client in the process shares one per cabinet.

    >>> async def demo() -> int:
    ...     limiter = CabinetLimiter(Quota(limit=2, period=60.0), max_parallel=4)
    ...     lease = await limiter.acquire()
    ...     await lease.release()
    ...     return (await limiter.state()).remaining
    >>> asyncio.run(demo())
    1
    """

    def __init__(self, quota: Quota, max_parallel: int) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, got {max_parallel}")
        self.quota = quota
        self.max_parallel = max_parallel
        self._cap = max_parallel  # lowered while others hold some of the cabinet's slots
        self._raise_after = _RAISE_AFTER
        self._calm = 0  # answers without a refusal since the cap last changed
        self._raised = False  # the cap was raised and no refusal came since
        self._waiters: deque[asyncio.Future[_InProcessLease]] = deque()
        self._latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self._lingering = 0  # abandoned requests the server may still be serving
        self._in_flight: set[_InProcessLease] = set()
        self._returns: deque[float] = deque()  # when completed requests' tokens come back
        self._starts = 0
        self._bound: _ServerBound | None = None
        # The server says nothing, or nothing tighter than our own tokens: they alone decide.
        self._local_suffices = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pacer = (
            AsyncLimiter(quota.burst, quota.burst * quota.period / quota.limit)
            if quota.burst is not None
            else None
        )

    # -- the public protocol -------------------------------------------------------------

    async def acquire(self) -> _InProcessLease:
        """Wait until a request may be sent; FIFO, and cancelling the wait takes nothing."""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        if self._pacer is not None:
            await self._pacer.acquire()
        if not self._waiters and self._admissible(loop.time()):
            return self._grant()
        waiter: asyncio.Future[_InProcessLease] = loop.create_future()
        self._waiters.append(waiter)
        self._wake()  # the queue may hold only abandoned waiters
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Granted in the same loop iteration as the cancellation: nothing was sent.
                self._release(waiter.result(), sent=False)
            self._wake()
            raise

    async def observe(
        self,
        lease: Lease,
        remaining: int | None,
        resets_in: float | None,
        *,
        parallel_refused: bool = False,
    ) -> None:
        """Take in the server's ``Remaining`` / reset time from the answer to ``lease``."""
        assert isinstance(lease, _InProcessLease)
        now = self._now()
        lease.answered = True
        self._latencies.append(now - lease.granted_at)
        self._adapt_cap(parallel_refused)
        if remaining is None:
            self._local_suffices = resets_in is None
            return
        self._expire(now)
        if remaining >= self.quota.limit - len(self._in_flight) - len(self._returns):
            # Our own tokens already account for everything the server counts: a bound would
            # count our own requests twice.
            self._local_suffices = True
            self._bound = None
            self._wake()
            return
        self._local_suffices = False
        wait = resets_in if resets_in is not None else min(self.quota.period, _UNKNOWN_RESET_WAIT)
        fresh = _ServerBound(
            budget=remaining - lease.overlap,
            starts=self._starts,
            until=now + wait + self.quota.effective_margin,
            reported=remaining,
        )
        current = self._bound
        if current is None or current.until <= now or self._budget(fresh) >= self._budget(current):
            self._bound = fresh
        else:
            current.reported = remaining
        self._wake()

    async def state(self) -> QuotaState:
        """How much quota is left now and when the next request may start."""
        now = self._now()
        self._expire(now)
        remaining = max(0, self.quota.limit - len(self._in_flight) - len(self._returns))
        bound = self._bound
        if bound is not None:
            remaining = max(0, min(remaining, self._budget(bound)))
        return QuotaState(
            limit=self.quota.limit,
            remaining=remaining,
            in_flight=len(self._in_flight),
            max_parallel=self.max_parallel,
            frees_in=0.0 if remaining else max(0.0, self._next_change(now) - now),
            server_remaining=bound.reported if bound is not None else None,
        )

    # -- bookkeeping ---------------------------------------------------------------------

    def _adapt_cap(self, refused: bool) -> None:
        if refused:
            if self._raised:
                self._raise_after = min(2 * self._raise_after, _RAISE_AFTER_MAX)
            # The server saw our requests in flight plus others' at its cap: ours less this one
            # is what fits.
            self._cap = max(1, min(self._cap, len(self._in_flight) - 1))
            self._calm, self._raised = 0, False
        elif self._cap < self.max_parallel:
            self._calm += 1
            if self._calm >= self._raise_after:
                self._cap += 1
                self._calm, self._raised = 0, True
                self._wake()
        else:
            self._raise_after = _RAISE_AFTER

    def _now(self) -> float:
        loop = self._loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    def _budget(self, bound: _ServerBound) -> int:
        return bound.budget - (self._starts - bound.starts)

    def _expire(self, now: float) -> None:
        returns = self._returns
        while returns and returns[0] <= now:
            returns.popleft()
        if self._bound is not None and self._bound.until <= now:
            self._bound = None

    def _admissible(self, now: float) -> bool:
        self._expire(now)
        in_flight = len(self._in_flight)
        if in_flight + self._lingering >= self._cap:
            return False
        if in_flight + len(self._returns) >= self.quota.limit:
            return False
        if self._bound is not None:
            return self._budget(self._bound) > 0
        # Nothing known of the server's count: learn it with one request before sending more.
        return self._local_suffices or in_flight == 0

    def _next_change(self, now: float) -> float:
        """The next moment a time-based constraint can lift (``inf`` if only a release can)."""
        times = []
        if self._returns:
            times.append(self._returns[0])
        if self._bound is not None:
            times.append(self._bound.until)
        return min(times, default=math.inf)

    def _grant(self) -> _InProcessLease:
        for other in self._in_flight:
            other.overlap += 1
        lease = _InProcessLease(self, overlap=len(self._in_flight), granted_at=self._now())
        self._in_flight.add(lease)
        self._starts += 1
        return lease

    def _release(self, lease: _InProcessLease, *, sent: bool = True) -> None:
        if lease.released:
            return
        lease.released = True
        self._in_flight.discard(lease)
        if not sent:
            self._starts -= 1  # never reached the server: no server bound needs to count it
        else:
            now = self._now()
            self._returns.append(now + self.quota.period + self.quota.effective_margin)
            if not lease.answered:
                # Abandoned in flight (cancelled, timed out, connection lost): the server may
                # still be working on it and count it against the cap, so its slot stays taken
                # until the slowest recent answer would have come back.
                linger = lease.granted_at + self._slowest() - now
                if linger > 0:
                    self._lingering += 1
                    assert self._loop is not None
                    self._loop.call_later(linger, self._end_linger)
        self._wake()

    def _end_linger(self) -> None:
        self._lingering -= 1
        self._wake()

    def _slowest(self) -> float:
        return max(self._latencies, default=_DEFAULT_LATENCY)

    def _wake(self) -> None:
        """Hand leases to waiters at the head of the queue while the limits allow."""
        waiters = self._waiters
        now = self._now()
        while waiters:
            head = waiters[0]
            if head.done():  # cancelled while waiting
                waiters.popleft()
                continue
            if not self._admissible(now):
                break
            waiters.popleft()
            head.set_result(self._grant())
        if waiters and len(self._in_flight) + self._lingering < self._cap:
            self._schedule(self._next_change(now))

    def _schedule(self, when: float) -> None:
        if when == math.inf or (self._timer is not None and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._wake()


_registries: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[Hashable, CabinetLimiter]
] = weakref.WeakKeyDictionary()


def limiter_for(key: Hashable, quota: Quota, max_parallel: int) -> CabinetLimiter:
    """The one limiter of this event loop for ``key`` (the API origin and the ``businessId``).

    Every client in the process that calls for the same cabinet gets the same limiter, so the
    quota is the cabinet's, not the client object's. Asking for the same cabinet with other
    limits is a configuration error, refused loudly rather than splitting the quota.
    """
    loop = asyncio.get_running_loop()
    registry = _registries.setdefault(loop, {})
    limiter = registry.get(key)
    if limiter is None:
        limiter = registry[key] = CabinetLimiter(quota, max_parallel)
    elif limiter.quota != quota or limiter.max_parallel != max_parallel:
        raise ValueError(
            f"cabinet {key!r} already has a limiter with {limiter.quota} and "
            f"max_parallel={limiter.max_parallel} in this process; every client for one "
            f"cabinet must use the same quota and max_parallel (got {quota}, {max_parallel})"
        )
    return limiter
