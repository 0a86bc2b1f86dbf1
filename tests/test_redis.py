"""The Redis backend against a real redis-server (started here) and the bundled Market server.

These run in real time: Redis keeps its own clock. Skipped only where redis-server is not
installed; .ci/run installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from market_chat_async import (
    LimiterUnavailableError,
    MarketChatClient,
    Quota,
    RateLimitError,
)
from market_chat_async._limits import Lease, Limiter
from market_chat_async._redis import RedisLimiters
from market_chat_async.testing import MarketTestServer, serve

from .conftest import API_KEY, FAST_RETRY

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not on PATH (apt-get install redis-server; .ci/run does)",
)

WORKER = Path(__file__).with_name("_redis_worker.py")
QUOTA = Quota(limit=30, period=3.0)
KEY_NAMES = {"tokens", "leases", "overlap", "bound", "local", "cap", "pace"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free localhost port, no persistence; yields its URL."""
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def redis_server_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
async def redis_url(redis_server_url: str) -> str:
    """The module's redis-server, emptied for each test."""
    redis = aioredis.Redis.from_url(redis_server_url)
    await redis.flushdb()
    await redis.aclose()
    return redis_server_url


@pytest.fixture
async def limiters(redis_url: str) -> AsyncIterator[RedisLimiters]:
    """A second process's view of the cabinet: its own ``RedisLimiters``, nothing else shared."""
    shared = RedisLimiters(redis_url, quota=QUOTA, max_parallel=4, namespace_key="test")
    yield shared
    await shared.close()


async def still_waiting(acquiring: asyncio.Future[Lease], seconds: float = 0.3) -> bool:
    await asyncio.sleep(seconds)
    return not acquiring.done()


async def token_returns_in(redis_url: str, namespace: str, business_id: int) -> float:
    """Seconds until the one token held in the cabinet returns, on the Redis clock."""
    redis = aioredis.Redis.from_url(redis_url)
    key = f"market-chat-async:{namespace}:{business_id}:tokens"
    held: Any = await redis.zrange(key, 0, -1, withscores=True)
    ((_, returns),) = held
    seconds, micros = await redis.time()
    await redis.aclose()
    return float(returns) / 1000 - (seconds + micros / 1e6)


# -- the guarantee, across clients and processes ------------------------------------------------


async def test_clients_with_nothing_but_redis_in_common_share_the_cabinet(redis_url: str) -> None:
    server = MarketTestServer(quota=20, period=1.5, window="sliding", latency=0.02)
    quota = Quota(limit=20, period=1.5)
    async with serve(server) as running:
        async with (
            MarketChatClient(
                api_key=API_KEY, base_url=running.url, quota=quota, redis_url=redis_url
            ) as one,
            MarketChatClient(
                api_key=API_KEY, base_url=running.url, quota=quota, redis_url=redis_url
            ) as two,
        ):
            started = time.monotonic()
            calls = [c.get_message(1, 1, i + 1) for i in range(20) for c in (one, two)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            elapsed = time.monotonic() - started
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert server.stats.quota_420 == server.stats.parallel_420 == 0
    assert server.stats.max_in_flight[1] <= 4
    assert server.stats.max_in_any_window(1, 1.5) <= 20
    assert elapsed > 1.5  # the second twenty waited for the first twenty's tokens


async def test_three_processes_share_one_cabinet(redis_url: str) -> None:
    seconds = 8.0
    port = free_port()
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            "fetch",
            f"http://127.0.0.1:{port}",
            redis_url,
            str(seconds),
            str(n),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for n in range(3)
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert (await worker.stdout.readline()).strip() == b"ready"
    # Created here, so the server's clock and its first fixed window start as the workers go.
    server = MarketTestServer(quota=30, period=3.0, window="fixed", latency=0.02)
    async with serve(server, port=port) as running:
        outputs = [worker.communicate(b"go\n") for worker in workers]
        reports = [json.loads(out) for out, _ in await asyncio.gather(*outputs)]
        elapsed = server.now()
        shared = RedisLimiters(redis_url, quota=QUOTA, max_parallel=4, namespace_key=running.url)
        state = await shared.limiter(1).state()
        await shared.close()

    completed = sum(r["ok"] for r in reports)
    assert [r["failed"] for r in reports] == [[], [], []]
    assert all(r["ok"] > 0 for r in reports)  # every process got its share
    assert server.stats.quota_420 == server.stats.parallel_420 == 0
    assert server.stats.max_in_flight[1] <= 4
    assert server.stats.max_in_any_window(1, 3.0) <= 30
    # Every request was counted at a server time in [0, elapsed]; the fixed windows [3k, 3k + 3)
    # of the server clock meeting that span number ceil(elapsed / 3), each allowing 30.
    possible = 30 * math.ceil(elapsed / 3.0)
    assert completed >= 0.95 * possible, f"{completed} of {possible} in {elapsed:.2f} s"
    assert state.in_flight == 0  # the requests cancelled at the end gave their leases back


async def test_a_killed_workers_slot_frees_when_its_lease_expires(
    limiters: RedisLimiters, redis_url: str
) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), "hold", redis_url, "test", stdout=asyncio.subprocess.PIPE
    )
    assert holder.stdout is not None
    assert (await holder.stdout.readline()).strip() == b"held"
    holder.kill()  # SIGKILL: no chance to release
    await holder.wait()
    limiter = limiters.limiter(1)
    assert (await limiter.state()).in_flight == 1
    await asyncio.sleep(1.1)  # the dead worker's lease was for 1 s
    state = await limiter.state()
    assert state.in_flight == 0
    assert state.remaining == 29  # its request may have been counted: the token stays
    # It returns a period (and the margin) after the lease expired, a moment ago.
    assert 1.8 < await token_returns_in(redis_url, "test", 1) <= 3.003


