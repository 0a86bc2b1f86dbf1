"""How a failed delivery is retried, as pure decisions: a wait in seconds, or give up.

Delivery is at least once: a failed or timed-out handler call (or a failed fetch) goes back to
the queue and is tried again after :func:`retry_delay` seconds, with exponential backoff and
jitter, until ``give_up_after`` seconds have passed since the notification arrived; then it
moves to the dead letters, where ``market-chat queue retry`` replays it.
"""

from __future__ import annotations

import random

import attrs

from market_chat_async._errors import (
    BadRequestError,
    ForbiddenError,
    RateLimitError,
    UnauthorizedError,
)
from market_chat_async._retry import backoff_ceiling

_DAY = 24 * 3600.0


@attrs.frozen
class HandlerRetry:
    """How a failing handler (or a failed fetch) is retried, in one place.

    Before try ``n + 1`` the wait is drawn from ``[c/2, c]`` with
    ``c = min(backoff_max, backoff_initial * 2**(n-1))`` (exponential backoff, "equal"
    jitter). Tries continue until ``give_up_after`` seconds after the notification arrived
    (default 24 hours), or, if ``attempts`` is set, after that many tries; then the
    notification becomes a dead letter. See :func:`retry_delay` for what is never retried.

    >>> HandlerRetry()
    HandlerRetry(attempts=None, backoff_initial=1.0, backoff_max=300.0, give_up_after=86400.0)
    """

    attempts: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1))
    )
    backoff_initial: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    backoff_max: float = attrs.field(default=300.0, validator=attrs.validators.gt(0))
    give_up_after: float = attrs.field(default=_DAY, validator=attrs.validators.ge(0))


def is_auth_error(error: BaseException) -> bool:
    """Whether the Market refused the key (401/403): the notification is kept and retried.

    A wrong or expired key is an operator's problem that a fixed key solves, so these are
    logged at error level on every try instead of being dropped.

    >>> is_auth_error(ForbiddenError(403)), is_auth_error(RuntimeError())
    (True, False)
    """
    return isinstance(error, UnauthorizedError | ForbiddenError)


def retry_delay(
    policy: HandlerRetry,
    error: BaseException,
    attempt: int,
    rng: random.Random,
    age: float = 0.0,
) -> float | None:
    """Seconds to wait before another try after ``attempt`` failed ones, or ``None`` to stop.

    ``age`` is how long ago the notification arrived. Never retried: a 400 from the Market (a
    wrong request stays wrong). A 404 *is* retried (a notification can outrun the message
    becoming readable), and so are 401/403 (see :func:`is_auth_error`). A
    :class:`~market_chat_async.RateLimitError` waits at least its ``retry_after``. The last
    wait is shortened so that no try starts later than ``give_up_after``.

    >>> rng = random.Random(0)
    >>> 0.5 <= retry_delay(HandlerRetry(), RuntimeError("db down"), 1, rng) <= 1.0
    True
    >>> retry_delay(HandlerRetry(), RuntimeError("db down"), 30, rng, age=86400.0) is None
    True
    >>> retry_delay(HandlerRetry(), BadRequestError(400), 1, rng) is None
    True
    """
    if isinstance(error, BadRequestError):
        return None
    if policy.attempts is not None and attempt >= policy.attempts:
        return None
    left = policy.give_up_after - age
    if left <= 0:
        return None
    ceiling = backoff_ceiling(policy.backoff_initial, policy.backoff_max, attempt)
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    if isinstance(error, RateLimitError) and error.retry_after:
        delay = max(delay, error.retry_after)
    return min(delay, left)
