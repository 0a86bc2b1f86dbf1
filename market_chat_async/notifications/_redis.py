"""The shared queue: a Redis stream with a consumer group, for several receiver replicas.

Keys, all under ``market-chat-async:notifications:{<name>}:`` (one hash slot, so the scripts
also run on a cluster):

``stream``   the entries not yet handled, read by the consumer group ``receivers``
``delayed``  entries waiting for their next try (sorted set, score: when they are due)
``ages``     every pending entry's id (sorted set, score: when it arrived), for the backlog
``dead``     dead letters (hash: entry id -> entry)
``seen:<key>``  a notification's dedup key, for ``dedup_window`` seconds (``SET NX PX``)

A put is one script: ``SET NX`` of the dedup key and ``XADD`` together, so a notification is
never marked seen without being queued. Each replica reads new entries with ``XREADGROUP``
and takes over entries another consumer has held longer than ``visibility_timeout`` without
renewing (``XAUTOCLAIM``): a replica that dies mid-work loses nothing. A replica renews its
entries while it works on them (``XCLAIM ... JUSTID``, every third of the timeout). A
failed entry leaves the stream for ``delayed`` and comes back when due. Durability is the
server's: a put is acknowledged once Redis has it, and survives a Redis restart as far as
its persistence settings (``appendonly yes``, ``appendfsync``) and replicas say.

``redis`` is imported when a queue opens, never by ``import market_chat_async``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ._queue import DEFAULT_DEDUP_WINDOW, QueueEntry, QueueError, QueueStats

if TYPE_CHECKING:
    import redis.asyncio as aioredis

_PREFIX = "market-chat-async:notifications"
_GROUP = "receivers"

# KEYS: seen, stream, ages; ARGV: dedup (1/0), window ms, entry json, id, received_at
_PUT = """
if ARGV[1] == '1' then
  if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then return 0 end