async def test_a_hung_workers_late_answer_counts_from_when_it_came(redis_url: str) -> None:
    shared = RedisLimiters(
        redis_url, quota=QUOTA, max_parallel=4, namespace_key="test", lease_ttl=0.2
    )
    limiter = shared.limiter(1)
    lease = await limiter.acquire()
    await asyncio.sleep(0.5)  # the lease expired: its slot is free, its token counts
    state = await limiter.state()
    assert (state.in_flight, state.remaining) == (0, 29)
    await limiter.observe(lease, remaining=None, resets_in=None)
    await lease.release()  # the answer came only now: a full period from now, not from expiry
    assert await token_returns_in(redis_url, "test", 1) == pytest.approx(3.0, abs=0.1)
    await shared.close()


# -- server feedback is shared ------------------------------------------------------------------


async def test_first_contact_probes_with_one_request_in_all_processes(redis_url: str) -> None:
    a, b = (
        RedisLimiters(redis_url, quota=QUOTA, max_parallel=4, namespace_key="test")
        for _ in range(2)
    )
    probe = await a.limiter(1).acquire()
    waiting = asyncio.ensure_future(b.limiter(1).acquire())
    assert await still_waiting(waiting)  # nothing known of the server's count yet
    await a.limiter(1).observe(probe, remaining=29, resets_in=3.0)
    await (await waiting).release()
    await probe.release()
    await a.close()
    await b.close()


async def test_a_server_bound_found_by_one_process_holds_back_another(redis_url: str) -> None:
    quota = Quota(limit=1000, period=3600.0)
    a, b = (
        RedisLimiters(redis_url, quota=quota, max_parallel=4, namespace_key="test")
        for _ in range(2)
    )
    one, two = a.limiter(1), b.limiter(1)
    probe = await one.acquire()
    await one.observe(probe, remaining=10, resets_in=600.0)  # someone else used 990
    await probe.release()
    state = await two.state()
    assert (state.remaining, state.server_remaining) == (10, 10)
    first, second = await one.acquire(), await two.acquire()
    # `second` may not be counted in this figure yet: 8 are safe, not 9.
    await one.observe(first, remaining=9, resets_in=600.0)
    await first.release()
    assert (await two.state()).remaining == 8
    await two.observe(second, remaining=8, resets_in=600.0)
    await second.release()
    assert (await one.state()).remaining == 8
    # Spent, says the server (a fresh cabinet): nobody starts until its window ends.
    last = await b.limiter(2).acquire()
    await b.limiter(2).observe(last, remaining=0, resets_in=600.0)
    await last.release()
    state = await a.limiter(2).state()
    assert (state.remaining, state.server_remaining) == (0, 0)
    assert state.frees_in == pytest.approx(600.0, abs=1.0)
    assert await still_waiting(asyncio.ensure_future(a.limiter(2).acquire()))
    await a.close()
    await b.close()


