"""Copy the key numbers from ``benchmarks/results/*.json`` into README.md's benchmark table.

Run by ``nox -s bench`` after the benchmarks, so the README never quotes a number that no
results file holds. The table sits between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def stamp(data: dict[str, Any]) -> str:
    m = data["machine"]
    return f"{data['date'][:10]}, {m['cpus']} CPUs, Python {m['python']}"


def rows() -> list[str]:
    out = []
    if limiter := load("limiter"):
        ours, naive, burst = limiter["ours"], limiter["naive_token_bucket"], limiter["burst"]
        out.append(
            f"| Quota used over {limiter['hours']} simulated hours (1,000/h, fixed window) "
            f"| {ours['utilisation']:.1%}, {ours['quota_420']} quota-420s "
            f"| naive `AsyncLimiter(1000, 3600)`: {naive['utilisation']:.1%}, "
            f"{naive['quota_420']} quota-420s | `limiter.json`, {stamp(limiter)} |"
        )
        first_hour = sum(limiter["sends_unenforced"]["naive_token_bucket"][:60])
        out.append(
            f"| Requests sent in the first hour, nothing enforced "
            f"| {sum(limiter['sends_unenforced']['ours'][:60])} "
            f"| naive bucket: {first_hour} | `limiter.json` |"
        )
        out.append(
            f"| Burst of {burst['n']} requests, fresh quota, {burst['latency_s'] * 1000:.0f} ms "
            f"latency | {burst['seconds']} s | ideal N x latency / 4 = {burst['ideal_seconds']} s "
            f"(x{burst['ratio_to_ideal']}) | `limiter.json` |"
        )
    if overhead := load("overhead"):
        out.append(
            f"| Client CPU per request, server sending rate-limit headers "
            f"| {overhead['client_cpu_us_per_request']} us "
            f"| raw aiohttp: {overhead['raw_aiohttp_cpu_us_per_request']} us "
            f"(x{overhead['ratio']}) | `overhead.json`, {stamp(overhead)} |"
        )
        out.append(
            f"| `import market_chat_async` | {overhead['import_package_ms']} ms "
            f"| `import aiohttp`: {overhead['import_aiohttp_ms']} ms "
            f"(x{overhead['import_package_vs_aiohttp']}) | `overhead.json` |"
        )
    if acquire := load("acquire"):
        out.append(
            f"| Limiter acquire with {acquire['waiters']:,} coroutines waiting "
            f"| {acquire['limiter_us_per_acquire']} us | `asyncio.Semaphore`: "
            f"{acquire['semaphore_us_per_acquire']} us (x{acquire['ratio']}) "
            f"| `acquire.json`, {stamp(acquire)} |"
        )
    if bulk := load("bulk"):
        out.append(
            f"| Streaming bulk fetch, per request ({bulk['time_pairs']:,} pairs) "
            f"| {bulk['stream_us_per_request']} us | `gather` of `get_message`: "
            f"{bulk['gather_us_per_request']} us (x{bulk['stream_vs_gather_time_ratio']}) "
            f"| `bulk.json`, {stamp(bulk)} |"
        )
        dedup = bulk["dedup_set_bytes_per_distinct_pair"]
        out.append(
            f"| Streaming bulk fetch, peak memory per input pair "
            f"| {bulk['stream_bytes_per_pair_slope']} B ({dedup} B "
            f"of it remembering pairs already fetched) | `gather`: "
            f"{bulk['gather_bytes_per_pair_slope']} B | `bulk.json` |"
        )
    if redis := load("redis"):
        out.append(
            f"| Redis limiter, per request ({redis['script_calls_per_request']:g} script call) "
            f"| {redis['us_per_request']} us "
            f"| one bare EVALSHA: {redis['bare_evalsha_us']} us "
            f"(x{redis['ratio_to_bare_evalsha']}) | `redis.json`, {stamp(redis)} |"
        )
        out.append(
            f"| 10-process fleet through Redis: script calls per request, quota used, 420s "
            f"| {redis['fleet_script_calls_per_accepted_request']}, "
            f"{redis['fleet_quota_use']:.0%}, "
            f"{redis['fleet_quota_420'] + redis['fleet_parallel_420']} | | `redis.json` |"
        )
    return out


def table() -> list[str]:
    """The key numbers as markdown table lines."""
    return [
        "| What | This library | Baseline, same run | Source |",
        "| --- | --- | --- | --- |",
        *rows(),
    ]


def main() -> None:
    readme = ROOT / "README.md"
    block = "<!-- bench:begin -->\n" + "\n".join(table()) + "\n<!-- bench:end -->"
    text = re.sub(
        r"<!-- bench:begin -->.*?<!-- bench:end -->", block, readme.read_text(), flags=re.S
    )
    readme.write_text(text)
    print("README.md: benchmark table updated")


if __name__ == "__main__":
    main()
