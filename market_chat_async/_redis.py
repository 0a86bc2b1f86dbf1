"""One cabinet's limits shared by every process and host, through Redis.

The guarantee is the in-process limiter's (see ``_limits``), for every client in any process or
host that uses the same Redis and cabinet: **no more than ``quota.limit`` requests in any window
of ``quota.period`` seconds, fixed or sliding, and never more than ``max_parallel`` in flight.**
It is kept the same way, with the state in Redis and every decision made atomically by a Lua
script on the Redis server's clock (``TIME``), so clock skew between hosts does not matter:

* a request takes a quota token before it is sent and gives it back ``period`` + margin after
  its answer, so no ``limit + 1`` requests the server counts can fall within one period;
* an in-flight slot is a *lease* with an expiry (``lease_ttl``, longer than any exchange the
  client makes): a worker killed mid-request frees its slot when the lease expires, and its
  token still counts for a period from then, since the server may have counted the request;
* the server's ``Remaining`` answers go into one shared bound (``Remaining`` less our requests
  that overlapped the answered one, less every start since; the best one while it lasts), so
  one process's discovery that someone else spends the quota holds back all of them; with no
  bound known, one request at a time probes; an answer with no rate-limit headers at all means
  the tokens alone decide;
* a refusal for the parallel cap lowers one shared cap, which calm answers raise again; with
  ``Quota(burst=N)`` one shared bucket paces every process.

Within a process, waiters queue on a FIFO lock and only its holder asks Redis, so 100,000
waiting coroutines are one poller. It sleeps between polls for the wait the script names (until
a token returns or a bound or the pacing lifts; :data:`_POLL_PARALLEL` while only the parallel
cap blocks), at most :data:`_POLL_MAX`, and at once when this process frees something.
Cancelled waiters take nothing; a lease the script granted just as its waiter was cancelled is
given back. Releases run shielded from cancellation, and if Redis is gone the lease's expiry
frees the slot anyway.

Keys, all under ``market-chat-async:{namespace}:{business_id}:`` (``namespace`` is the API
origin). Each has an expiry: the ``bound`` when its window ends, ``pace`` when a full burst is
allowed again, the others ``period + margin + lease_ttl`` after their last write.

=========== ====== ========================================================================
key         type   holds
=========== ====== ========================================================================
``tokens``  zset   lease id -> when its quota token returns (ms; ``+inf`` while in flight)
``leases``  zset   lease id -> when the lease's parallel slot frees (ms): its expiry while in
                   flight, or the end of an abandoned request's linger
``overlap`` hash   lease id of each request in flight -> our requests in flight at some
                   moment during it
``bound``   hash   ``budget`` (starts still safe), ``until`` (ms), ``reported``: the best
                   figure the server gave
``local``   string ``1`` while the server says nothing our tokens do not (no headers, or a
                   ``Remaining`` no lower than what the tokens leave)
``cap``     hash   ``cap``, ``calm``, ``raise_after``, ``raised``: the parallel cap while a
                   refusal has it lowered
``pace``    string with ``Quota(burst=N)``: when a full burst is allowed again (ms; a request
                   may start while that is at most ``burst - 1`` intervals away)
=========== ====== ========================================================================

If Redis cannot be reached the client fails closed with :class:`LimiterUnavailableError`
(going over the quota can lock the cabinet out). With ``fallback=True`` it uses the process's
in-process limiter instead, with a warning, and tries Redis again every :data:`_RETRY_REDIS`
seconds; the two do not know of each other's requests, which is why this is opt-in. Needs
Redis 5 or newer; not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections import deque
from collections.abc import Coroutine
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._errors import LimiterUnavailableError
from ._limits import (
    _DEFAULT_LATENCY,
    _LATENCY_SAMPLES,
    _RAISE_AFTER,
    _RAISE_AFTER_MAX,
    _UNKNOWN_RESET_WAIT,
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
_LEASE_TTL = 60.0  # seconds a silent worker's in-flight slot survives (the client passes more)
_POLL_MAX = 0.5  # at most this long between polls, whatever the wait named
# Between polls while the parallel cap (or a probe in flight) blocks. Other processes' releases
# are seen by polling rather than pub/sub: one short script per waiting process and cabinet.
_POLL_PARALLEL = 0.01
_POLL_MIN = 0.001  # never spin
_RETRY_REDIS = 5.0  # with fallback on, seconds on the in-process limiter before asking Redis again

# Server time in ms, and leases past their expiry: their workers died or hung. The slot frees,
# and the token of a request still in flight counts for a period from the expiry (the server
# may have counted it at any moment until then).
# Needs: tokens, leases, overlap, period, margin, key_ttl.
_NOW_AND_EXPIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'WITHSCORES')
for i = 1, #expired, 2 do
  if redis.call('HDEL', overlap, expired[i]) == 1 then
    redis.call('ZADD', tokens, tonumber(expired[i + 1]) + period + margin, expired[i])
    redis.call('PEXPIRE', tokens, key_ttl)
  end
end
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
redis.call('ZREMRANGEBYSCORE', tokens, '-inf', now)
"""

