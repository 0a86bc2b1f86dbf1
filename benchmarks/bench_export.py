"""Bulk fetching by the quotas: the planner for known pairs, and the whole-cabinet export.

On the bundled test server with the documented quotas (getChatMessage 1,000/h, getChatHistory
10,000/h, getChats 5,000/h; fixed window), 4 in flight, 50 ms per request, on looptime's virtual
clock (hours pass in seconds), with a corpus of 1,000 chats whose message counts are heavy
tailed (mean about 12, some chats over 300):

1. **Known pairs**: every message of 300 random chats, shuffled, with ``strategy="message"``,
   ``"history"`` and ``"auto"``: simulated time, requests per resource, 420s.
2. **Whole cabinet**: ``iter_all_messages`` against fetching every message one by one (the ids
   taken from the server, as if known), against the least possible: getChats pages +
   sum of ceil(n / 100) history pages, and the time that takes at 4 in flight.
3. **Incremental rerun**: after 1 % of chats got a new message, ``iter_all_messages(since=...,
   after=...)`` against the least possible (the listing + one page per changed chat).
4. **Memory**: peak traced memory (tracemalloc) of an export against a server in a subprocess
   (so only the client is measured), for cabinets of growing size.

Writes ``benchmarks/results/export.json``. ``--quick`` runs a smaller memory series.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import looptime
from _common import write_result

from market_chat_async import MarketChatClient
from market_chat_async._limits import forget_all
from market_chat_async.testing import MarketTestServer, corpus, serve

BUSINESS = 1
KEY = "test-api-key"
LATENCY = 0.05
CAP = 4
CHATS = 1000
SEED = 7
KNOWN_CHATS = 300
CHANGED = CHATS // 100
QUICK = "--quick" in sys.argv
MEMORY_CHATS = (250, 500, 1000) if QUICK else (500, 1000, 2000, 4000)
POINTS = 300  # per timeline

SERVER = """
import asyncio, sys
from market_chat_async.testing import MarketTestServer, corpus, serve

async def main() -> None:
    server = MarketTestServer(max_parallel=4)
    server.load(1, corpus(seed=int(sys.argv[2]), chats=int(sys.argv[1])))
    async with serve(server, host="127.0.0.1", port=0) as running:
        print(running.url, flush=True)
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes stdin
        while not done.done():
            server.stats.request_headers.clear()
            await asyncio.wait([done], timeout=1.0)