async def test_one_processs_discovery_holds_back_the_others(redis_url: str) -> None:
    server = MarketTestServer(quota=30, period=3600.0)
    async with serve(server) as running:
        server.spend_quota(1, 30)  # another tool spent the cabinet's hour

        def client() -> MarketChatClient:
            return MarketChatClient(
                api_key=API_KEY,
                base_url=running.url,
                quota=Quota(limit=30, period=3600.0),
                redis_url=redis_url,
                max_rate_limit_wait=1.0,
            )

        async with client() as first:
            with pytest.raises(RateLimitError):
                await first.get_message(1, 1, 1)
        async with client() as second:
            with pytest.raises(RateLimitError) as info:
                await second.get_message(1, 1, 2)
            assert (await second.quota_state(1)).server_remaining == 0
    assert info.value.retry_after is not None
    assert info.value.retry_after > 3000
    assert server.stats.quota_420 == 1  # the second process sent nothing


async def test_a_parallel_refusal_lowers_the_cap_for_every_process(redis_url: str) -> None:
    server = MarketTestServer(quota=None, max_parallel=4, latency=0.05)
    async with serve(server) as running:
        clients = [
            MarketChatClient(
                api_key=API_KEY, base_url=running.url, retry=FAST_RETRY, redis_url=redis_url
            )
            for _ in range(2)
        ]
        with server.hold_parallel(1, 3):  # a tool without Redis keeps 3 slots busy
            calls = [c.get_message(1, 1, i + 1) for i in range(15) for c in clients]
            results = await asyncio.gather(*calls, return_exceptions=True)
        for c in clients:
            await c.close()
    assert [r for r in results if isinstance(r, BaseException)] == []
    # They happened, none reached the caller, and the shared cap backed off.
    assert 0 < server.stats.parallel_420 <= 10
    assert server.stats.max_in_flight[1] <= 4


async def test_pacing_is_shared(redis_url: str) -> None:
    quota = Quota(limit=20, period=2.0, burst=4)  # bursts of 4, else one per 100 ms
    server = MarketTestServer(quota=20, period=2.0)
    async with serve(server) as running:
        clients = [
            MarketChatClient(
                api_key=API_KEY, base_url=running.url, quota=quota, redis_url=redis_url
            )
            for _ in range(2)
        ]
        started = time.monotonic()
        await asyncio.gather(*(c.get_message(1, 1, i + 1) for i in range(6) for c in clients))
        elapsed = time.monotonic() - started
        for c in clients:
            await c.close()
    assert 0.75 < elapsed < 2.0  # 4 at once, then 8 more at 100 ms apart, whoever sends them


# -- keys ---------------------------------------------------------------------------------------


async def test_every_key_is_namespaced_documented_and_expires(redis_url: str) -> None:
    shared = RedisLimiters(
        redis_url, quota=Quota(limit=30, period=3.0, burst=5), max_parallel=4, namespace_key="ns"
    )
    limiter = shared.limiter(7)
    first = await limiter.acquire()
    await limiter.observe(first, remaining=None, resets_in=None)  # no headers: `local`
    second, third = await limiter.acquire(), await limiter.acquire()
    await limiter.observe(second, remaining=20, resets_in=60.0)  # `bound`
    await limiter.observe(third, remaining=None, resets_in=None, parallel_refused=True)  # `cap`
    await third.release()
    await second.release()
    await first.release()
    abandoned = await limiter.acquire()
    await abandoned.release()  # unanswered: its slot lingers in `leases`
    await limiter.acquire()  # left in flight: `overlap`
    await shared.close()

    redis = aioredis.Redis.from_url(redis_url)
    names = set()
    async for key in redis.scan_iter(match="*"):
        prefix, _, name = key.decode().rpartition(":")
        assert prefix == "market-chat-async:ns:7", key
        names.add(name)
        assert await redis.pttl(key) > 0, key
    await redis.aclose()
    assert names == KEY_NAMES


async def test_namespaces_and_cabinets_are_apart(redis_url: str) -> None:
    shared = {
        ns: RedisLimiters(redis_url, quota=QUOTA, max_parallel=4, namespace_key=ns)
        for ns in ("https://one", "https://two")
    }
    lease = await shared["https://one"].limiter(5).acquire()
    assert (await shared["https://one"].limiter(5).state()).in_flight == 1
    assert (await shared["https://one"].limiter(6).state()).in_flight == 0
    assert (await shared["https://two"].limiter(5).state()).in_flight == 0
    await lease.release()
    for s in shared.values():
        await s.close()


# -- Redis unavailable --------------------------------------------------------------------------


async def test_redis_down_fails_closed_without_leaking_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    server = MarketTestServer()
    async with serve(server) as running:
        async with MarketChatClient(api_key=API_KEY, base_url=running.url, redis_url=url) as c:
            started = time.monotonic()
            with pytest.raises(LimiterUnavailableError) as info:
                await c.get_message(1, 1, 1)
            assert time.monotonic() - started < 2.0
            assert "hunter2" not in repr(c._shared)
    assert "hunter2" not in str(info.value)
    assert "127.0.0.1" in str(info.value)
    assert server.stats.requests == 0  # nothing sent without the shared limiter
    assert "hunter2" not in caplog.text


