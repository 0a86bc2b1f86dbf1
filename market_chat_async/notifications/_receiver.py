"""The receiver core, framework-neutral: answer a request, queue durably, deliver at least once.

No aiohttp here: :meth:`NotificationReceiver.receive` turns (body, peer address) into a
:class:`Reply`, and background workers take entries from the queue, fetch the message through
the client and call your handlers. The guarantee, kept by :meth:`~NotificationReceiver.answer`
and ``_deliver``: **a notification answered 200 is in the queue** (committed, for a durable
backend) and is then handled, retried until ``retry.give_up_after``, or kept as a dead letter
-- never dropped. A handler call is abandoned after ``handler_timeout`` seconds (and retried),
so a stuck handler holds one slot for that long at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self

import attrs

from market_chat_async._models import ChatMessage

from ._calls import awaited, handler_kind, in_thread, wait_for_event
from ._events import (
    AnyNotification,
    ChatCreated,
    ChatMessageSent,
    NotificationFormatError,
    canonical_body,
    decode_json,
    key_text,
    parse_notification,
    short_error,
)
from ._open import open_queue
from ._queue import MemoryQueue, NotificationQueue, QueueEntry, QueueError
from ._retry import is_auth_error, retry_delay
from ._sources import client_address, in_any
from ._values import (
    ChatCreatedHandler,
    Failure,
    HandlerTimeoutError,
    Health,
    MessageHandler,
    MessageSource,
    NotificationHandler,
    Outcome,
    ReceiverOptions,
    ReceiverStats,
    Reply,
)

logger = logging.getLogger("market_chat_async.notifications")

_FAILURES_KEPT = 1000
_FETCHED_KEPT = 1000  # fetched messages kept across handler retries in this process
_POLL = 0.5  # seconds between looks at the queue when nothing woke the workers
_State = Literal["new", "running", "draining", "closed"]


class NotificationReceiver:
    """Queue notifications durably, then fetch their messages and run your handlers.

    :func:`~market_chat_async.notifications.create_app` builds one and mounts it (it is
    ``app[RECEIVER]`` there). Use it directly to serve notifications from another framework:
    ``async with receiver:`` opens the queue and starts the workers, and on exit drains
    them; ``await receiver.receive(...)`` answers one request. ``options`` is a
    :class:`ReceiverOptions` (keyword overrides are applied to it); ``queue`` a queue URL or
    object (default ``"memory"``: **lost on a crash**; see :func:`open_queue`).

    >>> async def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
    ...     print(message.message)
    >>> async def main(client: MessageSource) -> None:
    ...     async with NotificationReceiver(client, on_message, allow_from=None) as receiver:
    ...         reply = await receiver.receive(b'{"notificationType": "PING"}', remote=None)
    ...         assert reply.status == 200
    """

    def __init__(
        self,
        client: MessageSource,
        on_message: MessageHandler,
        options: ReceiverOptions | None = None,
        *,
        queue: str | NotificationQueue | None = None,
        on_chat_created: ChatCreatedHandler | None = None,
        on_notification: NotificationHandler | None = None,
        **overrides: Any,
    ) -> None:
        base = options if options is not None else ReceiverOptions()
        if not isinstance(base, ReceiverOptions):
            raise TypeError(f"options must be ReceiverOptions, not {type(base).__name__}")
        self.options = base.replace(**overrides) if overrides else base
        self._async = {"on_message": handler_kind("on_message", on_message, 2)}
        for label, hook in (
            ("on_chat_created", on_chat_created),
            ("on_notification", on_notification),
        ):
            if hook is not None:
                self._async[label] = handler_kind(label, hook, 1)
        self.client = client
        self.on_message = on_message
        self.on_chat_created = on_chat_created
        self.on_notification = on_notification
        self.queue = open_queue(queue if queue is not None else MemoryQueue())
        self.failures: deque[Failure] = deque(maxlen=_FAILURES_KEPT)
        """The last 1,000 notifications given up on (they are dead letters in the queue)."""
        self.unfinished: list[AnyNotification] = []
        """What the last :meth:`close` left unhandled in a non-durable queue (lost)."""
        self._rng = random.Random(self.options.seed)
        self._state: _State = "new"
        self._in_flight: dict[str, tuple[QueueEntry, asyncio.Task[None]]] = {}
        self._fetched: OrderedDict[str, ChatMessage] = OrderedDict()
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()  # nothing due, nothing in flight
        self._empty = asyncio.Event()  # and nothing waiting for a later try either
        self._closed = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False
        self._backlog = 0  # the queue's backlog as last seen; checked against max_pending
        self._clock_anchor: tuple[float, float] | None = None
        self._counts = dict.fromkeys(
            (
                "accepted", "handled", "failed", "dup", "ignored", "busy", "attempt_failures",
                "abandoned",
            ),
            0,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"<NotificationReceiver {self.name!r} {self._state}, {len(self._in_flight)} in "
            f"flight, {self._counts['failed']} failed>"
        )

    # the options most callers read, by their old names
    name = property(lambda self: self.options.name, doc="The name in every 200 answer.")
    version = property(lambda self: self.options.version, doc="The version in every 200.")
    allow_from = property(lambda self: self.options.allow_from, doc="Networks that may post.")
    trusted_proxies = property(lambda self: self.options.trusted_proxies, doc="Trusted proxies.")
    max_body_size = property(lambda self: self.options.max_body_size, doc="413 above this.")

    @property
    def state(self) -> _State:
        """``"new"``, ``"running"`` after :meth:`start`, ``"draining"`` while stopping,
        ``"closed"``."""
        return self._state

    def now(self) -> float:
        """Seconds since the epoch, advancing with the event loop's clock (so a virtual clock
        in tests moves the queue's times too)."""
        loop_now = asyncio.get_running_loop().time()
        if self._clock_anchor is None:
            self._clock_anchor = (time.time(), loop_now)
        wall, loop_then = self._clock_anchor
        return wall + (loop_now - loop_then)

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the queue and start the workers (entries left by an earlier run are due)."""
        if self._state != "new":
            raise RuntimeError(f"a receiver starts once; this one is {self._state}")
        await self.queue.open()
        if not self.queue.durable:
            logger.warning(
                "notifications are queued in memory: what is queued is lost if this process "
                "crashes or is killed; pass queue='sqlite:///queue.db' (or redis://) to keep it"
            )
        self._backlog = (await self.queue.stats()).backlog
        self._state = "running"
        self._workers = [
            asyncio.get_running_loop().create_task(self._dispatch(), name="notification queue")
        ]
        if getattr(self.queue, "visibility_timeout", None):
            self._workers.append(asyncio.get_running_loop().create_task(self._renew()))
        logger.debug("receiver %r started on %r", self.name, self.queue)

    def stop_accepting(self) -> None:
        """Answer new notifications 503 from now on (the Market retries later); keep working."""
        if self._state == "running":
            self._state = "draining"
            self._wake.set()
            logger.info("no longer accepting notifications; draining")

    async def close(self, drain_timeout: float | None = None) -> list[AnyNotification]:
        """Stop accepting, keep working up to ``drain_timeout`` seconds (the option's by
        default) until nothing is due, then stop the workers.

        Whatever is not finished stays in a durable queue for the next start. In a memory
        queue it is lost: logged at error level, one notification per line, kept in
        :attr:`unfinished` and returned.
        """
        if self._state in ("new", "closed"):
            self._state = "closed"
            return list(self.unfinished)
        if self._closed.is_set() or self._closing:
            await self._closed.wait()
            return list(self.unfinished)
        self._closing = True
        grace = self.options.drain_timeout if drain_timeout is None else drain_timeout
        self.stop_accepting()
        try:
            self._quiet.clear()
            self._wake.set()
            await wait_for_event(self._quiet, grace)
        finally:
            await self._shut_down()
        return list(self.unfinished)

    async def _shut_down(self) -> None:
        self._state = "closed"
        left = [entry for entry, _ in self._in_flight.values()]
        tasks = [*self._workers, *(task for _, task in self._in_flight.values())]
        self._wake.set()  # the dispatcher sees "closed" even if a library swallows a cancel
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10.0)
        self._in_flight.clear()
        if not self.queue.durable:
            left += await self.queue.claim(10**9, float("inf"))
            self.unfinished = [n for n in map(_parse_entry, left) if n is not None]
            for entry in left:
                logger.error(
                    "gave up: event=lost_at_shutdown entry=%s key=%s queue=memory "
                    "drain_timeout=%s notification=%r",
                    entry.id, entry.key, self.options.drain_timeout, _parse_entry(entry),
                    extra={"event": "lost_at_shutdown", "entry_id": entry.id,
                           "dedup_key": entry.key},
                )  # fmt: skip
        elif left:
            logger.info(
                "shutdown: %d notification(s) left in the queue for the next start", len(left)
            )
        with contextlib.suppress(QueueError):
            await self.queue.close()
        self._closed.set()

    async def join(self) -> None:
        """Wait until the queue holds nothing but dead letters (for tests and hand-offs).

        Entries waiting for a later try are waited for too.
        """
        if self._state not in ("running", "draining"):
            return
        self._empty.clear()
        self._wake.set()
        await self._empty.wait()

    def pending(self) -> list[AnyNotification]:
        """The notifications this process is working on right now."""
        found = (_parse_entry(entry) for entry, _ in self._in_flight.values())
        return [n for n in found if n is not None]

    def stats(self) -> ReceiverStats:
        """A snapshot of the counters."""
        c = self._counts
        return ReceiverStats(
            accepted=c["accepted"],
            handled=c["handled"],
            failed=c["failed"],
            pending=len(self._in_flight),
            duplicates=c["dup"],
            ignored=c["ignored"],
            busy=c["busy"],
            attempt_failures=c["attempt_failures"],
            abandoned=c["abandoned"],
        )

    async def health(self) -> Health:
        """Backlog, oldest pending age, dead letters, failures; ``ok`` as ``GET /health``."""
        problem = "" if self._state == "running" else f"receiver is {self._state}"
        try:
            stats = await self.queue.stats()
        except (QueueError, RuntimeError) as exc:
            return Health(
                False, self._state, -1, None, -1, self._counts["attempt_failures"],
                len(self._in_flight), self._counts["abandoned"], f"queue: {short_error(exc)}",
            )  # fmt: skip
        age = None if stats.oldest_received_at is None else self.now() - stats.oldest_received_at
        if not problem and age is not None and age > self.options.health_max_age:
            problem = f"oldest pending notification is {age:.0f} s old"
        return Health(
            not problem, self._state, stats.backlog, age, stats.dead_letters,
            self._counts["attempt_failures"], len(self._in_flight), self._counts["abandoned"],
            problem,
        )  # fmt: skip

    # -- the HTTP answer, framework-neutral ------------------------------------------------

    async def receive(
        self, body: bytes, *, remote: str | None, forwarded_for: Sequence[str] = ()
    ) -> Reply:
        """Answer one ``POST /notification``: check source, size and format, queue durably.

        ``remote`` is the direct peer's address, ``forwarded_for`` the values of every
        ``X-Forwarded-For`` header (believed only when ``remote`` is a trusted proxy). Never
        raises for anything in the request.
        """
        refused = self.check_source(remote, forwarded_for)
        if refused is not None:
            return refused
        if len(body) > self.options.max_body_size:
            return self.too_large()
        return await self.answer(body)

    def check_source(self, remote: str | None, forwarded_for: Sequence[str] = ()) -> Reply | None:
        """``None`` if the request may come from there, else the 403 to answer."""
        allow = self.options.allow_from
        if allow is None:
            return None
        addr = client_address(remote, forwarded_for, self.options.trusted_proxies)
        if addr is not None and in_any(addr, allow):
            return None
        logger.warning("refused a notification from %s (peer %s): not in allow_from", addr, remote)
        return Reply.error(403, "UNKNOWN", "this source address may not send notifications")

    async def answer(self, body: bytes) -> Reply:
        """The reply to a body whose source and size were already checked."""
        try:
            data = decode_json(body)
            notification = parse_notification(data)
        except NotificationFormatError as exc:
            logger.warning("refused a malformed notification: %s", short_error(exc))
            return Reply.error(400, "WRONG_EVENT_FORMAT", short_error(exc, 500))
        if notification.type == "PING":
            return self.ok()
        assert isinstance(data, dict)
        outcome = await self.submit(notification, canonical_body(data))
        if outcome == "busy":
            if self._state != "running":
                return Reply.error(503, "UNKNOWN", "the receiver is stopping; retry later")
            return Reply.error(500, "UNKNOWN", "the receiver cannot take this now; retry later")
        return self.ok()

    async def submit(self, notification: AnyNotification, body: bytes | None = None) -> Outcome:
        """Queue a parsed notification durably (``body``: its JSON; rebuilt if not given).

        ``"queued"`` (committed); ``"duplicate"`` (seen within the dedup window: acknowledged
        only); ``"ignored"`` (no handler for its type, or a PING); ``"busy"`` (not running,
        ``max_pending`` reached, or the write failed: answer 500/503 so the Market retries).
        """
        if not self._wanted(notification):
            self._counts["ignored"] += 1
            logger.debug("ignored %s notification (no handler for it)", notification.type)
            return "ignored"
        if self._state != "running" or self._backlog >= self.options.max_pending:
            self._counts["busy"] += 1
            logger.warning(
                "refused %r: receiver %s, backlog %d (max_pending=%d)",
                notification, self._state, self._backlog, self.options.max_pending,
            )  # fmt: skip
            return "busy"
        if body is None:
            body = canonical_body(_raw(notification))
        try:
            queued = await self.queue.put(key_text(notification), body, self.now())
        except QueueError as exc:
            self._counts["busy"] += 1
            logger.error("could not queue %r, answered 500: %s", notification, short_error(exc))
            return "busy"
        if not queued:
            self._counts["dup"] += 1
            logger.debug("duplicate acknowledged, not handled again: %r", notification)
            return "duplicate"
        self._counts["accepted"] += 1
        self._backlog += 1
        self._wake.set()
        logger.debug("queued %r", notification)
        return "queued"

    def _wanted(self, notification: AnyNotification) -> bool:
        if notification.type == "PING":
            return False
        if self.on_notification is not None or isinstance(notification, ChatMessageSent):
            return True
        return isinstance(notification, ChatCreated) and self.on_chat_created is not None

    def ok(self) -> Reply:
        """The 200 answer: ``{"version", "name", "time"}``."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return Reply(200, {"version": self.version, "name": self.name, "time": now})

    def too_large(self) -> Reply:
        """The 413 answer."""
        logger.warning("refused a notification larger than %d bytes", self.max_body_size)
        return Reply.error(
            413, "WRONG_EVENT_FORMAT", f"the body is larger than {self.max_body_size} bytes"
        )

    # -- the background --------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Claim due entries while there are free slots; each runs in a task of its own."""
        while self._state in ("running", "draining"):
            free = self.options.concurrency - len(self._in_flight)
            entries: list[QueueEntry] = []
            if free > 0:
                try:
                    entries = await self.queue.claim(free, self.now())
                except QueueError as exc:
                    logger.error("cannot read the queue (will try again): %s", short_error(exc))
            if self.state == "closed":  # claimed as the receiver stopped: due again later
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
                    self._backlog = (await self.queue.stats()).backlog
                    if self._backlog == 0:
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
        notification = _parse_entry(entry)
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
            self._counts["handled"] += 1
            self._backlog = max(0, self._backlog - 1)
            return
        stage, error = errors[-1]
        attempts = entry.attempts + 1
        self._counts["attempt_failures"] += 1
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
        try:
            finished, _ = await asyncio.wait({fetch}, timeout=self.options.handler_timeout)
        except asyncio.CancelledError:
            fetch.cancel()
            raise
        if not finished:
            fetch.cancel()
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
        try:
            finished, _ = await asyncio.wait({waiter}, timeout=self.options.handler_timeout)
        except asyncio.CancelledError:
            waiter.cancel()
            raise
        if not finished:
            waiter.cancel()  # a thread cannot be stopped: it is left to finish on its own
            self._counts["abandoned"] += 1
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

    async def _give_up(
        self,
        entry: QueueEntry,
        notification: AnyNotification | None,
        stage: str,
        error: BaseException,
        attempts: int,
    ) -> None:
        await self.queue.bury(entry, self.now())
        self._counts["failed"] += 1
        self._backlog = max(0, self._backlog - 1)
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


def _parse_entry(entry: QueueEntry) -> AnyNotification | None:
    try:
        return parse_notification(json.loads(entry.body))
    except (ValueError, NotificationFormatError):
        return None


def _raw(notification: AnyNotification) -> dict[str, Any]:
    """The JSON of a notification built in Python (for :meth:`~NotificationReceiver.submit`)."""
    if isinstance(notification, ChatMessageSent):
        return {
            "notificationType": notification.type,
            "businessId": notification.business_id,
            "chatId": notification.chat_id,
            "messageId": str(notification.message_id),
            "sentAt": notification.sent_at.isoformat(),
        }
    if isinstance(notification, ChatCreated):
        return {
            "notificationType": notification.type,
            "businessId": notification.business_id,
            "chatId": notification.chat_id,
            "createdAt": notification.created_at.isoformat(),
        }
    return dict(notification.raw)
