"""The queues behind the receiver: one contract, three backends, each against the real thing.

The contract runs on every backend -- ``memory``, a real SQLite file in a temporary directory and
a real redis-server started here (skipped, with the reason, only where none is installed).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from market_chat_async.notifications import (
    MemoryQueue,
    NotificationQueue,
    QueueError,
    RedisQueue,
    SqliteQueue,
    open_queue,
)

NO_REDIS = shutil.which("redis-server") is None
NO_REDIS_REASON = "redis-server is not on PATH (apt-get install redis-server; .ci/run does)"
BODY = (
    b'{"notificationType":"CHAT_CREATED","businessId":1,"chatId":2,'
    b'"createdAt":"2026-11-25T10:00:00Z"}'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on a free localhost port, answering PING."""
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.02)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    if NO_REDIS:
        pytest.skip(NO_REDIS_REASON)
    proc, url = start_redis()
    try:
        yield url
    finally:
        proc.kill()
        proc.wait()


_names = iter(range(10**9))


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty queue of each backend, by URL."""
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"  # sqlite:////tmp/...: absolute
    base = request.getfixturevalue("redis_server_url")
    return f"{base}?name=test{next(_names)}"  # a queue of its own on the shared server


@pytest.fixture
async def queue(queue_url: str) -> AsyncIterator[NotificationQueue]:
    q = open_queue(queue_url)
    await q.open()
    yield q
    await q.close()


# -- the contract, on every backend -------------------------------------------------------------


async def test_a_put_is_claimed_once_and_gone_after_ack(queue: NotificationQueue) -> None:
    assert await queue.put("CHAT_CREATED:1:2", BODY, now=100.0)
    [entry] = await queue.claim(10, now=100.0)
    assert (entry.body, entry.key, entry.received_at, entry.attempts) == (
        BODY,
        "CHAT_CREATED:1:2",
        100.0,
        0,
    )
    assert await queue.claim(10, now=100.0) == []  # claimed: not handed out twice
    assert (await queue.stats()).backlog == 1
    await queue.ack(entry)
    stats = await queue.stats()
    assert (stats.backlog, stats.oldest_received_at, stats.dead_letters) == (0, None, 0)


async def test_the_same_key_within_the_window_is_a_duplicate(queue: NotificationQueue) -> None:
    assert await queue.put("k", BODY, now=0.0)
    assert not await queue.put("k", BODY, now=1.0)
    [entry] = await queue.claim(10, now=1.0)
    await queue.ack(entry)
    assert not await queue.put("k", BODY, now=2.0)  # handled already: still a duplicate
    assert await queue.put(None, BODY, now=2.0)  # no key: never a duplicate
    assert await queue.put(None, BODY, now=2.0)
    assert (await queue.stats()).backlog == 2


async def test_a_retry_is_due_at_its_time_with_its_history(queue: NotificationQueue) -> None:
    await queue.put("k", BODY, now=0.0)
    [entry] = await queue.claim(10, now=0.0)
    failed = type(entry)(
        entry.id, entry.key, entry.body, entry.received_at, 1, ("on_notification",), "boom"
    )
    await queue.retry_later(failed, due=50.0)
    assert await queue.claim(10, now=49.0) == []
    [again] = await queue.claim(10, now=50.0)
    assert (again.attempts, again.done, again.last_error) == (1, ("on_notification",), "boom")
    assert (await queue.stats()).oldest_received_at == 0.0  # still the original arrival


async def test_dead_letters_are_listed_replayed_and_dropped(queue: NotificationQueue) -> None:
    for n in range(3):
        await queue.put(f"k{n}", BODY, now=float(n))
    entries = await queue.claim(10, now=5.0)
    assert len(entries) == 3
    for entry in entries:
        await queue.bury(entry, now=6.0)
    dead = await queue.dead_letters()
    assert sorted(e.key or "" for e in dead) == ["k0", "k1", "k2"]
    assert all(e.dead_at == 6.0 for e in dead)
    assert (await queue.stats()).backlog == 0
    assert (await queue.stats()).dead_letters == 3
    assert await queue.put("k0", BODY, now=7.0)  # given up: its key is forgotten
    await queue.ack((await queue.claim(1, now=7.0))[0])
    assert await queue.replay([dead[0].id], now=8.0) == 1
    [replayed] = await queue.claim(10, now=8.0)
    assert (replayed.id, replayed.attempts) == (dead[0].id, 0)
    assert await queue.drop(None) == 2
    assert await queue.dead_letters() == []


async def test_claims_are_bounded_and_oldest_first(queue: NotificationQueue) -> None:
    for n in range(5):
        await queue.put(f"k{n}", BODY, now=float(n))
    first = await queue.claim(2, now=10.0)
    rest = await queue.claim(10, now=10.0)
    assert [e.key for e in first] == ["k0", "k1"]
    assert [e.key for e in rest] == ["k2", "k3", "k4"]


# -- SQLite: a real file ------------------------------------------------------------------------


async def test_sqlite_keeps_what_was_committed_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "queue.db"
    first = SqliteQueue(path)
    await first.open()
    await asyncio.gather(*(first.put(f"k{n}", BODY, now=1.0) for n in range(50)))
    await first.claim(10, now=1.0)  # claimed, never acked: as if the process died
    await first.close()
    with sqlite3.connect(path) as db:  # another reader sees the committed rows, WAL mode
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone() == (50,)
    second = SqliteQueue(path)
    await second.open()
    assert len(await second.claim(100, now=2.0)) == 50  # the claimed ten are due again
    assert not await second.put("k7", BODY, now=3.0)  # and the keys are remembered
    await second.close()


async def test_sqlite_has_one_consumer_but_tools_may_look(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    owner = SqliteQueue(path)
    await owner.open()
    with pytest.raises(QueueError, match="in use by another receiver"):
        await SqliteQueue(path).open()
    tool = SqliteQueue(path)
    await tool.open(consume=False)
    assert (await tool.stats()).backlog == 0
    await tool.close()
    await owner.close()
    again = SqliteQueue(path)
    await again.open()  # the lock went with the owner
    await again.close()


async def test_sqlite_url_is_relative_with_three_slashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_queue("sqlite:///here.db")
    absolute = open_queue(f"sqlite:///{tmp_path}/there.db")
    assert isinstance(relative, SqliteQueue)
    assert isinstance(absolute, SqliteQueue)
    assert relative.path == Path("here.db")
    assert absolute.path == tmp_path / "there.db"
    await relative.open()
    await relative.close()
    assert (tmp_path / "here.db").exists()


async def test_a_write_that_cannot_commit_is_an_error(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "queue.db")
    await queue.open()
    with sqlite3.connect(tmp_path / "queue.db") as other:
        other.execute("BEGIN EXCLUSIVE")  # another writer holds the file
        other.execute("PRAGMA busy_timeout = 0")
        queue_db = queue._db
        assert queue_db is not None
        await queue._run(queue_db.execute, "PRAGMA busy_timeout = 0")
        with pytest.raises(QueueError, match="cannot write"):
            await queue.put("k", BODY, now=0.0)
        other.rollback()
    assert await queue.put("k", BODY, now=0.0)  # nothing half-written: the key is free
    await queue.close()


# -- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlite://host/x.db", "sqlite:///relative.db"),
        ("sqlite:///", "sqlite:///relative.db"),
        ("memory?dedup_window=-1", "must be positive"),
        ("memory?dedup_window=soon", "must be a number"),
        ("sqlite:///q.db?synchronous=off", "synchronous must be"),
        ("sqlite:///q.db?colour=red", "unknown queue URL option"),
        ("postgres://x", "unknown queue URL"),
        ("redis://h/0?name=a:b", "no braces, colons or spaces"),
    ],
)
def test_bad_queue_urls_say_what_to_write(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        open_queue(url)


def test_queue_url_options_reach_the_backend() -> None:
    redis = open_queue("redis://:secret@127.0.0.1:6379/0?visibility_timeout=5&name=shop")
    assert isinstance(redis, RedisQueue)
    assert (redis.visibility_timeout, redis.name) == (5.0, "shop")
    assert "secret" not in repr(redis)
    memory = open_queue("memory?dedup_window=60")
    assert isinstance(memory, MemoryQueue)
    assert memory.dedup_window == 60.0


def test_a_queue_object_is_taken_as_it_is() -> None:
    queue = MemoryQueue()
    assert open_queue(queue) is queue
    with pytest.raises(TypeError, match="URL string or a queue object"):
        open_queue(42)  # type: ignore[arg-type]


# -- Redis: leases ------------------------------------------------------------------------------


async def test_redis_entry_of_a_silent_consumer_is_taken_over_after_the_visibility_timeout(
    redis_server_url: str,
) -> None:
    url = f"{redis_server_url}?name=lease{next(_names)}&visibility_timeout=1"
    first, second = open_queue(url), open_queue(url)
    await first.open()
    await second.open()
    try:
        await first.put("held", BODY, now=0.0)
        await first.put("renewed", BODY, now=0.0)
        held, renewed = await first.claim(2, now=0.0)
        assert await second.claim(10, now=0.0) == []  # owned by the first consumer
        for _ in range(15):  # the first renews one of them, for longer than the timeout
            await asyncio.sleep(0.1)
            await first.extend([renewed])
        [taken] = await second.claim(10, now=1.0)
        assert taken.id == held.id  # the silent one changed hands; the renewed one did not
        await second.ack(taken)
        await first.ack(renewed)
        assert (await first.stats()).backlog == 0
    finally:
        await first.close()
        await second.close()
