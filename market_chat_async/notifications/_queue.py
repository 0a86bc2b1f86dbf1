"""The queue between the Market's 200 and your handler: what every backend promises.

A notification is :meth:`~NotificationQueue.put` (written, and for a durable backend
committed) *before* the receiver answers 200; if the write fails the receiver answers 500 and
the Market retries. Workers :meth:`~NotificationQueue.claim` what is due, and each claimed
entry ends in exactly one of :meth:`~NotificationQueue.ack` (handled),
:meth:`~NotificationQueue.retry_later` (failed, try again at a time) or
:meth:`~NotificationQueue.bury` (gave up: a dead letter, listed, replayed or dropped by
``market-chat queue``). An entry claimed by a worker that dies is claimed again: at the next
start (``memory`` excepted) or, on Redis, by another replica after the visibility timeout.
So delivery is at least once; a put of a key seen within the dedup window is refused as a
duplicate, so a notification the Market sends twice is handled once.

Backends, by URL (:func:`open_queue`):

* ``memory`` -- :class:`MemoryQueue`, this process only: **a crash or a kill loses what is
  queued.** For tests, and for users who accept that loss;
* ``sqlite:///queue.db`` (relative to the working directory) or ``sqlite:////var/lib/x/q.db``
  (absolute), as SQLAlchemy spells them -- :class:`~market_chat_async.notifications.SqliteQueue`:
  one file, WAL mode, every put committed before the 200; one consuming process per file;
* ``redis://host:port/db`` -- :class:`~market_chat_async.notifications.RedisQueue`: a Redis
  stream with a consumer group, shared by any number of receiver replicas.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import attrs

DEFAULT_DEDUP_WINDOW = 24 * 3600.0


class QueueError(RuntimeError):
    """The queue could not do what was asked (a write not committed, a file in use, ...).

    The receiver answers a notification it could not queue with 500, so the Market retries.

    >>> raise QueueError("cannot write queue.db: disk full")
    Traceback (most recent call last):
    market_chat_async.notifications.QueueError: cannot write queue.db: disk full
    """


@attrs.frozen
class QueueEntry:
    """One queued notification: the body as received, and its delivery history.

    ``id`` names it in its queue (and on ``market-chat queue``); ``key`` is its dedup key
    (``None`` for a type without one); ``body`` the notification as compact JSON;
    ``received_at`` when it was first accepted (seconds since the epoch); ``attempts`` the
    failed tries so far; ``done`` the stages that already succeeded (not run again on a
    retry); ``last_error`` one line about the last failure; ``dead_at`` when it was given up.

    >>> QueueEntry("1", None, b'{"notificationType":"X"}', 0.0).attempts
    0
    """

    id: str
    key: str | None
    body: bytes
    received_at: float
    attempts: int = 0
    done: tuple[str, ...] = ()
    last_error: str = ""
    dead_at: float | None = None


@attrs.frozen
class QueueStats:
    """How much is waiting: ``backlog`` entries not yet handled (in flight or waiting for a
    try), the oldest one's ``oldest_received_at`` (``None`` when empty), ``dead_letters``.

    >>> QueueStats(backlog=0, oldest_received_at=None, dead_letters=2).dead_letters
    2
    """

    backlog: int
    oldest_received_at: float | None
    dead_letters: int


@runtime_checkable
class NotificationQueue(Protocol):
    """What the receiver needs of a queue; :class:`MemoryQueue` is the smallest example.

    Times are seconds since the epoch, passed in by the receiver (so tests can run its clock
    virtually). ``durable`` says whether an accepted entry survives the process.

    >>> isinstance(MemoryQueue(), NotificationQueue)
    True
    """

    durable: bool

    async def open(self, *, consume: bool = True) -> None:
        """Connect; ``consume=False`` for tools that only read and edit dead letters."""

    async def close(self) -> None:
        """Release connections and files; entries not acked stay queued (if durable)."""

    async def put(self, key: str | None, body: bytes, now: float) -> bool:
        """Queue durably; ``False`` for a key seen within the dedup window. Raises
        :class:`QueueError` when the write cannot be committed."""

    async def claim(self, limit: int, now: float) -> list[QueueEntry]:
        """Up to ``limit`` entries due at ``now``, now owned by this process."""

    async def ack(self, entry: QueueEntry) -> None:
        """The entry was handled: remove it."""

    async def retry_later(self, entry: QueueEntry, due: float) -> None:
        """Release the (updated) entry, to be claimed again from ``due``."""

    async def bury(self, entry: QueueEntry, now: float) -> None:
        """Give up: the entry becomes a dead letter, and its key is forgotten."""

    async def extend(self, entries: Sequence[QueueEntry]) -> None:
        """Keep ownership of entries still being worked on (a lease, where there is one)."""

    async def stats(self) -> QueueStats:
        """Backlog, oldest pending entry, dead letters."""

    async def dead_letters(self, limit: int = 1000) -> list[QueueEntry]:
        """The dead letters, oldest first."""

    async def replay(self, ids: Iterable[str] | None, now: float) -> int:
        """Queue dead letters again with a fresh try count (``None``: all); how many."""

    async def drop(self, ids: Iterable[str] | None) -> int:
        """Delete dead letters for good (``None``: all); how many."""


class MemoryQueue:
    """The queue in this process's memory: fast, and **lost on a crash, kill or restart**.

    For tests, and for users who accept that loss (the ``memory`` URL). A dedup key is
    remembered for ``dedup_window`` seconds; ``max_entries`` bounds the memory used (a put
    beyond it raises :class:`QueueError`, so the Market is told 500 and retries).

    >>> import asyncio
    >>> async def demo() -> list[str]:
    ...     queue = MemoryQueue()
    ...     await queue.open()
    ...     assert await queue.put("k", b"{}", now=0.0)
    ...     assert not await queue.put("k", b"{}", now=1.0)  # a duplicate
    ...     return [entry.id for entry in await queue.claim(10, now=1.0)]
    >>> asyncio.run(demo())
    ['1']
    """

    durable = False

    def __init__(
        self, *, dedup_window: float = DEFAULT_DEDUP_WINDOW, max_entries: int = 100_000
    ) -> None:
        self.dedup_window = dedup_window
        self.max_entries = max_entries
        self._ids = itertools.count(1)
        self._entries: dict[str, QueueEntry] = {}  # pending, including claimed ones
        self._due: list[tuple[float, int, str]] = []  # heap of (due, seq, id), lazily pruned
        self._claimed: set[str] = set()
        self._dead: dict[str, QueueEntry] = {}
        self._seen: dict[str, float] = {}  # key -> expiry
        self._seq = itertools.count()

    def __repr__(self) -> str:
        return f"<MemoryQueue {len(self._entries)} pending, {len(self._dead)} dead>"

    async def open(self, *, consume: bool = True) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; what is queued stays in this object."""

    async def put(self, key: str | None, body: bytes, now: float) -> bool:
        """Queue in memory; ``False`` for a duplicate."""
        if key is not None:
            expiry = self._seen.get(key)
            if expiry is not None and expiry > now:
                return False
        if len(self._entries) >= self.max_entries:
            raise QueueError(f"the memory queue holds {self.max_entries} entries already")
        if key is not None:
            self._seen[key] = now + self.dedup_window
            if len(self._seen) > 2 * self.max_entries:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
        entry = QueueEntry(str(next(self._ids)), key, body, now)
        self._entries[entry.id] = entry
        heapq.heappush(self._due, (now, next(self._seq), entry.id))
        return True

    async def claim(self, limit: int, now: float) -> list[QueueEntry]:
        """The due entries, oldest due first."""
        found: list[QueueEntry] = []
        while self._due and len(found) < limit and self._due[0][0] <= now:
            _, _, entry_id = heapq.heappop(self._due)
            entry = self._entries.get(entry_id)
            if entry is None or entry_id in self._claimed:
                continue
            self._claimed.add(entry_id)
            found.append(entry)
        return found

    async def ack(self, entry: QueueEntry) -> None:
        """Forget the entry."""
        self._entries.pop(entry.id, None)
        self._claimed.discard(entry.id)

    async def retry_later(self, entry: QueueEntry, due: float) -> None:
        """Keep the updated entry, due again at ``due``."""
        self._claimed.discard(entry.id)
        if entry.id in self._entries:
            self._entries[entry.id] = entry
            heapq.heappush(self._due, (due, next(self._seq), entry.id))

    async def bury(self, entry: QueueEntry, now: float) -> None:
        """Move to the dead letters."""
        self._claimed.discard(entry.id)
        if self._entries.pop(entry.id, None) is not None:
            self._dead[entry.id] = attrs.evolve(entry, dead_at=now)
        if entry.key is not None:
            self._seen.pop(entry.key, None)

    async def extend(self, entries: Sequence[QueueEntry]) -> None:
        """No leases in one process."""

    async def stats(self) -> QueueStats:
        """Counted from memory."""
        oldest = min((e.received_at for e in self._entries.values()), default=None)
        return QueueStats(len(self._entries), oldest, len(self._dead))

    async def dead_letters(self, limit: int = 1000) -> list[QueueEntry]:
        """Oldest first."""
        return list(self._dead.values())[:limit]

    async def replay(self, ids: Iterable[str] | None, now: float) -> int:
        """Back into the queue, due now, with no failed tries counted."""
        chosen = list(self._dead) if ids is None else [i for i in ids if i in self._dead]
        for entry_id in chosen:
            entry = self._dead.pop(entry_id)
            self._entries[entry_id] = attrs.evolve(entry, attempts=0, dead_at=None)
            heapq.heappush(self._due, (now, next(self._seq), entry_id))
        return len(chosen)

    async def drop(self, ids: Iterable[str] | None) -> int:
        """Delete for good."""
        chosen = list(self._dead) if ids is None else [i for i in ids if i in self._dead]
        for entry_id in chosen:
            del self._dead[entry_id]
        return len(chosen)
