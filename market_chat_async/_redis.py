"""One cabinet's limits shared by every process and host, through Redis.

The same algorithm as the in-process limiter (see ``_limits``), with the state in Redis and every
decision made atomically by a Lua script on the Redis server's clock (``TIME``), so clock skew
between hosts does not matter:

* a request takes a quota token before it is sent and gives it back ``period`` + margin after
  its answer; hence never more than ``limit`` in any window of ``period``, fixed or sliding;
* in-flight slots are *leases* with an expiry: a worker killed mid-request frees its slot when the
  lease expires, and its token still counts for a period from then;
* the server's ``Remaining`` answers go into one shared bound, so one process's discovery (say,
  another tool spent the quota) holds back all of them; with no bound known, one request at a
  time probes.

Within a process, waiters queue on a FIFO lock, so only the head of the queue asks Redis; 100,000
waiting coroutines are one poller. The parallel-cap backoff after a refusal stays per process.

Keys, all under ``market-chat-async:{namespace}:{business_id}:`` (``namespace`` is the API
origin), each with an expiry of at least ``period + margin + lease TTL``, refreshed on write:

========== ====== =========================================================================
key        type   holds
========== ====== =========================================================================
``tokens`` zset   lease id -> when its quota token returns (ms; ``+inf`` while in flight)
``leases`` zset   lease id -> when the in-flight lease expires (ms)
``overlap`` hash  lease id -> our requests in flight at some moment during it
``starts`` string requests started, ever (for the bound's arithmetic)
``bound``  hash   ``budget``, ``starts``, ``until``, ``reported``: the best server figure
``local``  string ``1`` while the server says nothing our tokens do not (no headers, or a
                  ``Remaining`` no lower than what our tokens leave)
========== ====== =========================================================================

If Redis cannot be reached the client fails closed with :class:`LimiterUnavailableError`
(going over the quota can lock the cabinet out); ``fallback=True`` falls back to the in-process
limiter with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from yarl import URL

from ._errors import LimiterUnavailableError
from ._limits import (
    CabinetLimiter,
    Lease,
    Limiter,
    Quota,
    QuotaState,
    limiter_for,
)

__all__ = ["RedisLimiters"]

logger = logging.getLogger("market_chat_async")

_PREFIX = "market-chat-async"
_LEASE_TTL = 60.0  # seconds an in-flight slot survives a silent worker
_POLL_MAX = 0.5  # seconds between polls while waiting for a token or a bound to lapse
_POLL_PARALLEL = 0.01  # seconds between polls while the parallel cap is full

# KEYS: tokens leases overlap starts bound local
# ARGV: lease, limit, max_parallel (this process's current cap), period_ms, margin_ms,
#       lease_ttl_ms, key_ttl_ms, parallel_poll_ms
_ACQUIRE = """
local tokens, leases, overlap, starts_key, bound, local_key = unpack(KEYS)
local lease = ARGV[1]
local limit, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local period, margin, ttl, key_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
    tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Leases of dead workers: the slot frees, the token counts a period from the expiry.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now)) do
  local expiry = tonumber(redis.call('ZSCORE', leases, id))
  redis.call('ZADD', tokens, expiry + period + margin, id)
  redis.call('ZREM', leases, id)
  redis.call('HDEL', overlap, id)
end
redis.call('ZREMRANGEBYSCORE', tokens, '-inf', now)
local in_flight = redis.call('ZCARD', leases)
local used = redis.call('ZCARD', tokens)
local starts = tonumber(redis.call('GET', starts_key) or '0')
local b = redis.call('HMGET', bound, 'budget', 'starts', 'until')
if b[3] and tonumber(b[3]) <= now then
  redis.call('DEL', bound)
  b = {false, false, false}
end
local wait = -1
local function later(at)
  if wait < 0 or at - now < wait then wait = math.max(at - now, 0) end
end
local ok = in_flight < cap and used < limit
if in_flight >= cap then later(now + tonumber(ARGV[8])) end
if used >= limit then
  local first = redis.call('ZRANGE', tokens, 0, 0, 'WITHSCORES')
  if first[2] and first[2] ~= 'inf' then later(tonumber(first[2])) end