end
redis.call('XADD', KEYS[2], '*', 'e', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
return 1
"""
# KEYS: delayed, stream; ARGV: now, max entries
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('XADD', KEYS[2], '*', 'e', member)
end
return #due
"""
# KEYS: stream, delayed; ARGV: group, stream id, due, entry json
_RETRY = """
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""
# KEYS: stream, ages, dead, seen; ARGV: group, stream id, entry id, entry json
_BURY = """
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
if KEYS[4] ~= '' then redis.call('DEL', KEYS[4]) end
return 1
"""
# KEYS: stream, ages; ARGV: group, stream id, entry id
_ACK = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
"""
# KEYS: dead, stream, ages; ARGV: entry id, received_at (from the entry, set by the caller)
_REPLAY = """
local member = redis.call('HGET', KEYS[1], ARGV[1])
if not member then return 0 end
local entry = cjson.decode(member)
entry['attempts'] = 0
entry['dead_at'] = nil
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'e', cjson.encode(entry))
redis.call('ZADD', KEYS[3], entry['received_at'], ARGV[1])
return 1
"""


def _dump(entry: QueueEntry) -> str:
    return json.dumps(
        {
            "id": entry.id,
            "key": entry.key,
            "body": entry.body.decode(),
            "received_at": entry.received_at,
            "attempts": entry.attempts,
            "done": list(entry.done),
            "last_error": entry.last_error,
            "dead_at": entry.dead_at,
        },
        ensure_ascii=False,
    )


def _load(text: str | bytes) -> QueueEntry:
    data = json.loads(text)
    return QueueEntry(
        data["id"], data["key"], data["body"].encode(), float(data["received_at"]),
        int(data.get("attempts", 0)), tuple(data.get("done") or ()), data.get("last_error", ""),
        data.get("dead_at"),
    )  # fmt: skip


class RedisQueue:
    """A queue shared by receiver replicas through Redis (``redis://host:port/0``).

    ``url`` is the server; ``name`` separates queues on one server; ``dedup_window``
    seconds a key is remembered across replicas; ``visibility_timeout`` seconds an entry
    held by a silent consumer waits before another takes it over. Needs the ``redis``
    extra (``pip install market-chat-async[redis]``).

    >>> queue = RedisQueue("redis://127.0.0.1:6379/0", name="shop-1")
    >>> queue.key("stream")
    'market-chat-async:notifications:{shop-1}:stream'
    """

    durable = True

    def __init__(
        self,
        url: str,
        *,
        name: str = "default",
        dedup_window: float = DEFAULT_DEDUP_WINDOW,
        visibility_timeout: float = 300.0,
    ) -> None:
        if not name or any(c in name for c in "{}: "):
            raise ValueError(f"a Redis queue name has no braces, colons or spaces: {name!r}")
        self.url = url
        self.name = name
        self.dedup_window = dedup_window
        self.visibility_timeout = visibility_timeout
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._redis: aioredis.Redis | None = None
        self._stream_ids: dict[str, str] = {}  # entry id -> stream id, for what we hold
        self._scripts: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<RedisQueue {self.name!r}>"  # never the URL: it may carry a password

    def key(self, part: str) -> str:
        """The full name of one of this queue's keys."""
        return f"{_PREFIX}:{{{self.name}}}:{part}"

    def _conn(self) -> aioredis.Redis:
        if self._redis is None:
            raise QueueError("the Redis queue is not open")
        return self._redis

    async def _call(self, script: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await self._scripts[script](keys=list(keys), args=list(args))
        except RedisError as exc:
            raise QueueError(f"Redis queue {self.name!r}: {type(exc).__name__}: {exc}") from None

    async def open(self, *, consume: bool = True) -> None:
        """Connect, load the scripts, create the consumer group if it is missing."""
        try:
            import redis.asyncio as aioredis
            from redis.exceptions import RedisError, ResponseError
        except ImportError:  # pragma: no cover - depends on the installation
            raise QueueError(
                "a redis:// queue needs the redis package: pip install market-chat-async[redis]"
            ) from None
        self._redis = aioredis.Redis.from_url(self.url)
        for name, text in (
            ("put", _PUT), ("promote", _PROMOTE), ("retry", _RETRY), ("bury", _BURY),
            ("ack", _ACK), ("replay", _REPLAY),
        ):  # fmt: skip
            self._scripts[name] = self._redis.register_script(text)
        try:
            await self._redis.xgroup_create(self.key("stream"), _GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise QueueError(f"Redis queue {self.name!r}: {exc}") from None
        except RedisError as exc:
            await self.close()
            raise QueueError(f"Redis queue {self.name!r}: {type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        """Disconnect; entries this replica held are taken over after the visibility timeout."""
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        self._stream_ids.clear()

    async def put(self, key: str | None, body: bytes, now: float) -> bool:
        """``SET NX`` the dedup key and ``XADD`` the entry, atomically."""
        entry = QueueEntry(secrets.token_hex(8), key, body, now)
        seen = self.key(f"seen:{key}") if key is not None else self.key("seen")
        added = await self._call(
            "put",
            [seen, self.key("stream"), self.key("ages")],
            [
                "1" if key is not None else "0",
                int(self.dedup_window * 1000),
                _dump(entry),
                entry.id,
                now,
            ],
        )
        return bool(added)

    async def claim(self, limit: int, now: float) -> list[QueueEntry]:
        """Due retries into the stream, then entries abandoned by dead consumers, then new."""
        from redis.exceptions import RedisError

        redis = self._conn()
        stream = self.key("stream")
        await self._call("promote", [self.key("delayed"), stream], [now, 100])
        found: list[tuple[str, QueueEntry]] = []
        try:
            reply: Any = await redis.xautoclaim(
                stream, _GROUP, self.consumer, int(self.visibility_timeout * 1000),
                start_id="0-0", count=limit,
            )  # fmt: skip
            found += self._entries(reply[1])
            if len(found) < limit:
                read: Any = await redis.xreadgroup(
                    _GROUP, self.consumer, {stream: ">"}, count=limit - len(found)
                )
                for _, messages in read or ():
                    found += self._entries(messages)
        except RedisError as exc:
            raise QueueError(f"Redis queue {self.name!r}: {type(exc).__name__}: {exc}") from None
        for stream_id, entry in found:
            self._stream_ids[entry.id] = stream_id
        return [entry for _, entry in found]

    def _entries(self, messages: Iterable[Any]) -> list[tuple[str, QueueEntry]]:
        found = []
        for stream_id, fields in messages:
            if not fields:  # deleted meanwhile
                continue
            sid = stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)
            found.append((sid, _load(fields[b"e"])))
        return found

    async def ack(self, entry: QueueEntry) -> None:
        """``XACK``, ``XDEL`` and out of the backlog."""
        sid = self._stream_ids.pop(entry.id, None)
        if sid is not None:
            await self._call("ack", [self.key("stream"), self.key("ages")], [_GROUP, sid, entry.id])

    async def retry_later(self, entry: QueueEntry, due: float) -> None:
        """Out of the stream into ``delayed`` until ``due``."""
        sid = self._stream_ids.pop(entry.id, None)
        if sid is not None:
            await self._call(
                "retry", [self.key("stream"), self.key("delayed")], [_GROUP, sid, due, _dump(entry)]
            )

    async def bury(self, entry: QueueEntry, now: float) -> None:
        """Into ``dead``, out of the stream and the backlog; the dedup key is forgotten."""
        sid = self._stream_ids.pop(entry.id, None)
        if sid is None:
            return
        seen = self.key(f"seen:{entry.key}") if entry.key is not None else ""
        dead = QueueEntry(
            entry.id, entry.key, entry.body, entry.received_at, entry.attempts, entry.done,
            entry.last_error, now,
        )  # fmt: skip
        await self._call(
            "bury",
            [self.key("stream"), self.key("ages"), self.key("dead"), seen],
            [_GROUP, sid, entry.id, _dump(dead)],
        )

    async def extend(self, entries: Sequence[QueueEntry]) -> None:
        """Renew the lease on entries still being worked on (their idle time restarts)."""
        from redis.exceptions import RedisError

        ids: list[Any] = [self._stream_ids[e.id] for e in entries if e.id in self._stream_ids]
        if ids:
            try:
                await self._conn().xclaim(
                    self.key("stream"), _GROUP, self.consumer, 0, ids, justid=True
                )
            except RedisError as exc:
                raise QueueError(f"Redis queue {self.name!r}: {exc}") from None

    async def stats(self) -> QueueStats:
        """From ``ages`` and ``dead``."""
        redis = self._conn()
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.key("ages"))
            pipe.zrange(self.key("ages"), 0, 0, withscores=True)
            pipe.hlen(self.key("dead"))
            backlog, oldest, dead = await pipe.execute()
        return QueueStats(int(backlog), float(oldest[0][1]) if oldest else None, int(dead))

    async def dead_letters(self, limit: int = 1000) -> list[QueueEntry]:
        """Oldest first (by when they were given up)."""
        values = await self._conn().hvals(self.key("dead"))
        entries = sorted((_load(v) for v in values), key=lambda e: e.dead_at or 0.0)
        return entries[:limit]

    async def _ids(self, ids: Iterable[str] | None) -> list[str]:
        if ids is not None:
            return list(ids)
        keys: list[Any] = await self._conn().hkeys(self.key("dead"))
        return [k.decode() if isinstance(k, bytes) else str(k) for k in keys]

    async def replay(self, ids: Iterable[str] | None, now: float) -> int:
        """Back into the stream with no failed tries counted."""
        count = 0
        for entry_id in await self._ids(ids):
            count += await self._call(
                "replay",
                [self.key("dead"), self.key("stream"), self.key("ages")],
                [entry_id, now],
            )
        return count

    async def drop(self, ids: Iterable[str] | None) -> int:
        """Delete for good."""
        chosen = await self._ids(ids)
        if not chosen:
            return 0
        return int(await self._conn().hdel(self.key("dead"), *chosen))
