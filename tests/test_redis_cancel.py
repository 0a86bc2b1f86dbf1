"""A cancelled acquire of the Redis store ends in CancelledError, whatever redis-py does with it.

On Python 3.11 redis-py sends each command through ``asyncio.wait_for``, which returns instead of
raising when the send finishes in the loop iteration the cancellation lands in; the store must
still end the acquire cancelled (and give back what the script granted), not hand out a lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from market_chat_async._limits import Answer, Quota
from market_chat_async._limits._redis import RedisLimiters

from ._redis_servers import needs_redis

pytestmark = needs_redis

MESSAGE = "getChatMessage"
QUOTAS = {MESSAGE: Quota(limit=10**9, period=3600.0)}
NO_HEADERS = Answer(remaining=None, resets_in=None)
# Far longer than the test: a slot that comes back did not come back by its lease lapsing.
LONG_LEASE = 60.0


@pytest.fixture
async def limits(redis_url: str) -> AsyncIterator[RedisLimiters]:
    shared = RedisLimiters(
        redis_url, quotas=QUOTAS, max_parallel=4, namespace="cancel", lease_ttl=LONG_LEASE
    )
    lease = await shared.limiter(1).acquire(MESSAGE)
    await lease.release(NO_HEADERS)  # answered: no probe from now on
    yield shared
    await shared.close()


async def test_an_acquire_whose_cancel_was_accepted_never_returns_a_lease(
    limits: RedisLimiters,
) -> None:
    limiter = limits.limiter(1)
    accepted = 0
    for round_ in range(400):
        acquiring = asyncio.ensure_future(limiter.acquire(MESSAGE))
        for _ in range(round_ % 20):  # (cancelled at every point of its way, the send included)
            await asyncio.sleep(0)
        if acquiring.cancel():
            accepted += 1
            with pytest.raises(asyncio.CancelledError):
                await acquiring
        else:  # it had its lease already
            await (await acquiring).release(sent=False)
    assert accepted >= 50  # the case in point happened
    await limits.flush()
    assert (await limiter.state(MESSAGE)).in_flight == 0  # what the scripts granted came back
