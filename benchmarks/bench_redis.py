"""Added latency per request of the Redis limiter versus the in-process one, same run.

Sequential ``get_message`` calls against the bundled test server (no latency, no limits), with
the in-process limiter and with ``redis_url=`` pointing at a redis-server started here on a
free port; rounds are interleaved and the median taken. Writes ``benchmarks/results/redis.json``
(or says why not, when redis-server is not installed).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result

from market_chat_async import MarketChatClient, Quota
from market_chat_async.testing import MarketTestServer, serve

REQUESTS = 1_000
ROUNDS = 3
KEY = "test-api-key"


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.01)
    return proc, f"redis://127.0.0.1:{port}/0"


async def per_request(url: str, business_id: int, redis_url: str | None) -> float:
    quota = Quota(limit=10**9, period=3600.0)
    async with MarketChatClient(
        api_key=KEY, base_url=url, quota=quota, redis_url=redis_url
    ) as client:
        await client.get_message(business_id, 1, 1)
        started = time.perf_counter()
        for i in range(REQUESTS):
            await client.get_message(business_id, 1, i + 2)
        return (time.perf_counter() - started) / REQUESTS


async def measure(redis_url: str) -> dict[str, float]:
    local, shared = [], []
    async with serve(MarketTestServer(quota=None, max_parallel=None)) as running:
        for n in range(ROUNDS):
            local.append(await per_request(running.url, 100 + n, None))
            shared.append(await per_request(running.url, 200 + n, redis_url))
    local_us = statistics.median(local) * 1e6
    redis_us = statistics.median(shared) * 1e6
    return {
        "requests_per_round": REQUESTS,
        "rounds": ROUNDS,
        "in_process_us_per_request": round(local_us, 1),
        "redis_us_per_request": round(redis_us, 1),
        "added_us_per_request": round(redis_us - local_us, 1),
        "ratio": round(redis_us / local_us, 3),
    }


def main() -> None:
    if shutil.which("redis-server") is None:
        print("redis: skipped, redis-server is not installed")
        return
    proc, redis_url = start_redis()
    try:
        write_result("redis", asyncio.run(measure(redis_url)))
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
