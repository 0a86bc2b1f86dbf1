"""The per-cabinet limiter on its own: tokens, the parallel cap, server bounds, cancellation.

These run on looptime's virtual clock, so hours of quota pass in milliseconds. The end-to-end
guarantee against the bundled Market server is proven in ``test_quota.py``.
"""

from __future__ import annotations

import asyncio

import pytest

from market_chat_async import Quota
from market_chat_async._limits import Answer, CabinetLimiter, limiter_for

pytestmark = pytest.mark.looptime


R = "getChatMessage"


def one(quota: Quota, max_parallel: int) -> CabinetLimiter:
    """A limiter of one resource, the way most of these tests need it."""
    return CabinetLimiter({R: quota}, max_parallel)


def now() -> float:
    return asyncio.get_running_loop().time()


async def test_quota_validation() -> None:
    with pytest.raises(ValueError, match="limit"):
        Quota(limit=0)
    with pytest.raises(ValueError, match="period"):
        Quota(period=0)
    with pytest.raises(ValueError, match="margin"):
        Quota(margin=-1)
    with pytest.raises(ValueError, match="max_parallel"):
        one(Quota(), max_parallel=0)
    # A clock-rate allowance of period / 100,000 (the token's period starts at the answer).
    assert Quota().effective_margin == 0.036
    assert Quota().reset_margin == 1.0  # the whole-second headers


async def test_token_returns_a_period_after_the_response_not_after_the_send() -> None:
    limiter = one(Quota(limit=2, period=100.0, margin=0.0), max_parallel=4)
    first = await limiter.acquire(R)
    await first.observe(Answer(None, None))  # server without headers
    second = await limiter.acquire(R)
    await asyncio.sleep(30)  # the responses take 30 s to arrive
    await first.release()
    await second.release()
    started = now()
    third = await limiter.acquire(R)
    assert now() - started == pytest.approx(100.0)  # 130 s after sending, not 100
    await third.release()


async def test_never_more_than_max_parallel_in_flight() -> None:
    limiter = one(Quota(limit=1000, period=3600.0), max_parallel=4)
    in_flight = peak = 0

    async def request() -> None:
        nonlocal in_flight, peak
        lease = await limiter.acquire(R)
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.1)
        await lease.observe(Answer(500, 3000.0))
        in_flight -= 1
        await lease.release()

    await asyncio.gather(*(request() for _ in range(100)))
    assert peak == 4
    state = await limiter.state(R)
    assert state.in_flight == 0


async def test_first_contact_probes_with_one_request() -> None:
    limiter = one(Quota(), max_parallel=4)
    probe = await limiter.acquire(R)
    waiting = asyncio.ensure_future(limiter.acquire(R))
    await asyncio.sleep(1)
    assert not waiting.done()  # nothing known of the server's count yet
    await probe.observe(Answer(999, 3000.0))
    assert (await waiting) is not None
    for _ in range(2):
        await limiter.acquire(R)
    assert (await limiter.state(R)).in_flight == 4


async def test_server_remaining_caps_admissions_and_counts_overlap() -> None:
    limiter = one(Quota(limit=1000, period=3600.0), max_parallel=4)
    probe = await limiter.acquire(R)
    await probe.observe(Answer(3, 600.0))  # someone else used 997
    await probe.release()
    leases = [await limiter.acquire(R) for _ in range(3)]
    blocked = asyncio.ensure_future(limiter.acquire(R))
    await asyncio.sleep(1)
    assert not blocked.done()
    # The answer to one of three overlapping requests: Remaining=2 may not count the other two
    # yet, so no start is known to be safe; only the window's end frees the cabinet.
    await leases[0].observe(Answer(2, 599.0))
    await asyncio.sleep(1)
    assert not blocked.done()
    for lease in leases:
        await lease.release()
    await blocked
    # The later, equally tight bound runs 599 s from t=1, plus the 1 s margin.
    assert now() == pytest.approx(1 + 599.0 + 1.0)


async def test_exact_figure_after_the_overlap_clears() -> None:
    limiter = one(Quota(limit=1000, period=3600.0), max_parallel=4)
    probe = await limiter.acquire(R)
    await probe.observe(Answer(10, 600.0))
    await probe.release()
    a, b = await limiter.acquire(R), await limiter.acquire(R)
    await a.observe(Answer(8, 600.0))  # may not include b: budget 7
    await a.release()
    await b.observe(Answer(8, 600.0))  # b alone now: exactly 8 left
    await b.release()
    assert (await limiter.state(R)).remaining == 8


async def test_quota_exhausted_by_the_server_waits_for_reset_then_probes() -> None:
    limiter = one(Quota(), max_parallel=4)
    lease = await limiter.acquire(R)
    await lease.observe(Answer(0, 120.0))
    await lease.release()
    state = await limiter.state(R)
    assert state.remaining == 0
    assert state.frees_in == pytest.approx(121.0)
    started = now()
    probe = await limiter.acquire(R)
    assert now() - started == pytest.approx(121.0)
    second = asyncio.ensure_future(limiter.acquire(R))
    await asyncio.sleep(0.5)
    assert not second.done()  # one request learns the new window before the rest go
    await probe.observe(Answer(999, 3600.0))
    await second