# KEYS: tokens leases overlap bound local cap pace
# ARGV: lease, limit, max_parallel, period, margin, lease_ttl, key_ttl, poll, pace interval
#       (0: no pacing), pace tolerance; times in ms.
# Returns {1, 0} granted, or {0, ms to wait before asking again}.
_ACQUIRE = (
    """
local tokens, leases, overlap, bound, local_key, cap_key, pace = unpack(KEYS)
local lease = ARGV[1]
local limit, max_parallel = tonumber(ARGV[2]), tonumber(ARGV[3])
local period, margin, lease_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local key_ttl, poll = tonumber(ARGV[7]), tonumber(ARGV[8])
local interval, tolerance = tonumber(ARGV[9]), tonumber(ARGV[10])
"""
    + _NOW_AND_EXPIRE
    + """
-- Run twice (a retried call whose first reply was lost): granted already.
if redis.call('HEXISTS', overlap, lease) == 1 then return {1, 0} end
local in_flight = redis.call('HLEN', overlap)
local blocked, wait = false, 0
local function block(ms)
  blocked, wait = true, math.max(wait, ms)
end
local cap = math.min(max_parallel, tonumber(redis.call('HGET', cap_key, 'cap')) or max_parallel)
-- Abandoned requests keep their slots while they linger: the server may still serve them.
if redis.call('ZCARD', leases) >= cap then block(poll) end
if redis.call('ZCARD', tokens) >= limit then
  local first = redis.call('ZRANGE', tokens, 0, 0, 'WITHSCORES')
  -- All held in flight: none returns sooner than a period after an answer still to come.
  if first[2] == 'inf' then block(period) else block(tonumber(first[2]) - now) end
end
local b = redis.call('HMGET', bound, 'budget', 'until')
local bounded = b[1] and tonumber(b[2]) > now
if bounded then
  if tonumber(b[1]) <= 0 then block(tonumber(b[2]) - now) end
elseif in_flight > 0 and redis.call('GET', local_key) ~= '1' then
  block(poll)  -- nothing known of the server's count: one request probes first
end
local tat = now
if interval > 0 then
  tat = math.max(tonumber(redis.call('GET', pace)) or now, now)
  if tat - now > tolerance then block(tat - now - tolerance) end
end
if blocked then return {0, math.ceil(wait)} end
for _, id in ipairs(redis.call('HKEYS', overlap)) do redis.call('HINCRBY', overlap, id, 1) end
redis.call('HSET', overlap, lease, in_flight)
redis.call('ZADD', leases, now + lease_ttl, lease)
redis.call('ZADD', tokens, '+inf', lease)
if bounded then redis.call('HINCRBY', bound, 'budget', -1) end
if interval > 0 then redis.call('SET', pace, tat + interval, 'PX', tat + interval - now) end
for _, key in ipairs({tokens, leases, overlap}) do redis.call('PEXPIRE', key, key_ttl) end
return {1, 0}
"""
)