asyncio.run(main())
"""


def now() -> float:
    return asyncio.get_running_loop().time()


class Timeline:
    """Messages done over simulated time, thinned to about ``POINTS`` points."""

    def __init__(self, expected: int) -> None:
        self.started = now()
        self.step = max(1, expected // POINTS)
        self.count = 0
        self.points: list[list[float]] = [[0.0, 0]]

    def tick(self) -> None:
        self.count += 1
        if self.count % self.step == 0:
            self.points.append([round(now() - self.started, 3), self.count])

    def end(self) -> float:
        elapsed = now() - self.started
        if self.points[-1][1] != self.count:
            self.points.append([round(elapsed, 3), self.count])
        return elapsed


def cabinet() -> MarketTestServer:
    server = MarketTestServer(quotas="documented", window="fixed", latency=LATENCY)
    server.load(BUSINESS, corpus(seed=SEED, chats=CHATS))
    return server


def ids(server: MarketTestServer, chat_id: int) -> list[int]:
    return [m["messageId"] for m in server.history(BUSINESS, chat_id)]


def usage(server: MarketTestServer, seconds: float, timeline: Timeline) -> dict[str, Any]:
    stats = server.stats
    return {
        "seconds": round(seconds, 2),
        "requests": dict(stats.requests_by_operation),
        "requests_total": sum(stats.requests_by_operation.values()),
        "quota_420": stats.quota_420,
        "parallel_420": stats.parallel_420,
        "max_in_flight": stats.max_in_flight[BUSINESS],
        "messages": timeline.count,
        "timeline": timeline.points,
    }


async def known_pairs(strategy: str) -> dict[str, Any]:
    server = cabinet()
    rng = random.Random(SEED)
    chats = rng.sample(range(1, CHATS + 1), KNOWN_CHATS)
    pairs = [(c, m) for c in chats for m in ids(server, c)]
    rng.shuffle(pairs)
    async with (
        serve(server) as running,
        MarketChatClient(api_key=KEY, base_url=running.url) as client,
    ):
        timeline = Timeline(len(pairs))
        async for item in client.stream_messages(BUSINESS, pairs, strategy=strategy):  # type: ignore[arg-type]
            assert item.ok, item.error
            timeline.tick()
        seconds = timeline.end()
    assert timeline.count == len(pairs)
    return {"pairs": len(pairs), **usage(server, seconds, timeline)}


def least_export_requests(server: MarketTestServer, after: dict[int, int]) -> int:
    pages = math.ceil(len(server.chats(BUSINESS)) / 20)
    for chat in server.chats(BUSINESS):
        held = after.get(chat["chatId"], 0)
        newer = sum(1 for m in ids(server, chat["chatId"]) if m > held)
        if chat["chatId"] not in after or newer:
            pages += max(1, math.ceil(newer / 100))
    return pages


async def whole_cabinet() -> dict[str, Any]:
    server = cabinet()
    total = sum(len(ids(server, c)) for c in range(1, CHATS + 1))
    async with (
        serve(server) as running,
        MarketChatClient(api_key=KEY, base_url=running.url) as client,
    ):
        timeline = Timeline(total)
        held: dict[int, int] = {}
        async for chat, message in client.iter_all_messages(BUSINESS):
            held[chat.chat_id] = message.message_id
            timeline.tick()
        seconds = timeline.end()
        assert timeline.count == total
        export = usage(server, seconds, timeline)
        least = least_export_requests(server, {})
        bound = max(least * LATENCY / CAP, 0.0)  # every resource's count is under its quota
        export |= {
            "least_requests": least,
            "requests_over_least": round(export["requests_total"] / least, 4),
            "least_seconds": bound,
            "seconds_over_least": round(seconds / bound, 4),
        }

        # 1 % of chats get a new message; then the same export, incremental.
        rng = random.Random(SEED + 1)
        changed = rng.sample(range(1, CHATS + 1), CHANGED)
        since = datetime.fromtimestamp(server.epoch + server.now(), UTC).replace(microsecond=0)
        for chat_id in changed:
            await client.send_message(BUSINESS, chat_id, "Есть новости по заказу?")
        server.stats = type(server.stats)()
        timeline = Timeline(CHANGED)
        async for chat, _ in client.iter_all_messages(BUSINESS, since=since, after=held):
            assert chat.chat_id in changed
            timeline.tick()
        seconds = timeline.end()
        incremental = usage(server, seconds, timeline)
        least = math.ceil(CHATS / 20) + CHANGED
        incremental |= {
            "changed_chats": CHANGED,
            "least_requests": least,
            "requests_over_least": round(incremental["requests_total"] / least, 4),
        }
        del incremental["timeline"]
    return {"messages": total, "export": export, "incremental": incremental}


async def one_by_one() -> dict[str, Any]:
    """Every message with getChatMessage, the ids known beforehand (listing the chats first)."""
    server = cabinet()
    pairs = [(c, m) for c in range(1, CHATS + 1) for m in ids(server, c)]
    async with (
        serve(server) as running,
        MarketChatClient(api_key=KEY, base_url=running.url) as client,
    ):
        timeline = Timeline(len(pairs))
        async for _ in client.iter_chats(BUSINESS):
            pass
        async for item in client.stream_messages(BUSINESS, pairs, strategy="message"):
            assert item.ok, item.error
            timeline.tick()
        seconds = timeline.end()
    return usage(server, seconds, timeline)


def virtual(coro_fn: Any, *args: Any) -> Any:
    forget_all()
    with asyncio.Runner(loop_factory=looptime.new_event_loop) as runner:
        return runner.run(coro_fn(*args))


# -- memory ------------------------------------------------------------------------------------


async def export_peak(url: str) -> tuple[int, int]:
    async with MarketChatClient(api_key=KEY, base_url=url) as client:
        async for _ in client.iter_chats(BUSINESS, page_size=1):  # warm up, then measure
            break
        gc.collect()
        tracemalloc.start()
        try:
            baseline, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            count = 0
            async for _ in client.iter_all_messages(BUSINESS):
                count += 1
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return count, peak - baseline


def memory(chats: int) -> tuple[int, int]:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(chats), str(SEED)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        forget_all()
        return asyncio.run(export_peak(url))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)


def slope(points: dict[int, int]) -> float:
    xs, ys = list(points), list(points.values())
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def main() -> None:
    started = time.perf_counter()
    known = {
        strategy: virtual(known_pairs, strategy) for strategy in ("message", "history", "auto")
    }
    cabinet_run = virtual(whole_cabinet)
    slow = virtual(one_by_one)
    peaks = {}
    for chats in MEMORY_CHATS:
        count, peak = memory(chats)
        peaks[count] = peak
    data: dict[str, Any] = {
        "server": f"bundled test server, documented quotas, fixed window, {CAP} in flight, "
        f"{LATENCY * 1000:g} ms per request, looptime",
        "corpus": f"corpus(seed={SEED}, chats={CHATS}): {cabinet_run['messages']:,} messages",
        "latency_s": LATENCY,
        "known_pairs": {
            "chats": KNOWN_CHATS,
            **known,
            "auto_speedup": round(known["message"]["seconds"] / known["auto"]["seconds"], 1),
        },
        "whole_cabinet": {
            "export": cabinet_run["export"],
            "one_by_one": slow,
            "speedup": round(slow["seconds"] / cabinet_run["export"]["seconds"], 1),
        },
        "incremental": cabinet_run["incremental"],
        "memory": {
            "server": "bundled test server in a subprocess, no quotas, no latency",
            "peak_bytes_by_messages": peaks,
            "bytes_per_message_slope": round(slope(peaks), 2),
        },
    }
    data["bench_seconds"] = round(time.perf_counter() - started, 1)
    for key in ("known_pairs", "whole_cabinet", "incremental", "memory"):
        print(f"  {key}: {_brief(data[key])}")
    write_result("export", data)


def _brief(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _brief(v) for k, v in value.items() if k != "timeline"}
    return value


if __name__ == "__main__":
    main()