async def test_waiters_are_served_in_order() -> None:
    limiter = one(Quota(limit=5, period=10.0, margin=0.0), max_parallel=1)
    order: list[int] = []

    async def request(i: int) -> None:
        lease = await limiter.acquire(R)
        order.append(i)
        await lease.observe(Answer(None, None))
        await asyncio.sleep(0.01)
        await lease.release()

    tasks = []
    for i in range(12):
        tasks.append(asyncio.ensure_future(request(i)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == list(range(12))
    assert now() == pytest.approx(20.0, abs=0.2)  # 5 per 10 s: the 11th waits two periods


async def test_cancelled_waiters_take_nothing() -> None:
    limiter = one(Quota(limit=10, period=60.0), max_parallel=4)
    holder = await limiter.acquire(R)
    await holder.observe(Answer(None, None))
    busy = [await limiter.acquire(R) for _ in range(3)]
    waiters = [asyncio.ensure_future(limiter.acquire(R)) for _ in range(5000)]
    await asyncio.sleep(0)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    for lease in [holder, *busy]:
        await lease.release()
    state = await limiter.state(R)
    assert (state.in_flight, state.remaining) == (0, 6)
    leases = [await limiter.acquire(R) for _ in range(4)]  # all four slots are there
    assert (await limiter.state(R)).in_flight == 4
    for lease in leases:
        await lease.release()


async def test_cancelled_in_flight_releases_slot_and_keeps_the_token() -> None:
    limiter = one(Quota(limit=1000, period=3600.0), max_parallel=4)
    first = await limiter.acquire(R)
    await first.observe(Answer(None, None))
    await first.release()

    async def request() -> None:
        lease = await limiter.acquire(R)
        try:
            await asyncio.sleep(10)  # in flight
        finally:
            await lease.release()

    for _ in range(30):
        tasks = [asyncio.ensure_future(request()) for _ in range(100)]
        await asyncio.sleep(0.5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    state = await limiter.state(R)
    assert state.in_flight == 0
    # 1 + 30 rounds x 4 sent: each may have reached the server, so each still counts.
    assert state.remaining == 1000 - 1 - 30 * 4


async def test_grant_racing_cancellation_gives_the_lease_back() -> None:
    limiter = one(Quota(limit=100, period=60.0), max_parallel=1)
    holder = await limiter.acquire(R)
    await holder.observe(Answer(None, None))
    waiter = asyncio.ensure_future(limiter.acquire(R))
    await asyncio.sleep(0)
    await holder.release()  # grants the lease to the waiter ...
    waiter.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    state = await limiter.state(R)
    assert state.in_flight == 0
    assert state.remaining == 99  # the unsent request took no token


async def test_one_limiter_per_cabinet() -> None:
    quota = Quota()
    a = limiter_for(("https://api", 1), {R: quota}, 4)
    assert limiter_for(("https://api", 1), {R: Quota()}, 4) is a
    assert limiter_for(("https://api", 2), {R: quota}, 4) is not a
    with pytest.raises(ValueError, match="same quotas"):
        limiter_for(("https://api", 1), {R: Quota(limit=10)}, 4)


async def test_burst_paces_requests_over_the_period() -> None:
    limiter = one(Quota(limit=100, period=100.0, burst=10), max_parallel=4)
    first = await limiter.acquire(R)
    await first.observe(Answer(None, None))
    await first.release()
    started = now()
    for _ in range(29):
        lease = await limiter.acquire(R)
        await lease.release()
    # 9 more from the full bucket at once, then one per second (100 per 100 s).
    assert now() - started == pytest.approx(20.0, abs=1.0)


async def test_burst_must_fit_the_limit() -> None:
    with pytest.raises(ValueError, match="burst"):
        Quota(limit=10, burst=11)


async def test_abandoned_request_keeps_its_slot_until_the_slowest_answer() -> None:
    limiter = one(Quota(limit=1000, period=3600.0), max_parallel=1)
    first = await limiter.acquire(R)
    await asyncio.sleep(2.0)  # answers take 2 s
    await first.observe(Answer(None, None))
    await first.release()
    started = now()
    abandoned = await limiter.acquire(R)
    await asyncio.sleep(0.5)
    await abandoned.release()  # cancelled in flight: no answer observed
    nxt = await limiter.acquire(R)
    assert now() - started == pytest.approx(2.0)  # not 0.5: the server may still be on it
    await nxt.release()


async def test_parallel_refusals_lower_the_cap_and_answers_raise_it_again() -> None:
    limiter = one(Quota(limit=10**6, period=3600.0), max_parallel=4)
    probe = await limiter.acquire(R)
    await probe.observe(Answer(None, None))
    leases = [probe, *[await limiter.acquire(R) for _ in range(3)]]
    # Someone else holds two slots: the server refuses two of our four.
    for lease in leases[2:]:
        await lease.observe(Answer(None, None, parallel_refused=True))
        await lease.release()
    for lease in leases[:2]:
        await lease.observe(Answer(None, None))
        await lease.release()
    assert limiter.cap == 2
    for _ in range(8):  # calm answers earn one more slot
        lease = await limiter.acquire(R)
        await lease.observe(Answer(None, None))
        await lease.release()
    assert limiter.cap == 3


async def test_own_requests_are_not_counted_twice() -> None:
    limiter = one(Quota(limit=10, period=3600.0), max_parallel=10)
    probe = await limiter.acquire(R)
    await probe.observe(Answer(9, 3000.0))
    await probe.release()
    leases = [await limiter.acquire(R) for _ in range(5)]
    # The server counted all six of ours: it knows of nothing we do not, so nothing is held
    # back for the four still in flight beyond their own tokens.
    await leases[0].observe(Answer(4, 3000.0))
    state = await limiter.state(R)
    assert (state.remaining, state.server_remaining) == (4, None)
    # One request more than our tokens explain was counted: someone else uses the cabinet.
    await leases[1].observe(Answer(3, 3000.0))
    assert (await limiter.state(R)).server_remaining == 3
