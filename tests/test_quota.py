"""The [limits] guarantee, end to end: the client against the bundled Market server.

Hours of quota run on looptime's virtual clock; the HTTP is real (localhost sockets). The server
counts every request it sees, so "never more than the quota in any window" is checked on the
server's side of the wire, the only side that matters.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Literal

import pytest

from market_chat_async import MarketChatClient, Quota, RateLimitError
from market_chat_async.testing import MarketTestServer, RunningServer, serve

from .conftest import API_KEY, FAST_RETRY

pytestmark = pytest.mark.looptime

BUSINESS = 777
HOUR = 3600.0


def loop_time() -> float:
    return asyncio.get_running_loop().time()


async def fetch_for(
    client: MarketChatClient, n: int, seconds: float
) -> tuple[int, list[BaseException]]:
    """Start ``n`` get_message calls at once; count how many completed within ``seconds``."""
    tasks = [
        asyncio.ensure_future(client.get_message(BUSINESS, 1 + i % 50, 1 + i)) for i in range(n)
    ]
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    errors = [t.exception() for t in done if t.exception() is not None]
    return len(done) - len(errors), [e for e in errors if e is not None]


@pytest.fixture
async def market_factory() -> AsyncIterator[object]:
    servers: list[object] = []

    async def start(**kwargs: object) -> RunningServer:
        cm = serve(MarketTestServer(**kwargs))  # type: ignore[arg-type]
        running = await cm.__aenter__()
        servers.append(cm)
        return running

    yield start
    for cm in reversed(servers):
        await cm.__aexit__(None, None, None)  # type: ignore[attr-defined]


@pytest.mark.parametrize("window", ["fixed", "sliding"])
async def test_five_hours_at_full_speed_without_a_single_420(
    window: Literal["fixed", "sliding"],
) -> None:
    hours = 5
    server = MarketTestServer(quota=1000, period=HOUR, window=window, max_parallel=4, latency=0.05)
    async with serve(server) as running:
        async with MarketChatClient(api_key=API_KEY, base_url=running.url) as client:
            completed, errors = await fetch_for(client, 5200, hours * HOUR)
    stats = server.stats
    assert errors == []
    assert stats.quota_420 == 0
    assert stats.parallel_420 == 0
    assert stats.max_in_flight[BUSINESS] <= 4
    assert stats.max_in_any_window(BUSINESS, HOUR) <= 1000
    possible = 1000 * math.ceil(hours * HOUR / HOUR)
    assert completed >= 0.99 * possible, f"{completed} of {possible}"


async def test_restart_mid_window_costs_at_most_one_420() -> None:
    server = MarketTestServer(quota=1000, period=HOUR, max_parallel=4, latency=0.05)
    async with serve(server) as running:
        server.spend_quota(BUSINESS, 900)  # a previous process already used 900 this hour
        async with MarketChatClient(api_key=API_KEY, base_url=running.url) as client:
            completed, errors = await fetch_for(client, 300, 2 * HOUR - 60)
    assert errors == []
    assert server.stats.quota_420 + server.stats.parallel_420 <= 1
    assert server.stats.max_in_any_window(BUSINESS, HOUR) <= 1000
    assert completed == 300  # 100 now, the rest when the window frees


async def test_restart_with_the_quota_all_but_spent() -> None:
    server = MarketTestServer(quota=1000, period=HOUR, max_parallel=4, latency=0.05)
    async with serve(server) as running:
        server.spend_quota(BUSINESS, 1000)
        async with MarketChatClient(api_key=API_KEY, base_url=running.url) as client:
            completed, errors = await fetch_for(client, 40, HOUR + 60)
    assert errors == []
    assert completed == 40
    assert server.stats.quota_420 == 1  # the single probe that learned the window was spent


async def test_foreign_parallel_load_is_absorbed() -> None:
    server = MarketTestServer(quota=None, max_parallel=4, latency=0.5)
    async with serve(server) as running:
        async with MarketChatClient(
            api_key=API_KEY, base_url=running.url, retry=FAST_RETRY
        ) as client:
            with server.hold_parallel(BUSINESS, 3):  # another process keeps 3 slots busy
                completed, errors = await fetch_for(client, 40, HOUR)
    assert errors == []
    assert completed == 40
    # They happened, none reached the caller, and the cap backed off instead of burning quota.
    assert 0 < server.stats.parallel_420 <= 10
    assert server.stats.max_in_flight[BUSINESS] <= 4


async def test_quota_wait_longer_than_allowed_raises_with_retry_time() -> None:
    server = MarketTestServer(quota=1000, period=HOUR, max_parallel=4)
    async with serve(server) as running:
        server.spend_quota(BUSINESS, 1000)
        async with MarketChatClient(
            api_key=API_KEY, base_url=running.url, max_rate_limit_wait=60.0
        ) as client:
            with pytest.raises(RateLimitError) as first:
                await client.get_message(BUSINESS, 1, 1)
            with pytest.raises(RateLimitError) as second:  # the limiter now knows: no request
                await client.get_message(BUSINESS, 1, 2)
    assert first.value.reason == "quota"
    assert first.value.retry_after is not None
    assert 0 < first.value.retry_after <= HOUR + 1
    assert second.value.retry_after is not None
    assert second.value.retry_after > 60.0
    assert server.stats.quota_420 == 1


async def test_thousands_of_cancelled_calls_leak_nothing() -> None:
    server = MarketTestServer(quota=100_000, period=HOUR, max_parallel=4, latency=1.0)
    async with serve(server) as running:
        async with MarketChatClient(
            api_key=API_KEY, base_url=running.url, quota=Quota(limit=100_000, period=HOUR)
        ) as client:
            await client.get_message(BUSINESS, 1, 1)  # learn the server's figure first
            for _ in range(5):
                tasks = [
                    asyncio.ensure_future(client.get_message(BUSINESS, 1, i + 1))
                    for i in range(1000)
                ]
                await asyncio.sleep(0.5)  # some in flight, most waiting for a slot
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            state = await client.quota_state(BUSINESS)
            assert state.in_flight == 0
            # Every request that reached the server still counts; one cancelled between getting
            # its slot and being written may count too (nobody can tell), nothing more.
            sent = server.stats.requests
            assert sent <= 100_000 - state.remaining <= sent + 4 * 5
            started = loop_time()
            completed, errors = await fetch_for(client, 8, HOUR)
            assert (completed, errors) == (8, [])
            # Abandoned requests hold their slots at most one latency more, then 2 rounds of 4.
            assert loop_time() - started <= 3.0 + 0.1
    assert server.stats.max_in_flight[BUSINESS] <= 4
    assert server.stats.parallel_420 == 0  # the server was never sent a fifth request


async def test_clients_in_one_process_share_the_cabinet() -> None:
    server = MarketTestServer(quota=100, period=HOUR, max_parallel=4, latency=0.2)
    async with serve(server) as running:
        async with (
            MarketChatClient(api_key=API_KEY, base_url=running.url) as one,
            MarketChatClient(api_key=API_KEY, base_url=running.url) as two,
        ):
            results = await asyncio.gather(
                fetch_for(one, 150, HOUR / 2), fetch_for(two, 150, HOUR / 2)
            )
    assert sum(r[0] for r in results) == 100
    assert server.stats.quota_420 == 0
    assert server.stats.parallel_420 == 0
    assert server.stats.max_in_flight[BUSINESS] <= 4


async def test_cabinets_do_not_slow_each_other() -> None:
    server = MarketTestServer(quota=10, period=HOUR, max_parallel=4, latency=0.1)
    async with serve(server) as running:
        async with MarketChatClient(api_key=API_KEY, base_url=running.url) as client:
            busy = asyncio.ensure_future(fetch_for(client, 50, HOUR / 2))  # cabinet 777 saturated
            await asyncio.sleep(5)
            started = loop_time()
            other = await client.get_message(BUSINESS + 1, 1, 1)
            assert other.message_id == 1
            assert loop_time() - started < 1.0
            await busy


async def test_quota_state_reports_remaining_and_when_it_frees() -> None:
    server = MarketTestServer(quota=10, period=HOUR, max_parallel=4, latency=0.1)
    async with serve(server) as running:
        async with MarketChatClient(api_key=API_KEY, base_url=running.url) as client:
            fresh = await client.quota_state(BUSINESS)
            assert (fresh.remaining, fresh.frees_in, fresh.server_remaining) == (1000, 0.0, None)
            await fetch_for(client, 10, 60)
            state = await client.quota_state(BUSINESS)
    assert state.remaining == 0
    assert state.server_remaining == 0
    assert HOUR - 120 < state.frees_in <= HOUR + 1
