"""Every wait-or-stop decision of the funnel, as pure functions of plain values.

After each try the funnel asks :func:`decide` what to do with its outcome: stop with the result,
stop with an error, or try again after a delay. The constants live in :class:`RetryPolicy`;
:func:`retry_delay` is the one backoff rule. Nothing here sleeps, sends or reads a clock.

* 2xx, and client errors (4xx other than 420): final.
* 420 for the quota: try again at once: the limiter has been told the window is spent, and
  acquiring waits it out.
* 420 for the parallel cap: try again after a short, growing, jittered delay.
* 5xx, a dropped connection, a timeout: backoff with full jitter, up to ``max_retries`` times,
  for reads. A write (sendMessage, sendFile, createChat) is not tried again after any of these,
  since the service may have acted: it stops with :class:`OutcomeUnknownError`.
* A connection refused before anything was sent: retried like a 5xx, writes included.
* Any wait that would end past the deadline (``max_rate_limit_wait``) stops with the
  :class:`RateLimitError` instead.
"""

from __future__ import annotations

import random

import attrs

from ._errors import (
    MarketApiError,
    MarketConnectionError,
    OutcomeUnknownError,
    RateLimitError,
    ServerError,
)

__all__ = ["Decision", "RetryPolicy", "backoff_ceiling", "decide", "retry_delay"]


def backoff_ceiling(initial: float, most: float, attempt: int) -> float:
    """The one exponential backoff rule: ``min(most, initial * 2**(attempt - 1))``.

    Callers draw their jitter below it (the client's retries: full jitter; the notification
    receiver's handler retries: the upper half).

    >>> [backoff_ceiling(0.5, 8.0, n) for n in (1, 2, 3, 10)]
    [0.5, 1.0, 2.0, 8.0]
    """
    return min(most, initial * 2.0 ** min(attempt - 1, 60))


@attrs.frozen
class RetryPolicy:
    """How transient failures are retried, in one place.

    5xx answers, dropped connections and timeouts are retried up to ``max_retries`` times with
    exponential backoff and full jitter (``uniform(0, min(backoff_max, backoff_initial * 2**n))``);
    a 420 for the parallel cap is retried after ``uniform(parallel_min, parallel_max)`` seconds,
    doubling for each further refusal of the same call up to 16 times that, for as long as the
    client's maximum rate-limit wait allows. Client errors are never retried, and writes never
    after the service may have acted.

    >>> RetryPolicy(max_retries=0).max_retries
    0
    """

    max_retries: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    backoff_initial: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    backoff_max: float = attrs.field(default=8.0, validator=attrs.validators.gt(0))
    parallel_min: float = attrs.field(default=0.05, validator=attrs.validators.ge(0))
    parallel_max: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))


def retry_delay(
    policy: RetryPolicy, error: MarketApiError, attempt: int, rng: random.Random
) -> float | None:
    """Seconds to wait before retrying ``error`` after ``attempt`` failed tries, or ``None``.

    Quota 420s are not decided here: they wait for the window, which the limiter knows.

    >>> rng = random.Random(0)
    >>> retry_delay(RetryPolicy(), ServerError(503), attempt=1, rng=rng) is not None
    True
    >>> retry_delay(RetryPolicy(), ServerError(503), attempt=4, rng=rng) is None
    True
    >>> from ._errors import NotFoundError
    >>> retry_delay(RetryPolicy(), NotFoundError(404), attempt=1, rng=rng) is None
    True
    """
    if isinstance(error, RateLimitError) and error.reason == "parallel":
        # Brief, but growing while the cap stays full, so waiting calls do not burn quota.
        return rng.uniform(policy.parallel_min, policy.parallel_max) * (1 << min(attempt - 1, 4))
    if not isinstance(error, (ServerError, MarketConnectionError)):
        return None
    if attempt > policy.max_retries:
        return None
    return rng.uniform(0, backoff_ceiling(policy.backoff_initial, policy.backoff_max, attempt))


@attrs.frozen
class Decision:
    """Try again after ``delay`` seconds, or stop with ``error`` (``None``: not a retry case)."""

    delay: float | None = None
    error: MarketApiError | None = None

    @property
    def retry(self) -> bool:
        """Whether to try again."""
        return self.delay is not None


def decide(
    error: MarketApiError,
    *,
    policy: RetryPolicy,
    failures: int,
    refusals: int,
    writes: bool,
    operation: str,
    now: float,
    deadline: float | None,
    rng: random.Random,
) -> Decision:
    """What to do after a try failed with ``error``: the ``failures``-th 5xx / network failure
    or the ``refusals``-th parallel-cap refusal of this call.

    >>> rng = random.Random(0)
    >>> after_500 = decide(ServerError(500), policy=RetryPolicy(), failures=1, refusals=0,
    ...                    writes=True, operation="sendMessageToChat", now=0.0, deadline=None,
    ...                    rng=rng)
    >>> type(after_500.error).__name__, after_500.retry
    ('OutcomeUnknownError', False)
    """
    if isinstance(error, RateLimitError):
        if error.reason == "quota":
            delay = 0.0
            must_wait = error.retry_after or 0.0
        else:
            delay = retry_delay(policy, error, refusals, rng) or 0.0
            must_wait = delay
        if deadline is not None and now + max(delay, must_wait) > deadline:
            return Decision(error=error)
        return Decision(delay=delay)
    if not isinstance(error, (ServerError, MarketConnectionError)):
        return Decision(error=error)
    if writes and not (isinstance(error, MarketConnectionError) and not error.sent):
        return Decision(error=OutcomeUnknownError.after(operation, error))
    backoff = retry_delay(policy, error, failures, rng)
    return Decision(delay=backoff) if backoff is not None else Decision(error=error)
