"""Per-request client overhead against raw aiohttp, on the same local server, same run.

Both sides make the same GET to the bundled Market test server (no latency, no quota) and parse
the JSON; the client adds validation, the limiter, header checks and cattrs structuring. Runs
are interleaved and the median taken. Writes ``benchmarks/results/overhead.json``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from _common import write_result

from market_chat_async import MarketChatClient, Quota
from market_chat_async.testing import MarketTestServer, serve

REQUESTS = 2_000
ROUNDS = 5
BUSINESS = 1
KEY = "test-api-key"


async def raw(url: str, session: aiohttp.ClientSession) -> float:
    headers = {"Api-Key": KEY}
    started = time.perf_counter()
    for i in range(REQUESTS):
        async with session.get(
            f"{url}/v2/businesses/{BUSINESS}/chats/message",
            params={"chatId": "1", "messageId": str(i + 1)},
            headers=headers,
        ) as resp:
            data = await resp.json()
            assert data["result"]["messageId"] == i + 1
    return (time.perf_counter() - started) / REQUESTS


async def client(url: str) -> float:
    quota = Quota(limit=10**9, period=3600.0)
    async with MarketChatClient(api_key=KEY, base_url=url, quota=quota) as c:
        await c.get_message(BUSINESS, 1, 1)  # session set-up is not per-request cost
        started = time.perf_counter()
        for i in range(REQUESTS):
            msg = await c.get_message(BUSINESS, 1, i + 1)
            assert msg.message_id == i + 1
        return (time.perf_counter() - started) / REQUESTS


async def measure() -> dict[str, float]:
    ours, base = [], []
    async with serve(MarketTestServer(quota=None, max_parallel=None)) as running:
        async with aiohttp.ClientSession() as session:
            await raw(running.url, session)  # warm up both paths
            for _ in range(ROUNDS):
                base.append(await raw(running.url, session))
                ours.append(await client(running.url))
    raw_us = statistics.median(base) * 1e6
    client_us = statistics.median(ours) * 1e6
    return {
        "requests_per_round": REQUESTS,
        "rounds": ROUNDS,
        "raw_aiohttp_us_per_request": round(raw_us, 1),
        "client_us_per_request": round(client_us, 1),
        "overhead_us_per_request": round(client_us - raw_us, 1),
        "ratio": round(client_us / raw_us, 3),
    }


def main() -> None:
    write_result("overhead", asyncio.run(measure()))


if __name__ == "__main__":
    main()