# KEYS: tokens leases overlap bound
# ARGV: lease, period, margin, linger (ms the slot stays taken), sent ('0': never reached the
#       server), key_ttl. Returns 1 if the lease was in flight.
_RELEASE = """
local tokens, leases, overlap, bound = unpack(KEYS)
local lease = ARGV[1]
local period, margin, linger = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local returns = now + period + margin
if redis.call('HDEL', overlap, lease) == 0 then
  -- Never granted, or its lease expired (a hung worker): the answer came only now, so its
  -- token, if any, counts a period from now.
  local held = redis.call('ZSCORE', tokens, lease)
  if ARGV[5] == '1' and held and tonumber(held) < returns then
    redis.call('ZADD', tokens, returns, lease)
    redis.call('PEXPIRE', tokens, tonumber(ARGV[6]))
  end
  return 0
end
if ARGV[5] == '0' then
  redis.call('ZREM', leases, lease)
  redis.call('ZREM', tokens, lease)
  -- Nothing was sent, so the bound gets its start back.
  if redis.call('EXISTS', bound) == 1 then redis.call('HINCRBY', bound, 'budget', 1) end
  return 1
end
redis.call('ZADD', tokens, returns, lease)
if linger > 0 then
  redis.call('ZADD', leases, now + linger, lease)
else
  redis.call('ZREM', leases, lease)
end
for _, key in ipairs({tokens, leases, overlap}) do redis.call('PEXPIRE', key, tonumber(ARGV[6])) end
return 1
"""

# KEYS: tokens overlap bound local cap
# ARGV: lease, remaining (-1: not said), resets_in (ms, -1: not said), margin, unknown reset
#       wait (ms), key_ttl, limit, refused ('1': a 420 for the parallel cap), max_parallel,
#       raise_after, raise_after_max.
_OBSERVE = """
local tokens, overlap, bound, local_key, cap_key = unpack(KEYS)
local lease, remaining, resets = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local margin, key_ttl, limit = tonumber(ARGV[4]), tonumber(ARGV[6]), tonumber(ARGV[7])
local max_parallel, base, most = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- The shared parallel cap: a refusal means others hold slots, so what we had in flight less
-- this one is what fits; calm answers raise it by one, and a refused raise doubles the wait.
local c = redis.call('HMGET', cap_key, 'cap', 'calm', 'raise_after', 'raised')
local cap = math.min(max_parallel, tonumber(c[1]) or max_parallel)
local calm, after, raised = tonumber(c[2]) or 0, tonumber(c[3]) or base, c[4] == '1'
if ARGV[8] == '1' then
  if raised then after = math.min(2 * after, most) end
  cap = math.max(1, math.min(cap, redis.call('HLEN', overlap) - 1))
  calm, raised = 0, false
elseif cap < max_parallel then
  calm = calm + 1
  if calm >= after then cap, calm, raised = cap + 1, 0, true end
else
  after = base
end
if cap >= max_parallel and calm == 0 and after == base and not raised then
  redis.call('DEL', cap_key)
else
  redis.call('HSET', cap_key, 'cap', cap, 'calm', calm, 'raise_after', after,
             'raised', raised and '1' or '0')
  redis.call('PEXPIRE', cap_key, key_ttl)
end

if remaining < 0 then
  -- No headers at all: the server says nothing, and the tokens alone decide.
  if resets < 0 then
    redis.call('SET', local_key, '1', 'PX', key_ttl)
  else
    redis.call('DEL', local_key)
  end
  return 1
end
redis.call('ZREMRANGEBYSCORE', tokens, '-inf', now)
local used = redis.call('ZCARD', tokens)
if remaining >= limit - used then
  -- Our tokens account for all the server counts: a bound would count them twice.
  redis.call('SET', local_key, '1', 'PX', key_ttl)
  redis.call('DEL', bound)
  return 1
end
redis.call('DEL', local_key)
if resets < 0 then resets = tonumber(ARGV[5]) end
-- A lease past its expiry lost its overlap; every request that overlapped it still holds a
-- token, so the tokens held are a safe stand-in.
local budget = remaining - (tonumber(redis.call('HGET', overlap, lease)) or used)
local untl = now + resets + margin
local b = redis.call('HMGET', bound, 'budget', 'until')
if b[1] and tonumber(b[2]) > now and tonumber(b[1]) > budget then
  redis.call('HSET', bound, 'reported', remaining)  -- the bound in force leaves more: keep it
else
  redis.call('HSET', bound, 'budget', budget, 'until', untl, 'reported', remaining)
  redis.call('PEXPIRE', bound, math.max(1, untl - now))
end
return 1
"""

