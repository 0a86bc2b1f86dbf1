"""The embedded durable queue: one SQLite file, WAL mode, every put committed before the 200.

Only the standard library's ``sqlite3``. All calls run on one thread of their own, so the
event loop never waits for the disk; puts that arrive while a commit is running are written
together in the next transaction (group commit), so many concurrent notifications cost one
``fsync``, not one each. With ``synchronous=full`` (the default) a committed put survives a
``kill -9`` and a power cut; ``normal`` survives a ``kill -9`` only, and is faster.

One process consumes a file: :meth:`SqliteQueue.open` takes an exclusive ``flock`` on
``<file>.lock`` (released by the kernel when the process dies, however it dies), so entries
that process had claimed are simply due again at the next start. ``market-chat queue`` opens
the file without consuming and may run while the receiver does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

from ._queue import DEFAULT_DEDUP_WINDOW, QueueEntry, QueueError, QueueStats

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT,
    body BLOB NOT NULL,
    received_at REAL NOT NULL,
    due REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    done TEXT NOT NULL DEFAULT '[]',
    last_error TEXT NOT NULL DEFAULT '',
    dead_at REAL
);
CREATE INDEX IF NOT EXISTS entries_due ON entries (dead_at, due);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires REAL NOT NULL);
"""
_COLUMNS = "id, key, body, received_at, attempts, done, last_error, dead_at"


def _entry(row: tuple[Any, ...]) -> QueueEntry:
    entry_id, key, body, received_at, attempts, done, last_error, dead_at = row
    return QueueEntry(
        str(entry_id), key, bytes(body), received_at, attempts, tuple(json.loads(done)),
        last_error, dead_at,
    )  # fmt: skip


