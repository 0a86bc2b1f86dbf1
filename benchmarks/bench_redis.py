"""What the Redis store costs and how a fleet fares with it, against a local redis-server.

Four figures (a redis-server is started here on a free localhost port; skipped, with a
message, when none is installed):

* **cost per request**: sequential acquire -> release (with an answer) on one cabinet, versus
  one bare ``EVALSHA`` of a script that returns at once, on the same Redis, same run (median
  of interleaved rounds); with the script calls each request made (one: each release rides
  in the next acquire) and the script's own time in Redis (``INFO commandstats``). Goal:
  <= 2.2x;
* **fleet**: 10 worker processes (``tests/_redis_worker.py fleet``), 8 requests in flight
  each, on one cabinet of the bundled Market server (30 per 3 s, fixed window, 20 ms
  latency): script calls per accepted request, 420s, and the use of the quota (requests
  counted in the server's windows that lay wholly within the run, over 30 per window);
* **dead worker**: a worker holding 4 slots is killed with SIGKILL; seconds until another
  process holds all 4 (default lease TTL).

Writes ``benchmarks/results/redis.json``. Run: ``python benchmarks/bench_redis.py``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

# The benchmark helpers and the tests' Redis helpers are found through the path set above.
from _common import write_result  # noqa: E402

from market_chat_async._limits import Answer, Quota  # noqa: E402
from market_chat_async._limits._redis import LEASE_TTL, RedisLimiters  # noqa: E402
from market_chat_async.testing import MarketTestServer, serve  # noqa: E402
from tests._redis_servers import free_port, redis_server  # noqa: E402

WORKER = ROOT / "tests" / "_redis_worker.py"
RESOURCE = "getChatMessage"
WIDE_OPEN = {RESOURCE: Quota(limit=10**9, period=3600.0)}
REQUESTS = 2_000
ROUNDS = 5
FLEET = 10
FLEET_SECONDS = 15.0
ANSWER = Answer(remaining=10**9 - 1, resets_in=3600.0)


async def bare_evalsha(redis: Any, sha: str, n: int) -> float:
    """Seconds per bare EVALSHA round trip."""
    started = time.perf_counter()
    for _ in range(n):
        await redis.evalsha(sha, 1, "bench-bare")
    return (time.perf_counter() - started) / n


async def limiter_requests(limits: RedisLimiters, business_id: int, n: int) -> tuple[float, float]:
    """Seconds and script calls per acquire -> release (answered)."""
    limiter = limits.limiter(business_id)
    lease = await limiter.acquire(RESOURCE)  # the probe: the cabinet's count is known after
    await lease.release(ANSWER)
    calls = limits.script_calls
    started = time.perf_counter()
    for _ in range(n):
        lease = await limiter.acquire(RESOURCE)
        await lease.release(ANSWER)
    return (time.perf_counter() - started) / n, (limits.script_calls - calls) / n


async def cost(redis_url: str) -> dict[str, Any]:
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(redis_url)
    sha = await redis.script_load("return 1")
    limits = RedisLimiters(redis_url, quotas=WIDE_OPEN, max_parallel=4, namespace="bench")
    bare, per_request, calls, in_redis = [], [], [], []
    for n in range(ROUNDS):
        bare.append(await bare_evalsha(redis, sha, REQUESTS))
        await redis.config_resetstat()
        seconds, per = await limiter_requests(limits, 100 + n, REQUESTS)
        stats = await redis.info("commandstats")
        in_redis.append(stats["cmdstat_evalsha"]["usec"] / REQUESTS)
        per_request.append(seconds)
        calls.append(per)
    await limits.close()
    await redis.aclose()
    bare_us = statistics.median(bare) * 1e6
    request_us = statistics.median(per_request) * 1e6
    return {
        "requests_per_round": REQUESTS,
        "rounds": ROUNDS,
        "bare_evalsha_us": round(bare_us, 1),
        "us_per_request": round(request_us, 1),
        "ratio_to_bare_evalsha": round(request_us / bare_us, 2),
        "ratios_per_round": [round(r / b, 2) for r, b in zip(per_request, bare, strict=True)],
        "script_calls_per_request": statistics.median(calls),
        "script_us_in_redis_per_request": round(statistics.median(in_redis), 1),
    }


async def fleet(redis_url: str) -> dict[str, Any]:
    port = free_port()
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            "fleet",
            f"http://127.0.0.1:{port}",
            redis_url,
            str(FLEET_SECONDS),
            str(n),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for n in range(FLEET)
    ]
    for worker in workers:
        assert worker.stdout is not None
        assert (await worker.stdout.readline()).strip() == b"ready"
    server = MarketTestServer(quota=30, period=3.0, window="fixed", latency=0.02)
    async with serve(server, port=port):
        outputs = await asyncio.gather(*(w.communicate(b"go\n") for w in workers))
        elapsed = server.now()
    reports = [json.loads(out) for out, _ in outputs]
    full = int(min(elapsed, FLEET_SECONDS) // 3.0)
    per_window = [0] * full
    for arrival in server.stats.counted[1]:
        if int(arrival // 3.0) < full:
            per_window[int(arrival // 3.0)] += 1
    answered = [r["statuses"].get("200", 0) for r in reports]
    calls = sum(r["script_calls"] for r in reports)
    return {
        "fleet_processes": FLEET,
        "fleet_seconds": FLEET_SECONDS,
        "fleet_answered": sum(answered),
        "fleet_answered_per_process": sorted(answered),
        "fleet_script_calls_per_accepted_request": round(calls / sum(answered), 2),
        "fleet_quota_420": server.stats.quota_420,
        "fleet_parallel_420": server.stats.parallel_420,
        "fleet_failures": sum(len(r["failed"]) for r in reports),
        "fleet_max_in_flight": server.stats.max_in_flight[1],
        # Requests the server counted in its fixed windows that lay wholly within the run.
        "fleet_quota_use": round(sum(per_window) / (30 * len(per_window)), 3),
        "fleet_counted_per_window": per_window,
    }


async def dead_worker(redis_url: str) -> dict[str, Any]:
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        "hold",
        redis_url,
        "dead",
        "4",
        str(LEASE_TTL),
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdout is not None
    assert (await holder.stdout.readline()).strip() == b"held"
    await asyncio.sleep(2 * LEASE_TTL)  # renewed meanwhile: nothing comes back while it lives
    limits = RedisLimiters(
        redis_url, quotas={RESOURCE: Quota(limit=30, period=3.0)}, max_parallel=4, namespace="dead"
    )
    limiter = limits.limiter(1)
    assert (await limiter.state(RESOURCE)).in_flight == 4
    holder.kill()
    await holder.wait()
    killed = time.perf_counter()
    for _ in range(4):
        await limiter.acquire(RESOURCE)
    back = time.perf_counter() - killed
    await limits.close()
    return {"lease_ttl_s": LEASE_TTL, "dead_worker_slots_back_s": round(back, 2)}


async def measure(redis_url: str) -> dict[str, Any]:
    return {
        **(await cost(redis_url)),
        **(await fleet(redis_url)),
        **(await dead_worker(redis_url)),
    }


def main() -> None:
    if shutil.which("redis-server") is None:
        print("redis: skipped, redis-server is not installed (apt-get install redis-server)")
        return
    with redis_server() as redis_url:
        result = asyncio.run(measure(redis_url))
    write_result("redis", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
