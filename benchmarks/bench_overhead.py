"""Client CPU cost per request against raw aiohttp, and import / start-up times, same run.

The bundled Market test server runs in a process of its own and sends ``Date`` and
``X-RateLimit-Resource-*`` headers on every answer, as the real API does. Both sides make the
same ``GET`` and parse the JSON; the client adds validation, the limiter, the rate-limit headers
and cattrs structuring. What is compared is this process's CPU time per request
(``time.process_time``), so the server's own work is not in either figure. Each round times both
back to back, the order alternating, and the ratio is the median of the rounds' ratios: the speed
of a shared machine drifts, and a drift then moves both sides of a round alike.

Import times are the median wall time of fresh interpreters doing only that import, less an
interpreter that imports nothing. Writes ``benchmarks/results/overhead.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from _common import write_result

from market_chat_async import MarketChatClient, Quota

REQUESTS = 500
ROUNDS = 31
IMPORT_RUNS = 15
BUSINESS = 1
KEY = "test-api-key"
BIG = 10**9  # a quota that never runs out, so every answer carries the headers


@contextlib.contextmanager
def server_process() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [sys.executable, "-m", "market_chat_async.testing", "--port", str(port)]
    args += ["--quota", str(BIG), "--max-parallel", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def raw(url: str, session: aiohttp.ClientSession) -> float:
    headers = {"Api-Key": KEY}
    started = time.process_time()
    for i in range(REQUESTS):
        async with session.get(
            f"{url}/v2/businesses/{BUSINESS}/chats/message",
            params={"chatId": "1", "messageId": str(i + 1)},
            headers=headers,
        ) as resp:
            data = await resp.json()
            assert data["result"]["messageId"] == i + 1
            assert "X-RateLimit-Resource-Remaining" in resp.headers
    return (time.process_time() - started) / REQUESTS


async def client(c: MarketChatClient) -> float:
    started = time.process_time()
    for i in range(REQUESTS):
        msg = await c.get_message(BUSINESS, 1, i + 1)
        assert msg.message_id == i + 1
    return (time.process_time() - started) / REQUESTS


async def measure_requests(url: str) -> dict[str, float]:
    ours, base = [], []
    quota = Quota(limit=BIG, period=3600.0)
    async with (
        aiohttp.ClientSession() as session,
        MarketChatClient(api_key=KEY, base_url=url, quota=quota) as c,
    ):
        await raw(url, session)  # warm up both paths
        await client(c)
        for i in range(ROUNDS):
            if i % 2:
                ours.append(await client(c))
                base.append(await raw(url, session))
            else:
                base.append(await raw(url, session))
                ours.append(await client(c))
    raw_us = statistics.median(base) * 1e6
    client_us = statistics.median(ours) * 1e6
    ratios = [mine / theirs for mine, theirs in zip(ours, base, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "requests_per_round": REQUESTS,
        "rounds": ROUNDS,
        "server_sends_rate_limit_headers": True,
        "raw_aiohttp_cpu_us_per_request": round(raw_us, 1),
        "client_cpu_us_per_request": round(client_us, 1),
        "overhead_cpu_us_per_request": round(client_us - raw_us, 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_quartiles": [round(quartiles[0], 3), round(quartiles[2], 3)],
    }


def _wall(args: list[str]) -> float:
    times = []
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    for _ in range(IMPORT_RUNS):
        started = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure_imports() -> dict[str, float]:
    python = [sys.executable, "-c"]
    nothing = _wall([*python, "pass"])
    package = _wall([*python, "import market_chat_async"]) - nothing
    client = _wall([*python, "from market_chat_async import MarketChatClient"]) - nothing
    aiohttp_ms = _wall([*python, "import aiohttp"]) - nothing
    version = _wall([sys.executable, "-m", "market_chat_async", "--version"]) - nothing
    return {
        "import_package_ms": round(package, 1),
        "import_client_ms": round(client, 1),
        "import_aiohttp_ms": round(aiohttp_ms, 1),
        "cli_version_ms": round(version, 1),
        "import_package_vs_aiohttp": round(package / aiohttp_ms, 3),
    }


def main() -> None:
    with server_process() as url:
        result = asyncio.run(measure_requests(url))
    result.update(measure_imports())
    write_result("overhead", result)


if __name__ == "__main__":
    main()