async def test_redis_down_with_fallback_uses_the_in_process_limiter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    caplog.set_level(logging.WARNING, logger="market_chat_async")
    async with serve(MarketTestServer()) as running:
        async with MarketChatClient(
            api_key=API_KEY, base_url=running.url, redis_url=url, redis_fallback=True
        ) as client:
            messages = [await client.get_message(1, 1, i + 1) for i in range(3)]
            assert (await client.quota_state(1)).remaining == 997
    assert [m.message_id for m in messages] == [1, 2, 3]
    warnings = [r for r in caplog.records if "falling back to the in-process limiter" in r.message]
    assert len(warnings) == 1  # once per outage, not per request
    assert "127.0.0.1" in caplog.text
    assert "hunter2" not in caplog.text


async def test_redis_lost_mid_request_does_not_lose_the_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="market_chat_async")
    with redis_server() as url:
        shared = RedisLimiters(url, quota=QUOTA, max_parallel=4, namespace_key="test")
        limiter = shared.limiter(1)
        lease = await limiter.acquire()
    # Redis is gone: the answer still counts, the release does not raise, the expiry frees it.
    await limiter.observe(lease, remaining=29, resets_in=3.0)
    await lease.release()
    with pytest.raises(LimiterUnavailableError):
        await limiter.acquire()
    await shared.close()
    assert "could not share a rate-limit answer" in caplog.text
    assert "could not give back a lease" in caplog.text


# -- waiting and cancellation -------------------------------------------------------------------


async def test_waiters_in_one_process_poll_redis_through_one_head(
    limiters: RedisLimiters, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = limiters.limiter(1)
    for _ in range(30):  # the whole quota, held for 3 s
        lease = await limiter.acquire()
        await limiter.observe(lease, remaining=None, resets_in=None)
        await lease.release()
    polls = 0
    real_run = limiters.run

    async def counting(script: Any, keys: list[str], args: list[Any]) -> Any:
        nonlocal polls
        polls += script is limiters.acquire_script
        return await real_run(script, keys, args)

    monkeypatch.setattr(limiters, "run", counting)
    waiters = [asyncio.ensure_future(limiter.acquire()) for _ in range(10_000)]
    await asyncio.sleep(1.0)
    assert polls <= 4  # the head, every 0.5 s at most; not 10,000 pollers
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert (await limiter.state()).in_flight == 0


async def test_a_lease_granted_as_its_waiter_is_cancelled_is_given_back(
    limiters: RedisLimiters, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = limiters.limiter(1)
    real_run = limiters.run

    async def late_reply(script: Any, keys: list[str], args: list[Any]) -> Any:
        reply = await real_run(script, keys, args)
        if script is limiters.acquire_script:
            await asyncio.sleep(10)  # granted in Redis; the answer has not arrived yet
        return reply

    monkeypatch.setattr(limiters, "run", late_reply)
    acquiring = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0.1)
    assert (await limiter.state()).in_flight == 1
    acquiring.cancel()
    with pytest.raises(asyncio.CancelledError):
        await acquiring
    state = await limiter.state()
    assert (state.in_flight, state.remaining) == (0, 30)  # never sent: the token is back too


async def test_cancelled_waiters_and_requests_leave_the_cabinet_whole(redis_url: str) -> None:
    server = MarketTestServer(quota=1000, period=60.0, latency=0.3)
    quota = Quota(limit=1000, period=60.0)
    async with serve(server) as running:
        async with MarketChatClient(
            api_key=API_KEY, base_url=running.url, quota=quota, redis_url=redis_url
        ) as client:
            await client.get_message(1, 1, 1)
            tasks = [asyncio.ensure_future(client.get_message(1, 1, i + 2)) for i in range(200)]
            await asyncio.sleep(0.1)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            state = await client.quota_state(1)
            assert state.in_flight == 0
            assert 1000 - state.remaining >= server.stats.requests
            await asyncio.sleep(0.4)  # abandoned requests keep their slots one latency longer
            assert (await client.get_message(1, 1, 9999)).message_id == 9999
    assert server.stats.max_in_flight[1] <= 4


async def test_limiter_is_one_object_per_cabinet(limiters: RedisLimiters) -> None:
    limiter: Limiter = limiters.limiter(1)
    assert limiters.limiter(1) is limiter
    assert limiters.limiter(2) is not limiter