# KEYS: tokens leases overlap bound ; ARGV: period, margin, key_ttl (ms)
# Returns in_flight, tokens held, then (nil when none) the bound's budget, ms until it lapses,
# its reported Remaining, and ms until the first held token returns.
_STATE = (
    """
local tokens, leases, overlap, bound = unpack(KEYS)
local period, margin, key_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
"""
    + _NOW_AND_EXPIRE
    + """
local b = redis.call('HMGET', bound, 'budget', 'until', 'reported')
local budget, left, reported = false, false, false
if b[1] and tonumber(b[2]) > now then
  budget, left, reported = tonumber(b[1]), tonumber(b[2]) - now, tonumber(b[3])
end
local first = redis.call('ZRANGE', tokens, 0, 0, 'WITHSCORES')
local frees = false
if first[2] and first[2] ~= 'inf' then frees = tonumber(first[2]) - now end
return {redis.call('HLEN', overlap), redis.call('ZCARD', tokens), budget, left, reported, frees}
"""
)


def _ms(seconds: float) -> int:
    """Seconds as whole milliseconds, rounded up: a wait or a hold is never cut short."""
    return math.ceil(seconds * 1000)


def _safe_url(url: str) -> str:
    """The Redis URL without credentials, for messages and reprs.

    >>> _safe_url("redis://user:secret@cache:6379/0?password=secret&db=1")
    'redis://cache:6379/0?db=1'
    """
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return "<unparsable Redis URL>"
    netloc = parts.netloc.rpartition("@")[2]
    public = urlencode([(k, v) for k, v in query if k.lower() not in ("password", "username")])
    return urlunsplit((parts.scheme, netloc, parts.path, public, ""))


class RedisLimiters:
    """The per-cabinet limiters of one client, kept in Redis; see the module docstring.

    The client makes one when given ``redis_url``; ``limiter(business_id)`` is what it calls
    per request. Nothing connects until the first request; the URL never shows its password.

    >>> limiters = RedisLimiters(
    ...     "redis://:secret@localhost:6379/0", quota=Quota(), max_parallel=4,
    ...     namespace_key="https://api.partner.market.yandex.ru")
    >>> limiters  # doctest: +ELLIPSIS
    RedisLimiters('redis://localhost:6379/0', quota=Quota(...), max_parallel=4, fallback=False)
    >>> limiters.limiter(12345) is limiters.limiter(12345)
    True
    """

    def __init__(
        self,
        redis_url: str,
        *,
        quota: Quota,
        max_parallel: int,
        namespace_key: str,
        fallback: bool = False,
        lease_ttl: float = _LEASE_TTL,
    ) -> None:
        if not isinstance(max_parallel, int) or max_parallel < 1:
            raise ValueError(f"max_parallel must be an int of at least 1, got {max_parallel!r}")
        if not (lease_ttl > 0 and math.isfinite(lease_ttl)):
            raise ValueError(f"lease_ttl must be a positive number of seconds, got {lease_ttl}")
        self.url = _safe_url(redis_url)
        self.quota = quota
        self.max_parallel = max_parallel
        self.namespace = namespace_key
        self.fallback = fallback
        self.lease_ttl = lease_ttl
        self._redis: aioredis.Redis = aioredis.Redis.from_url(redis_url)
        self.acquire_script = self._redis.register_script(_ACQUIRE)
        self.release_script = self._redis.register_script(_RELEASE)
        self.observe_script = self._redis.register_script(_OBSERVE)
        self.state_script = self._redis.register_script(_STATE)
        self._limiters: dict[int, _RedisLimiter] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._down_until = -math.inf  # loop time; with fallback on, Redis is not asked before
        self._degraded = False

    def __repr__(self) -> str:
        return (
            f"RedisLimiters({self.url!r}, quota={self.quota}, max_parallel={self.max_parallel}, "
            f"fallback={self.fallback})"
        )

    def limiter(self, business_id: int) -> Limiter:
        """The shared limiter of one cabinet (one object per cabinet, cached)."""
        limiter = self._limiters.get(business_id)
        if limiter is None:
            limiter = self._limiters[business_id] = _RedisLimiter(self, business_id)
        return limiter

    async def close(self) -> None:
        """Let pending releases finish, then close the connection pool."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._redis.aclose()

    # -- for the cabinets' limiters --------------------------------------------------------

    async def run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """Run one script; any failure to reach Redis is :class:`LimiterUnavailableError`."""
        try:
            reply = await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailableError(
                None, message=f"the shared limiter at {self.url} is unavailable: {exc}"
            ) from exc
        if self._degraded:
            self._degraded = False
            logger.warning("Redis at %s answers again; back to the shared limiter", self.url)
        return reply

    def in_background(self, work: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
        """Run ``work`` to the end even if its caller is cancelled; log if Redis failed."""
        task = asyncio.ensure_future(work)
        self._background.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._background.discard(task)
            if not task.cancelled() and task.exception() is not None:
                logger.warning(
                    "could not %s (%s); the lease expires by itself", what, task.exception()
                )

        task.add_done_callback(done)
        return task

    def resting(self) -> bool:
        """Redis failed a moment ago and fallback is on: not worth asking yet."""
        return self._down_until > asyncio.get_running_loop().time()

    def fall_back(self, business_id: int, exc: LimiterUnavailableError) -> CabinetLimiter:
        """Redis failed: note it, warn once per outage, and give the in-process limiter."""
        if not self._degraded:
            self._degraded = True
            logger.warning(
                "%s; falling back to the in-process limiter, which cannot see other processes' "
                "use of the cabinet (Redis is tried again every %.0f s)",
                exc.message,
                _RETRY_REDIS,
            )
        self._down_until = asyncio.get_running_loop().time() + _RETRY_REDIS
        return self.local(business_id)

    def local(self, business_id: int) -> CabinetLimiter:
        """The process's in-process limiter for the cabinet (the fallback)."""
        return limiter_for((self.namespace, business_id), self.quota, self.max_parallel)


