"""One behaviour, two stores: every test here runs against the in-process ``CabinetLimiter`` and
against the Redis store (a real redis-server started here).

The in-process variant runs on looptime's virtual clock with hour-like periods; the Redis one
keeps the Redis server's clock, so it runs with a period of a second or so, waits for
conditions rather than durations, and bounds time only from below.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping

import attrs
import pytest

from market_chat_async._limits import Answer, CabinetLimiter, Lease, Limiter, Quota

from ._redis_servers import NO_REDIS, redis_server

A, B = "getChatMessage", "getChatHistory"
NO_HEADERS = Answer(remaining=None, resets_in=None)


@attrs.frozen
class Store:
    """A way to get a fresh cabinet's limiter, and the time scale its clock allows."""

    make: Callable[[Mapping[str, Quota], int], Limiter]
    period: float  # a quota period long enough to outlast a test step, short enough to wait out

    def quota(self, limit: int, *, burst: int | None = None) -> Quota:
        return Quota(limit=limit, period=self.period, burst=burst)


@pytest.fixture(scope="module")
def redis_url_for_contract() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(
    params=[
        pytest.param("in-process", marks=pytest.mark.looptime),
        pytest.param(
            "redis", marks=pytest.mark.skipif(NO_REDIS, reason="redis-server is not on PATH")
        ),
    ]
)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "in-process":
        yield Store(make=CabinetLimiter, period=3600.0)
        return
    from market_chat_async._limits._redis import RedisLimiters

    url = request.getfixturevalue("redis_url_for_contract")
    opened: list[RedisLimiters] = []

    def make(quotas: Mapping[str, Quota], max_parallel: int) -> Limiter:
        shared = RedisLimiters(
            url, quotas=quotas, max_parallel=max_parallel, namespace=uuid.uuid4().hex
        )
        opened.append(shared)
        return shared.limiter(1)

    yield Store(make=make, period=2.0)
    for shared in opened:
        await shared.close()


async def answered(limiter: Limiter, resource: str, answer: Answer = NO_HEADERS) -> None:
    """One request of ``resource`` that got ``answer``."""
    lease = await limiter.acquire(resource)
    await lease.release(answer)


async def still_waiting(acquiring: asyncio.Future[Lease], seconds: float = 0.3) -> bool:
    await asyncio.sleep(seconds)
    return not acquiring.done()


async def granted(acquiring: asyncio.Future[Lease], within: float = 30.0) -> Lease:
    """The lease a waiter gets, once it gets it (a generous bound: never a tight timing)."""
    async with asyncio.timeout(within):
        return await acquiring


async def test_each_resource_has_its_own_quota(store: Store) -> None:
    limiter = store.make({A: store.quota(2), B: store.quota(2)}, 4)
    await answered(limiter, A)
    await answered(limiter, A)
    spent = asyncio.ensure_future(limiter.acquire(A))
    assert await still_waiting(spent)
    await answered(limiter, B)  # another resource is not held up by A's spent quota
    assert (await limiter.state(B)).remaining == 1
    state = await limiter.state(A)
    assert (state.remaining, state.limit) == (0, 2)
    assert 0 < state.frees_in <= store.period + 1
    await (await granted(spent, store.period + 30)).release(NO_HEADERS)  # A's token returns


async def test_the_parallel_cap_is_the_cabinets_shared_by_all_resources(store: Store) -> None:
    limiter = store.make({A: store.quota(100), B: store.quota(100)}, 3)
    await answered(limiter, A)
    await answered(limiter, B)
    held = [await limiter.acquire(A), await limiter.acquire(A), await limiter.acquire(B)]
    assert (await limiter.state(A)).in_flight == (await limiter.state(B)).in_flight == 3
    fourth = asyncio.ensure_future(limiter.acquire(B))
    assert await still_waiting(fourth)
    await held.pop(0).release(NO_HEADERS)
    held.append(await granted(fourth))
    for lease in held:
        await lease.release(NO_HEADERS)


async def test_first_contact_probes_with_one_request(store: Store) -> None:
    limiter = store.make({A: store.quota(100)}, 4)
    probe = await limiter.acquire(A)
    second = asyncio.ensure_future(limiter.acquire(A))
    assert await still_waiting(second)  # nothing known of the server's count yet
    await probe.release(Answer(remaining=99, resets_in=store.period))
    lease = await granted(second)
    third = await limiter.acquire(A)  # the count is known now: no more probing
    await lease.release(NO_HEADERS)
    await third.release(NO_HEADERS)


async def test_a_lower_server_remaining_bounds_admissions(store: Store) -> None:
    limiter = store.make({A: store.quota(100)}, 4)
    await answered(limiter, A, Answer(remaining=3, resets_in=600.0))  # others spent 96
    state = await limiter.state(A)
    assert (state.remaining, state.server_remaining) == (3, 3)
    leases = [await limiter.acquire(A) for _ in range(3)]
    fourth = asyncio.ensure_future(limiter.acquire(A))
    assert await still_waiting(fourth)
    assert (await limiter.state(A)).frees_in > 0
    fourth.cancel()
    await asyncio.gather(fourth, return_exceptions=True)
    for lease in leases:
        await lease.release(NO_HEADERS)