end
if b[1] then
  if tonumber(b[1]) - (starts - tonumber(b[2])) <= 0 then
    ok = false
    later(tonumber(b[3]))
  end
elseif redis.call('GET', local_key) ~= '1' and in_flight > 0 then
  ok = false  -- nothing known of the server's count: one request probes first
  later(now + tonumber(ARGV[8]))
end
if not ok then
  return {0, wait}
end
for _, id in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
  redis.call('HINCRBY', overlap, id, 1)
end
redis.call('HSET', overlap, lease, in_flight)
redis.call('ZADD', leases, now + ttl, lease)
redis.call('ZADD', tokens, '+inf', lease)
redis.call('INCR', starts_key)
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, key_ttl) end
return {1, now}
"""

# KEYS: tokens leases overlap starts ; ARGV: lease, period_ms, margin_ms, linger_ms, sent, key_ttl
_RELEASE = """
local tokens, leases, overlap, starts_key = unpack(KEYS)
local lease = ARGV[1]
local period, margin, linger = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('ZSCORE', leases, lease) then return 0 end
redis.call('HDEL', overlap, lease)
if ARGV[5] == '0' then
  redis.call('ZREM', leases, lease)
  redis.call('ZREM', tokens, lease)
  redis.call('DECR', starts_key)
  return 1
end
redis.call('ZADD', tokens, now + period + margin, lease)
if linger > 0 then
  -- Abandoned in flight: the server may still serve it, so the slot stays taken a while.
  redis.call('ZADD', leases, now + linger, lease)
else
  redis.call('ZREM', leases, lease)
end
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, tonumber(ARGV[6])) end
return 1
"""

# KEYS: overlap starts bound local tokens ; ARGV: lease, remaining (-1: none),
#       resets_in_ms (-1: none), margin_ms, unknown_reset_ms, key_ttl, limit
_OBSERVE = """
local overlap, starts_key, bound, local_key, tokens = unpack(KEYS)
local remaining, resets = tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key_ttl = tonumber(ARGV[6])
if remaining < 0 then
  if resets < 0 then redis.call('SET', local_key, '1', 'PX', key_ttl) end
  return 0
end
redis.call('ZREMRANGEBYSCORE', tokens, '-inf', now)
if remaining >= tonumber(ARGV[7]) - redis.call('ZCARD', tokens) then
  -- Our tokens account for all the server counts: a bound would count them twice.
  redis.call('SET', local_key, '1', 'PX', key_ttl)
  redis.call('DEL', bound)
  return 1
end
redis.call('DEL', local_key)
if resets < 0 then resets = tonumber(ARGV[5]) end
local starts = tonumber(redis.call('GET', starts_key) or '0')
local budget = remaining - tonumber(redis.call('HGET', overlap, ARGV[1]) or '0')
local untl = now + resets + tonumber(ARGV[4])
local b = redis.call('HMGET', bound, 'budget', 'starts', 'until')
if b[3] and tonumber(b[3]) > now and
   tonumber(b[1]) - (starts - tonumber(b[2])) > budget then
  redis.call('HSET', bound, 'reported', remaining)
else
  redis.call('HSET', bound, 'budget', budget, 'starts', starts, 'until', untl,
             'reported', remaining)
end
redis.call('PEXPIRE', bound, key_ttl)
return 1
"""

# KEYS: tokens leases bound starts ; returns in_flight, used, budget or '', until or '',
#       reported or '', first token return or ''
_STATE = """
local tokens, leases, bound, starts_key = unpack(KEYS)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local in_flight = redis.call('ZCOUNT', leases, '(' .. now, '+inf')
local used = redis.call('ZCOUNT', tokens, '(' .. now, '+inf')
local b = redis.call('HMGET', bound, 'budget', 'starts', 'until', 'reported')
local budget, untl, reported = '', '', b[4] or ''
if b[3] and tonumber(b[3]) > now then
  local starts = tonumber(redis.call('GET', starts_key) or '0')
  budget = tonumber(b[1]) - (starts - tonumber(b[2]))
  untl = tonumber(b[3]) - now