class _RedisLease:
    __slots__ = ("_owner", "answered", "asking", "granted_at", "id", "released")

    def __init__(self, owner: _RedisLimiter) -> None:
        self._owner = owner
        self.id = uuid.uuid4().hex
        self.asking = False  # an acquire script for it is on its way: it may be granted
        self.granted_at: float | None = None  # loop time
        self.answered = False
        self.released = False

    async def release(self) -> None:
        if not self.released:
            self.released = True
            await self._owner.give_back(self, sent=True)


class _RedisLimiter:
    """One cabinet's limiter: the state in Redis, the queue of waiters in this process."""

    def __init__(self, shared: RedisLimiters, business_id: int) -> None:
        self._shared = shared
        self.business_id = business_id
        base = f"{_PREFIX}:{shared.namespace}:{business_id}:"
        keys = {
            n: base + n for n in ("tokens", "leases", "overlap", "bound", "local", "cap", "pace")
        }
        self._acquire_keys = list(keys.values())
        self._release_keys = [keys[name] for name in ("tokens", "leases", "overlap", "bound")]
        self._observe_keys = [keys[name] for name in ("tokens", "overlap", "bound", "local", "cap")]
        self._state_keys = self._release_keys
        quota = shared.quota
        self._period_ms = _ms(quota.period)
        self._margin_ms = _ms(quota.effective_margin)
        self._key_ttl_ms = _ms(quota.period + quota.effective_margin + shared.lease_ttl)
        interval = quota.period / quota.limit
        self._pace = (
            (_ms(interval), _ms(interval * (quota.burst - 1)))
            if quota.burst is not None
            else (0, 0)
        )
        self._queue = asyncio.Lock()  # FIFO: only its holder polls Redis
        self._changed = asyncio.Event()  # this process released or learned something
        # An abandoned request's slot lingers until the slowest recent answer would have come.
        self._latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)

    async def acquire(self) -> Lease:
        """Wait for a slot and a token in Redis, first come first served in this process."""
        shared = self._shared
        async with self._queue:
            if shared.resting():
                return await shared.local(self.business_id).acquire()
            lease = _RedisLease(self)
            try:
                await self._poll(lease)
            except LimiterUnavailableError as exc:
                if lease.asking and isinstance(exc.__cause__, RedisTimeoutError):
                    # The script may have run and granted it: give it back if Redis allows.
                    self._shared.in_background(
                        self._release(lease, sent=False), "give back a lease"
                    )
                if not shared.fallback:
                    raise
                return await shared.fall_back(self.business_id, exc).acquire()
            except asyncio.CancelledError:
                if lease.asking:  # the script may have granted it before the cancellation
                    await self._give_back_shielded(lease, sent=False)
                raise
            return lease

    async def _poll(self, lease: _RedisLease) -> None:
        loop = asyncio.get_running_loop()
        interval, tolerance = self._pace
        while True:
            self._changed.clear()
            lease.asking = True
            granted, wait_ms = await self._shared.run(
                self._shared.acquire_script,
                self._acquire_keys,
                [
                    lease.id,
                    self._shared.quota.limit,
                    self._shared.max_parallel,
                    self._period_ms,
                    self._margin_ms,
                    _ms(self._shared.lease_ttl),
                    self._key_ttl_ms,
                    _ms(_POLL_PARALLEL),
                    interval,
                    tolerance,
                ],
            )
            if granted:
                lease.granted_at = loop.time()
                return
            lease.asking = False
            pause = min(max(int(wait_ms) / 1000, _POLL_MIN), _POLL_MAX)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), pause)

    async def give_back(self, lease: _RedisLease, *, sent: bool) -> None:
        """Return the lease's slot (after its linger) and start its token's period."""
        linger = 0.0
        if sent and not lease.answered and lease.granted_at is not None:
            # Abandoned in flight: the server may still be serving it.
            slowest = max(self._latencies, default=_DEFAULT_LATENCY)
            linger = lease.granted_at + slowest - asyncio.get_running_loop().time()
        await self._give_back_shielded(lease, sent=sent, linger=linger)

    def _release(
        self, lease: _RedisLease, *, sent: bool, linger: float = 0.0
    ) -> Coroutine[Any, Any, Any]:
        return self._shared.run(
            self._shared.release_script,
            self._release_keys,
            [
                lease.id,
                self._period_ms,
                self._margin_ms,
                max(0, _ms(linger)),
                "1" if sent else "0",
                self._key_ttl_ms,
            ],
        )

    async def _give_back_shielded(
        self, lease: _RedisLease, *, sent: bool, linger: float = 0.0
    ) -> None:
        task = self._shared.in_background(
            self._release(lease, sent=sent, linger=linger), "give back a lease"
        )
        try:
            with contextlib.suppress(LimiterUnavailableError):  # logged by in_background
                await asyncio.shield(task)
        finally:
            self._changed.set()

    async def observe(
        self,
        lease: Lease,
        remaining: int | None,
        resets_in: float | None,
        *,
        parallel_refused: bool = False,
    ) -> None:
        """Share what the server said in answer to ``lease``'s request."""
        if not isinstance(lease, _RedisLease):  # granted by the in-process fallback
            await self._shared.local(self.business_id).observe(
                lease, remaining, resets_in, parallel_refused=parallel_refused
            )
            return
        lease.answered = True
        if lease.granted_at is not None:
            self._latencies.append(asyncio.get_running_loop().time() - lease.granted_at)
        try:
            await self._shared.run(
                self._shared.observe_script,
                self._observe_keys,
                [
                    lease.id,
                    -1 if remaining is None else max(0, remaining),
                    -1 if resets_in is None else _ms(max(0.0, resets_in)),
                    self._margin_ms,
                    _ms(min(self._shared.quota.period, _UNKNOWN_RESET_WAIT)),
                    self._key_ttl_ms,
                    self._shared.quota.limit,
                    "1" if parallel_refused else "0",
                    self._shared.max_parallel,
                    _RAISE_AFTER,
                    _RAISE_AFTER_MAX,
                ],
            )
        except LimiterUnavailableError as exc:
            # The answer is in hand and must reach the caller; the next acquire fails closed.
            logger.warning("could not share a rate-limit answer (%s)", exc)
        self._changed.set()

    async def state(self) -> QuotaState:
        """The cabinet's quota as Redis has it: what is left, what is in flight, when more frees."""
        shared = self._shared
        if shared.resting():
            return await shared.local(self.business_id).state()
        try:
            in_flight, used, budget, left, reported, frees = await shared.run(
                shared.state_script,
                self._state_keys,
                [self._period_ms, self._margin_ms, self._key_ttl_ms],
            )
        except LimiterUnavailableError as exc:
            if not shared.fallback:
                raise
            return await shared.fall_back(self.business_id, exc).state()
        limit = shared.quota.limit
        remaining = max(0, limit - int(used))
        if budget is not None:
            remaining = max(0, min(remaining, int(budget)))
        waits = [int(ms) / 1000 for ms in (frees, left) if ms is not None]
        return QuotaState(
            limit=limit,
            remaining=remaining,
            in_flight=int(in_flight),
            max_parallel=shared.max_parallel,
            frees_in=0.0 if remaining else max(0.0, min(waits, default=math.inf)),
            server_remaining=None if reported is None else int(reported),
        )