async def test_own_requests_are_not_counted_twice(store: Store) -> None:
    limiter = store.make({A: store.quota(10)}, 4)
    await answered(limiter, A, Answer(remaining=9, resets_in=store.period))
    state = await limiter.state(A)
    assert (state.remaining, state.server_remaining) == (9, None)
    first, second = await limiter.acquire(A), await limiter.acquire(A)
    await first.release(Answer(remaining=8, resets_in=store.period))  # second not counted yet
    await second.release(Answer(remaining=7, resets_in=store.period))
    state = await limiter.state(A)
    assert (state.remaining, state.server_remaining) == (7, None)


async def test_a_burst_quota_paces_requests(store: Store) -> None:
    quota = store.quota(20, burst=2)  # bursts of 2, then one per period / 20
    limiter = store.make({A: quota}, 4)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(4):
        await answered(limiter, A)
    # Two at once, then two more an interval apart each (bounded from below only).
    assert loop.time() - started >= 2 * quota.pace_interval * 0.95


async def test_a_cancelled_waiter_takes_nothing(store: Store) -> None:
    limiter = store.make({A: store.quota(100)}, 1)
    await answered(limiter, A)
    held = await limiter.acquire(A)
    waiters = [asyncio.ensure_future(limiter.acquire(A)) for _ in range(5)]
    assert await still_waiting(waiters[0])
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await held.release(NO_HEADERS)
    state = await limiter.state(A)
    assert (state.in_flight, state.remaining) == (0, 98)  # the two requests sent, no more
    await answered(limiter, A)  # the slot is free at once


async def test_a_request_abandoned_in_flight_keeps_its_slot_until_an_answer_would_come(
    store: Store,
) -> None:
    limiter = store.make({A: store.quota(100)}, 1)
    lease = await limiter.acquire(A)
    await asyncio.sleep(0.2)  # answers take 0.2 s
    await lease.release(NO_HEADERS)
    abandoned = await limiter.acquire(A)
    await abandoned.release()  # no answer: the server may still be serving it
    assert (await limiter.state(A)).remaining == 98  # its token counts
    after = asyncio.ensure_future(limiter.acquire(A))
    assert await still_waiting(after, 0.05)
    await (await granted(after)).release(NO_HEADERS)


async def test_a_parallel_refusal_lowers_the_cap_to_what_was_in_flight_less_one(
    store: Store,
) -> None:
    limiter = store.make({A: store.quota(100)}, 4)
    await answered(limiter, A)
    first, second, third = [await limiter.acquire(A) for _ in range(3)]
    # Refused for the cabinet's parallel cap with three in flight: two fit beside the others.
    await third.release(Answer(remaining=None, resets_in=None, parallel_refused=True))
    blocked = asyncio.ensure_future(limiter.acquire(A))
    assert await still_waiting(blocked)  # two in flight, the cap is two
    await first.release(NO_HEADERS)
    fourth = await granted(blocked)  # one in flight: room for one more, not down to one
    fifth = asyncio.ensure_future(limiter.acquire(A))
    assert await still_waiting(fifth)
    await second.release(NO_HEADERS)
    await (await granted(fifth)).release(NO_HEADERS)
    await fourth.release(NO_HEADERS)


@pytest.mark.looptime
@pytest.mark.parametrize("latency", [0.05, 0.3])
@pytest.mark.parametrize("offset", [0.0, 3590.0, 3599.5])
async def test_a_fixed_window_server_gets_99_percent_of_its_quota_at_any_offset(
    latency: float, offset: float
) -> None:
    """The server counts each request on arrival in fixed hours; the client starts ``offset``
    seconds into one and keeps four requests going for six hours."""
    limiter = CabinetLimiter({A: Quota(limit=1000, period=3600.0)}, 4)
    loop = asyncio.get_running_loop()
    start = loop.time() - offset  # the server's hour 0 began `offset` seconds ago
    counted: dict[int, int] = {}
    over = 0

    async def worker() -> None:
        nonlocal over
        while loop.time() - start < offset + 6 * 3600:
            lease = await limiter.acquire(A)
            await asyncio.sleep(latency / 2)
            hour = int((loop.time() - start) // 3600)
            counted[hour] = counted.get(hour, 0) + 1
            over += counted[hour] > 1000
            await asyncio.sleep(latency / 2)
            remaining = 1000 - counted[hour]
            resets_in = float(math.ceil((hour + 1) * 3600 - (loop.time() - start)))
            await lease.release(Answer(remaining=max(0, remaining), resets_in=resets_in))

    tasks = [asyncio.ensure_future(worker()) for _ in range(4)]
    await asyncio.gather(*tasks)
    assert over == 0
    first, last = min(counted), max(counted)
    full_hours = [counted[hour] for hour in range(first + 1, last)]
    assert min(full_hours) >= 990, counted
