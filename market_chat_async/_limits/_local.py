"""The in-process store: one limiter per cabinet for the whole process, any thread, any loop.

A cabinet's state sits behind one ``threading.RLock``; a waiter is a future of its own event
loop, and a grant made on another thread reaches it through ``call_soon_threadsafe``. Timers
that wake waiters for a time-based change (a token returning, a bound lapsing, pacing) are set
on the waiters' own loops. Times are read from the running loop's clock, which the loops of one
process share (``time.monotonic``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import threading
import weakref
from collections import deque
from collections.abc import Hashable, Mapping

from ._adaptive import AdaptiveCap, LatencyTracker
from ._ledger import ResourceLedger
from ._quota import Answer, Quota, QuotaState

__all__ = ["CabinetLimiter", "limiter_for"]


class _LocalLease:
    __slots__ = ("_limiter", "answered", "granted_at", "overlap", "released", "resource")

    def __init__(self, limiter: CabinetLimiter, resource: str, overlap: int, now: float) -> None:
        self._limiter = limiter
        self.resource = resource
        self.granted_at = now
        self.answered = False
        # Requests of ours in flight at some moment during this one's flight: the server may
        # count any of them after this one, so its Remaining may not include them yet.
        self.overlap = overlap
        self.released = False

    async def observe(self, answer: Answer) -> None:
        """Take in the answer now, keeping the slot until :meth:`release`."""
        self._limiter._observe(self, answer)

    async def release(self, answer: Answer | None = None, *, sent: bool = True) -> None:
        self._limiter._release(self, answer, sent=sent)


class _Waiter:
    __slots__ = ("abandoned", "future", "lease", "loop", "resource", "seq")

    def __init__(self, loop: asyncio.AbstractEventLoop, resource: str, seq: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[_LocalLease] = loop.create_future()
        self.resource = resource
        self.seq = seq
        self.lease: _LocalLease | None = None
        self.abandoned = False


def _now() -> float:
    return asyncio.get_running_loop().time()


class CabinetLimiter:
    """The in-process limiter of one cabinet: a quota per resource, one parallel cap.

    Use :func:`limiter_for` so that every client in the process shares one per cabinet.

    >>> async def demo() -> int:
    ...     limiter = CabinetLimiter({"getChat": Quota(limit=2, period=60.0)}, max_parallel=4)
    ...     lease = await limiter.acquire("getChat")
    ...     await lease.release()
    ...     return (await limiter.state("getChat")).remaining
    >>> asyncio.run(demo())
    1
    """

    def __init__(self, quotas: Mapping[str, Quota], max_parallel: int) -> None:
        self.quotas = quotas
        self.max_parallel = max_parallel
        self._cap = AdaptiveCap(max_parallel)
        self._latency = LatencyTracker()
        self._lock = threading.RLock()
        self._ledgers = {name: ResourceLedger(quota) for name, quota in self.quotas.items()}
        # The waiting queue of each resource that has waiters (an empty one is removed).
        self._waiters: dict[str, deque[_Waiter]] = {}
        self._seq = itertools.count()
        self._in_flight: set[_LocalLease] = set()
        self._lingering: list[float] = []  # when abandoned requests' slots free (a heap)
        self._timers: dict[asyncio.AbstractEventLoop, tuple[float, asyncio.TimerHandle]] = {}
        self._key: Hashable | None = None  # its key in the process registry
        self._settle_pending = False  # a look at whether it holds nothing is scheduled

    @property
    def cap(self) -> int:
        """The parallel cap in force now (lowered while others hold some of the slots)."""
        return self._cap.value

    def _ledger(self, resource: str) -> ResourceLedger:
        try:
            return self._ledgers[resource]
        except KeyError:
            known = ", ".join(sorted(self._ledgers))
            raise ValueError(f"unknown resource {resource!r}; known: {known}") from None

    # -- the public protocol -------------------------------------------------------------

    async def acquire(self, resource: str) -> _LocalLease:
        """Wait until a request of ``resource`` may be sent; FIFO per resource, and cancelling
        the wait takes nothing."""
        ledger = self._ledger(resource)
        loop = asyncio.get_running_loop()
        # acquire/release rather than ``with``: half the cost, on every request.
        self._lock.acquire()
        try:
            now = loop.time()
            if resource not in self._waiters and self._slot_free(now) and ledger.admissible(now):
                return self._grant(resource, now)
            waiter = _Waiter(loop, resource, next(self._seq))
            self._waiters.setdefault(resource, deque()).append(waiter)
            self._wake(now)
        finally:
            self._lock.release()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            with self._lock:
                waiter.abandoned = True
                lease = waiter.lease
            if lease is not None:
                # Granted in the same loop iteration as the cancellation: nothing was sent.
                self._release(lease, None, sent=False)
            else:
                with self._lock:
                    self._wake(_now())
            raise

    async def state(self, resource: str) -> QuotaState:
        """How much of ``resource``'s quota is left now and when the next request may start."""
        ledger = self._ledger(resource)
        with self._lock:
            now = _now()
            remaining = ledger.remaining(now)
            return QuotaState(
                limit=ledger.quota.limit,
                remaining=remaining,
                in_flight=len(self._in_flight),
                max_parallel=self.max_parallel,
                frees_in=0.0 if remaining else max(0.0, ledger.next_change(now) - now),
                server_remaining=ledger.server_remaining(now),
            )

    # -- bookkeeping, all under the lock ------------------------------------------------------

    def _slot_free(self, now: float) -> bool:
        lingering = self._lingering
        while lingering and lingering[0] <= now:
            heapq.heappop(lingering)
        return len(self._in_flight) + len(lingering) < self._cap.value

    def _grant(self, resource: str, now: float) -> _LocalLease:
        for other in self._in_flight:
            other.overlap += 1
        lease = _LocalLease(self, resource, overlap=len(self._in_flight), now=now)
        self._in_flight.add(lease)
        self._ledgers[resource].grant(now)
        return lease

    def _observe(self, lease: _LocalLease, answer: Answer) -> None:
        with self._lock:
            now = _now()
            self._take_answer(lease, answer, now)
            self._wake(now)

    def _take_answer(self, lease: _LocalLease, answer: Answer, now: float) -> None:
        if lease.released or lease.answered:
            return
        lease.answered = True
        self._latency.record(now - lease.granted_at)
        self._cap.answered(refused=answer.parallel_refused, in_flight=len(self._in_flight))
        self._ledgers[lease.resource].observe(now, answer, overlap=lease.overlap)

    def _release(self, lease: _LocalLease, answer: Answer | None = None, *, sent: bool) -> None:
        self._lock.acquire()
        try:
            if lease.released:
                return
            now = _now()
            if answer is not None:
                self._take_answer(lease, answer, now)
            lease.released = True
            self._in_flight.discard(lease)
            self._ledgers[lease.resource].finish(now, sent=sent)
            if sent and not lease.answered:
                # Abandoned in flight (cancelled, timed out, connection lost): the server may
                # still be working on it and count it against the cap, so its slot stays taken
                # until the slowest recent answer would have come back.
                until = lease.granted_at + self._latency.slowest()
                if until > now:
                    heapq.heappush(self._lingering, until)
            self._wake(now)
            if not self._in_flight and not self._settle_pending:
                self._settle_pending = True
                _settle_later(self, self._settles_at_locked(now))
        finally:
            self._lock.release()

    def _wake(self, now: float) -> None:
        """Hand leases to the oldest waiters whose resource admits them while slots are free."""
        if not self._waiters:
            return
        while self._slot_free(now):
            best: _Waiter | None = None
            for resource, queue in list(self._waiters.items()):
                while queue and queue[0].abandoned:
                    queue.popleft()
                if not queue:
                    del self._waiters[resource]
                elif (best is None or queue[0].seq < best.seq) and self._ledgers[
                    resource
                ].admissible(now):
                    best = queue[0]
            if best is None:
                break
            queue = self._waiters[best.resource]
            queue.popleft()
            if not queue:
                del self._waiters[best.resource]
            best.lease = self._grant(best.resource, now)
            self._deliver(best)
        self._arm_timers(now)

    def _deliver(self, waiter: _Waiter) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is waiter.loop:
            _hand_over(waiter)
            return
        try:
            waiter.loop.call_soon_threadsafe(_hand_over, waiter)
        except RuntimeError:  # its loop is closed: nobody will send this request
            waiter.abandoned = True
            assert waiter.lease is not None
            self._release(waiter.lease, None, sent=False)

    def _arm_timers(self, now: float) -> None:
        """Wake waiters blocked on time, on each of their loops, at the next change."""
        when = min(self._lingering, default=math.inf)
        loops: set[asyncio.AbstractEventLoop] = set()
        slot_free = self._slot_free(now)  # else only a release or a lingering slot can help
        for resource, queue in self._waiters.items():
            # The first live waiter's loop is enough: a timer's wake-up grants across loops.
            head = next((w for w in queue if not w.abandoned), None)
            if head is not None:
                loops.add(head.loop)
            if slot_free:
                when = min(when, self._ledgers[resource].next_change(now))
        if when == math.inf:
            return
        for loop in loops:
            current = self._timers.get(loop)
            if current is not None and current[0] <= when:
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self._arm(loop, when)
            else:
                with contextlib.suppress(RuntimeError):  # its loop is closed
                    loop.call_soon_threadsafe(self._arm, loop, when)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        with self._lock:
            current = self._timers.get(loop)
            if current is not None:
                if current[0] <= when:
                    return
                current[1].cancel()
            self._timers[loop] = (when, loop.call_at(when, self._on_timer, loop))

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._timers.pop(loop, None)
            self._wake(loop.time())

    def _settles_at(self, now: float) -> float:
        with self._lock:
            return self._settles_at_locked(now)

    def _settles_at_locked(self, now: float) -> float:
        times = [ledger.settles_at(now) for ledger in self._ledgers.values()]
        if self._lingering:
            times.append(max(self._lingering))
        return max(times, default=now)

    def holds_nothing(self, now: float) -> bool:
        """No slot, token, bound, waiter or lowered cap: forgetting it loses nothing."""
        with self._lock:
            return (
                not self._in_flight
                and not self._lingering
                and self._cap.at_rest
                and not any(not w.abandoned for q in self._waiters.values() for w in q)
                and all(ledger.holds_nothing(now) for ledger in self._ledgers.values())
            )


