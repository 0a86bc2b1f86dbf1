"""The Redis backend against a real redis-server (started here) and the bundled Market server.

These run in real time: Redis keeps its own clock. Skipped only where redis-server is not
installed; .ci/run installs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from market_chat_async import (
    LimiterUnavailableError,
    MarketChatClient,
    Quota,
    RateLimitError,
)
from market_chat_async._redis import RedisLimiters
from market_chat_async.testing import MarketTestServer, serve

from .conftest import API_KEY

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)

WORKER = Path(__file__).with_name("_redis_worker.py")
QUOTA = Quota(limit=30, period=3.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


async def test_clients_with_nothing_but_redis_in_common_share_the_cabinet(redis_url: str) -> None:
    server = MarketTestServer(quota=30, period=3.0, window="sliding", latency=0.05)
    async with serve(server) as running:
        async with (
            MarketChatClient(
                api_key=API_KEY, base_url=running.url, quota=QUOTA, redis_url=redis_url
            ) as one,
            MarketChatClient(
                api_key=API_KEY, base_url=running.url, quota=QUOTA, redis_url=redis_url
            ) as two,
        ):
            calls = [c.get_message(1, 1, i + 1) for i in range(35) for c in (one, two)]
            results = await asyncio.gather(*calls, return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert server.stats.quota_420 == server.stats.parallel_420 == 0
    assert server.stats.max_in_flight[1] <= 4
    assert server.stats.max_in_any_window(1, 3.0) <= 30


def test_three_processes_share_one_cabinet(redis_url: str) -> None:
    async def run() -> tuple[MarketTestServer, list[dict[str, int]], float]:
        server = MarketTestServer(quota=30, period=3.0, window="sliding", latency=0.02)
        async with serve(server) as running:
            start = time.time() + 2.0  # the workers need a moment to start
            end = start + 7.5
            procs = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(WORKER),
                    "fetch",
                    running.url,
                    redis_url,
                    str(start),
                    str(end),
                    str(n),
                    stdout=asyncio.subprocess.PIPE,
                )
                for n in range(3)
            ]
            outputs = [await p.communicate() for p in procs]
        return server, [json.loads(out) for out, _ in outputs], end - start

    server, reports, span = asyncio.run(run())
    completed = sum(r["ok"] for r in reports)
    assert all(r["ok"] > 0 for r in reports)  # every process got its share
    assert sum(r["failed"] for r in reports) == 0
    assert server.stats.quota_420 == server.stats.parallel_420 == 0
    assert server.stats.max_in_flight[1] <= 4
    assert server.stats.max_in_any_window(1, 3.0) <= 30
    # A sliding window of 30 per 3 s allows at most 30 * ceil(span / 3) in the span.
    possible = 30 * math.ceil(span / 3.0)
    assert completed >= 0.95 * possible, f"{completed} of {possible}"


async def test_a_killed_workers_slot_frees_when_its_lease_expires(redis_url: str) -> None:
    base = "http://dead-worker.invalid"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), "hold", redis_url, base, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    assert (await proc.stdout.readline()).strip() == b"held"
    proc.kill()  # SIGKILL: no chance to release
    await proc.wait()
    limiters = RedisLimiters(
        redis_url, quota=QUOTA, max_parallel=4, fallback=False, namespace_key=base
    )
    try:
        limiter = limiters.limiter(1)
        assert (await limiter.state()).in_flight == 1
        await asyncio.sleep(1.1)  # the dead worker's lease was for 1 s
        state = await limiter.state()
        assert state.in_flight == 0
        assert state.remaining == 29  # its request may have been counted: the token stays
    finally:
        await limiters.close()


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


async def test_every_key_is_namespaced_and_expires(redis_url: str) -> None:
    server = MarketTestServer(quota=30, period=3.0)
    async with serve(server) as running:
        async with MarketChatClient(
            api_key=API_KEY, base_url=running.url, quota=QUOTA, redis_url=redis_url
        ) as client:
            for i in range(5):
                await client.get_message(1, 1, i + 1)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"market-chat-async:{running.url}:1:*")]
        assert keys
        for key in keys:
            assert await redis.pttl(key) > 0, key
        everything = [k async for k in redis.scan_iter(match="*")]
        assert all(k.startswith(b"market-chat-async:") for k in everything)
    finally:
        await redis.aclose()


async def test_redis_down_fails_closed_without_leaking_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    server = MarketTestServer()
    async with serve(server) as running:
        async with MarketChatClient(api_key=API_KEY, base_url=running.url, redis_url=url) as c:
            with pytest.raises(LimiterUnavailableError) as info:
                await c.get_message(1, 1, 1)
            assert "hunter2" not in repr(c._shared)
    assert "hunter2" not in str(info.value)
    assert "127.0.0.1" in str(info.value)
    assert server.stats.requests == 0  # nothing sent without the shared limiter
    assert "hunter2" not in caplog.text


async def test_redis_down_with_fallback_uses_the_in_process_limiter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    caplog.set_level(logging.WARNING, logger="market_chat_async")
    async with serve(MarketTestServer()) as running:
        async with MarketChatClient(
            api_key=API_KEY, base_url=running.url, redis_url=url, redis_fallback=True
        ) as client:
            message = await client.get_message(1, 1, 1)
            assert (await client.quota_state(1)).remaining == 999
    assert message.message_id == 1
    assert "falling back to the in-process limiter" in caplog.text


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
            await asyncio.sleep(0.4)  # abandoned requests keep their slots one latency longer
            state = await client.quota_state(1)
            assert state.in_flight == 0
            assert 1000 - state.remaining >= server.stats.requests
            assert (await client.get_message(1, 1, 9999)).message_id == 9999