class SqliteQueue:
    """A durable queue in one SQLite file (``sqlite:///queue.db``); see the module docstring.

    ``path`` is the database file (created with its directory); ``dedup_window`` seconds a
    key is remembered; ``synchronous`` is ``"full"`` or ``"normal"`` (SQLite's setting).

    >>> import asyncio, tempfile, os
    >>> async def demo(path: str) -> int:
    ...     queue = SqliteQueue(path)
    ...     await queue.open()
    ...     await queue.put("CHAT_CREATED:1:2", b'{"notificationType":"CHAT_CREATED"}', now=0.0)
    ...     await queue.close()
    ...     again = SqliteQueue(path)  # a new process would see the same
    ...     await again.open()
    ...     backlog = (await again.stats()).backlog
    ...     await again.close()
    ...     return backlog
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     asyncio.run(demo(os.path.join(tmp, "queue.db")))
    1
    """

    durable = True

    def __init__(
        self,
        path: str | Path,
        *,
        dedup_window: float = DEFAULT_DEDUP_WINDOW,
        synchronous: str = "full",
    ) -> None:
        if synchronous.lower() not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self.path = Path(path)
        self.dedup_window = dedup_window
        self.synchronous = synchronous.upper()
        self._db: sqlite3.Connection | None = None
        self._lock_file: IO[bytes] | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._batch: list[tuple[str | None, bytes, float, asyncio.Future[bool]]] = []
        self._flushing = False
        self._claimed: set[str] = set()
        self._puts = 0

    def __repr__(self) -> str:
        return f"<SqliteQueue {str(self.path)!r}>"

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            raise QueueError(f"{self.path}: the queue is not open")
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db

    async def open(self, *, consume: bool = True) -> None:
        """Create or open the file; ``consume`` takes the one-consumer lock."""
        if not consume and not self.path.exists():  # a tool looking: create nothing
            raise QueueError(f"{self.path} does not exist: no queue there yet")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if consume:
                import fcntl  # POSIX; imported here so the module loads everywhere

                lock = open(f"{self.path}.lock", "ab")  # noqa: SIM115, ASYNC230 - tiny, held till close
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    lock.close()
                    raise QueueError(
                        f"{self.path} is in use by another receiver (one process per SQLite "
                        "queue; use a Redis queue for several replicas)"
                    ) from None
                self._lock_file = lock
        except OSError as exc:
            raise QueueError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-queue")
        try:
            await self._run(self._connect)
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise QueueError(f"cannot open {self.path}: {exc}") from None

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {self.synchronous}")
        db.executescript(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        """Close the file and release the lock; committed entries stay."""
        if self._thread is not None:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    await self._run(self._conn().close)
                self._db = None
            self._thread.shutdown(wait=True)
            self._thread = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None
        self._claimed.clear()

    # -- put: group commit ------------------------------------------------------------------

    async def put(self, key: str | None, body: bytes, now: float) -> bool:
        """Commit the entry (with others arriving meanwhile); ``False`` for a duplicate."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._batch.append((key, body, now, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                try:
                    results = await self._run(self._write, [item[:3] for item in batch])
                except (sqlite3.Error, OSError, QueueError, RuntimeError) as exc:
                    error = QueueError(f"cannot write {self.path}: {exc}")
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(error)
                else:
                    for (*_, future), result in zip(batch, results, strict=True):
                        if not future.done():
                            future.set_result(result)
        finally:
            self._flushing = False

    def _write(self, items: list[tuple[str | None, bytes, float]]) -> list[bool]:
        db = self._conn()
        results = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for key, body, now in items:
                if key is not None:
                    row = db.execute("SELECT expires FROM seen WHERE key = ?", (key,)).fetchone()
                    if row is not None and row[0] > now:
                        results.append(False)
                        continue
                    db.execute(
                        "INSERT OR REPLACE INTO seen (key, expires) VALUES (?, ?)",
                        (key, now + self.dedup_window),
                    )
                db.execute(
                    "INSERT INTO entries (key, body, received_at, due) VALUES (?, ?, ?, ?)",
                    (key, body, now, now),
                )
                results.append(True)
            self._puts += len(items)
            if self._puts >= 10_000:  # now and then, forget keys past their window
                self._puts = 0
                db.execute("DELETE FROM seen WHERE expires <= ?", (items[-1][2],))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        return results

    # -- the consumer side ------------------------------------------------------------------

    async def claim(self, limit: int, now: float) -> list[QueueEntry]:
        """Due entries not already claimed by this process, oldest due first."""
        rows = await self._run(self._select_due, limit + len(self._claimed), now)
        found = []
        for row in rows:
            entry = _entry(row)
            if entry.id not in self._claimed:
                self._claimed.add(entry.id)
                found.append(entry)
                if len(found) == limit:
                    break
        return found

    def _select_due(self, limit: int, now: float) -> list[tuple[Any, ...]]:
        return (
            self._conn()
            .execute(
                f"SELECT {_COLUMNS} FROM entries WHERE dead_at IS NULL AND due <= ? "
                "ORDER BY due, id LIMIT ?",
                (now, limit),
            )
            .fetchall()
        )

    async def _execute(self, sql: str, *params: object) -> int:
        def run() -> int:
            return self._conn().execute(sql, params).rowcount

        try:
            return await self._run(run)
        except sqlite3.Error as exc:
            raise QueueError(f"cannot write {self.path}: {exc}") from None

    async def ack(self, entry: QueueEntry) -> None:
        """Delete the entry (committed)."""
        await self._execute("DELETE FROM entries WHERE id = ?", int(entry.id))
        self._claimed.discard(entry.id)

    async def retry_later(self, entry: QueueEntry, due: float) -> None:
        """Store the new try count, finished stages and error; due again at ``due``."""
        await self._execute(
            "UPDATE entries SET due = ?, attempts = ?, done = ?, last_error = ? WHERE id = ?",
            due, entry.attempts, json.dumps(entry.done), entry.last_error, int(entry.id),
        )  # fmt: skip
        self._claimed.discard(entry.id)

    async def bury(self, entry: QueueEntry, now: float) -> None:
        """Mark as a dead letter and forget its key, in one transaction."""

        def run() -> None:
            db = self._conn()
            with db:  # a transaction even in autocommit mode
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "UPDATE entries SET dead_at = ?, attempts = ?, done = ?, last_error = ? "
                    "WHERE id = ?",
                    (now, entry.attempts, json.dumps(entry.done), entry.last_error, int(entry.id)),
                )
                if entry.key is not None:
                    db.execute("DELETE FROM seen WHERE key = ?", (entry.key,))

        try:
            await self._run(run)
        except sqlite3.Error as exc:
            raise QueueError(f"cannot write {self.path}: {exc}") from None
        self._claimed.discard(entry.id)

    async def extend(self, entries: Sequence[QueueEntry]) -> None:
        """Nothing to do: the file lock, not a lease, says who owns the entries."""

    async def stats(self) -> QueueStats:
        """Counted in the file."""

        def run() -> QueueStats:
            db = self._conn()
            backlog, oldest = db.execute(
                "SELECT COUNT(*), MIN(received_at) FROM entries WHERE dead_at IS NULL"
            ).fetchone()
            (dead,) = db.execute(
                "SELECT COUNT(*) FROM entries WHERE dead_at IS NOT NULL"
            ).fetchone()
            return QueueStats(backlog, oldest, dead)

        return await self._run(run)

    async def dead_letters(self, limit: int = 1000) -> list[QueueEntry]:
        """Oldest first."""

        def run() -> list[tuple[Any, ...]]:
            return (
                self._conn()
                .execute(
                    f"SELECT {_COLUMNS} FROM entries WHERE dead_at IS NOT NULL ORDER BY id LIMIT ?",
                    (limit,),
                )
                .fetchall()
            )

        return [_entry(row) for row in await self._run(run)]

    def _chosen(self, ids: Iterable[str] | None) -> tuple[str, tuple[int, ...]]:
        if ids is None:
            return "dead_at IS NOT NULL", ()
        numbers = tuple(int(i) for i in ids if i.isdigit())
        marks = ",".join("?" * len(numbers)) or "NULL"
        return f"dead_at IS NOT NULL AND id IN ({marks})", numbers

    async def replay(self, ids: Iterable[str] | None, now: float) -> int:
        """Due now again, with no failed tries counted."""
        where, params = self._chosen(ids)
        return await self._execute(
            f"UPDATE entries SET dead_at = NULL, attempts = 0, due = ? WHERE {where}", now, *params
        )

    async def drop(self, ids: Iterable[str] | None) -> int:
        """Delete for good."""
        where, params = self._chosen(ids)
        return await self._execute(f"DELETE FROM entries WHERE {where}", *params)
