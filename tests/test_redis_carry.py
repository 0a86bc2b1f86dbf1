"""The Redis store's releases on their way: carried by the next acquire of their resource, and
never lost or held back when that acquire does not come or fails.

Against a real redis-server started here, in real time (Redis keeps its own clock): waits are for
conditions, durations are bounded only loosely from above.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from market_chat_async._limits import Answer, Lease, Quota
from market_chat_async._limits._redis import RedisLimiters

from ._redis_servers import needs_redis

pytestmark = needs_redis

MESSAGE = "getChatMessage"
HISTORY = "getChatHistory"
QUOTAS = {MESSAGE: Quota(limit=30, period=3.0), HISTORY: Quota(limit=30, period=3.0)}
NO_HEADERS = Answer(remaining=None, resets_in=None)
# Far longer than any wait below: a slot that comes back did not come back by its lease lapsing.
LONG_LEASE = 60.0


@pytest.fixture
async def limits(redis_url: str) -> AsyncIterator[RedisLimiters]:
    shared = RedisLimiters(
        redis_url, quotas=QUOTAS, max_parallel=1, namespace="carry", lease_ttl=LONG_LEASE
    )
    yield shared
    await shared.close()


async def open_the_cabinet(limits: RedisLimiters) -> None:
    """One answered request per resource without headers: no probe from now on."""
    for resource in QUOTAS:
        lease = await limits.limiter(1).acquire(resource)
        await lease.release(NO_HEADERS)
    await limits.flush()


async def test_a_request_after_a_request_costs_one_script_call(limits: RedisLimiters) -> None:
    limiter = limits.limiter(1)
    await open_the_cabinet(limits)
    before, carried = limits.script_calls, limits.calls["carried"]
    for _ in range(20):
        lease = await limiter.acquire(MESSAGE)
        await lease.release(NO_HEADERS)
    await limits.flush()  # the last release goes by itself
    assert limits.script_calls - before == 20 + 1
    assert limits.calls["carried"] - carried == 20 - 1
    assert (await limiter.state(MESSAGE)).in_flight == 0


async def test_a_release_carried_by_a_cancelled_acquire_still_frees_its_slot_and_token(
    limits: RedisLimiters,
) -> None:
    limiter = limits.limiter(1)
    await open_the_cabinet(limits)
    carried_and_cancelled = 0
    for round_ in range(200):
        if carried_and_cancelled >= 3:
            break
        steps = 1 + round_ % 12  # (cancelled at every point of its way: some land in flight)
        lease = await limiter.acquire(MESSAGE)
        carried = limits.calls["carried"]

        async def release_then_acquire(lease: Lease = lease) -> Lease:
            await lease.release(sent=False)  # never sent: its slot and its token come back
            return await limiter.acquire(MESSAGE)  # carries that release

        acquiring = asyncio.ensure_future(release_then_acquire())
        for _ in range(steps):
            await asyncio.sleep(0)
        acquiring.cancel()
        try:
            await (await acquiring).release(sent=False)
        except asyncio.CancelledError:
            carried_and_cancelled += limits.calls["carried"] > carried
        await limits.flush()
        state = await limiter.state(MESSAGE)
        assert state.in_flight == 0
        assert state.remaining >= 30 - 1  # open_the_cabinet's token at most: nothing leaked
    assert carried_and_cancelled >= 3  # the case in point happened


async def test_a_pending_release_wakes_a_waiter_of_another_process_without_an_acquire_after_it(
    limits: RedisLimiters, redis_url: str
) -> None:
    other = RedisLimiters(
        redis_url, quotas=QUOTAS, max_parallel=1, namespace="carry", lease_ttl=LONG_LEASE
    )
    await open_the_cabinet(limits)
    lease = await limits.limiter(1).acquire(MESSAGE)
    waiting = asyncio.ensure_future(other.limiter(1).acquire(HISTORY))  # blocked on `wake`
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await lease.release(NO_HEADERS)  # nothing of this process acquires after it
    taken = await asyncio.wait_for(waiting, LONG_LEASE / 4)  # not the lease lapsing
    await taken.release(NO_HEADERS)
    await other.close()


async def test_a_pending_release_wakes_a_waiter_of_another_resource_in_the_same_process(
    limits: RedisLimiters,
) -> None:
    limiter = limits.limiter(1)
    await open_the_cabinet(limits)
    lease = await limiter.acquire(MESSAGE)
    waiting = asyncio.ensure_future(limiter.acquire(HISTORY))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await lease.release(NO_HEADERS)
    taken = await asyncio.wait_for(waiting, LONG_LEASE / 4)
    await taken.release(NO_HEADERS)


async def test_a_release_applied_twice_leaves_a_lingering_slot_and_the_bound_as_once(
    redis_url: str,
) -> None:
    # As when a call is retried after its reply was lost, or an acquire carrying releases
    # fails and they are sent again by themselves.
    two = RedisLimiters(redis_url, quotas=QUOTAS, max_parallel=2, namespace="carry")
    limiter: Any = two.limiter(1)
    await open_the_cabinet(two)
    res = limiter._resources[MESSAGE]
    answered = await limiter.acquire(MESSAGE)
    abandoned = await limiter.acquire(MESSAGE)
    for lease in (answered, abandoned):
        lease.released = True
        limiter.in_flight.discard(lease)
    first = limiter._release_args(
        answered, Answer(remaining=20, resets_in=60.0), sent=True, linger=0
    )
    second = limiter._release_args(abandoned, None, sent=True, linger=5.0)  # its slot lingers
    releases = f"[{first},{second}]"
    redis = aioredis.Redis.from_url(redis_url)
    leases, bound = (
        "market-chat-async:{carry|1}:leases",
        f"market-chat-async:{{carry|1}}:{MESSAGE}:bound",
    )
    seen = []
    for _ in range(2):
        await limiter._send(res, releases)
        seen.append((await redis.zscore(leases, abandoned.id), await redis.hget(bound, "budget")))
    await redis.aclose()
    await two.close()
    assert seen[0][0] is not None
    assert seen[0][1] is not None
    assert seen[1] == seen[0]
