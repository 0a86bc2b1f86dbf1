"""Bulk fetching: memory flat in the number of pairs, per-request cost as for single calls.

The bundled test server runs in a subprocess with its limits off (``quota=None,
max_parallel=None``) and the client's quota opened wide (``Quota(limit=10**9, period=1.0)``,
``max_parallel=16``), so what is measured is the client, not the waiting. In the same run:

* **time**: ``stream_messages`` over N pairs against ``asyncio.gather`` of N bare
  ``get_message`` calls, interleaved, median of the rounds, as microseconds per request;
* **memory**: peak traced memory (tracemalloc) above the baseline while streaming N pairs, at
  several N, against the same for ``gather``, and the slope in bytes per pair. Streaming keeps
  one packed int per distinct pair for "fetched once"; that set is measured on its own too.

Writes ``benchmarks/results/bulk.json``. ``--quick`` runs smaller sizes.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result

from market_chat_async import MarketChatClient, Quota

BUSINESS = 1
KEY = "test-api-key"
MAX_PARALLEL = 16
QUICK = "--quick" in sys.argv
TIME_N = 5_000 if QUICK else 20_000
TIME_ROUNDS = 3
MEMORY_N = (2_000, 6_000, 18_000) if QUICK else (10_000, 30_000, 100_000)
GATHER_MEMORY_N = MEMORY_N[:2]  # gather's cost per pair is plain at these sizes already

SERVER = """
import asyncio, sys
from market_chat_async.testing import MarketTestServer, serve

async def main() -> None:
    server = MarketTestServer(quota=None, max_parallel=None)
    async with serve(server, host="127.0.0.1", port=0) as running:
        print(running.url, flush=True)
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes stdin
        while not done.done():
            # the server's own request log would otherwise grow with every request
            getattr(server.stats, "request_headers", []).clear()
            await asyncio.wait([done], timeout=1.0)

asyncio.run(main())
"""


def pairs(n: int) -> Iterator[tuple[int, int]]:
    return ((i % 97 + 1, i + 1) for i in range(n))


async def streamed(client: MarketChatClient, n: int) -> int:
    count = 0
    async for item in client.stream_messages(BUSINESS, pairs(n), strategy="message"):
        assert item.ok, item.error
        count += 1
    return count


async def gathered(client: MarketChatClient, n: int) -> int:
    results = await asyncio.gather(*(client.get_message(BUSINESS, c, m) for c, m in pairs(n)))
    return len(results)


Way = Callable[[MarketChatClient, int], Awaitable[int]]


async def timed(way: Way, client: MarketChatClient, n: int) -> float:
    started = time.perf_counter()
    assert await way(client, n) == n
    return (time.perf_counter() - started) / n * 1e6


async def peak_above_baseline(way: Way, client: MarketChatClient, n: int) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert await way(client, n) == n
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - baseline


def slope(points: dict[int, int]) -> float:
    """Least-squares bytes per pair."""
    xs, ys = list(points), list(points.values())
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def dedup_set_bytes(n: int) -> float:
    """Bytes per distinct pair of the set of packed ints that makes "fetched once" true."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        seen = {c << 64 | m for c, m in pairs(n)}
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(seen) == n
    return (after - before) / n


async def measure(url: str) -> dict[str, Any]:
    quota = Quota(limit=10**9, period=1.0)
    async with MarketChatClient(
        api_key=KEY, base_url=url, quota=quota, max_parallel=MAX_PARALLEL
    ) as client:
        await gathered(client, 500)  # warm up: connections, the limiter's first probe
        stream_us, gather_us = [], []
        for _ in range(TIME_ROUNDS):
            stream_us.append(await timed(streamed, client, TIME_N))
            gather_us.append(await timed(gathered, client, TIME_N))
        stream_mem = {n: await peak_above_baseline(streamed, client, n) for n in MEMORY_N}
        gather_mem = {n: await peak_above_baseline(gathered, client, n) for n in GATHER_MEMORY_N}
    stream_time, gather_time = statistics.median(stream_us), statistics.median(gather_us)
    dedup = dedup_set_bytes(MEMORY_N[-1])
    return {
        "server": "bundled test server in a subprocess, quota=None, max_parallel=None",
        "client": f"Quota(limit=10**9, period=1.0), max_parallel={MAX_PARALLEL}, "
        f"stream concurrency {2 * MAX_PARALLEL} (the default)",
        "time_pairs": TIME_N,
        "time_rounds": TIME_ROUNDS,
        "stream_us_per_request": round(stream_time, 1),
        "gather_us_per_request": round(gather_time, 1),
        "stream_vs_gather_time_ratio": round(stream_time / gather_time, 3),
        "stream_peak_bytes_above_baseline": stream_mem,
        "stream_bytes_per_pair_slope": round(slope(stream_mem), 1),
        "gather_peak_bytes_above_baseline": gather_mem,
        "gather_bytes_per_pair_slope": round(slope(gather_mem), 1),
        "dedup_set_bytes_per_distinct_pair": round(dedup, 1),
        "stream_peak_bytes_less_dedup_set": {
            n: round(b - dedup * n) for n, b in stream_mem.items()
        },
    }


def main() -> None:
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        data = asyncio.run(measure(url))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)
    data["bench_seconds"] = round(time.perf_counter() - started, 1)
    for key, value in data.items():
        print(f"  {key}: {value}")
    write_result("bulk", data)


if __name__ == "__main__":
    main()
