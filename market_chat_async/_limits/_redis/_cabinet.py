"""One cabinet's limiter over Redis: how its waiters queue, are granted and give back.

This is where the guarantee of ``_limits`` is kept for a ``business_id`` across processes; it
reaches Redis only through :class:`~._resource.SharedRedis`, the little it needs of the
connection, so the connection (``_connection``) can own the cabinets' limiters without the two
importing each other. Keys, script arguments and replies are ``_resource``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
from collections.abc import Awaitable
from typing import Any

from market_chat_async._errors import LimiterUnavailableError
from market_chat_async._limits._adaptive import AdaptiveCap, LatencyTracker
from market_chat_async._limits._quota import Answer, Lease, QuotaState
from market_chat_async._limits._redis_scripts import ACQUIRE, RELEASE, RENEW, STATE

from ._constants import (
    _PREFIX,
    BLIP,
    BLOCK_MAX,
    RENEW_AFTER,
    WAIT_FLIGHT,
    WAIT_LONGEST,
    WAIT_MAX,
    WAIT_MIN,
)
from ._resource import SharedRedis, _grant_of, _ms, _Resource

logger = logging.getLogger("market_chat_async")


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


class _RedisLimiter:
    """One cabinet's limiter: the state in Redis; the waiters, cap and latency in this process."""

    def __init__(self, shared: SharedRedis, business_id: int) -> None:
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
