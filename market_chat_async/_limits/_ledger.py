"""One resource's quota arithmetic for the in-process store: tokens, the server bound, pacing.

Pure bookkeeping over times passed in; the cabinet that owns it holds the lock. The Redis store
keeps the same rules in its scripts (``_redis``), and one contract test suite runs both.
"""

from __future__ import annotations

import math
from collections import deque

from ._quota import Answer, Quota

__all__ = ["ResourceLedger"]

# With no server figure at hand, a 420 for the quota that named no reset time is waited out
# this long (capped by the period) before one request probes again.
UNKNOWN_RESET_WAIT = 60.0


class _ServerBound:
    """``budget`` more starts are safe, less those started since ``starts``, until ``until``."""

    __slots__ = ("budget", "reported", "starts", "until")

    def __init__(self, budget: int, starts: int, until: float, reported: int) -> None:
        self.budget = budget
        self.starts = starts
        self.until = until
        self.reported = reported


class ResourceLedger:
    """The quota of one resource of one cabinet, as this process has spent and learnt it.

    >>> ledger = ResourceLedger(Quota(limit=2, period=60.0, margin=0.0))
    >>> ledger.grant(now=0.0); ledger.finish(now=1.0, sent=True)
    >>> ledger.remaining(now=1.0), ledger.remaining(now=61.0)
    (1, 2)
    """

    __slots__ = (
        "_bound",
        "_hold",
        "_local_suffices",
        "_returns",
        "_starts",
        "_tat",
        "in_flight",
        "quota",
    )

    def __init__(self, quota: Quota) -> None:
        self.quota = quota
        self._hold = quota.period + quota.effective_margin  # how long a spent token stays out
        self.in_flight = 0
        self._returns: deque[float] = deque()  # when finished requests' tokens come back
        self._starts = 0
        self._bound: _ServerBound | None = None
        # The server says nothing, or nothing tighter than our own tokens: they alone decide.
        self._local_suffices = False
        self._tat = -math.inf  # pacing: when the next request is due (GCRA)

    def _expire(self, now: float) -> None:
        returns = self._returns
        while returns and returns[0] <= now:
            returns.popleft()
        if self._bound is not None and self._bound.until <= now:
            self._bound = None

    def _budget(self, bound: _ServerBound) -> int:
        return bound.budget - (self._starts - bound.starts)

    def _pace_wait(self, now: float) -> float:
        burst = self.quota.burst
        if burst is None:
            return 0.0
        return max(0.0, self._tat - now - (burst - 1) * self.quota.pace_interval)

    def admissible(self, now: float) -> bool:
        """Whether one more request of this resource may start at ``now``."""
        self._expire(now)
        if self.in_flight + len(self._returns) >= self.quota.limit:
            return False
        if self._pace_wait(now) > 0:
            return False
        if self._bound is not None:
            return self._budget(self._bound) > 0
        # Nothing known of the server's count: learn it with one request before sending more.
        return self._local_suffices or self.in_flight == 0

    def next_change(self, now: float) -> float:
        """The next moment a time-based constraint can lift (``inf`` if only a release can)."""
        self._expire(now)
        times = [now + wait] if (wait := self._pace_wait(now)) > 0 else []
        if self._returns:
            times.append(self._returns[0])
        if self._bound is not None:
            times.append(self._bound.until)
        return min(times, default=math.inf)

    def grant(self, now: float) -> None:
        """A request of this resource starts."""
        self.in_flight += 1
        self._starts += 1
        if self.quota.burst is not None:
            self._tat = max(self._tat, now) + self.quota.pace_interval

    def finish(self, now: float, *, sent: bool) -> None:
        """A request is over: its token returns a period from ``now`` unless it was never sent."""
        self.in_flight -= 1
        if sent:
            self._returns.append(now + self._hold)
        else:
            self._starts -= 1  # never reached the server: no server bound needs to count it

    def observe(self, now: float, answer: Answer, *, overlap: int) -> None:
        """Take in the server's ``Remaining`` / reset time; ``overlap`` is how many of our
        requests were in flight at some moment during the answered one (the server may count
        them after it)."""
        remaining, resets_in = answer.remaining, answer.resets_in
        if remaining is None:
            self._local_suffices = resets_in is None
            return
        self._expire(now)
        if remaining >= self.quota.limit - self.in_flight - len(self._returns):
            # Our own tokens already account for everything the server counts: a bound would
            # count our own requests twice.
            self._local_suffices = True
            self._bound = None
            return
        self._local_suffices = False
        wait = resets_in if resets_in is not None else min(self.quota.period, UNKNOWN_RESET_WAIT)
        budget, until = remaining - overlap, now + wait + self.quota.reset_margin
        current = self._bound
        if current is None:
            self._bound = _ServerBound(budget, self._starts, until, remaining)
            return
        if budget >= self._budget(current):  # the fresher figure is as tight or looser
            current.budget, current.starts, current.until = budget, self._starts, until
        current.reported = remaining

    def remaining(self, now: float) -> int:
        """Requests that may start now as far as the quota goes (the parallel cap aside)."""
        self._expire(now)
        left = max(0, self.quota.limit - self.in_flight - len(self._returns))
        if self._bound is not None:
            left = max(0, min(left, self._budget(self._bound)))
        return left

    def server_remaining(self, now: float) -> int | None:
        """The last ``Remaining`` while a server bound is in force."""
        self._expire(now)
        return self._bound.reported if self._bound is not None else None

    def holds_nothing(self, now: float) -> bool:
        """No token out, no bound in force, no pacing debt: forgetting it loses nothing."""
        self._expire(now)
        return (
            self.in_flight == 0
            and not self._returns
            and self._bound is None
            and self._pace_wait(now) == 0
            and self._tat <= now
        )

    def settles_at(self, now: float) -> float:
        """When it will hold nothing if no request starts meanwhile (``now`` if it already does)."""
        self._expire(now)
        times = [now, self._tat]
        if self._returns:
            times.append(self._returns[-1])
        if self._bound is not None:
            times.append(self._bound.until)
        return max(times)
