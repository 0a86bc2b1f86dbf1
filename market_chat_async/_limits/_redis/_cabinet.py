"""The Redis store: one cabinet's limits shared by every process and host, Cluster-safe.

The guarantee is the one of ``_limits``, for every client in any process or host that uses the
same Redis, namespace and cabinet. The rules are ``_ledger``'s, kept by Lua scripts
(``_redis_scripts``) on the Redis server's clock (``TIME``), so clock skew between hosts does
not matter. What stays in each process: the :class:`~._adaptive.AdaptiveCap` (the server's
parallel-cap refusal reaches only the process that got it, and it is fed with that process's
own requests in flight) and the :class:`~._adaptive.LatencyTracker`.

Round trips. A request costs one or two script calls: the acquire script (wait or grant), and
the release that takes in the server's answer and gives the slot back. A release is not waited
for (the caller has its answer): it waits in its resource's ``pending`` list, and the next
acquire of the same resource in this process carries it (one script call per request for a
worker making request after request; the same Lua function applies it in either script);
failing that, it is sent on the loop's next turn, so no waiter elsewhere waits for it. If the
acquire carrying it fails or is cancelled, it is sent again by itself (twice is harmless).
:meth:`_RedisLimiter.state`, :meth:`RedisLimiters.flush` and ``close`` wait for releases.
Within a process only the head waiter of a cabinet's resource asks Redis; the script puts its
ticket in a per-resource queue (first come, first served across processes: it grants only to
the oldest tickets that fit) and says how long until the slot, token, bound or pacing its place
in the queue waits for can lift; a grant queues the next local waiter's ticket in the same
call. A waiter that needs a slot blocks on the cabinet's ``wake`` list, to which every release
pushes (a waiter woken out of turn passes it on).

Leases. An in-flight slot is a lease that expires :data:`LEASE_TTL` seconds after it was last
renewed; a background task renews the leases of this process's requests while they are in
flight, so a killed worker's slots come back within ``LEASE_TTL`` seconds. Its quota tokens
stay out until a period (+ margin) after the latest moment the server could have counted the
request (``exchange_timeout`` after the grant).

Faults. A failed Redis call is retried for up to :data:`BLIP` seconds (a blip, a failover)
before the limiter fails closed with :class:`LimiterUnavailableError` (or, with
``fallback=True``, uses the in-process store and asks Redis again after
:data:`RETRY_REDIS` seconds). A release never raises: an answer in hand is the caller's, and a
release that cannot reach Redis is retried in the background until it can (meanwhile the
lease expires by itself). A cancelled acquire gives its ticket back, shielded, so a lease the
script granted as the cancellation landed is returned, and one still on its way is void.
Calls to Redis are bounded by a semaphore of ``max_connections``, so many cabinets in flight
queue for a connection instead of failing.

Keys, all under ``market-chat-async:{<namespace>|<business_id>}:`` (the braces are the hash
tag; ``namespace`` is the API origin); a resource's keys add ``<resource>:``. Each has an
expiry, refreshed when written.

=========== ======== ===================================================================
key         of       holds (zset scores and times in ms of the Redis clock)
=========== ======== ===================================================================
``leases``  cabinet  zset: lease id -> when its slot frees (expiry while in flight, or the
                     end of an abandoned request's linger)
``overlap`` cabinet  hash: lease id in flight -> requests in flight at some moment during it
``void``    cabinet  zset: ids given back before their acquire ran -> until when
``wake``    cabinet  list: one item per release (a few at most), for waiters blocked on it
``tokens``  resource zset: lease id -> when its quota token returns
``bound``   resource hash: ``budget``, ``until``, ``reported``: the server's best figure
``local``   resource ``1`` while the server says nothing the tokens do not
``pace``    resource with ``Quota(burst=N)``: the GCRA theoretical arrival time
``queue``   resource zset: waiting ticket -> when it arrived
``seen``    resource zset: waiting ticket -> by when its waiter must ask again
=========== ======== ===================================================================
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import itertools
import json
import logging
import math
import uuid
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from market_chat_async._errors import LimiterUnavailableError

from ._adaptive import AdaptiveCap, LatencyTracker
from ._ledger import UNKNOWN_RESET_WAIT
from ._local import CabinetLimiter, limiter_for
from ._quota import Answer, Lease, Limiter, Quota, QuotaState
from ._redis_scripts import (
    ACQUIRE,
    CABINET_KEYS,
    GRANT_BASE,
    KEYS,
    RELEASE,
    RENEW,
    RESOURCE_KEYS,
    STATE,
    Script,
)

__all__ = ["RedisLimiters"]

logger = logging.getLogger("market_chat_async")

_PREFIX = "market-chat-async"
LEASE_TTL = 4.0  # seconds a slot outlives the last renewal of its lease (a killed worker's)
# A lease in flight for this share of its ttl since its last renewal is renewed (checked every
# eighth of the ttl): with the default 4 s, a Redis blip or a stalled loop has 2 s to pass.
RENEW_AFTER = 3 / 8
BLIP = 1.5  # seconds a failing Redis call is retried before the limiter fails closed
RETRY_REDIS = 5.0  # with fallback on: seconds on the in-process store before asking Redis again
# A waiting ticket not back this long after the wait it was given is dropped (its waiter died).
TICKET_STALE = 3.0
WAIT_MAX = 1.0  # while a request ending could help, a waiter asks again at least this often
WAIT_LONGEST = 30.0  # the longest a waiter sleeps before asking again
WAIT_MIN = 0.001
WAIT_FLIGHT = 0.005  # the least wait for a slot or a probe elsewhere to end
BLOCK_MAX = 0.3  # the longest block on a `wake` list (under the 0.5 s socket timeout)
VOID_TTL = 60.0  # how long a ticket given back stays void
DEFAULT_EXCHANGE_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS = 32
_TALLIES = ("waited", "carried")  # the entries of RedisLimiters.calls that are not scripts

T = TypeVar("T")


def _ms(seconds: float) -> int:
    """Seconds as whole milliseconds, rounded up: a wait or a hold is never cut short."""
    return math.ceil(seconds * 1000)


def _grant_of(reply: int) -> tuple[int, int, int]:
    """ACQUIRE's reply unpacked: granted (1), wait (0) or void (-1); ms; flight.

    >>> _grant_of((250 * 2 + 1) * GRANT_BASE + 0 + 1)
    (0, 250, 1)
    >>> _grant_of(1 * GRANT_BASE + 1 + 1)
    (1, 0, 1)
    """
    rest, granted = divmod(int(reply), GRANT_BASE)
    ms, flight = divmod(rest, 2)
    return granted - 1, ms, flight


def _cancel_requests() -> int:
    """How many cancellations of the current task are pending (``Task.cancelling``)."""
    task = asyncio.current_task()
    return 0 if task is None else task.cancelling()


def _raise_if_cancel_swallowed(before: int) -> None:
    """Raise the cancellation a call to Redis swallowed.

    On Python 3.11, ``asyncio.wait_for`` returns the result instead of raising when the awaited
    work finishes in the loop iteration the cancellation lands in, and redis-py sends every
    command through it: the task is still marked as cancelling, but the call returns. Without
    this, a cancelled acquire would go on waiting, or hand a lease to a caller that cancelled it
    (and, if that caller drops it, the renewals keep its slot taken for good).
    """
    if _cancel_requests() > before:
        raise asyncio.CancelledError


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


class _RedisLease:
    __slots__ = ("_owner", "answered", "granted_at", "id", "released", "renewed_at", "resource")

    def __init__(self, owner: _RedisLimiter, resource: str, ticket: str | None = None) -> None:
        self._owner = owner
        self.resource = resource
        # Chosen here, before any script runs, so that a cancelled acquire can give it back.
        self.id = ticket or owner._shared.new_id()
        self.granted_at = 0.0  # loop time
        self.renewed_at = 0.0
        self.answered = False
        self.released = False

    async def release(self, answer: Answer | None = None, *, sent: bool = True) -> None:
        if not self.released:
            self.released = True
            await self._owner.give_back(self, answer, sent=sent)


class _Resource:
    """What one resource of a cabinet needs: its quota, keys, script arguments, head lock, and
    the releases on their way."""

    __slots__ = (
        "constants",
        "head",
        "hold_ms",
        "keys",
        "pending",
        "queued",
        "quota",
        "state_keys",
        "waiting",
        "wake_key",
    )

    def __init__(self, shared: RedisLimiters, base: str, name: str, quota: Quota) -> None:
        self.quota = quota
        keys = {n: f"{base}{n}" for n in CABINET_KEYS}
        keys.update({n: f"{base}{name}:{n}" for n in RESOURCE_KEYS})
        # Of ACQUIRE and RELEASE; encoded once (the client would encode them on every call).
        self.keys = [keys[n].encode() for n in KEYS]
        self.wake_key = keys["wake"]
        self.state_keys = [keys[n] for n in ("leases", "overlap", "tokens", "bound")]
        hold = quota.period + quota.effective_margin
        in_flight_hold = max(shared.lease_ttl, shared.exchange_timeout)
        interval = quota.pace_interval
        self.hold_ms = _ms(hold)
        # The first ARGV of both ACQUIRE and RELEASE.
        constants = [
            quota.limit,
            shared.max_parallel,
            self.hold_ms,
            _ms(shared.lease_ttl),
            _ms(in_flight_hold),
            _ms(hold + in_flight_hold),  # key ttl
            _ms(interval) if quota.burst is not None else 0,
            _ms(interval * (quota.burst - 1)) if quota.burst is not None else 0,
            _ms(TICKET_STALE),
            _ms(WAIT_LONGEST),
            _ms(quota.reset_margin),
            _ms(min(quota.period, UNKNOWN_RESET_WAIT)),
            _ms(VOID_TTL),
        ]
        self.constants = json.dumps(constants).encode()
        self.head = asyncio.Lock()  # FIFO: only its holder asks Redis
        self.waiting = 0  # acquire() calls of this resource under way in this process
        # A ticket queued in Redis for the next head by the last grant: (id, wait ms, flight).
        self.queued: tuple[str, int, int] | None = None
        # Releases (JSON) no script call has taken yet: the next ACQUIRE of this resource
        # carries them, or, failing that, they are sent on the loop's next turn.
        self.pending: list[str] = []

    def take(self) -> str:
        """The pending releases as the scripts take them (a JSON list); none pending after."""
        releases = f"[{','.join(self.pending)}]"
        self.pending = []
        return releases


class _RedisLimiter:
    """One cabinet's limiter: the state in Redis; the waiters, cap and latency in this process."""

    def __init__(self, shared: RedisLimiters, business_id: int) -> None:
        self._shared = shared
        self.business_id = business_id
        base = f"{_PREFIX}:{{{shared.namespace}|{business_id}}}:"
        self._resources = {
            name: _Resource(shared, base, name, quota) for name, quota in shared.quotas.items()
        }
        self._renew_keys = [f"{base}leases", f"{base}overlap"] + [
            f"{base}{name}:tokens" for name in self._resources
        ]
        self._renew_index = {name: i + 3 for i, name in enumerate(self._resources)}
        self._cap = AdaptiveCap(shared.max_parallel)
        self._latency = LatencyTracker()
        self.in_flight: set[_RedisLease] = set()
        self._lingering: list[float] = []  # loop times abandoned requests' slots free (a heap)
        self._wakers: set[asyncio.Event] = set()
        # Releases on their way: tasks sending them, and the ACQUIRE calls carrying them.
        self._releasing: set[asyncio.Future[None]] = set()

    @property
    def cap(self) -> int:
        """This process's parallel cap for the cabinet now."""
        return self._cap.value

    def _resource(self, name: str) -> _Resource:
        try:
            return self._resources[name]
        except KeyError:
            known = ", ".join(sorted(self._resources))
            raise ValueError(f"unknown resource {name!r}; known: {known}") from None

    def _wake(self) -> None:
        for event in self._wakers:
            event.set()

    async def _sleep(self, event: asyncio.Event, seconds: float) -> None:
        """Until woken or ``seconds`` pass; a cancellation always propagates."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()

    def _local_room(self, now: float) -> float:
        """0 if this process's cap has room, else how long until a lingering slot frees
        (``inf``: until one of its requests ends)."""
        lingering = self._lingering
        while lingering and lingering[0] <= now:
            heapq.heappop(lingering)
        if len(self.in_flight) + len(lingering) < self._cap.value:
            return 0.0
        return lingering[0] - now if lingering else math.inf

    # -- the public protocol -------------------------------------------------------------

    async def acquire(self, resource: str) -> Lease:
        """Wait for a slot and a token of ``resource`` in Redis; first come, first served."""
        res = self._resource(resource)
        res.waiting += 1
        try:
            return await self._acquire(res, resource, _cancel_requests())
        finally:
            res.waiting -= 1
            if not res.waiting and res.queued is not None:  # its waiter went away
                ticket, res.queued = res.queued[0], None
                self._shared.in_background(
                    self._give_back_quietly(_RedisLease(self, resource, ticket))
                )

    async def _acquire(self, res: _Resource, resource: str, cancels: int) -> Lease:
        shared = self._shared
        async with res.head:
            if shared.resting():
                return await shared.local(self.business_id).acquire(resource)
            first_wait = None
            if res.queued is not None:  # the last grant queued a ticket for this waiter
                ticket, wait_ms, flight = res.queued
                res.queued = None
                lease = _RedisLease(self, resource, ticket)
                first_wait = (wait_ms, flight)
            else:
                lease = _RedisLease(self, resource)
            event = asyncio.Event()
            self._wakers.add(event)
            try:
                await self._wait_for_grant(res, lease, event, first_wait, cancels)
                _raise_if_cancel_swallowed(cancels)
            except LimiterUnavailableError as exc:
                shared.in_background(self._give_back_quietly(lease))
                if not shared.fallback:
                    raise
                return await shared.fall_back(self.business_id, exc).acquire(resource)
            except BaseException:
                # Cancelled (or broken) while the script may be granting it: give it back,
                # shielded; if the script has not run yet, the ticket is void when it does.
                self.in_flight.discard(lease)
                await self._shielded(self._give_back_quietly(lease))
                raise
            finally:
                self._wakers.discard(event)
            return lease

    async def _wait_for_grant(
        self,
        res: _Resource,
        lease: _RedisLease,
        event: asyncio.Event,
        first_wait: tuple[int, int] | None,
        cancels: int,
    ) -> None:
        shared = self._shared
        loop = asyncio.get_running_loop()
        backoff = 1.0  # grows while only the end of a request elsewhere can help
        woken = 0  # the item of the `wake` list that ended the last wait (0: none)
        while True:
            _raise_if_cancel_swallowed(cancels)
            event.clear()
            if first_wait is not None:  # queued by the last grant, which said how long to wait
                wait_ms, flight = first_wait
                first_wait = None
            else:
                room = self._local_room(loop.time())
                if room > 0:  # this process's own cap is full: only its own releases help
                    woken = 0
                    await self._sleep(event, min(room, WAIT_MAX))
                    continue
                # With others waiting behind, the grant queues the next one's ticket too.
                following = shared.new_id() if res.waiting > 1 else ""
                expected = max(1, _ms(self._latency.slowest()))
                # This process's releases of the resource still on their way go along, so a
                # request after a request costs one script call.
                releases, carrier = "[]", None
                if res.pending:
                    shared.calls["carried"] += len(res.pending)
                    releases = res.take()
                    carrier = loop.create_future()
                    self._track(carrier)
                own = f'["{lease.id}",{expected},"{following}",{woken},{releases}]'
                try:
                    reply = await shared.run(ACQUIRE, res.keys, [res.constants, own])
                except BaseException:
                    if carrier is not None:  # they go by themselves (twice is harmless)
                        self._send_soon(res, releases)
                        carrier.set_result(None)
                    raise
                if carrier is not None:
                    carrier.set_result(None)
                granted, wait_ms, flight = _grant_of(reply)
                if granted == 1:
                    lease.granted_at = lease.renewed_at = loop.time()
                    self.in_flight.add(lease)
                    shared.leases_granted()
                    if following:
                        res.queued = (following, wait_ms, flight)
                    return
                shared.calls["waited"] += 1
                if granted == -1:  # cannot happen for a live waiter; never spin on it
                    raise LimiterUnavailableError(None, message="lease id reused; this is a bug")
            if flight:
                # A request ending helps. The release script of any process pushes to the
                # cabinet's `wake` list, which wakes the waiter blocked on it longest; failing
                # that, ask again after the hint, less often the longer it takes.
                pause = min(max(int(wait_ms) / 1000, WAIT_FLIGHT) * backoff, WAIT_MAX)
                backoff *= 1.5
                item = await shared.blocked_wait(res.wake_key, BLOCK_MAX)
                woken = item or 0
                if item is None:
                    await self._sleep(event, pause)
            else:  # only time helps: a token returning, a bound lapsing, pacing
                woken = 0
                await asyncio.sleep(min(max(int(wait_ms) / 1000, WAIT_MIN), WAIT_LONGEST))

    async def _shielded(self, work: Awaitable[Any]) -> None:
        task = self._shared.in_background(work)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    async def give_back(self, lease: _RedisLease, answer: Answer | None, *, sent: bool) -> None:
        """The request is over: take in the answer and free the slot, in one script call."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        linger = 0.0
        if answer is not None:
            lease.answered = True
            self._latency.record(now - lease.granted_at)
            self._cap.answered(refused=answer.parallel_refused, in_flight=len(self.in_flight))
        elif sent:
            # Abandoned in flight: the server may still be serving it, so its slot stays taken
            # until the slowest recent answer would have come back.
            linger = lease.granted_at + self._latency.slowest() - now
            if linger > 0:
                heapq.heappush(self._lingering, now + linger)
        self.in_flight.discard(lease)
        # On its way, not waited for: the caller has its answer, and this process's next
        # request overlaps the round trip (or carries it). `state`, `flush` and `close` wait.
        res = self._resources[lease.resource]
        if not res.pending:
            loop.call_soon(self._send_pending, res)
        res.pending.append(self._release_args(lease, answer, sent=sent, linger=linger))

    def _track(self, releasing: asyncio.Future[None]) -> None:
        """Note a task sending releases, or an ACQUIRE call carrying them, until it ends."""
        self._releasing.add(releasing)
        releasing.add_done_callback(self._released)

    def _released(self, releasing: asyncio.Future[None]) -> None:
        self._releasing.discard(releasing)
        self._wake()  # a slot, a probe or a bound changed in Redis: this process's heads look

    def _send_pending(self, res: _Resource) -> None:
        """Send the releases no ACQUIRE took (one script call for all of them)."""
        if res.pending:
            self._send_soon(res, res.take())

    def _send_soon(self, res: _Resource, releases: str) -> None:
        self._track(self._shared.in_background(self._send(res, releases)))

    async def _send(self, res: _Resource, releases: str) -> None:
        """Send releases; if Redis stays away, keep trying in the background (never raise)."""
        args = [res.constants, releases]
        try:
            await self._shared.run(RELEASE, res.keys, args)
        except LimiterUnavailableError as exc:
            logger.warning(
                "could not give back a lease (%s); retrying in the background, and its slot "
                "frees by itself within %.0f s",
                exc.message,
                self._shared.lease_ttl,
            )
            self._shared.retry_later(self._release_later(res, args))

    async def settled(self) -> None:
        """Until every release given back so far has reached Redis (or been handed to the
        background retries)."""
        for res in self._resources.values():
            self._send_pending(res)
        while self._releasing:
            await asyncio.wait(set(self._releasing))

    async def _release_later(self, res: _Resource, args: list[Any]) -> None:
        # Until the token would have returned anyway, there is a point in telling Redis.
        loop = asyncio.get_running_loop()
        give_up = loop.time() + res.hold_ms / 1000
        while loop.time() < give_up:
            await asyncio.sleep(BLIP)
            with contextlib.suppress(LimiterUnavailableError):
                await self._shared.run(RELEASE, res.keys, args)
                return

    def _release_args(
        self, lease: _RedisLease, answer: Answer | None, *, sent: bool, linger: float
    ) -> str:
        """One release as the scripts take it (JSON)."""
        remaining = -1
        resets = -1
        if answer is not None:
            remaining = -1 if answer.remaining is None else max(0, answer.remaining)
            resets = -1 if answer.resets_in is None else _ms(max(0.0, answer.resets_in))
        sent_json = "true" if sent else "false"
        answered = "false" if answer is None else "true"
        return f'["{lease.id}",{sent_json},{answered},{remaining},{resets},{max(0, _ms(linger))}]'

    async def _give_back_quietly(self, lease: _RedisLease) -> None:
        """Give back a ticket (or a lease) the caller never got: at once, by itself."""
        res = self._resources[lease.resource]
        args = self._release_args(lease, None, sent=False, linger=0.0)
        with contextlib.suppress(LimiterUnavailableError):
            await self._shared.run(RELEASE, res.keys, [res.constants, f"[{args}]"])

    async def renew(self, now: float) -> None:
        """Renew the leases of this process's requests that have been in flight a while."""
        after = RENEW_AFTER * self._shared.lease_ttl
        due = [lease for lease in self.in_flight if now - lease.renewed_at >= after]
        if not due:
            return
        args: list[Any] = [_ms(self._shared.lease_ttl)]
        for lease in due:
            hold = self._resources[lease.resource].hold_ms
            args += [lease.id, self._renew_index[lease.resource], hold]
        try:
            lost = await self._shared.run(RENEW, self._renew_keys, args)
        except LimiterUnavailableError as exc:
            logger.warning("could not renew %d leases (%s)", len(due), exc.message)
            return
        for lease in due:
            lease.renewed_at = now
        if lost:
            logger.warning(
                "%d leases expired before they could be renewed (Redis or this process stalled "
                "for over %.0f s); their slots may have gone to others",
                len(lost),
                self._shared.lease_ttl,
            )

    async def state(self, resource: str) -> QuotaState:
        """The cabinet's quota of ``resource`` as Redis has it."""
        res = self._resource(resource)
        shared = self._shared
        if shared.resting():
            return await shared.local(self.business_id).state(resource)
        await self.settled()  # this process's releases first: it reads what it wrote
        try:
            in_flight, _taken, used, budget, left, reported, frees = await shared.run(
                STATE, res.state_keys, [res.hold_ms]
            )
        except LimiterUnavailableError as exc:
            if not shared.fallback:
                raise
            return await shared.fall_back(self.business_id, exc).state(resource)
        limit = res.quota.limit
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
