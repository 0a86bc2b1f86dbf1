"""The receiver core, framework-neutral: answer a request, queue durably, deliver at least once.

No aiohttp here: :meth:`NotificationReceiver.receive` turns (body, peer address) into a
:class:`Reply`, and background workers take entries from the queue, fetch the message through
the client and call your handlers. The guarantee, kept by :meth:`~NotificationReceiver.answer`
and ``_deliver``: **a notification answered 200 is in the queue** (committed, for a durable
backend) and is then handled, retried until ``retry.give_up_after``, or kept as a dead letter
-- never dropped. A handler call is abandoned after ``handler_timeout`` seconds (and retried),
so a stuck handler holds one slot for that long at most. Those background workers are
:class:`~._delivery.Delivery`; this module owns the lifecycle and the answers, and drives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self

from market_chat_async._models import ChatMessage  # noqa: F401 - the class doctest uses it

from ._calls import handler_kind
from ._delivery import Delivery, parse_entry
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
from ._queue import MemoryQueue, NotificationQueue, QueueError
from ._sources import client_address, in_any
from ._values import (
    ChatCreatedHandler,
    Failure,
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
        is_async = {"on_message": handler_kind("on_message", on_message, 2)}
        for label, hook in (
            ("on_chat_created", on_chat_created),
            ("on_notification", on_notification),
        ):
            if hook is not None:
                is_async[label] = handler_kind(label, hook, 1)
        self.client = client
        self.on_message = on_message
        self.on_chat_created = on_chat_created
        self.on_notification = on_notification
        self.queue = open_queue(queue if queue is not None else MemoryQueue())
        self._clock_anchor: tuple[float, float] | None = None
        self._delivery = Delivery(
            self.queue, client, self.options,
            on_message=on_message, on_chat_created=on_chat_created,
            on_notification=on_notification, is_async=is_async, now=self.now,
        )  # fmt: skip
        self.failures: deque[Failure] = self._delivery.failures
        """The last 1,000 notifications given up on (they are dead letters in the queue)."""
        self.unfinished: list[AnyNotification] = []
        """What the last :meth:`close` left unhandled in a non-durable queue (lost)."""
        self._state: _State = "new"
        self._closed = asyncio.Event()
        self._closing = False
        self._counts = dict.fromkeys(("accepted", "dup", "ignored", "busy"), 0)

    def __repr__(self) -> str:
        return (
            f"<NotificationReceiver {self.name!r} {self._state}, {len(self._delivery.in_flight())} "
            f"in flight, {self._delivery.counts['failed']} failed>"
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
        self._delivery.backlog = (await self.queue.stats()).backlog
        self._state = "running"
        self._delivery.start()
        logger.debug("receiver %r started on %r", self.name, self.queue)

    def stop_accepting(self) -> None:
        """Answer new notifications 503 from now on (the Market retries later); keep working."""
        if self._state == "running":
            self._state = "draining"
            self._delivery.wake()
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
            await self._delivery.settle(grace)
        finally:
            await self._shut_down()
        return list(self.unfinished)

    async def _shut_down(self) -> None:
        self._state = "closed"
        left = await self._delivery.stop()
        if not self.queue.durable:
            left += await self.queue.claim(10**9, float("inf"))
            self.unfinished = [n for n in map(parse_entry, left) if n is not None]
            for entry in left:
                logger.error(
                    "gave up: event=lost_at_shutdown entry=%s key=%s queue=memory "
                    "drain_timeout=%s notification=%r",
                    entry.id, entry.key, self.options.drain_timeout, parse_entry(entry),
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
        await self._delivery.join()

    def pending(self) -> list[AnyNotification]:
        """The notifications this process is working on right now."""
        found = (parse_entry(entry) for entry in self._delivery.in_flight())
        return [n for n in found if n is not None]

    def stats(self) -> ReceiverStats:
        """A snapshot of the counters."""
        c, d = self._counts, self._delivery.counts
        return ReceiverStats(
            accepted=c["accepted"],
            handled=d["handled"],
            failed=d["failed"],
            pending=len(self._delivery.in_flight()),
            duplicates=c["dup"],
            ignored=c["ignored"],
            busy=c["busy"],
            attempt_failures=d["attempt_failures"],
            abandoned=d["abandoned"],
        )

    async def health(self) -> Health:
        """Backlog, oldest pending age, dead letters, failures; ``ok`` as ``GET /health``."""
        problem = "" if self._state == "running" else f"receiver is {self._state}"
        d = self._delivery.counts
        try:
            stats = await self.queue.stats()
        except (QueueError, RuntimeError) as exc:
            return Health(
                False, self._state, -1, None, -1, d["attempt_failures"],
                len(self._delivery.in_flight()), d["abandoned"], f"queue: {short_error(exc)}",
            )  # fmt: skip
        age = None if stats.oldest_received_at is None else self.now() - stats.oldest_received_at
        if not problem and age is not None and age > self.options.health_max_age:
            problem = f"oldest pending notification is {age:.0f} s old"
        return Health(
            not problem, self._state, stats.backlog, age, stats.dead_letters,
            d["attempt_failures"], len(self._delivery.in_flight()), d["abandoned"],
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
        if self._state != "running" or self._delivery.backlog >= self.options.max_pending:
            self._counts["busy"] += 1
            logger.warning(
                "refused %r: receiver %s, backlog %d (max_pending=%d)",
                notification, self._state, self._delivery.backlog, self.options.max_pending,
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
        self._delivery.backlog += 1
        self._delivery.wake()
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