end
local first = redis.call('ZRANGEBYSCORE', tokens, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local frees = ''
if first[2] and first[2] ~= 'inf' then frees = tonumber(first[2]) - now end
return {in_flight, used, budget, untl, reported, frees}
"""


def _safe_url(url: str) -> str:
    """The Redis URL without its password, for messages."""
    parsed = URL(url)
    return str(parsed.with_password(None)) if parsed.password else url


class RedisLimiters:
    """Per-cabinet limiters in Redis for one client; see the module docstring.

    >>> limiters = RedisLimiters("redis://localhost:6379/0", quota=Quota(), max_parallel=4,
    ...                          fallback=False, namespace_key="https://api.partner.market.yandex.ru")
    """

    def __init__(
        self,
        redis_url: str,
        *,
        quota: Quota,
        max_parallel: int,
        fallback: bool,
        namespace_key: str,
        lease_ttl: float = _LEASE_TTL,
    ) -> None:
        self.url = _safe_url(redis_url)
        self.quota = quota
        self.max_parallel = max_parallel
        self.fallback = fallback
        self.namespace = namespace_key
        self.lease_ttl = lease_ttl
        self._redis: aioredis.Redis = aioredis.Redis.from_url(redis_url)
        self._scripts = {
            name: self._redis.register_script(source)
            for name, source in (
                ("acquire", _ACQUIRE),
                ("release", _RELEASE),
                ("observe", _OBSERVE),
                ("state", _STATE),
            )
        }
        self._limiters: dict[int, Limiter] = {}
        self._fell_back = False

    def __repr__(self) -> str:
        return f"RedisLimiters({self.url!r}, quota={self.quota}, fallback={self.fallback})"

    def limiter(self, business_id: int) -> Limiter:
        """The shared limiter for one cabinet (cached)."""
        limiter = self._limiters.get(business_id)
        if limiter is None:
            limiter = self._limiters[business_id] = _RedisLimiter(self, business_id)
        return limiter

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._scripts[name](keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailableError(
                None, message=f"the shared limiter at {self.url} is unavailable: {exc}"
            ) from exc

    def local(self, business_id: int) -> CabinetLimiter:
        if not self._fell_back:
            self._fell_back = True
            logger.warning(
                "Redis at %s is unavailable; falling back to the in-process limiter, which "
                "cannot see other processes' use of the cabinet",
                self.url,
            )
        return limiter_for((self.namespace, business_id), self.quota, self.max_parallel)


class _RedisLease:
    __slots__ = ("id", "local", "owner", "released")

    def __init__(self, owner: _RedisLimiter, lease_id: str, local: Lease | None = None) -> None:
        self.owner = owner
        self.id = lease_id
        self.local = local  # the in-process lease when Redis was down and fallback is on
        self.released = False

    async def release(self) -> None:
        if not self.released:
            self.released = True
            await self.owner.release(self)


class _RedisLimiter:
    """One cabinet's limiter; the state lives in Redis, the FIFO of waiters in this process."""

    def __init__(self, shared: RedisLimiters, business_id: int) -> None:
        self.shared = shared
        self.business_id = business_id
        base = f"{_PREFIX}:{shared.namespace}:{business_id}:"
        self.keys = {
            n: base + n for n in ("tokens", "leases", "overlap", "starts", "bound", "local")
        }
        quota = shared.quota
        self._period_ms = int(quota.period * 1000)
        self._margin_ms = int(quota.effective_margin * 1000)
        self._key_ttl_ms = int((quota.period + quota.effective_margin + shared.lease_ttl) * 1000)
        self._queue = asyncio.Lock()  # FIFO: only its holder polls Redis
        # The parallel-cap backoff and the latency samples stay per process.
        self._local = CabinetLimiter(quota, shared.max_parallel)
        self._granted: dict[str, float] = {}  # lease id -> loop time it was granted
        self._answered: set[str] = set()
        self._changed = asyncio.Event()  # set when this process releases or learns something

    def _k(self, *names: str) -> list[str]:
        return [self.keys[n] for n in names]

    async def acquire(self) -> _RedisLease:
        async with self._queue:
            lease_id = uuid.uuid4().hex
            try:
                return await self._acquire(lease_id)
            except asyncio.CancelledError:
                if lease_id in self._granted:  # granted in Redis, then cancelled: give it back
                    await self.release(_RedisLease(self, lease_id), sent=False)
                raise

    async def _acquire(self, lease_id: str) -> _RedisLease:
        while True:
            try:
                granted, wait = await self.shared.run(
                    "acquire",
                    self._k("tokens", "leases", "overlap", "starts", "bound", "local"),
                    [
                        lease_id,
                        self.shared.quota.limit,
                        self._local._cap,
                        self._period_ms,
                        self._margin_ms,
                        int(self.shared.lease_ttl * 1000),
                        self._key_ttl_ms,
                        int(_POLL_PARALLEL * 1000),
                    ],
                )
            except LimiterUnavailableError:
                if not self.shared.fallback:
                    raise
                local = self.shared.local(self.business_id)
                return _RedisLease(self, lease_id, await local.acquire())
            if granted:
                self._granted[lease_id] = asyncio.get_running_loop().time()
                return _RedisLease(self, lease_id)
            pause = _POLL_MAX if wait < 0 else min(wait / 1000, _POLL_MAX)
            # Poll again after the hint, or sooner if this process frees something.
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(pause, _POLL_PARALLEL))

    async def release(self, lease: _RedisLease, *, sent: bool = True) -> None:
        if lease.local is not None:
            await lease.local.release()
            return
        granted_at = self._granted.pop(lease.id, None)
        linger = 0.0
        if lease.id not in self._answered and granted_at is not None:
            linger = granted_at + self._local._slowest() - asyncio.get_running_loop().time()
        self._answered.discard(lease.id)
        release = self.shared.run(
            "release",
            self._k("tokens", "leases", "overlap", "starts"),
            [
                lease.id,
                self._period_ms,
                self._margin_ms,
                max(0, int(linger * 1000)),
                "1" if sent else "0",
                self._key_ttl_ms,
            ],
        )
        # A release must happen even if the caller is being cancelled; the lease expiry is the
        # backstop if Redis is gone.
        try:
            await asyncio.shield(release)
        except LimiterUnavailableError as exc:
            logger.warning("could not release a lease (%s); it expires by itself", exc)
        self._changed.set()

    async def observe(
        self,
        lease: Lease,
        remaining: int | None,
        resets_in: float | None,
        *,
        parallel_refused: bool = False,
    ) -> None:
        assert isinstance(lease, _RedisLease)
        if lease.local is not None:
            await self.shared.local(self.business_id).observe(
                lease.local, remaining, resets_in, parallel_refused=parallel_refused
            )
            return
        granted_at = self._granted.get(lease.id)
        if granted_at is not None:
            self._local._latencies.append(asyncio.get_running_loop().time() - granted_at)
        self._answered.add(lease.id)
        self._local._adapt_cap(parallel_refused)
        unknown_reset = min(self.shared.quota.period, 60.0)
        await self.shared.run(
            "observe",
            self._k("overlap", "starts", "bound", "local", "tokens"),
            [
                lease.id,
                -1 if remaining is None else remaining,
                -1 if resets_in is None else int(resets_in * 1000),
                self._margin_ms,
                int(unknown_reset * 1000),
                self._key_ttl_ms,
                self.shared.quota.limit,
            ],
        )
        self._changed.set()

    async def state(self) -> QuotaState:
        try:
            in_flight, used, budget, until, reported, frees = await self.shared.run(
                "state", self._k("tokens", "leases", "bound", "starts"), []
            )
        except LimiterUnavailableError:
            if not self.shared.fallback:
                raise
            return await self.shared.local(self.business_id).state()
        limit = self.shared.quota.limit
        remaining = max(0, limit - int(in_flight) - (int(used) - int(in_flight)))
        if budget not in (b"", ""):
            remaining = max(0, min(remaining, int(budget)))
        waits = [int(x) / 1000 for x in (frees, until) if x not in (b"", "")]
        return QuotaState(
            limit=limit,
            remaining=remaining,
            in_flight=int(in_flight),
            max_parallel=self.shared.max_parallel,
            frees_in=0.0 if remaining else min(waits, default=0.0),
            server_remaining=None if reported in (b"", "") else int(reported),
        )
