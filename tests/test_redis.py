"""The Redis store's own behaviour and its faults, against a real redis-server started here.

What both stores share is in ``test_limits_contract.py``. These run in real time (Redis keeps
its own clock): they wait for conditions, and bound durations only loosely from above. Skipped
only where redis-server is not installed; .ci/run installs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from market_chat_async import LimiterUnavailableError
from market_chat_async._limits import Answer, Lease, Quota
from market_chat_async._limits import _redis as redis_store
from market_chat_async._limits._redis import RedisLimiters
from market_chat_async._limits._redis_scripts import CABINET_KEYS, RESOURCE_KEYS
from market_chat_async.testing import MarketTestServer, serve

from ._redis_servers import (
    TcpProxy,
    free_port,
    needs_cluster_tools,
    needs_redis,
    redis_cluster,
)

pytestmark = needs_redis

WORKER = Path(__file__).with_name("_redis_worker.py")
MESSAGE = "getChatMessage"
HISTORY = "getChatHistory"
QUOTAS = {MESSAGE: Quota(limit=30, period=3.0), HISTORY: Quota(limit=30, period=3.0)}
NO_HEADERS = Answer(remaining=None, resets_in=None)


@pytest.fixture
async def limits(redis_url: str) -> AsyncIterator[RedisLimiters]:
    """One process's view of the cabinets."""
    shared = RedisLimiters(redis_url, quotas=QUOTAS, max_parallel=4, namespace="test")
    yield shared
    await shared.close()