def _hand_over(waiter: _Waiter) -> None:
    if not waiter.future.done():
        assert waiter.lease is not None
        waiter.future.set_result(waiter.lease)
    # else: cancelled meanwhile; its acquire() gives the lease back


# -- the process-wide registry --------------------------------------------------------------

_registry_lock = threading.Lock()
# Every live limiter by cabinet; a limiter lives while anyone uses it, or while it holds
# something (tokens, a bound, a lowered cap), through ``_held``.
_registry: weakref.WeakValueDictionary[Hashable, CabinetLimiter] = weakref.WeakValueDictionary()
_held: dict[Hashable, CabinetLimiter] = {}
_settling: list[tuple[float, int, Hashable]] = []  # (when it may hold nothing, tiebreak, key)
# Taken alone, never while waiting for another lock: releases push here under a cabinet's lock,
# while the registry lock is taken before a cabinet's.
_settling_lock = threading.Lock()
_tiebreak = itertools.count()


def _settle_later(limiter: CabinetLimiter, when: float) -> None:
    key = limiter._key
    if key is None:
        return
    with _settling_lock:
        heapq.heappush(_settling, (when, next(_tiebreak), key))


def _forget_settled(now: float) -> None:
    """Let go of the cabinets that hold nothing any more (under the registry lock)."""
    due = []
    with _settling_lock:
        while _settling and _settling[0][0] <= now:
            due.append(heapq.heappop(_settling)[2])
    for key in due:
        limiter = _held.get(key)
        if limiter is None:
            continue
        limiter._settle_pending = False
        if limiter.holds_nothing(now):
            del _held[key]
        elif not limiter._in_flight:  # else its last release looks again
            limiter._settle_pending = True
            _settle_later(limiter, limiter._settles_at(now))


