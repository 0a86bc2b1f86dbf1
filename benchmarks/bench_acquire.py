"""Cost per acquire with 100,000 coroutines waiting on one cabinet's limiter.

Baseline in the same run: ``asyncio.Semaphore(4)`` with the same 100,000 waiters (the cheapest
FIFO gate asyncio has). Each waiter acquires, yields once, and releases; wall time per acquire.
Writes ``benchmarks/results/acquire.json``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result

from market_chat_async import Quota
from market_chat_async._limits import Answer, CabinetLimiter

WAITERS = 100_000
ROUNDS = 3


async def with_limiter() -> float:
    limiter = CabinetLimiter({"getChatMessage": Quota(limit=10**9, period=3600.0)}, 4)
    first = await limiter.acquire("getChatMessage")
    await first.observe(Answer(None, None))  # no server figure to learn

    async def one() -> None:
        lease = await limiter.acquire("getChatMessage")
        await asyncio.sleep(0)
        await lease.release()

    tasks = [asyncio.ensure_future(one()) for _ in range(WAITERS)]
    await asyncio.sleep(0)  # every task is now queued behind the held slot
    started = time.perf_counter()
    await first.release()
    await asyncio.gather(*tasks)
    return (time.perf_counter() - started) / WAITERS


async def with_semaphore() -> float:
    sem = asyncio.Semaphore(4)
    await sem.acquire()
    for _ in range(3):
        await sem.acquire()

    async def one() -> None:
        async with sem:
            await asyncio.sleep(0)

    tasks = [asyncio.ensure_future(one()) for _ in range(WAITERS)]
    await asyncio.sleep(0)
    started = time.perf_counter()
    for _ in range(4):
        sem.release()
    await asyncio.gather(*tasks)
    return (time.perf_counter() - started) / WAITERS


def main() -> None:
    ours, base = [], []
    for _ in range(ROUNDS):  # interleaved, so drift in machine load hits both alike
        ours.append(asyncio.run(with_limiter()))
        base.append(asyncio.run(with_semaphore()))
    limiter_us = statistics.median(ours) * 1e6
    semaphore_us = statistics.median(base) * 1e6
    write_result(
        "acquire",
        {
            "waiters": WAITERS,
            "rounds": ROUNDS,
            "limiter_us_per_acquire": round(limiter_us, 2),
            "semaphore_us_per_acquire": round(semaphore_us, 2),
            "ratio": round(limiter_us / semaphore_us, 2),
        },
    )


if __name__ == "__main__":
    main()
