"""The one Redis connection all of a client's cabinets share, and what it takes to rely on it.

Redis being there or not (a blip retried, then failing closed or falling back; calls bounded by
the pool; leases renewed and releases finished in the background) is the same question for every
cabinet, so it is answered once here, and the cabinet's limiter (``_cabinet``) keeps only the
rules of waiting and granting.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import math
import uuid
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from market_chat_async._errors import LimiterUnavailableError
from market_chat_async._limits._local import CabinetLimiter, limiter_for
from market_chat_async._limits._quota import Limiter, Quota
from market_chat_async._limits._redis_scripts import Script

from ._cabinet import _RedisLimiter
from ._constants import (
    BLIP,
    DEFAULT_EXCHANGE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    LEASE_TTL,
    RETRY_REDIS,
)

__all__ = ["RedisLimiters"]

logger = logging.getLogger("market_chat_async")

_TALLIES = ("waited", "carried")  # the entries of RedisLimiters.calls that are not scripts

T = TypeVar("T")


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


@functools.cache
def _no_script_error() -> type[Exception]:
    from redis.exceptions import NoScriptError  # (the optional extra: imported when used)

    return NoScriptError


def _retryable(exc: BaseException) -> bool:
    from redis.exceptions import (
        BusyLoadingError,
        ClusterDownError,
        RedisError,
        ResponseError,
        TryAgainError,
    )

    if isinstance(exc, (ClusterDownError, TryAgainError, BusyLoadingError)):
        return True
    return isinstance(exc, (RedisError, OSError)) and not isinstance(exc, ResponseError)


class RedisLimiters:
    """The per-cabinet limiters of one client, kept in Redis; see the module docstring.

    ``url_or_client`` is a Redis URL (``cluster=True``: a node of a Redis Cluster) or a ready
    ``redis.asyncio.Redis`` / ``RedisCluster`` (not closed by :meth:`close`). Nothing connects
    until the first request; the URL never shows its password.

    >>> limits = RedisLimiters(
    ...     "redis://:secret@localhost:6379/0", quotas={"getChat": Quota()}, max_parallel=4,
    ...     namespace="https://api.partner.market.yandex.ru")
    >>> limits  # doctest: +ELLIPSIS
    RedisLimiters('redis://localhost:6379/0', quotas=..., max_parallel=4, fallback=False)
    >>> limits.limiter(12345) is limits.limiter(12345)
    True
    """

    def __init__(
        self,
        url_or_client: Any,
        *,
        quotas: Mapping[str, Quota],
        max_parallel: int,
        namespace: str,
        fallback: bool = False,
        cluster: bool = False,
        exchange_timeout: float = DEFAULT_EXCHANGE_TIMEOUT,
        lease_ttl: float = LEASE_TTL,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if not isinstance(max_parallel, int) or max_parallel < 1:
            raise ValueError(f"max_parallel must be an int of at least 1, got {max_parallel!r}")
        for name, value in (("exchange_timeout", exchange_timeout), ("lease_ttl", lease_ttl)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
        if not quotas:
            raise ValueError("quotas must name at least one resource")
        self.quotas = dict(quotas)
        self.max_parallel = max_parallel
        self.namespace = namespace
        self.fallback = fallback
        self.exchange_timeout = float(exchange_timeout)
        self.lease_ttl = float(lease_ttl)
        self._owned = isinstance(url_or_client, str)
        if isinstance(url_or_client, str):
            self.url = _safe_url(url_or_client)
            self._redis: Any = _connect(url_or_client, cluster=cluster, pool=max_connections)
        else:
            self.url = type(url_or_client).__name__
            self._redis = url_or_client
        # Never more calls than connections; a quarter of them may block on a `wake` list.
        self._blocking = asyncio.Semaphore(max_connections // 4)
        self._calls = asyncio.Semaphore(max_connections - max_connections // 4)
        self._limiters: dict[int, _RedisLimiter] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._retrying: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._down_until = -math.inf  # loop time; with fallback on, Redis is not asked before
        self._degraded = False
        # Script runs by name, retries included (for the benchmarks); "waited" counts the
        # acquire calls that granted nothing, "carried" the releases an acquire took along.
        self.calls: collections.Counter[str] = collections.Counter()
        # Lease ids and tickets: this object's random prefix and a count, unique everywhere.
        self._ids = map(f"{uuid.uuid4().hex[:16]}-{{}}".format, itertools.count())

    def __repr__(self) -> str:
        return (
            f"RedisLimiters({self.url!r}, quotas={self.quotas}, "
            f"max_parallel={self.max_parallel}, fallback={self.fallback})"
        )

    @property
    def script_calls(self) -> int:
        """How many scripts this object has run on Redis, retries included."""
        return sum(n for name, n in self.calls.items() if name not in _TALLIES)

    def new_id(self) -> str:
        """A lease id (or ticket) no other process or call uses."""
        return next(self._ids)

    def limiter(self, business_id: int) -> Limiter:
        """The shared limiter of one cabinet (one object per cabinet, cached)."""
        limiter = self._limiters.get(business_id)
        if limiter is None:
            limiter = self._limiters[business_id] = _RedisLimiter(self, business_id)
        return limiter

    async def flush(self) -> None:
        """Wait until every release on its way has reached Redis (or been given up on)."""
        for limiter in list(self._limiters.values()):
            await limiter.settled()
        while self._background:
            await asyncio.wait(set(self._background))

    async def close(self) -> None:
        """Let pending releases finish, stop renewing, and close the connection pool if ours.

        Releases still waiting for Redis to come back are dropped: their leases expire."""
        await self.flush()
        for task in list(self._retrying):
            task.cancel()
        await asyncio.gather(*self._retrying, return_exceptions=True)
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._owned:
            await self._redis.aclose()

    # -- for the cabinets' limiters --------------------------------------------------------

    async def run(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """Run one script, retrying for up to :data:`BLIP` seconds while Redis cannot be
        reached; then :class:`LimiterUnavailableError`."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + BLIP
        pause = 0.02
        while True:
            try:
                async with self._calls:
                    self.calls[script.name] += 1
                    try:
                        reply = await self._redis.evalsha(script.sha, len(keys), *keys, *args)
                    except _no_script_error():
                        reply = await self._redis.eval(script.source, len(keys), *keys, *args)
            except Exception as exc:
                if not _retryable(exc):
                    raise
                if loop.time() + pause > give_up:
                    raise LimiterUnavailableError(
                        None, message=f"the shared limiter at {self.url} is unavailable: {exc}"
                    ) from exc
                await asyncio.sleep(pause)
                pause = min(2 * pause, 0.25)
                continue
            if self._degraded:
                self._degraded = False
                logger.warning("Redis at %s answers again; back to the shared limiter", self.url)
            return reply

    async def blocked_wait(self, key: str, seconds: float) -> int | None:
        """Block on the ``wake`` list ``key`` for up to ``seconds``: the item that came (0:
        none); ``None`` if no connection was to spare for it (or Redis failed): sleep instead."""
        if self._blocking.locked():
            return None
        async with self._blocking:
            try:
                popped = await self._redis.blpop([key], timeout=seconds)
                return 0 if popped is None else int(popped[1])
            except Exception as exc:
                if not _retryable(exc):
                    raise
                return None

    def retry_later(self, work: Awaitable[None]) -> None:
        """Keep trying ``work`` (a release Redis refused) until it succeeds or we close."""
        task = asyncio.ensure_future(work)
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)

    def in_background(self, work: Awaitable[T]) -> asyncio.Task[T]:
        """Run ``work`` to its end even if the caller is cancelled."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def leases_granted(self) -> None:
        """Make sure the renewal task runs (it stops by itself when nothing is in flight)."""
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew_forever())

    async def _renew_forever(self) -> None:
        # It ends when a tick finds nothing in flight (not as each request ends: a process
        # making request after request would start it anew every time).
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.lease_ttl / 8)
            if not any(limiter.in_flight for limiter in self._limiters.values()):
                return
            due = [limiter.renew(loop.time()) for limiter in list(self._limiters.values())]
            await asyncio.gather(*due, return_exceptions=True)

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
                RETRY_REDIS,
            )
        self._down_until = asyncio.get_running_loop().time() + RETRY_REDIS
        return self.local(business_id)

    def local(self, business_id: int) -> CabinetLimiter:
        """The process's in-process limiter for the cabinet (the fallback)."""
        return limiter_for((self.namespace, business_id), self.quotas, self.max_parallel)


def _connect(url: str, *, cluster: bool, pool: int) -> Any:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    # Short socket timeouts: a call that hangs is retried (BLIP) rather than waited on.
    options: dict[str, Any] = {
        "socket_timeout": 0.5,
        "socket_connect_timeout": 0.5,
        "max_connections": pool,
    }
    if cluster:
        return RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)
