"""A worker process for the Redis tests and benchmark: one of a fleet sharing a cabinet.

``fleet URL REDIS SECONDS N``: connect to Redis, print ``ready``, wait for a line on stdin, then
keep 8 getChatMessage calls going for cabinet 1 with ``Quota(30, 3.0)`` through the Redis store
for SECONDS (plain aiohttp against the bundled server: the store is under test, not the client);
print a JSON report: answers by status, what failed, the script calls made. N keeps the
message ids of the workers apart.

``hold REDIS NAMESPACE N TTL``: take N leases with a TTL s lease, print ``held`` and keep them
(renewed) until killed (``kill -9`` in the test: no chance to release).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import sys
from email.utils import parsedate_to_datetime

import aiohttp

from market_chat_async._limits import Answer, Quota
from market_chat_async._limits._redis import RedisLimiters

OPERATION = "getChatMessage"
QUOTAS = {OPERATION: Quota(limit=30, period=3.0)}


def answer_of(status: int, headers: aiohttp.typedefs.LooseHeaders, body: str) -> Answer:
    """What the rate-limit headers say (the client's own parser is not under test here)."""
    get = dict(headers).get  # type: ignore[arg-type]
    remaining = get("X-RateLimit-Resource-Remaining")
    until, date = get("X-RateLimit-Resource-Until"), get("Date")
    resets_in = None
    if until and date:
        resets_in = max(
            0.0, (parsedate_to_datetime(until) - parsedate_to_datetime(date)).total_seconds()
        )
    return Answer(
        remaining=None if remaining is None else int(remaining),
        resets_in=resets_in,
        parallel_refused=status == 420 and "parallel" in body,
    )


async def fleet(url: str, redis_url: str, seconds: float, worker: int) -> None:
    statuses: collections.Counter[int] = collections.Counter()
    failed: list[str] = []
    ids = itertools.count(1 + worker * 1_000_000)
    limits = RedisLimiters(redis_url, quotas=QUOTAS, max_parallel=4, namespace=url)
    limiter = limits.limiter(1)
    async with aiohttp.ClientSession(headers={"Api-Key": "test-api-key"}) as session:

        async def one() -> None:
            while True:
                try:
                    lease = await limiter.acquire(OPERATION)
                except Exception as exc:
                    failed.append(repr(exc))
                    continue
                try:
                    params = {"chatId": "1", "messageId": str(next(ids))}
                    async with session.get(
                        f"{url}/v2/businesses/1/chats/message", params=params
                    ) as response:
                        body = await response.text()
                    statuses[response.status] += 1
                    await lease.release(answer_of(response.status, response.headers, body))
                except asyncio.CancelledError:
                    await lease.release()
                    raise
                except Exception as exc:
                    failed.append(repr(exc))
                    await lease.release()

        await limiter.state(OPERATION)  # connected: the clock starts on "go"
        before, scripts_before = limits.calls.copy(), limits.script_calls
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        tasks = [asyncio.ensure_future(one()) for _ in range(8)]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        calls = limits.calls - before
        script_calls = limits.script_calls - scripts_before
    await limits.close()
    report = {
        "statuses": dict(statuses),
        "failed": failed,
        "script_calls": script_calls,
        "calls": dict(calls),
    }
    print(json.dumps(report), flush=True)


async def hold(redis_url: str, namespace: str, n: int, ttl: float) -> None:
    limits = RedisLimiters(
        redis_url, quotas=QUOTAS, max_parallel=4, namespace=namespace, lease_ttl=ttl
    )
    limiter = limits.limiter(1)
    first = await limiter.acquire(OPERATION)
    # Answered without headers: the tokens alone decide, so the rest need not wait for a probe.
    await first.release(Answer(remaining=None, resets_in=None))
    for _ in range(n):
        await limiter.acquire(OPERATION)
    print("held", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "fleet":
        url, redis_url, seconds, worker = args
        asyncio.run(fleet(url, redis_url, float(seconds), int(worker)))
    else:
        redis_url, namespace, n, ttl = args
        asyncio.run(hold(redis_url, namespace, int(n), float(ttl)))
