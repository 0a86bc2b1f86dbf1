"""The delivery loop: take due entries off the queue and run the handlers, at least once.

:class:`Delivery` claims up to ``concurrency`` due entries at a time, fetches the message of
each ``CHAT_MESSAGE_SENT`` through the client and calls the handlers, each bounded by
``handler_timeout``. A failure is retried with backoff (:func:`~._retry.retry_delay`) until
``retry.give_up_after``, then buried as a dead letter -- never dropped. It knows nothing of
requests and answers: :class:`~market_chat_async.notifications.NotificationReceiver` owns
one, starts and stops it, and wakes it when it has queued something. Nothing here imports
the receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from market_chat_async._models import ChatMessage

from ._calls import awaited, in_thread, wait_for_event
from ._events import (
    AnyNotification,
    ChatCreated,
    ChatMessageSent,
    NotificationFormatError,
    parse_notification,
    short_error,
)
from ._queue import NotificationQueue, QueueEntry, QueueError
from ._retry import is_auth_error, retry_delay
from ._values import (
    ChatCreatedHandler,
    Failure,
    HandlerTimeoutError,
    MessageHandler,
    MessageSource,
    NotificationHandler,
    ReceiverOptions,
)

logger = logging.getLogger("market_chat_async.notifications")

_FAILURES_KEPT = 1000
_FETCHED_KEPT = 1000  # fetched messages kept across handler retries in this process
_POLL = 0.5  # seconds between looks at the queue when nothing woke the workers


class Delivery:
    """The background workers of one receiver: claim due entries, deliver each in a task.

    ``is_async`` says, per handler label (``"on_message"``, ``"on_chat_created"``,
    ``"on_notification"``), whether that handler is awaited on the loop or run on a thread;
    ``now`` is the receiver's clock. :meth:`start` starts the workers, :meth:`wake` says
    something was queued, :meth:`settle` and :meth:`join` wait for the queue to calm down,
    :meth:`stop` stops everything and returns the entries that were in flight.

    >>> import asyncio, time
    >>> from market_chat_async.notifications import MemoryQueue, ReceiverOptions
    >>> async def on_chat_created(notification: ChatCreated) -> None:
    ...     print("chat", notification.chat_id)
    >>> async def main() -> None:
    ...     queue = MemoryQueue()
    ...     await queue.open()
    ...     delivery = Delivery(
    ...         queue, None, ReceiverOptions(), on_message=print,
    ...         on_chat_created=on_chat_created,
    ...         is_async={"on_message": False, "on_chat_created": True}, now=time.time,
    ...     )
    ...     body = (b'{"notificationType": "CHAT_CREATED", "businessId": 1, "chatId": 7, '
    ...             b'"createdAt": "2026-01-01T00:00:00Z"}')
    ...     await queue.put("chat-7", body, time.time())
    ...     delivery.start()
    ...     await delivery.join()
    ...     assert await delivery.stop() == []
    ...     print(delivery.counts["handled"], "handled")
    >>> asyncio.run(main())
    chat 7
    1 handled
    """

    def __init__(
        self,
        queue: NotificationQueue,
        client: MessageSource,
        options: ReceiverOptions,
        *,
        on_message: MessageHandler,
        on_chat_created: ChatCreatedHandler | None = None,
        on_notification: NotificationHandler | None = None,
        is_async: Mapping[str, bool],
        now: Callable[[], float],
    ) -> None:
        self.queue = queue
        self.client = client
        self.options = options
        self.on_message = on_message
        self.on_chat_created = on_chat_created
        self.on_notification = on_notification
        self._async = is_async
        self.now = now
        self.failures: deque[Failure] = deque(maxlen=_FAILURES_KEPT)
        """The last 1,000 notifications given up on (they are dead letters in the queue)."""
        self.backlog = 0  # the queue's backlog as last seen; checked against max_pending
        self.counts = dict.fromkeys(("handled", "failed", "attempt_failures", "abandoned"), 0)
        self._rng = random.Random(options.seed)
        self._stopped = False
        self._in_flight: dict[str, tuple[QueueEntry, asyncio.Task[None]]] = {}
        self._fetched: OrderedDict[str, ChatMessage] = OrderedDict()
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()  # nothing due, nothing in flight
        self._empty = asyncio.Event()  # and nothing waiting for a later try either
        self._workers: list[asyncio.Task[None]] = []

    def in_flight(self) -> list[QueueEntry]:
        """The entries being delivered right now."""
        return [entry for entry, _ in self._in_flight.values()]

    def start(self) -> None:
        """Start the workers: the dispatcher, and a lease keeper for a shared queue."""
        self._workers = [
            asyncio.get_running_loop().create_task(self._dispatch(), name="notification queue")
        ]
        if getattr(self.queue, "visibility_timeout", None):
            self._workers.append(asyncio.get_running_loop().create_task(self._renew()))

    def wake(self) -> None:
        """Look at the queue now (something was queued, or the receiver's state changed)."""
        self._wake.set()

    async def settle(self, grace: float) -> None:
        """Wait up to ``grace`` seconds until nothing is due and nothing is in flight."""
        self._quiet.clear()
        self._wake.set()
        await wait_for_event(self._quiet, grace)

    async def join(self) -> None:
        """Wait until the queue holds nothing but dead letters (later tries included)."""
        self._empty.clear()
        self._wake.set()
        await self._empty.wait()

    async def stop(self) -> list[QueueEntry]:
        """Cancel the workers and the deliveries in flight; return the entries they held."""
        self._stopped = True
        left = self.in_flight()
        tasks = [*self._workers, *(task for _, task in self._in_flight.values())]
        self._wake.set()  # the dispatcher sees "closed" even if a library swallows a cancel
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10.0)
        self._in_flight.clear()
        return left

    # -- the background --------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Claim due entries while there are free slots; each runs in a task of its own."""
        while not self._stopped:
            free = self.options.concurrency - len(self._in_flight)
            entries: list[QueueEntry] = []
            if free > 0:
                try:
                    entries = await self.queue.claim(free, self.now())
                except QueueError as exc:
                    logger.error("cannot read the queue (will try again): %s", short_error(exc))
            if self._stopped:  # claimed as the receiver stopped: due again later
                break
            for entry in entries:
                task = asyncio.get_running_loop().create_task(
                    self._deliver(entry), name=f"notification {entry.id}"
                )
                self._in_flight[entry.id] = (entry, task)
            if entries:
                continue
            if not self._in_flight:
                with contextlib.suppress(QueueError):
                    self.backlog = (await self.queue.stats()).backlog
                    if self.backlog == 0:
                        self._empty.set()
                self._quiet.set()
            self._wake.clear()
            await wait_for_event(self._wake, _POLL)

    async def _renew(self) -> None:
        """Keep the leases of what is in flight (a shared queue's visibility timeout)."""
        every = float(getattr(self.queue, "visibility_timeout", 300.0)) / 3
        while True:
            await asyncio.sleep(every)
            try:
                await self.queue.extend([entry for entry, _ in self._in_flight.values()])
            except QueueError as exc:
                logger.error("cannot renew leases: %s", short_error(exc))

    async def _deliver(self, entry: QueueEntry) -> None:
        try:
            await self._deliver_once(entry)
        except QueueError as exc:
            logger.error("queue failed while finishing entry %s: %s", entry.id, short_error(exc))
        finally:
            self._in_flight.pop(entry.id, None)
            self._wake.set()

    async def _deliver_once(self, entry: QueueEntry) -> None:
        notification = parse_entry(entry)
        if notification is None:
            error: BaseException = ValueError("the stored body is not a notification")
            await self._give_up(entry, None, "parse", error, entry.attempts + 1)
            return
        done = set(entry.done)
        errors: list[tuple[str, BaseException]] = []
        if self.on_notification is not None and "on_notification" not in done:
            await self._stage(done, errors, "on_notification", self.on_notification, notification)
        if isinstance(notification, ChatMessageSent) and "on_message" not in done:
            message = await self._fetch(entry, notification, errors)
            if message is not None:
                await self._stage(
                    done, errors, "on_message", self.on_message, notification, message
                )
        if (
            isinstance(notification, ChatCreated)
            and self.on_chat_created is not None
            and "on_chat_created" not in done
        ):
            await self._stage(done, errors, "on_chat_created", self.on_chat_created, notification)
        if not errors:
            await self.queue.ack(entry)
            self._fetched.pop(entry.id, None)
            self.counts["handled"] += 1
            self.backlog = max(0, self.backlog - 1)
            return
        stage, error = errors[-1]
        attempts = entry.attempts + 1
        self.counts["attempt_failures"] += 1
        updated = attrs.evolve(
            entry,
            attempts=attempts,
            done=tuple(sorted(done)),
            last_error=f"{stage}: {short_error(error)}",
        )
        delay = retry_delay(
            self.options.retry, error, attempts, self._rng, self.now() - entry.received_at
        )
        if delay is None:
            await self._give_up(updated, notification, stage, error, attempts)
            return
        await self.queue.retry_later(updated, self.now() + delay)
        level = logging.ERROR if is_auth_error(error) else logging.WARNING
        logger.log(
            level,
            "%s failed (attempt %d: %s)%s; kept, retry in %.1f s: %r",
            stage, attempts, short_error(error),
            " -- the Market refused the API key: fix it, nothing is dropped meanwhile"
            if is_auth_error(error) else "",
            delay, notification,
        )  # fmt: skip

    async def _fetch(
        self,
        entry: QueueEntry,
        n: ChatMessageSent,
        errors: list[tuple[str, BaseException]],
    ) -> ChatMessage | None:
        message = self._fetched.get(entry.id)
        if message is not None:
            return message
        # Bounded like a handler: a fetch waiting out one cabinet's quota for longer gives its
        # slot to notifications of other cabinets, and is tried again later.
        fetch = asyncio.ensure_future(
            self.client.get_message(n.business_id, n.chat_id, n.message_id)
        )
        if not await self._finished_in_time(fetch):
            errors.append(("fetch", HandlerTimeoutError("fetch", self.options.handler_timeout)))
            return None
        try:
            message = fetch.result()
        except Exception as exc:
            errors.append(("fetch", exc))
            return None
        self._fetched[entry.id] = message
        while len(self._fetched) > _FETCHED_KEPT:
            self._fetched.popitem(last=False)
        return message

    async def _stage(
        self,
        done: set[str],
        errors: list[tuple[str, BaseException]],
        stage: str,
        hook: Callable[..., object],
        *args: object,
    ) -> None:
        """Run one handler within ``handler_timeout``; a stuck one is abandoned, not awaited."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[object]
        if self._async[stage]:
            waiter = loop.create_task(awaited(hook, *args), name=f"{stage} handler")
        else:
            waiter = in_thread(lambda: hook(*args))
        if not await self._finished_in_time(waiter):
            # A thread cannot be stopped: it is left to finish on its own.
            self.counts["abandoned"] += 1
            errors.append((stage, HandlerTimeoutError(stage, self.options.handler_timeout)))
            return
        try:
            result = waiter.result()
            if inspect.isawaitable(result):  # a plain function that returned a coroutine
                async with asyncio.timeout(self.options.handler_timeout):
                    await result
        except Exception as exc:
            errors.append((stage, exc))
        else:
            done.add(stage)

    async def _finished_in_time(self, work: asyncio.Future[Any]) -> bool:
        """Wait up to ``handler_timeout`` for ``work``; cancel it if it is not done by then, or
        if this wait is cancelled."""
        try:
            finished, _ = await asyncio.wait({work}, timeout=self.options.handler_timeout)
        except asyncio.CancelledError:
            work.cancel()
            raise
        if not finished:
            work.cancel()
        return bool(finished)

    async def _give_up(
        self,
        entry: QueueEntry,
        notification: AnyNotification | None,
        stage: str,
        error: BaseException,
        attempts: int,
    ) -> None:
        await self.queue.bury(entry, self.now())
        self.counts["failed"] += 1
        self.backlog = max(0, self.backlog - 1)
        self._fetched.pop(entry.id, None)
        self.failures.append(Failure(notification, stage, error, attempts))
        age = self.now() - entry.received_at
        logger.error(
            "gave up: event=dead_letter entry=%s key=%s stage=%s attempts=%d age_s=%.0f "
            "error=%s notification=%r",
            entry.id, entry.key, stage, attempts, age, json.dumps(short_error(error)),
            notification,
            exc_info=error,
            extra={
                "event": "dead_letter", "entry_id": entry.id, "dedup_key": entry.key,
                "stage": stage, "attempts": attempts, "age_s": age,
            },
        )  # fmt: skip


def parse_entry(entry: QueueEntry) -> AnyNotification | None:
    """The notification a queue entry holds, or ``None`` when its body is not one.

    >>> parse_entry(QueueEntry("1", None, b'{"notificationType": "PING"}', 0.0)).type
    'PING'
    >>> parse_entry(QueueEntry("2", None, b"not json", 0.0)) is None
    True
    """
    try:
        return parse_notification(json.loads(entry.body))
    except (ValueError, NotificationFormatError):
        return None