async def eventually(condition: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    """Wait for ``condition`` to hold (polled), failing after a generous ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        assert loop.time() < deadline, "the condition never came true"
        await asyncio.sleep(0.05)


async def still_waiting(acquiring: asyncio.Future[Lease], seconds: float = 0.3) -> bool:
    await asyncio.sleep(seconds)
    return not acquiring.done()


async def open_the_cabinet(limits: RedisLimiters, business_id: int = 1) -> None:
    """One answered request without headers: the tokens alone decide from now on (no probe)."""
    for resource in QUOTAS:
        lease = await limits.limiter(business_id).acquire(resource)
        await lease.release(NO_HEADERS)


# -- round trips, keys, Cluster ---------------------------------------------------------------


async def test_a_request_costs_two_script_calls(limits: RedisLimiters) -> None:
    limiter = limits.limiter(1)
    await open_the_cabinet(limits)
    await limits.flush()
    before = limits.script_calls
    lease = await limiter.acquire(MESSAGE)
    await lease.release(Answer(remaining=27, resets_in=2.0))
    await limits.flush()  # the release is on its way when release() returns
    assert limits.script_calls - before == 2


async def test_every_key_of_a_cabinet_is_in_one_hash_slot_documented_and_expiring(
    redis_url: str,
) -> None:
    quotas = {MESSAGE: Quota(limit=30, period=3.0, burst=5), HISTORY: Quota(limit=30, period=3.0)}
    shared = RedisLimiters(redis_url, quotas=quotas, max_parallel=4, namespace="https://ns")
    limiter = shared.limiter(7)
    first = await limiter.acquire(MESSAGE)
    await first.release(Answer(remaining=20, resets_in=60.0))  # `bound`
    second = await limiter.acquire(MESSAGE)
    await second.release(NO_HEADERS)  # `local`
    await (await limiter.acquire(MESSAGE)).release()  # unanswered: its slot lingers
    await limiter.acquire(HISTORY)  # the probe of another resource
    cancelled = asyncio.ensure_future(limiter.acquire(HISTORY))  # waits for it in the `queue`
    waiting = asyncio.ensure_future(limiter.acquire(HISTORY))  # waits behind it, in process
    await asyncio.sleep(0.2)
    cancelled.cancel()  # its ticket is given back: `void` keeps it from a late grant
    await asyncio.gather(cancelled, return_exceptions=True)
    await asyncio.sleep(0.2)  # `waiting` asks Redis now: `queue`, `seen`
    await limiter.acquire(MESSAGE)  # left in flight: `overlap`; paced: `pace`
    # A release with nobody blocked on the cabinet's `wake` list leaves an item there.
    await (await shared.limiter(8).acquire(HISTORY)).release(NO_HEADERS)
    redis = aioredis.Redis.from_url(redis_url)
    names, slots = set(), set()
    async for raw in redis.scan_iter(match="*"):
        key = raw.decode()
        assert key.startswith(
            ("market-chat-async:{https://ns|7}:", "market-chat-async:{https://ns|8}:")
        ), key
        names.add(key.rpartition(":")[2])
        slots.add((key.split("}")[0], key_slot(raw)))
        assert await redis.pttl(raw) > 0, key
    await redis.aclose()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await shared.close()
    assert len(slots) == 2  # one slot per cabinet
    assert names == set(CABINET_KEYS) | set(RESOURCE_KEYS)
    documented = redis_store.__doc__ or ""
    assert all(f"``{name}``" in documented for name in names)


async def test_cabinets_and_namespaces_are_apart(redis_url: str) -> None:
    one = RedisLimiters(redis_url, quotas=QUOTAS, max_parallel=4, namespace="https://one")
    two = RedisLimiters(redis_url, quotas=QUOTAS, max_parallel=4, namespace="https://two")
    lease = await one.limiter(5).acquire(MESSAGE)
    assert (await one.limiter(5).state(HISTORY)).in_flight == 1  # the cap is the cabinet's
    assert (await one.limiter(6).state(MESSAGE)).in_flight == 0
    assert (await two.limiter(5).state(MESSAGE)).in_flight == 0
    await lease.release()
    await one.close()
    await two.close()


@needs_cluster_tools
async def test_the_store_runs_on_a_real_cluster_from_a_url_or_a_ready_client() -> None:
    with redis_cluster() as url:
        from_url = RedisLimiters(url, quotas=QUOTAS, max_parallel=4, namespace="c", cluster=True)
        ready = RedisCluster.from_url(url)
        passed_in = RedisLimiters(ready, quotas=QUOTAS, max_parallel=4, namespace="c")
        # Cabinets spread over the slots of all three nodes.
        for business_id in range(1, 31):
            lease = await from_url.limiter(business_id).acquire(MESSAGE)
            assert (await passed_in.limiter(business_id).state(MESSAGE)).in_flight == 1
            other = asyncio.ensure_future(passed_in.limiter(business_id).acquire(MESSAGE))
            assert await still_waiting(other, 0.01)  # the probe holds: both see one cabinet
            await lease.release(NO_HEADERS)
            await (await other).release(NO_HEADERS)
        await from_url.close()
        await passed_in.close()
        assert await ready.ping()  # not ours: left open
        await ready.aclose()


# -- faults -------------------------------------------------------------------------------------


async def test_a_storm_of_cancelled_acquires_leaks_no_lease(
    limits: RedisLimiters, redis_url: str
) -> None:
    limiter = limits.limiter(1)
    await open_the_cabinet(limits)
    for round_ in range(100):
        # Cancelled at every point of their way: before, during and after the script.
        tasks = [asyncio.ensure_future(limiter.acquire(MESSAGE)) for _ in range(10)]
        for _ in range(round_ % 7):
            await asyncio.sleep(0)
        await asyncio.sleep(0.0002 * (round_ % 5))
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if not isinstance(result, BaseException):  # granted before the cancel landed
                await result.release(sent=False)
    await limits.flush()
    other = RedisLimiters(redis_url, quotas=QUOTAS, max_parallel=4, namespace="test")
    state = await other.limiter(1).state(MESSAGE)
    assert state.in_flight == 0
    assert state.remaining >= 30 - 1  # open_the_cabinet's token at most: nothing leaked
    leases = [await other.limiter(1).acquire(MESSAGE) for _ in range(4)]  # all four slots
    for lease in leases:
        await lease.release(sent=False)
    await other.close()


async def test_a_cancellation_landing_as_the_waiter_is_woken_is_not_swallowed(
    limits: RedisLimiters,
) -> None:
    limiter = limits.limiter(1)
    await open_the_cabinet(limits)
    held = [await limiter.acquire(MESSAGE) for _ in range(4)]
    waiter = asyncio.ensure_future(limiter.acquire(MESSAGE))
    assert await still_waiting(waiter)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # The very race of asyncio.wait_for on Python 3.11: the wake-up and the cancellation in one
    # loop iteration. The waiter's sleep must still end in CancelledError.
    woken = asyncio.Event()
    sleeping = asyncio.ensure_future(limiter._sleep(woken, 10.0))  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    woken.set()
    sleeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeping
    assert (await limiter.state(MESSAGE)).in_flight == 4
    for lease in held:
        await lease.release(NO_HEADERS)


async def test_a_killed_workers_slots_come_back_within_seconds(
    limits: RedisLimiters, redis_url: str
) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), "hold", redis_url, "test", "4", "1.0",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None
    assert (await holder.stdout.readline()).strip() == b"held"
    limiter = limits.limiter(1)
    await asyncio.sleep(2.5)  # alive, it renews: its slots stay taken past the 1 s lease
    assert (await limiter.state(MESSAGE)).in_flight == 4
    first = asyncio.ensure_future(limiter.acquire(MESSAGE))
    assert await still_waiting(first, 0.1)
    holder.kill()  # SIGKILL: no chance to release
    await holder.wait()
    killed_at = asyncio.get_running_loop().time()
    leases = [await first] + [await limiter.acquire(MESSAGE) for _ in range(3)]
    # Its leases lapse a lease TTL (1 s here) after their last renewal; a generous bound.
    assert asyncio.get_running_loop().time() - killed_at < 10
    state = await limiter.state(MESSAGE)
    # Their requests may have been counted: the dead worker's tokens stay out.
    assert state.remaining <= 30 - 4 - 4
    for lease in leases:
        await lease.release(NO_HEADERS)


async def test_a_stalled_workers_slot_goes_to_others_and_its_late_answer_counts_a_period(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="market_chat_async")
    hung = RedisLimiters(redis_url, quotas=QUOTAS, max_parallel=1, namespace="t", lease_ttl=0.4)
    other = RedisLimiters(redis_url, quotas=QUOTAS, max_parallel=1, namespace="t")
    await open_the_cabinet(hung)
    lease = await hung.limiter(1).acquire(MESSAGE)
    time.sleep(1.0)  # noqa: ASYNC251 - the point: this event loop stalls, renewals cannot run
    # Its lease lapsed: another process gets the slot; the stalled request's token still counts.
    taken = await other.limiter(1).acquire(MESSAGE)
    assert (await other.limiter(1).state(MESSAGE)).remaining <= 30 - 2 - 1
    await lease.release(NO_HEADERS)  # the answer came only now: its period starts now
    redis = aioredis.Redis.from_url(redis_url)
    returns = await redis.zscore("market-chat-async:{t|1}:getChatMessage:tokens", lease.id)
    seconds, micros = await redis.time()
    await redis.aclose()
    assert returns is not None
    assert returns / 1000 - (seconds + micros / 1e6) > 3.0 - 0.5
    await taken.release(NO_HEADERS)
    await hung.close()
    await other.close()


async def test_a_short_redis_blip_is_ridden_out(redis_url: str) -> None:
    proxy = TcpProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    shared = RedisLimiters(proxy.url, quotas=QUOTAS, max_parallel=4, namespace="blip")
    limiter = shared.limiter(1)
    await open_the_cabinet(shared)
    failures: list[BaseException] = []
    done = 0

    async def requests() -> None:
        nonlocal done
        for _ in range(40):
            try:
                lease = await limiter.acquire(HISTORY)
            except LimiterUnavailableError as exc:
                failures.append(exc)
                continue
            await asyncio.sleep(0.01)  # "the request"
            await lease.release(NO_HEADERS)
            done += 1

    async def blip() -> None:
        for seconds in (0.3, 0.6, 1.0):
            await asyncio.sleep(0.2)
            proxy.cut()
            await asyncio.sleep(seconds)
            proxy.restore()

    await asyncio.gather(requests(), requests(), blip())
    await shared.close()
    await proxy.stop()
    assert failures == []
    assert done == 80


async def test_an_outage_fails_closed_and_keeps_the_answer_in_hand(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="market_chat_async")
    proxy = TcpProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    shared = RedisLimiters(proxy.url, quotas=QUOTAS, max_parallel=4, namespace="down")
    limiter = shared.limiter(1)
    lease = await limiter.acquire(MESSAGE)
    proxy.cut()  # Redis goes away while the request is in flight
    # The answer arrived: releasing never raises, and what it says is not lost.
    await lease.release(Answer(remaining=5, resets_in=60.0))
    with pytest.raises(LimiterUnavailableError):
        # It carries the release along, and after the blip allowance fails closed.
        await limiter.acquire(MESSAGE)

    async def release_retried() -> bool:  # sent by itself, refused too: retried in background
        return "could not give back a lease" in caplog.text

    await eventually(release_retried)
    proxy.restore()

    async def answer_delivered() -> bool:
        return (await limiter.state(MESSAGE)).server_remaining == 5

    await eventually(answer_delivered)
    await shared.close()
    await proxy.stop()


async def test_redis_down_fails_closed_without_leaking_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    shared = RedisLimiters(url, quotas=QUOTAS, max_parallel=4, namespace="x")
    with pytest.raises(LimiterUnavailableError) as info:
        await shared.limiter(1).acquire(MESSAGE)
    await shared.close()
    assert "127.0.0.1" in str(info.value)
    for text in (str(info.value), repr(shared), caplog.text):
        assert "hunter2" not in text


async def test_redis_down_with_fallback_uses_the_in_process_store(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="market_chat_async")
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    shared = RedisLimiters(url, quotas=QUOTAS, max_parallel=4, namespace="fb", fallback=True)
    limiter = shared.limiter(1)
    for _ in range(3):
        lease = await limiter.acquire(MESSAGE)
        await lease.release(NO_HEADERS)
    assert (await limiter.state(MESSAGE)).remaining == 27
    await shared.close()
    warnings = [r for r in caplog.records if "falling back to the in-process" in r.message]
    assert len(warnings) == 1  # once per outage, not per request
    assert "hunter2" not in caplog.text


async def test_many_cabinets_in_flight_wait_for_a_small_pool(redis_url: str) -> None:
    shared = RedisLimiters(
        redis_url, quotas=QUOTAS, max_parallel=4, namespace="pool", max_connections=4
    )

    async def one(business_id: int) -> None:
        limiter = shared.limiter(business_id)
        lease = await limiter.acquire(MESSAGE)
        await asyncio.sleep(0.05)
        await lease.release(NO_HEADERS)

    await asyncio.gather(*(one(business_id) for business_id in range(1, 301)))
    await shared.close()


async def test_waiting_processes_are_served_first_come_first_served(redis_url: str) -> None:
    quotas = {MESSAGE: Quota(limit=1000, period=3.0)}
    processes = [
        RedisLimiters(redis_url, quotas=quotas, max_parallel=1, namespace="fifo") for _ in range(5)
    ]
    first = await processes[0].limiter(1).acquire(MESSAGE)
    order: list[int] = []

    async def waiter(n: int) -> None:
        lease = await processes[n].limiter(1).acquire(MESSAGE)
        order.append(n)
        await lease.release(NO_HEADERS)

    waiting = []
    for n in (3, 1, 4, 2):  # arriving in this order, each in its own "process"
        waiting.append(asyncio.ensure_future(waiter(n)))
        await asyncio.sleep(0.15)
    await first.release(NO_HEADERS)
    await asyncio.gather(*waiting)
    for shared in processes:
        await shared.close()
    assert order == [3, 1, 4, 2]


async def test_a_fleet_of_ten_processes_shares_one_cabinet_with_few_script_calls(
    redis_url: str,
) -> None:
    seconds = 9.0
    port = free_port()
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            "fleet",
            f"http://127.0.0.1:{port}",
            redis_url,
            str(seconds),
            str(n),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for n in range(10)
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert (await worker.stdout.readline()).strip() == b"ready"
    server = MarketTestServer(quota=30, period=3.0, window="fixed", latency=0.02)
    async with serve(server, port=port):
        outputs = [worker.communicate(b"go\n") for worker in workers]
        reports: list[dict[str, Any]] = [
            json.loads(out) for out, _ in await asyncio.gather(*outputs)
        ]
    answered = sum(r["statuses"].get("200", 0) for r in reports)
    calls = sum(r["script_calls"] for r in reports)
    assert [r["failed"] for r in reports] == [[]] * 10
    assert server.stats.quota_420 == server.stats.parallel_420 == 0
    assert server.stats.max_in_flight[1] <= 4
    assert server.stats.max_in_any_window(1, 3.0) <= 30
    assert answered >= 60  # at least two full windows' worth
    assert calls / answered <= 3.0, f"{calls} script calls for {answered} answers"
    served = sorted(r["statuses"].get("200", 0) for r in reports)
    assert served[0] >= 1  # nobody starves


# -- the client on the Redis store, end to end --------------------------------------------------


async def test_clients_on_one_redis_share_each_methods_quota_and_the_cap(redis_url: str) -> None:
    from market_chat_async import MarketChatClient, Quota
    from market_chat_async.testing import MarketTestServer, serve

    server = MarketTestServer(
        quotas={"getChatMessage": 6, "getChatHistory": 6}, period=2.0, latency=0.01
    )
    chat = server.add_chat(
        1,
        messages=[
            {"messageId": i, "createdAt": "2026-01-01T00:00:00Z", "sender": "CUSTOMER"}
            for i in range(1, 6)
        ],
    )
    quotas = {"getChatMessage": Quota(6, 2.0), "getChatHistory": Quota(6, 2.0)}
    async with serve(server) as running:
        clients = [
            MarketChatClient(
                api_key="test-api-key", base_url=running.url, redis_url=redis_url, quotas=quotas
            )
            for _ in range(2)  # two "processes": each its own RedisLimiters
        ]
        try:

            async def history(client: MarketChatClient) -> int:
                return len([m async for m in client.iter_history(1, chat, page_size=1)])

            results = await asyncio.gather(
                *(client.get_message(1, chat, i) for client in clients for i in range(1, 6)),
                *(history(client) for client in clients),
            )
        finally:
            for client in clients:
                await client.close()
    assert results[-2:] == [5, 5]
    stats = server.stats
    assert sum(stats.quota_420_by_operation.values()) == 0
    assert sum(stats.parallel_420_by_operation.values()) == 0
    assert max(stats.max_in_flight.values()) <= 4


async def test_a_ready_redis_client_can_be_passed_and_is_left_open(redis_url: str) -> None:
    from market_chat_async import MarketChatClient
    from market_chat_async.testing import MarketTestServer, serve

    redis = aioredis.Redis.from_url(redis_url)
    try:
        async with serve(MarketTestServer()) as running:
            for option in ("redis_url", "redis_client"):
                async with MarketChatClient(
                    api_key="test-api-key", base_url=running.url, **{option: redis}
                ) as client:
                    assert (await client.get_message(1, 2, 3)).message_id == 3
                assert await redis.ping()  # not closed by the client
        keys = [key async for key in redis.scan_iter("market-chat-async:*")]
        assert keys  # the limits were kept in this Redis
    finally:
        await redis.aclose()
