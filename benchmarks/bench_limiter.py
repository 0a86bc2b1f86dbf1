"""The limiter against the quota, on looptime's virtual clock (hours pass in seconds).

1. Quota utilisation over ``HOURS`` simulated hours against the bundled server enforcing
   1,000/hour (fixed window) and 4 in flight: completed / maximum possible, and 420s, for this
   client and for the naive ``aiolimiter.AsyncLimiter(1000, 3600)`` + ``Semaphore(4)`` in front
   of the same server. The same two run once more against a server that enforces nothing, to
   record what each *sends* per minute (the plot shows the naive bucket's overshoot).
2. A burst of N <= 1,000 requests with a fresh quota: time against the ideal N x latency / 4.

Writes ``benchmarks/results/limiter.json``.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import looptime
from _common import write_result
from aiolimiter import AsyncLimiter

from market_chat_async import MarketChatClient
from market_chat_async.testing import MarketTestServer, serve

HOURS = 3
PERIOD = 3600.0
LIMIT = 1000
LATENCY = 0.05
BUSINESS = 1
KEY = "test-api-key"
BURST = 1000


def now() -> float:
    return asyncio.get_running_loop().time()


async def run_ours(url: str, n: int, seconds: float) -> int:
    async with MarketChatClient(api_key=KEY, base_url=url) as client:
        tasks = [asyncio.ensure_future(client.get_message(BUSINESS, 1, i + 1)) for i in range(n)]
        done, pending = await asyncio.wait(tasks, timeout=seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return sum(1 for t in done if t.exception() is None)


async def run_naive(url: str, n: int, seconds: float) -> int:
    bucket = AsyncLimiter(LIMIT, PERIOD)
    slots = asyncio.Semaphore(4)
    ok = 0

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal ok
        async with bucket, slots:
            async with session.get(
                f"{url}/v2/businesses/{BUSINESS}/chats/message",
                params={"chatId": "1", "messageId": str(i + 1)},
                headers={"Api-Key": KEY},
            ) as resp:
                await resp.read()
                ok += resp.status == 200

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.ensure_future(one(i, session)) for i in range(n)]
        _, pending = await asyncio.wait(tasks, timeout=seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return ok


async def utilisation(runner: Any, enforce: bool) -> dict[str, Any]:
    server = MarketTestServer(
        quota=LIMIT if enforce else None, period=PERIOD, max_parallel=4, latency=LATENCY
    )
    async with serve(server) as running:
        started = now()
        completed = await runner(running.url, LIMIT * HOURS + 500, HOURS * PERIOD)
    stats = server.stats
    counted = stats.counted.get(BUSINESS, [])
    per_minute = Counter(int((t - started) // 60) for t in counted)
    return {
        "completed": completed,
        "maximum_possible": LIMIT * math.ceil(HOURS * PERIOD / PERIOD),
        "utilisation": round(completed / (LIMIT * HOURS), 4),
        "quota_420": stats.quota_420,
        "parallel_420": stats.parallel_420,
        "max_in_any_hour": stats.max_in_any_window(BUSINESS, PERIOD),
        "sent_per_minute": [per_minute.get(m, 0) for m in range(int(HOURS * 60))],
    }


async def burst() -> dict[str, Any]:
    server = MarketTestServer(quota=LIMIT, period=PERIOD, max_parallel=4, latency=LATENCY)
    async with serve(server) as running:
        started = now()
        completed = await run_ours(running.url, BURST, PERIOD)
        elapsed = now() - started
    ideal = BURST * LATENCY / 4
    return {
        "n": BURST,
        "completed": completed,
        "latency_s": LATENCY,
        "seconds": round(elapsed, 3),
        "ideal_seconds": ideal,
        "ratio_to_ideal": round(elapsed / ideal, 4),
    }


def virtual(coro_fn: Any, *args: Any) -> Any:
    with asyncio.Runner(loop_factory=looptime.new_event_loop) as runner:
        return runner.run(coro_fn(*args))


def main() -> None:
    wall = time.perf_counter()
    results = {
        "hours": HOURS,
        "limit": LIMIT,
        "period_s": PERIOD,
        "latency_s": LATENCY,
        "ours": virtual(utilisation, run_ours, True),
        "naive_token_bucket": virtual(utilisation, run_naive, True),
        "sends_unenforced": {
            "ours": virtual(utilisation, run_ours, False)["sent_per_minute"],
            "naive_token_bucket": virtual(utilisation, run_naive, False)["sent_per_minute"],
        },
        "burst": virtual(burst),
    }
    results["wall_seconds"] = round(time.perf_counter() - wall, 1)
    write_result("limiter", results)


if __name__ == "__main__":
    main()
