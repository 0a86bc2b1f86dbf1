"""A worker process for the Redis tests: one of several sharing a cabinet through Redis.

``fetch URL REDIS START END``: from wall-clock START to END, keep 8 get_message calls going for
cabinet 1 with Quota(30, 3.0); print how many succeeded and failed as JSON.
``hold REDIS BASE``: take one lease, print "held", and wait to be killed (kill -9 in the test).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time

from market_chat_async import MarketChatClient, Quota
from market_chat_async._redis import RedisLimiters

QUOTA = Quota(limit=30, period=3.0)


async def fetch(url: str, redis_url: str, start: float, end: float, worker: int) -> None:
    ok = failed = 0
    ids = itertools.count(1 + worker * 1_000_000)
    async with MarketChatClient(
        api_key="test-api-key", base_url=url, quota=QUOTA, redis_url=redis_url
    ) as client:

        async def one() -> None:
            nonlocal ok, failed
            while True:
                try:
                    await client.get_message(1, 1, next(ids))
                    ok += 1
                except Exception:
                    failed += 1

        await asyncio.sleep(max(0.0, start - time.time()))
        tasks = [asyncio.ensure_future(one()) for _ in range(8)]
        await asyncio.sleep(max(0.0, end - time.time()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"ok": ok, "failed": failed}), flush=True)


async def hold(redis_url: str, base: str) -> None:
    limiters = RedisLimiters(
        redis_url, quota=QUOTA, max_parallel=4, fallback=False, namespace_key=base, lease_ttl=1.0
    )
    await limiters.limiter(1).acquire()
    print("held", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "fetch":
        url, redis_url, start, end, worker = args
        asyncio.run(fetch(url, redis_url, float(start), float(end), int(worker)))
    else:
        asyncio.run(hold(*args))
