"""A worker process for the Redis tests: one of several sharing a cabinet through Redis.

``fetch URL REDIS SECONDS N``: connect to Redis, print ``ready``, wait for a line on stdin, then
keep 8 ``get_message`` calls going for cabinet 1 with ``Quota(30, 3.0)`` for SECONDS; print
how many succeeded and what failed, as JSON. N keeps the message ids of the workers apart.

``hold REDIS NAMESPACE``: take one lease with a 1 s lease TTL, print ``held`` and wait to be
killed (``kill -9`` in the test: no chance to release).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys

from market_chat_async import MarketChatClient, Quota
from market_chat_async._redis import RedisLimiters

QUOTA = Quota(limit=30, period=3.0)


async def fetch(url: str, redis_url: str, seconds: float, worker: int) -> None:
    ok = 0
    failed: list[str] = []
    ids = itertools.count(1 + worker * 1_000_000)
    async with MarketChatClient(
        api_key="test-api-key", base_url=url, quota=QUOTA, redis_url=redis_url
    ) as client:

        async def one() -> None:
            nonlocal ok
            while True:
                try:
                    await client.get_message(1, 1, next(ids))
                    ok += 1
                except Exception as exc:
                    failed.append(repr(exc))

        await client.quota_state(1)  # connected, scripts loaded: the clock starts on "go"
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        tasks = [asyncio.ensure_future(one()) for _ in range(8)]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"ok": ok, "failed": failed}), flush=True)


async def hold(redis_url: str, namespace: str) -> None:
    limiters = RedisLimiters(
        redis_url, quota=QUOTA, max_parallel=4, namespace_key=namespace, lease_ttl=1.0
    )
    await limiters.limiter(1).acquire()
    print("held", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "fetch":
        url, redis_url, seconds, worker = args
        asyncio.run(fetch(url, redis_url, float(seconds), int(worker)))
    else:
        asyncio.run(hold(*args))
