"""Added latency per request of the Redis limiter versus the in-process one, same run.

Two measurements, each in interleaved rounds (in-process, then Redis) with the median taken:

* ``get_message`` calls, one after another, against the bundled test server (no latency, no
  limits, quota opened wide), with the in-process limiter and with ``redis_url=``: what a
  request costs end to end (the keys the README and the docs quote);
* bare limiter cycles, ``acquire`` -> ``observe`` -> ``release``, no HTTP: the limiter alone.

A redis-server is started here on a free localhost port (skipped, with a message, when none is
installed). Writes ``benchmarks/results/redis.json``. Run: ``python benchmarks/bench_redis.py``.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result

from market_chat_async import MarketChatClient, Quota
from market_chat_async._limits import CabinetLimiter, Limiter
from market_chat_async._redis import RedisLimiters
from market_chat_async.testing import MarketTestServer, serve

REQUESTS = 1_000  # get_message calls per round
CYCLES = 2_000  # limiter cycles per round
ROUNDS = 3
KEY = "test-api-key"
WIDE_OPEN = Quota(limit=10**9, period=3600.0)


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free port, answering PING; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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


async def per_request(url: str, business_id: int, redis_url: str | None) -> float:
    """Seconds per sequential get_message call."""
    async with MarketChatClient(
        api_key=KEY, base_url=url, quota=WIDE_OPEN, redis_url=redis_url
    ) as client:
        await client.get_message(business_id, 1, 1)  # connections and scripts ready
        started = time.perf_counter()
        for i in range(REQUESTS):
            await client.get_message(business_id, 1, i + 2)
        return (time.perf_counter() - started) / REQUESTS


async def per_cycle(limiter: Limiter) -> float:
    """Seconds per sequential acquire -> observe (no headers) -> release."""
    started = time.perf_counter()
    for _ in range(CYCLES):
        lease = await limiter.acquire()
        await limiter.observe(lease, None, None)
        await lease.release()
    return (time.perf_counter() - started) / CYCLES


async def measure(redis_url: str) -> dict[str, float]:
    local, shared = [], []
    async with serve(MarketTestServer(quota=None, max_parallel=None)) as running:
        for n in range(ROUNDS):
            local.append(await per_request(running.url, 100 + n, None))
            shared.append(await per_request(running.url, 200 + n, redis_url))
    local_cycles, shared_cycles = [], []
    limiters = RedisLimiters(redis_url, quota=WIDE_OPEN, max_parallel=4, namespace_key="bench")
    for n in range(ROUNDS):
        local_cycles.append(await per_cycle(CabinetLimiter(WIDE_OPEN, max_parallel=4)))
        shared_cycles.append(await per_cycle(limiters.limiter(300 + n)))
    await limiters.close()

    local_us, redis_us = statistics.median(local) * 1e6, statistics.median(shared) * 1e6
    local_cycle_us = statistics.median(local_cycles) * 1e6
    redis_cycle_us = statistics.median(shared_cycles) * 1e6
    return {
        "requests_per_round": REQUESTS,
        "rounds": ROUNDS,
        "in_process_us_per_request": round(local_us, 1),
        "redis_us_per_request": round(redis_us, 1),
        "added_us_per_request": round(redis_us - local_us, 1),
        "ratio": round(redis_us / local_us, 3),
        "cycles_per_round": CYCLES,
        "in_process_us_per_cycle": round(local_cycle_us, 1),
        "redis_us_per_cycle": round(redis_cycle_us, 1),
        "added_us_per_cycle": round(redis_cycle_us - local_cycle_us, 1),
    }


def main() -> None:
    if shutil.which("redis-server") is None:
        print("redis: skipped, redis-server is not installed (apt-get install redis-server)")
        return
    with redis_server() as redis_url:
        result = asyncio.run(measure(redis_url))
    write_result("redis", result)
    print(
        f"redis: {result['redis_us_per_request']} us per get_message vs "
        f"{result['in_process_us_per_request']} us in-process (x{result['ratio']}); "
        f"limiter alone {result['redis_us_per_cycle']} vs {result['in_process_us_per_cycle']} us"
    )


if __name__ == "__main__":
    main()
