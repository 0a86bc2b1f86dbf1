"""Instructions per ``get_message`` against raw aiohttp, counted by valgrind: the quiet twin of
``bench_overhead``.

CPU time on a shared machine moves by several per cent between runs; instruction counts do not.
Each side runs its loop twice under ``valgrind --tool=callgrind`` in a process of its own (few
and many requests, against the bundled server in another process); the difference over the
difference in requests is what one request costs, start-up and imports cancelled out. Three
sides: raw aiohttp (``session.get`` + ``resp.json()``, as in ``bench_overhead``), the client's
``get_message``, and a floor: raw aiohttp plus the least the client must add (the rate-limit
headers read, the body parsed and structured by the client's cattrs hook), with no limiter,
funnel or transport seam. Raw and floor use one cabinet, the client another, so that each sees
the server's count of its own cabinet only.

Instructions are not time: code that runs cold after the network stack costs more per
instruction than the loop's own code. The figure tells where the client's own work goes and
whether a change cut it. Skipped, with a message, where valgrind is not installed. Writes
``benchmarks/results/instructions.json``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result
from bench_overhead import BIG, KEY, server_process

FEW, MANY = 200, 1_200
SIDES = ("raw", "floor", "client")


async def _loop(side: str, requests: int, url: str) -> None:
    import aiohttp

    from market_chat_async import ChatMessage, MarketChatClient, Quota
    from market_chat_async._wire import converter

    structure = converter.get_structure_hook(ChatMessage)
    quota = Quota(limit=BIG, period=3600.0)
    async with (
        aiohttp.ClientSession() as session,
        MarketChatClient(api_key=KEY, base_url=url, quota=quota) as client,
    ):
        for i in range(requests):
            message_id = i % 1000 + 1
            if side == "client":
                await client.get_message(2, 1, message_id)
                continue
            async with session.get(
                f"{url}/v2/businesses/3/chats/message",
                params={"chatId": "1", "messageId": str(message_id)},
                headers={"Api-Key": KEY},
            ) as resp:
                if side == "raw":
                    await resp.json()
                    continue
                body = await resp.read()
                headers = resp.headers
                int(headers["X-RateLimit-Resource-Remaining"])
                headers.get("X-RateLimit-Resource-Until"), headers.get("Date")
            data = json.loads(body)
            if data.get("status") != "OK":
                raise ValueError("not OK")
            structure(data["result"], ChatMessage)


def _instructions(side: str, requests: int, url: str) -> int:
    run = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            side,
            str(requests),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind: {run.stderr[-500:]}")
    return int(found.group(1))


def main() -> None:
    if shutil.which("valgrind") is None:
        print("bench_instructions: skipped, valgrind is not installed")
        return
    with server_process() as url, ThreadPoolExecutor(2) as pool:
        runs = {side: pool.map(_instructions, [side] * 2, [FEW, MANY], [url] * 2) for side in SIDES}
        per_request = {}
        for side, counted in runs.items():
            few, many = counted
            per_request[side] = (many - few) // (MANY - FEW)
    raw = per_request["raw"]
    write_result(
        "instructions",
        {
            "requests": [FEW, MANY],
            **{f"{side}_instructions_per_request": n for side, n in per_request.items()},
            "client_ratio": round(per_request["client"] / raw, 3),
            "floor_ratio": round(per_request["floor"] / raw, 3),
        },
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(_loop(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    else:
        main()
