"""``market-chat serve`` loses nothing it answered 200 for: real signals to real subprocesses.

Each test runs the command as a user would (``python -m market_chat_async.cli serve``) against
the bundled Market server on a real port, posts notifications over HTTP, and then kills or
signals the process: ``kill -9``, two SIGTERMs during a drain, two replicas on one Redis stream
with one killed mid-work. Every message must end up in the output (at least once); duplicates
are counted and reported, and bounded by what can have been in flight at the kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from market_chat_async.testing import MarketTestServer, RunningServer, serve

from .test_notifications_queue import redis_server_url  # noqa: F401 - a fixture

API_KEY = "test-api-key"  # the test server's
BUSINESS = 12345
CONCURRENCY = 4  # the receiver's default: at most this many handled-but-not-acked at a kill


class Service:
    """One ``market-chat serve`` subprocess; its stderr is collected as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.err: list[str] = []
        self.url = ""
        self._reader = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.err.append(line.decode(errors="replace"))

    async def wait_for(self, text: str) -> str:
        async with asyncio.timeout(60):
            while True:
                for line in self.err:
                    if text in line:
                        return line
                if self.proc.returncode is not None:
                    raise AssertionError(f"exited before {text!r}: {''.join(self.err)}")
                await asyncio.sleep(0.02)

    async def wait(self) -> int:
        status = await asyncio.wait_for(self.proc.wait(), 60)
        await self._reader
        return status


async def start_serve(cwd: Path, market: RunningServer, queue: str, output: Path) -> Service:
    env = dict(os.environ, YANDEX_MARKET_API_KEY=API_KEY)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "market_chat_async.cli", "serve", "--base-url", market.url,
        "--port", "0", "--allow-from", "any", "--queue", queue, "--output", str(output),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd,
    )  # fmt: skip
    service = Service(proc)
    banner = await service.wait_for("receiving notifications at")
    service.url = banner.split(" at ")[-1].split()[0]
    return service


def notification(message_id: int) -> dict[str, Any]:
    return {
        "notificationType": "CHAT_MESSAGE_SENT",
        "businessId": BUSINESS,
        "chatId": 1 + message_id % 7,
        "messageId": str(message_id),
        "sentAt": "2026-11-25T10:00:00+03:00",
    }


async def post_all(url: str, message_ids: Sequence[int]) -> list[int]:
    """POST each notification (50 at a time); the statuses, in order."""
    gate = asyncio.Semaphore(50)
    async with aiohttp.ClientSession() as session:

        async def one(message_id: int) -> int:
            async with gate, session.post(url, json=notification(message_id)) as resp:
                return resp.status

        return list(await asyncio.gather(*(one(m) for m in message_ids)))


def handled(*outputs: Path) -> Counter[int]:
    """How often each message id was written, over the given JSON-lines files."""
    counts: Counter[int] = Counter()
    for path in outputs:
        if path.exists():
            counts.update(json.loads(line)["messageId"] for line in path.read_text().splitlines())
    return counts


async def until(condition: Callable[[], bool], within: float = 120.0) -> None:
    """Poll ``condition`` (a file another process writes); the bound only catches a hang."""
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


async def until_all_handled(expected: set[int], *outputs: Path) -> Counter[int]:
    await until(lambda: expected <= set(handled(*outputs)))
    return handled(*outputs)


def report_duplicates(counts: Counter[int], label: str) -> int:
    duplicates = sum(n - 1 for n in counts.values())
    print(f"{label}: {len(counts)} messages handled, {duplicates} duplicate(s)")
    return duplicates


@pytest.fixture
async def slow_market() -> AsyncIterator[RunningServer]:
    """The Market test server answering each request after 20 ms: a backlog builds up."""
    async with serve(MarketTestServer(latency=0.02)) as running:
        yield running


async def test_kill_9_right_after_200_answers_then_restart_handles_every_message(
    slow_market: RunningServer, tmp_path: Path
) -> None:
    output = tmp_path / "messages.jsonl"
    queue = "sqlite:///queue.db"  # relative: in the working directory
    service = await start_serve(tmp_path, slow_market, queue, output)
    ids = list(range(1, 201))
    assert await post_all(service.url, ids) == [200] * 200
    service.proc.kill()  # SIGKILL: no drain, no cleanup
    assert await service.wait() == -signal.SIGKILL
    before = handled(output)
    print(f"handled before the kill: {len(before)} of 200")
    assert (tmp_path / "queue.db").exists()

    again = await start_serve(tmp_path, slow_market, queue, output)
    counts = await until_all_handled(set(ids), output)
    again.proc.send_signal(signal.SIGTERM)
    assert await again.wait() == 0
    assert set(counts) == set(ids)
    assert report_duplicates(counts, "kill -9") <= CONCURRENCY


