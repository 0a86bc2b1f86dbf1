"""The receiver's plain values: its options, its answers, its counters, what it calls.

No I/O and no behaviour beyond validation: :class:`ReceiverOptions` (every option, checked when
built), :class:`Reply`, :class:`Failure`, :class:`ReceiverStats`, :class:`Health`, and the
shapes of the handlers and of the client the receiver is given.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Literal, Protocol

import attrs

from market_chat_async._models import ChatMessage
from market_chat_async._version import __version__

from ._events import AnyNotification, ChatCreated, ChatMessageSent
from ._retry import HandlerRetry
from ._sources import MARKET_NETWORKS, IPNetwork, NetworkSpec, networks

DEFAULT_MAX_BODY_SIZE: Final = 64 * 1024

_MAX_NAME = 100  # SendNotificationResponse: version and name are 1..100 characters


class MessageSource(Protocol):
    """What the receiver needs of a client: :class:`~market_chat_async.MarketChatClient` fits.

    >>> from datetime import UTC, datetime
    >>> from market_chat_async import Sender
    >>> class Canned:  # stands in for the client in a test
    ...     async def get_message(self, business_id, chat_id, message_id):
    ...         return ChatMessage(message_id, datetime.now(UTC), Sender.CUSTOMER, "hello")
    >>> from market_chat_async.notifications import NotificationReceiver
    >>> def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
    ...     print(message.message)
    >>> receiver = NotificationReceiver(Canned(), on_message, allow_from=None)
    """

    async def get_message(self, business_id: int, chat_id: int, message_id: int) -> ChatMessage:
        """Fetch one chat message."""
        ...


MessageHandler = Callable[[ChatMessageSent, ChatMessage], Awaitable[object] | object]
ChatCreatedHandler = Callable[[ChatCreated], Awaitable[object] | object]
NotificationHandler = Callable[[AnyNotification], Awaitable[object] | object]


def _positive_int(name: str) -> Callable[[Any, Any, Any], None]:
    def check(_: Any, __: Any, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int of at least 1, got {value!r}")

    return check


def _seconds(name: str, *, zero: bool = False) -> Callable[[Any, Any, Any], None]:
    def check(_: Any, __: Any, value: Any) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not (value >= 0 if zero else value > 0):
            raise ValueError(f"{name} must be {'>= 0' if zero else '> 0'} seconds, got {value!r}")

    return check


def _text(name: str) -> Callable[[Any, Any, Any], None]:
    def check(_: Any, __: Any, value: Any) -> None:
        if not isinstance(value, str) or not 1 <= len(value) <= _MAX_NAME:
            raise ValueError(f"{name} must be a string of 1 to {_MAX_NAME} characters")

    return check


def _allow(value: NetworkSpec | Iterable[NetworkSpec] | None) -> tuple[IPNetwork, ...] | None:
    return None if value is None else networks("allow_from", value)


def _proxies(value: NetworkSpec | Iterable[NetworkSpec]) -> tuple[IPNetwork, ...]:
    return networks("trusted_proxies", value)


@attrs.frozen(kw_only=True)
class ReceiverOptions:
    """Every option of the receiver and its app, in one place, validated when built.

    ``name`` and ``version`` go into every 200 answer. ``allow_from`` lists the networks that
    may post (``None`` allows everyone), ``trusted_proxies`` the reverse proxies whose
    ``X-Forwarded-For`` is believed. ``path`` is the route. Bodies over ``max_body_size``
    get 413. Beyond ``max_pending`` queued notifications the answer is 500 (the Market
    retries later). ``concurrency`` notifications are worked on at once; a handler call (or
    a fetch) is abandoned after ``handler_timeout`` seconds; failures are retried per
    ``retry``. On shutdown, work goes on for ``drain_timeout`` seconds. ``GET /health``
    answers 503 when the oldest pending notification is older than ``health_max_age``
    seconds. A connection
    must deliver a request's headers within ``header_timeout`` seconds and its body within
    ``body_timeout``; at most ``max_connections`` are open (at the cap, the oldest idle one is
    closed for a new one). ``seed`` fixes the retry jitter.

    >>> ReceiverOptions(name="my-shop").concurrency
    4
    >>> ReceiverOptions(concurrency=0)
    Traceback (most recent call last):
    ValueError: concurrency must be an int of at least 1, got 0
    """

    name: str = attrs.field(default="market-chat-async", validator=_text("name"))
    version: str = attrs.field(default=__version__, validator=_text("version"))
    allow_from: tuple[IPNetwork, ...] | None = attrs.field(
        default=MARKET_NETWORKS, converter=_allow
    )
    trusted_proxies: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_proxies)
    path: str = "/notification"
    max_body_size: int = attrs.field(
        default=DEFAULT_MAX_BODY_SIZE, validator=_positive_int("max_body_size")
    )
    max_pending: int = attrs.field(default=100_000, validator=_positive_int("max_pending"))
    concurrency: int = attrs.field(default=4, validator=_positive_int("concurrency"))
    handler_timeout: float = attrs.field(default=60.0, validator=_seconds("handler_timeout"))
    retry: HandlerRetry = attrs.field(factory=HandlerRetry)
    drain_timeout: float = attrs.field(default=30.0, validator=_seconds("drain_timeout", zero=True))
    health_max_age: float = attrs.field(default=600.0, validator=_seconds("health_max_age"))
    header_timeout: float = attrs.field(default=10.0, validator=_seconds("header_timeout"))
    body_timeout: float = attrs.field(default=10.0, validator=_seconds("body_timeout"))
    max_connections: int = attrs.field(default=1000, validator=_positive_int("max_connections"))
    seed: int | None = None

    def replace(self, **changes: Any) -> ReceiverOptions:
        """A copy with some options changed; an unknown name is a :class:`TypeError`.

        >>> ReceiverOptions().replace(name="my-shop", concurrency=8).concurrency
        8
        """
        known = {field.name for field in attrs.fields(ReceiverOptions)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown receiver option(s): {', '.join(unknown)}")
        if changes.get("retry", self.retry) is None:
            changes["retry"] = HandlerRetry()
        return attrs.evolve(self, **changes)


@attrs.frozen
class Reply:
    """An HTTP answer to the Market: status and JSON body.

    >>> error = Reply.error(400, "WRONG_EVENT_FORMAT", "chatId is required").body["error"]
    >>> error["type"]
    'WRONG_EVENT_FORMAT'
    """

    status: int
    body: dict[str, Any]

    @classmethod
    def error(cls, status: int, kind: str, message: str) -> Reply:
        """The documented error body, ``{"error": {"type": ..., "message": ...}}``."""
        return cls(status, {"error": {"type": kind, "message": message}})


@attrs.frozen
class Failure:
    """A notification given up on (now a dead letter): what, where, the last error, how often.

    ``stage`` is ``"fetch"``, ``"on_message"``, ``"on_chat_created"``, ``"on_notification"``
    or ``"parse"``.

    >>> from market_chat_async.notifications import Notification
    >>> Failure(Notification("ORDER_CREATED", {}), "on_notification", RuntimeError("x"), 3).stage
    'on_notification'
    """

    notification: AnyNotification | None
    stage: str
    error: BaseException
    attempts: int


@attrs.frozen
class ReceiverStats:
    """Counters of a receiver since it started (PINGs and refused requests are not counted).

    ``accepted`` notifications were queued; ``handled`` were delivered to the handlers;
    ``failed`` were given up (dead letters); ``pending`` are being worked on right now;
    ``duplicates`` and ``ignored`` (no handler for the type) were acknowledged only; ``busy``
    were refused (500 when the queue was full or failed, 503 while stopping);
    ``attempt_failures`` counts every failed or timed-out try, ``abandoned`` the handler calls
    left running past ``handler_timeout``.

    >>> ReceiverStats(accepted=2, handled=1, failed=0, pending=1, duplicates=1, ignored=0,
    ...               busy=0).pending
    1
    """

    accepted: int
    handled: int
    failed: int
    pending: int
    duplicates: int
    ignored: int
    busy: int
    attempt_failures: int = 0
    abandoned: int = 0


@attrs.frozen
class Health:
    """What ``GET /health`` reports; ``ok`` is whether it answers 200 (else 503).

    ``ok`` needs the receiver running and the oldest pending notification no older than
    ``health_max_age``. Ages are in seconds.

    >>> Health(ok=True, state="running", backlog=0, oldest_pending_age=None, dead_letters=0,
    ...        handler_failures=0, in_flight=0).as_json()["backlog"]
    0
    """

    ok: bool
    state: str
    backlog: int
    oldest_pending_age: float | None
    dead_letters: int
    handler_failures: int
    in_flight: int
    abandoned: int = 0
    problem: str = ""

    def as_json(self) -> dict[str, Any]:
        """The JSON body of ``GET /health``."""
        return attrs.asdict(self)


class HandlerTimeoutError(TimeoutError):
    """A handler call (or the fetch of the message) did not finish within ``handler_timeout``:
    it was abandoned, and the notification is tried again later.

    >>> str(HandlerTimeoutError("on_message", 60.0))
    'on_message did not finish within 60.0 s (abandoned; will be retried)'
    """

    def __init__(self, stage: str, seconds: float) -> None:
        super().__init__(f"{stage} did not finish within {seconds} s (abandoned; will be retried)")
        self.stage = stage
        self.seconds = seconds


Outcome = Literal["queued", "duplicate", "ignored", "busy"]