def limiter_for(key: Hashable, quotas: Mapping[str, Quota], max_parallel: int) -> CabinetLimiter:
    """The one limiter of this process for ``key`` (the API origin and the ``businessId``).

    Every client in the process that calls for the same cabinet gets the same limiter, whatever
    thread or event loop it runs on, so the quota is the cabinet's, not the client object's.
    Asking for the same cabinet with other limits is a configuration error, refused loudly
    rather than splitting the quota. A cabinet's state is let go once it holds nothing.
    """
    limiter = _registry.get(key)
    if (
        limiter is not None
        and limiter._settle_pending
        and (limiter.quotas is quotas or limiter.quotas == quotas)
        and limiter.max_parallel == max_parallel
        and not (_settling and _settling[0][0] <= _now())
    ):
        return limiter  # the common case: in use, and nothing else to let go of
    with _registry_lock:
        _forget_settled(_now())
        limiter = _registry.get(key)
        if limiter is None:
            limiter = CabinetLimiter(quotas, max_parallel)
            limiter._key = key
            _registry[key] = limiter
        elif limiter.quotas != quotas or limiter.max_parallel != max_parallel:
            raise ValueError(
                f"cabinet {key!r} already has a limiter with {limiter.quotas} and "
                f"max_parallel={limiter.max_parallel} in this process; every client for one "
                f"cabinet must use the same quotas and max_parallel "
                f"(got {dict(quotas)}, {max_parallel})"
            )
        if key not in _held:
            _held[key] = limiter
        if not limiter._settle_pending:
            limiter._settle_pending = True
            _settle_later(limiter, _now())
        return limiter


def forget_all() -> None:
    """Drop every cabinet's state (tests only: each test's event loop has its own clock)."""
    with _registry_lock:
        _registry.clear()
        _held.clear()
        with _settling_lock:
            _settling.clear()