async def test_two_sigterms_during_a_drain_lose_nothing_after_restart(
    tmp_path: Path,
) -> None:
    output = tmp_path / "messages.jsonl"
    queue = f"sqlite:///{tmp_path / 'queue.db'}"
    async with serve(MarketTestServer(latency=0.2)) as market:  # 40 take 2 s at least
        service = await start_serve(tmp_path, market, queue, output)
        ids = list(range(1, 41))
        assert await post_all(service.url, ids) == [200] * 40
        service.proc.send_signal(signal.SIGTERM)
        await service.wait_for("draining")
        assert await post_all(service.url, [41]) == [503]  # no new work: the Market retries
        service.proc.send_signal(signal.SIGTERM)
        assert await service.wait() == 128 + signal.SIGTERM
        left = 40 - len(handled(output))
        print(f"left in the queue by the second SIGTERM: {left} of 40")

        again = await start_serve(tmp_path, market, queue, output)
        counts = await until_all_handled(set(ids), output)
        again.proc.send_signal(signal.SIGTERM)
        assert await again.wait() == 0
    assert set(counts) == set(ids)
    assert report_duplicates(counts, "two SIGTERMs") <= CONCURRENCY


async def test_two_replicas_share_one_redis_stream_and_survive_one_killed_mid_work(
    redis_server_url: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    queue = f"{redis_server_url}?name=replicas&visibility_timeout=2"
    out_a, out_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    async with serve(MarketTestServer(latency=0.1)) as market:
        a = await start_serve(tmp_path, market, queue, out_a)
        b = await start_serve(tmp_path, market, queue, out_b)

        # The Market sends every notification twice, once to each replica: handled once.
        first = list(range(1, 21))
        statuses = await asyncio.gather(post_all(a.url, first), post_all(b.url, first))
        assert list(statuses) == [[200] * 20, [200] * 20]
        counts = await until_all_handled(set(first), out_a, out_b)
        assert counts == Counter(first)  # exactly once each, across the two replicas
        assert handled(out_a)  # both did some of the work
        assert handled(out_b)

        # Replica A is killed while it holds entries; B takes them over after the timeout.
        rest = list(range(21, 81))
        assert await post_all(a.url, rest) == [200] * 60
        await until(lambda: bool(handled(out_a) - Counter(first)))  # A is at work
        a.proc.kill()
        assert await a.wait() == -signal.SIGKILL
        counts = await until_all_handled(set(first + rest), out_a, out_b)
        b.proc.send_signal(signal.SIGTERM)
        assert await b.wait() == 0
    assert set(counts) == set(first + rest)
    assert report_duplicates(counts, "replica killed") <= CONCURRENCY


async def test_queue_list_retry_drop_on_the_dead_letters(tmp_path: Path) -> None:
    from market_chat_async.notifications import SqliteQueue

    path = tmp_path / "queue.db"
    queue = SqliteQueue(path)
    await queue.open()
    for message_id in (1, 2, 3):
        body = json.dumps(notification(message_id)).encode()
        await queue.put(f"k{message_id}", body, now=1000.0)
    for entry in await queue.claim(10, now=1000.0):
        await queue.bury(entry, now=2000.0)
    await queue.close()
    url = f"sqlite:///{path}"

    async def market_chat(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "market_chat_async.cli", "queue", *args, "--queue", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    status, out, _ = await market_chat("list")
    assert status == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "market_chat_async.cli", "queue", "list",
        stderr=asyncio.subprocess.PIPE, cwd=empty,
    )  # fmt: skip
    _, err = await asyncio.wait_for(missing.communicate(), 60)
    assert (missing.returncode, "no queue there yet" in err.decode()) == (2, True)
    assert list(empty.iterdir()) == []  # looking at the default queue created nothing
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["notification"]["messageId"] for r in records] == ["1", "2", "3"]
    assert records[0]["deadAt"] == "1970-01-01T00:33:20Z"
    status, _, err = await market_chat("retry", "--id", records[0]["id"])
    assert (status, "queued 1 dead letter(s) again" in err) == (0, True)
    status, _, err = await market_chat("drop", "--id", "999")
    assert (status, "1 id(s) are not dead letters" in err) == (1, True)
    status, _, err = await market_chat("drop")
    assert (status, "needs --id ID (repeatable) or --all" in err) == (2, True)
    assert (await market_chat("drop", "--all"))[0] == 0
    status, out, _ = await market_chat("list")
    assert (status, out) == (0, "")
    queue = SqliteQueue(path)
    await queue.open()
    [replayed] = await queue.claim(10, now=time.time() + 1)
    assert (replayed.id, replayed.attempts) == (records[0]["id"], 0)
    await queue.close()


async def test_a_second_serve_on_the_same_sqlite_file_is_refused(
    market: RunningServer, tmp_path: Path
) -> None:
    first = await start_serve(tmp_path, market, "sqlite:///queue.db", tmp_path / "a.jsonl")
    env = dict(os.environ, YANDEX_MARKET_API_KEY=API_KEY)
    second = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "market_chat_async.cli", "serve", "--base-url", market.url,
        "--port", "0", "--queue", "sqlite:///queue.db",
        stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    _, err = await asyncio.wait_for(second.communicate(), 60)
    assert second.returncode == 2
    assert "in use by another receiver" in err.decode()
    first.proc.send_signal(signal.SIGTERM)
    assert await first.wait() == 0
