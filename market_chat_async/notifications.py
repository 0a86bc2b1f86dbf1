"""The receiving side of the Market's push notifications: ``POST /notification``.

The Market POSTs a notification to your server when a chat is created (``CHAT_CREATED``) or a
message is sent (``CHAT_MESSAGE_SENT``). :func:`create_app` builds an ``aiohttp.web``
application that answers those requests the way the official notification API asks, and hands
every new message to your coroutine together with the :class:`~market_chat_async.ChatMessage`
fetched through your :class:`~market_chat_async.MarketChatClient` (so through the cabinet's
shared limiter)::

    import logging

    from aiohttp import web

    from market_chat_async import ChatMessage, MarketChatClient
    from market_chat_async.notifications import ChatCreated, ChatMessageSent, create_app


    async def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
        print(notification.chat_id, message.sender, message.message)


    async def on_chat_created(notification: ChatCreated) -> None:
        print("new chat", notification.chat_id)


    def main() -> None:
        logging.basicConfig(level=logging.INFO)
        client = MarketChatClient()  # reads YANDEX_MARKET_API_KEY
        app = create_app(
            client,
            on_message,
            on_chat_created=on_chat_created,
            name="my-shop",
            version="1.0",
            trusted_proxies=["127.0.0.1"],  # nginx on this host terminates HTTPS
        )

        async def close_client(app: web.Application) -> None:
            await client.close()  # runs after the receiver has drained

        app.on_cleanup.append(close_client)
        web.run_app(app, host="127.0.0.1", port=8080)

To serve it next to other routes, mount it: ``main_app.add_subapp("/market", app)`` answers
``POST /market/notification``. Another framework (FastAPI, Starlette, ...) can use the
framework-neutral :meth:`NotificationReceiver.receive`::

    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    receiver = NotificationReceiver(client, on_message, name="my-shop", version="1.0")


    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with receiver:  # start; on exit drain (or report) what is pending
            yield


    api = FastAPI(lifespan=lifespan)


    @api.post("/notification")
    async def notification(request: Request) -> JSONResponse:
        reply = receiver.receive(
            await request.body(),  # put a body-size limit in front (e.g. the proxy's)
            remote=request.client.host if request.client else None,
            forwarded_for=request.headers.getlist("x-forwarded-for"),
        )
        return JSONResponse(reply.body, status_code=reply.status)

What it does, request by request:

* **Source address.** Only the Market's documented networks (:data:`MARKET_NETWORKS`) may post;
  anyone else gets ``403`` before the body is read. ``allow_from=None`` switches the check off
  (local testing). Behind a reverse proxy, list it in ``trusted_proxies``: ``X-Forwarded-For``
  is believed only when the direct peer is such a proxy, and the client is the right-most
  address in the chain that is not itself a trusted proxy.
* **Size.** A body over ``max_body_size`` (64 KiB) gets ``413`` without being read further.
* **Format.** Anything that is not a JSON object with a string ``notificationType`` (or is
  nested deeper than 64 levels), or a known type with a missing or mistyped required field, gets
  ``400 {"error": {"type": "WRONG_EVENT_FORMAT", "message": ...}}``; see
  :func:`parse_notification` for the rules (``messageId`` arrives as a string and becomes an
  ``int``). The ``Content-Type`` header is not checked: the body is read as JSON whatever it says.
  Input never causes a ``500``.
* **PING** is answered at once with ``200 {"version", "name", "time"}``: it never touches the
  queue, the limiter or a handler, so a backlog cannot delay it past its 1-second budget.
* **CHAT_MESSAGE_SENT / CHAT_CREATED** are acknowledged with the same ``200`` body as soon as
  they are queued (in memory); the fetch and your handler run in the background, however long
  the quota makes the fetch wait. Types you have no handler for are acknowledged and ignored
  (logged at debug level).
* **Duplicates** (same ``business_id``, ``chat_id``, ``message_id``; for ``CHAT_CREATED`` the
  same chat; for other types the same content) are acknowledged and not handled again while the
  first is pending or after it succeeded (the last ``dedup_size`` successes are remembered). A
  notification whose handling finally *failed* is forgotten, so a redelivery gets a fresh try.
* **Backpressure.** At most ``max_pending`` notifications are held; beyond that the answer is
  ``500`` (type ``UNKNOWN``), which the Market answers by retrying later. Nothing acknowledged
  is dropped silently: it is handled, or logged as failed, or logged as unfinished at shutdown.

In the background:

* Each notification runs in its own task (at most ``max_pending`` of them), so a handler
  waiting out a retry, or a fetch waiting minutes for one cabinet's quota, holds up no other
  notification; fetches queue first come, first served in the cabinet's limiter, and at most
  ``concurrency`` handler calls run at once. The order in which handlers run is not
  guaranteed: use ``sent_at``.
* A handler that raises, or a fetch that fails after the client's own retries, is retried per
  :class:`HandlerRetry` (3 attempts, exponential backoff with jitter; see :func:`retry_delay`),
  then logged at error level with the notification and the traceback, and recorded in
  :attr:`NotificationReceiver.failures`. It never stops the receiver. A fetched message is kept
  across handler retries, so a retry costs no quota.
* On a graceful shutdown (the app's cleanup, or leaving ``async with receiver``) new
  notifications get ``500`` and pending ones are given ``drain_timeout`` seconds to finish;
  what is still unfinished then is cancelled, logged at error level one notification per line,
  and left in :attr:`NotificationReceiver.unfinished`.

Handlers should be idempotent per notification: a redelivery after a failed attempt runs every
hook again, and the in-memory queue does not survive a crash. Everything is logged under the
``market_chat_async.notifications`` logger; credentials never appear there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import re
from collections import OrderedDict, deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, Protocol, Self, TypeVar

import aiohttp
import attrs
from aiohttp import web

from ._errors import BadRequestError, ForbiddenError, RateLimitError, UnauthorizedError
from ._models import ChatMessage
from ._protocol import validate_id
from ._version import __version__

__all__ = [
    "AnyNotification",
    "ChatCreated",
    "ChatCreatedHandler",
    "ChatMessageSent",
    "DEFAULT_MAX_BODY_SIZE",
    "Failure",
    "HandlerRetry",
    "MARKET_NETWORKS",
    "MessageHandler",
    "MessageSource",
    "Notification",
    "NotificationFormatError",
    "NotificationHandler",
    "NotificationReceiver",
    "Outcome",
    "RECEIVER",
    "ReceiverStats",
    "Reply",
    "client_address",
    "create_app",
    "decode_json",
    "dedup_key",
    "parse_notification",
    "retry_delay",
]

logger = logging.getLogger("market_chat_async.notifications")

T = TypeVar("T")
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
NetworkSpec = str | IPv4Network | IPv6Network

MARKET_NETWORKS: Final[tuple[IPv4Network, ...]] = (
    IPv4Network("5.45.207.0/25"),
    IPv4Network("141.8.142.0/25"),
    IPv4Network("5.255.253.0/25"),
)
"""The networks the Market documents as the only sources of notifications."""

DEFAULT_MAX_BODY_SIZE: Final = 64 * 1024
"""Bodies larger than this (bytes) are refused with 413; a notification is a few hundred."""

_MAX_NAME = 100  # SendNotificationResponse: version and name are 1..100 characters
_MAX_DEPTH = 64  # JSON nesting; a notification needs about 4, json.loads recurses per level
_FAILURES_KEPT = 1000


# -- the notifications -----------------------------------------------------------------------


@attrs.frozen
class ChatMessageSent:
    """``CHAT_MESSAGE_SENT``: a message was added to a chat.

    ``message_id`` is an ``int`` although the Market sends it as a string; ``sent_at`` is an
    aware ``datetime`` that keeps the offset it was sent with.

    >>> n = parse_notification({"notificationType": "CHAT_MESSAGE_SENT", "businessId": 12345,
    ...     "chatId": 67, "messageId": "89", "sentAt": "2017-11-21T00:00:00.213Z"})
    >>> n.message_id, n.sent_at.isoformat(), n.type
    (89, '2017-11-21T00:00:00.213000+00:00', 'CHAT_MESSAGE_SENT')
    """

    type: ClassVar[str] = "CHAT_MESSAGE_SENT"

    business_id: int
    chat_id: int
    message_id: int
    sent_at: datetime


@attrs.frozen
class ChatCreated:
    """``CHAT_CREATED``: a buyer's chat was created.

    >>> n = parse_notification({"notificationType": "CHAT_CREATED", "businessId": 12345,
    ...     "chatId": 67, "createdAt": "2017-11-21T03:00:00+03:00"})
    >>> n.chat_id, n.created_at.isoformat()
    (67, '2017-11-21T03:00:00+03:00')
    """

    type: ClassVar[str] = "CHAT_CREATED"

    business_id: int
    chat_id: int
    created_at: datetime


@attrs.frozen
class Notification:
    """Any other notification (``PING``, ``ORDER_CREATED``, ...): its type and the JSON as sent.

    >>> n = parse_notification({"notificationType": "ORDER_CREATED", "orderId": 1})
    >>> n.type, n.raw["orderId"]
    ('ORDER_CREATED', 1)
    """

    type: str
    raw: Mapping[str, Any]


AnyNotification = ChatMessageSent | ChatCreated | Notification
"""What :func:`parse_notification` returns; every variant has a ``type`` string."""


class NotificationFormatError(ValueError):
    """A notification the official schema does not allow; the app answers 400 with its text.

    >>> parse_notification({"notificationType": "CHAT_CREATED", "businessId": 1, "chatId": 1})
    Traceback (most recent call last):
    market_chat_async.notifications.NotificationFormatError: createdAt is required
    """


def parse_notification(data: object) -> AnyNotification:
    """Turn a decoded JSON body into a notification, or raise :class:`NotificationFormatError`.

    A pure function of the value, following the official schemas:

    * the body is an object whose ``notificationType`` is a non-empty string; a type other
      than ``CHAT_MESSAGE_SENT`` and ``CHAT_CREATED`` becomes a :class:`Notification` and
      nothing else about it is checked;
    * ``businessId`` and ``chatId`` are JSON integers (not ``true``, not ``5.0``, not ``"5"``)
      from 1 to 2**63 - 1;
    * ``messageId`` is a string of ASCII digits in that range (an integer is accepted too, in
      case the Market ever sends the chat API's own type);
    * ``sentAt`` / ``createdAt`` are ISO 8601 date-times *with* an offset (``Z`` or ``+03:00``,
      fractional seconds allowed); a time without one is refused, not guessed;
    * keys the schema does not name are ignored.

    Every problem is reported at once, by field name.

    >>> try:
    ...     parse_notification({"notificationType": "CHAT_MESSAGE_SENT", "businessId": True,
    ...                         "chatId": 0, "messageId": "x1", "sentAt": "2017-11-21T00:00"})
    ... except NotificationFormatError as exc:
    ...     for problem in str(exc).split("; "):
    ...         print(problem)
    businessId must be an int, not bool
    chatId must be between 1 and 9223372036854775807, got 0
    messageId must be a string of at most 19 digits, got 'x1'
    sentAt has no UTC offset: '2017-11-21T00:00'
    """
    if not isinstance(data, dict):
        raise NotificationFormatError(f"the body must be a JSON object, not {_json_type(data)}")
    kind = data.get("notificationType")
    if kind is None:
        raise NotificationFormatError("notificationType is required")
    if not isinstance(kind, str) or not kind:
        raise NotificationFormatError(
            f"notificationType must be a non-empty string, not {_json_type(kind)}"
        )
    problems: list[str] = []
    if kind == ChatMessageSent.type:
        business_id = _field(data, "businessId", _int64, problems)
        chat_id = _field(data, "chatId", _int64, problems)
        message_id = _field(data, "messageId", _digits, problems)
        sent_at = _field(data, "sentAt", _date_time, problems)
        if problems:
            raise NotificationFormatError("; ".join(problems))
        return ChatMessageSent(business_id, chat_id, message_id, sent_at)  # type: ignore[arg-type]
    if kind == ChatCreated.type:
        business_id = _field(data, "businessId", _int64, problems)
        chat_id = _field(data, "chatId", _int64, problems)
        created_at = _field(data, "createdAt", _date_time, problems)
        if problems:
            raise NotificationFormatError("; ".join(problems))
        return ChatCreated(business_id, chat_id, created_at)  # type: ignore[arg-type]
    return Notification(kind, data)


def decode_json(body: bytes) -> object:
    """The JSON value of a body, or :class:`NotificationFormatError`; never anything else.

    UTF-8 (UTF-16/32 are recognised too, as ``json.loads`` does). Nesting deeper than 64
    levels is refused *before* parsing, since the parser recurses once per level and running
    into the interpreter's recursion limit is no way to refuse a request.

    >>> decode_json(b'{"notificationType": "PING"}')
    {'notificationType': 'PING'}
    >>> decode_json(b"[" * 1000)
    Traceback (most recent call last):
    market_chat_async.notifications.NotificationFormatError: JSON nested deeper than 64 levels
    """
    if _nested_deeper_than(body, _MAX_DEPTH):
        raise NotificationFormatError(f"JSON nested deeper than {_MAX_DEPTH} levels")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        logger.debug("body is not JSON: %s", _short(exc))
        raise NotificationFormatError("the body is not valid JSON") from None


_JSON_SPECIAL = re.compile(rb'[\[\]{}"\\]')


def _nested_deeper_than(body: bytes, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit``; linear in ``len(body)``."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _JSON_SPECIAL.finditer(body):
        at = match.start()
        if at == escaped_at:
            continue
        char = body[at : at + 1]
        if in_string:
            if char == b"\\":
                escaped_at = at + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in b"[{":
            depth += 1
            if depth > limit:
                return True
        elif char in b"]}":
            depth -= 1
    return False


def _field(
    data: Mapping[str, Any], name: str, check: Callable[[str, object], T], problems: list[str]
) -> T | None:
    if name not in data:
        problems.append(f"{name} is required")
        return None
    try:
        return check(name, data[name])
    except (TypeError, ValueError) as exc:
        problems.append(str(exc))
        return None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def _int64(name: str, value: object) -> int:
    return validate_id(name, value)


def _digits(name: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return validate_id(name, value)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string of digits, not {_json_type(value)}")
    if not (value.isascii() and value.isdigit() and len(value) <= 19):
        raise ValueError(f"{name} must be a string of at most 19 digits, got {value[:40]!r}")
    return validate_id(name, int(value))


def _date_time(name: str, value: object) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be an ISO 8601 date-time string, not {_json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{name} is not an ISO 8601 date-time: {value[:40]!r}") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"{name} has no UTC offset: {value[:40]!r}")
    return parsed


def dedup_key(notification: AnyNotification) -> Hashable | None:
    """What makes two deliveries the same notification (``None``: cannot tell, never deduped).

    >>> n = parse_notification({"notificationType": "CHAT_MESSAGE_SENT", "businessId": 1,
    ...     "chatId": 2, "messageId": "3", "sentAt": "2017-11-21T00:00:00Z"})
    >>> dedup_key(n)
    ('CHAT_MESSAGE_SENT', 1, 2, 3)
    """
    if isinstance(notification, ChatMessageSent):
        n = notification
        return (n.type, n.business_id, n.chat_id, n.message_id)
    if isinstance(notification, ChatCreated):
        return (notification.type, notification.business_id, notification.chat_id)
    try:
        text = json.dumps(notification.raw, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return None
    return (notification.type, hashlib.sha256(text.encode()).hexdigest())


# -- where a request comes from --------------------------------------------------------------


def _parse_address(text: str) -> IPAddress | None:
    """An address as ``X-Forwarded-For`` or a peer names it (port and brackets allowed)."""
    host = text.strip()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        host = host[1:end]
    elif host.count(":") == 1:  # IPv4 with a port
        host = host.partition(":")[0]
    try:
        addr = ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return addr


def _networks(name: str, value: NetworkSpec | Iterable[NetworkSpec]) -> tuple[IPNetwork, ...]:
    items: Iterable[NetworkSpec] = (
        (value,) if isinstance(value, str | IPv4Network | IPv6Network) else value
    )
    networks = []
    for item in items:
        try:
            networks.append(item if not isinstance(item, str) else ip_network(item.strip()))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc} (give networks like '5.45.207.0/25')") from None
    return tuple(networks)


def client_address(
    remote: str | None, forwarded_for: Sequence[str], trusted_proxies: Sequence[IPNetwork]
) -> IPAddress | None:
    """The address a request came from, believing ``X-Forwarded-For`` only from trusted proxies.

    The chain is the peer preceded by the ``X-Forwarded-For`` entries (all its headers, in
    order); walking it from the right, the first address that is not a trusted proxy is the
    client. ``None`` when that entry is unreadable (or there is no peer address).

    >>> proxies = [ip_network("10.0.0.0/8")]
    >>> str(client_address("10.0.0.2", ["1.2.3.4, 5.45.207.9"], proxies))
    '5.45.207.9'
    >>> str(client_address("8.8.8.8", ["5.45.207.9"], proxies))  # not a proxy: header ignored
    '8.8.8.8'
    """
    peer = _parse_address(remote) if remote else None
    if peer is None or not _in_any(peer, trusted_proxies):
        return peer
    chain = [entry for header in forwarded_for for entry in header.split(",")]
    current: IPAddress | None = peer
    for entry in reversed(chain):
        current = _parse_address(entry)
        if current is None or not _in_any(current, trusted_proxies):
            return current
    return current


def _in_any(addr: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in networks)


# -- retries ---------------------------------------------------------------------------------


@attrs.frozen
class HandlerRetry:
    """How a failing handler (or a failed fetch) is retried, in one place.

    Up to ``attempts`` tries in all; before try ``n + 1`` the wait is drawn from
    ``[c/2, c]`` with ``c = min(backoff_max, backoff_initial * 2**(n-1))`` (exponential
    backoff, "equal" jitter). See :func:`retry_delay` for what is never retried.

    >>> HandlerRetry()
    HandlerRetry(attempts=3, backoff_initial=1.0, backoff_max=60.0)
    """

    attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    backoff_initial: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    backoff_max: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))


_PERMANENT: Final = (BadRequestError, UnauthorizedError, ForbiddenError)


def retry_delay(
    policy: HandlerRetry, error: BaseException, attempt: int, rng: random.Random
) -> float | None:
    """Seconds to wait before another try after ``attempt`` failed ones, or ``None`` to stop.

    Never retried: 400, 401 and 403 from the Market (a wrong request or key stays wrong).
    A 404 *is* retried: a notification can outrun the message becoming readable. A
    :class:`RateLimitError` waits at least its ``retry_after``.

    >>> rng = random.Random(0)
    >>> 0.5 <= retry_delay(HandlerRetry(), RuntimeError("db down"), 1, rng) <= 1.0
    True
    >>> retry_delay(HandlerRetry(), RuntimeError("db down"), 3, rng) is None
    True
    >>> retry_delay(HandlerRetry(), ForbiddenError(403), 1, rng) is None
    True
    """
    if attempt >= policy.attempts or isinstance(error, _PERMANENT):
        return None
    ceiling = min(policy.backoff_max, policy.backoff_initial * 2.0 ** (attempt - 1))
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    if isinstance(error, RateLimitError) and error.retry_after:
        delay = max(delay, error.retry_after)
    return delay


# -- the receiver ----------------------------------------------------------------------------


class MessageSource(Protocol):
    """What the receiver needs of a client: :class:`~market_chat_async.MarketChatClient` fits.

    >>> from datetime import UTC, datetime
    >>> from market_chat_async import Sender
    >>> class Canned:  # stands in for the client in a test
    ...     async def get_message(self, business_id, chat_id, message_id):
    ...         return ChatMessage(message_id, datetime.now(UTC), Sender.CUSTOMER, "hello")
    >>> async def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
    ...     print(message.message)
    >>> receiver = NotificationReceiver(Canned(), on_message, allow_from=None)
    """

    async def get_message(self, business_id: int, chat_id: int, message_id: int) -> ChatMessage:
        """Fetch one chat message."""
        ...


MessageHandler = Callable[[ChatMessageSent, ChatMessage], Awaitable[object]]
"""``async def on_message(notification: ChatMessageSent, message: ChatMessage) -> None``."""
ChatCreatedHandler = Callable[[ChatCreated], Awaitable[object]]
"""``async def on_chat_created(notification: ChatCreated) -> None``."""
NotificationHandler = Callable[[AnyNotification], Awaitable[object]]
"""``async def on_notification(notification: AnyNotification) -> None`` (every type but PING)."""


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
    """A notification whose handling finally failed: what, where, the last error, how often.

    ``stage`` is ``"fetch"``, ``"on_message"``, ``"on_chat_created"`` or ``"on_notification"``.

    >>> Failure(Notification("ORDER_CREATED", {}), "on_notification", RuntimeError("x"), 3).stage
    'on_notification'
    """

    notification: AnyNotification
    stage: str
    error: BaseException
    attempts: int


@attrs.frozen
class ReceiverStats:
    """Counters of a receiver since it started (PINGs and refused requests are not counted).

    ``accepted`` notifications were queued; each ends ``handled`` or ``failed``, or is still
    ``pending``. ``duplicates`` and ``ignored`` (no handler for the type) were acknowledged
    only; ``busy`` were refused with 500 because ``max_pending`` was reached or it was closing.

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


@attrs.define(eq=False)
class _Job:
    notification: AnyNotification
    key: Hashable  # the dedup key, or a fresh object() when the notification has none
    remember: bool  # whether success goes into the recently-done store
    task: asyncio.Task[None] | None = None


_State = Literal["new", "running", "closing", "closed"]
Outcome = Literal["queued", "duplicate", "ignored", "busy"]
"""What :meth:`NotificationReceiver.submit` did with a notification."""


class NotificationReceiver:
    """Queue notifications, fetch their messages and run your handlers in the background.

    :func:`create_app` builds one and mounts it; it is reachable there as ``app[RECEIVER]``.
    Use it directly to serve notifications from another framework (see the module docstring):
    ``async with receiver:`` starts it and, on exit, drains it; :meth:`receive` answers one
    request. Options are described in :func:`create_app`.

    >>> async def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
    ...     print(message.message)
    >>> async def main(client: MessageSource) -> None:
    ...     async with NotificationReceiver(client, on_message, allow_from=None) as receiver:
    ...         reply = receiver.receive(b'{"notificationType": "PING"}', remote="127.0.0.1")
    ...         assert reply.status == 200
    """

    def __init__(
        self,
        client: MessageSource,
        on_message: MessageHandler,
        *,
        name: str = "market-chat-async",
        version: str = __version__,
        on_chat_created: ChatCreatedHandler | None = None,
        on_notification: NotificationHandler | None = None,
        allow_from: NetworkSpec | Iterable[NetworkSpec] | None = MARKET_NETWORKS,
        trusted_proxies: NetworkSpec | Iterable[NetworkSpec] = (),
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        max_pending: int = 10_000,
        concurrency: int = 4,
        retry: HandlerRetry | None = None,
        drain_timeout: float = 30.0,
        dedup_size: int = 100_000,
        seed: int | None = None,
    ) -> None:
        for label, text in (("name", name), ("version", version)):
            if not isinstance(text, str) or not 1 <= len(text) <= _MAX_NAME:
                raise ValueError(f"{label} must be a string of 1 to {_MAX_NAME} characters")
        if not callable(on_message):
            raise TypeError("on_message must be an async function (notification, message)")
        for label, hook in (
            ("on_chat_created", on_chat_created),
            ("on_notification", on_notification),
        ):
            if hook is not None and not callable(hook):
                raise TypeError(f"{label} must be an async function or None")
        for label, count in (
            ("max_body_size", max_body_size),
            ("max_pending", max_pending),
            ("concurrency", concurrency),
            ("dedup_size", dedup_size),
        ):
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValueError(f"{label} must be an int of at least 1, got {count!r}")
        if not drain_timeout >= 0:
            raise ValueError(f"drain_timeout must be >= 0 seconds, got {drain_timeout}")
        self.client = client
        self.name = name
        self.version = version
        self.on_message = on_message
        self.on_chat_created = on_chat_created
        self.on_notification = on_notification
        self.allow_from = None if allow_from is None else _networks("allow_from", allow_from)
        self.trusted_proxies = _networks("trusted_proxies", trusted_proxies)
        self.max_body_size = max_body_size
        self.max_pending = max_pending
        self.concurrency = concurrency
        self.retry = retry or HandlerRetry()
        self.drain_timeout = drain_timeout
        self.dedup_size = dedup_size
        self.failures: deque[Failure] = deque(maxlen=_FAILURES_KEPT)
        """The last 1,000 notifications whose handling finally failed."""
        self.unfinished: list[AnyNotification] = []
        """What the last :meth:`close` could not finish within ``drain_timeout``."""
        self._rng = random.Random(seed)
        self._state: _State = "new"
        self._active: dict[Hashable, _Job] = {}  # pending, in arrival order
        self._done: OrderedDict[Hashable, None] = OrderedDict()  # recent successes
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = asyncio.Event()
        self._slots: asyncio.Semaphore | None = None
        self._counts = dict.fromkeys(("accepted", "handled", "failed", "dup", "ignored", "busy"), 0)

    def __repr__(self) -> str:
        return (
            f"<NotificationReceiver {self.name!r} {self._state}, {len(self._active)} pending, "
            f"{self._counts['failed']} failed>"
        )

    @property
    def state(self) -> _State:
        """``"new"``, then ``"running"`` after :meth:`start`, ``"closing"`` while draining,
        ``"closed"``."""
        return self._state

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start accepting notifications (call it with the event loop running)."""
        if self._state != "new":
            raise RuntimeError(f"a receiver starts once; this one is {self._state}")
        self._slots = asyncio.Semaphore(self.concurrency)
        self._state = "running"
        logger.debug("receiver %r started", self.name)

    async def close(self) -> list[AnyNotification]:
        """Refuse new notifications, wait up to ``drain_timeout`` for the pending ones, then
        cancel and report (log at error level, keep in :attr:`unfinished`) what is left.

        Returns the unfinished notifications (empty when everything drained).
        """
        if self._state in ("new", "closed"):
            self._state = "closed"
            return list(self.unfinished)
        if self._state == "closing":  # a second caller waits for the first to finish
            await self._closed.wait()
            return list(self.unfinished)
        self._state = "closing"
        if self._active:
            logger.info("draining %d pending notifications", len(self._active))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.drain_timeout):
                    await self._idle.wait()
        jobs = list(self._active.values())
        for job in jobs:
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(*(job.task for job in jobs if job.task), return_exceptions=True)
        self.unfinished = [job.notification for job in jobs]
        for notification in self.unfinished:
            logger.error(
                "shutdown: not handled within drain_timeout=%s s: %r",
                self.drain_timeout,
                notification,
            )
        self._state = "closed"
        return list(self.unfinished)

    async def join(self) -> None:
        """Wait until nothing is pending (for tests and orderly hand-offs)."""
        await self._idle.wait()

    def pending(self) -> list[AnyNotification]:
        """The notifications accepted and not finished yet, oldest first."""
        return [job.notification for job in self._active.values()]

    def stats(self) -> ReceiverStats:
        """A snapshot of the counters."""
        c = self._counts
        return ReceiverStats(
            accepted=c["accepted"],
            handled=c["handled"],
            failed=c["failed"],
            pending=len(self._active),
            duplicates=c["dup"],
            ignored=c["ignored"],
            busy=c["busy"],
        )

    # -- the HTTP answer, framework-neutral ------------------------------------------------

    def receive(
        self, body: bytes, *, remote: str | None, forwarded_for: Sequence[str] = ()
    ) -> Reply:
        """Answer one ``POST /notification``: check the source, size and format, queue it.

        ``remote`` is the direct peer's address, ``forwarded_for`` the values of every
        ``X-Forwarded-For`` header (believed only when ``remote`` is a trusted proxy). Never
        raises for anything in the request; never waits.
        """
        refused = self.check_source(remote, forwarded_for)
        if refused is not None:
            return refused
        if len(body) > self.max_body_size:
            return self._too_large()
        return self.answer(body)

    def check_source(self, remote: str | None, forwarded_for: Sequence[str] = ()) -> Reply | None:
        """``None`` if the request may come from there, else the 403 to answer."""
        if self.allow_from is None:
            return None
        addr = client_address(remote, forwarded_for, self.trusted_proxies)
        if addr is not None and _in_any(addr, self.allow_from):
            return None
        logger.warning("refused a notification from %s (peer %s): not in allow_from", addr, remote)
        return Reply.error(403, "UNKNOWN", "this source address may not send notifications")

    def answer(self, body: bytes) -> Reply:
        """The reply to a body whose source and size were already checked."""
        try:
            notification = parse_notification(decode_json(body))
        except NotificationFormatError as exc:
            logger.warning("refused a malformed notification: %s", _short(exc))
            return Reply.error(400, "WRONG_EVENT_FORMAT", _short(exc, 500))
        if notification.type == "PING":
            return self._ok()
        if self.submit(notification) == "busy":
            return Reply.error(500, "UNKNOWN", "the receiver cannot take this now; retry later")
        return self._ok()

    def submit(self, notification: AnyNotification) -> Outcome:
        """Queue a parsed notification for the background; never waits.

        ``"queued"``; ``"duplicate"`` (pending or recently done, so acknowledged only);
        ``"ignored"`` (no handler for its type, or a PING); ``"busy"`` (``max_pending`` reached,
        or the receiver is not running: answer 500 so the Market retries later).
        """
        if not self._wanted(notification):
            self._counts["ignored"] += 1
            logger.debug("ignored %s notification (no handler for it)", notification.type)
            return "ignored"
        key = dedup_key(notification)
        if key is not None and (key in self._active or key in self._done):
            if key in self._done:
                self._done.move_to_end(key)
            self._counts["dup"] += 1
            logger.debug("duplicate acknowledged, not handled again: %r", notification)
            return "duplicate"
        if self._state != "running" or len(self._active) >= self.max_pending:
            self._counts["busy"] += 1
            logger.warning(
                "refused %r with 500: receiver %s, %d pending (max_pending=%d)",
                notification,
                self._state,
                len(self._active),
                self.max_pending,
            )
            return "busy"
        job = _Job(notification, key if key is not None else object(), key is not None)
        self._active[job.key] = job
        self._idle.clear()
        self._counts["accepted"] += 1
        job.task = asyncio.get_running_loop().create_task(
            self._run(job), name=f"notification {notification.type}"
        )
        logger.debug("queued %r", notification)
        return "queued"

    def _wanted(self, notification: AnyNotification) -> bool:
        if notification.type == "PING":
            return False
        if self.on_notification is not None or isinstance(notification, ChatMessageSent):
            return True
        return isinstance(notification, ChatCreated) and self.on_chat_created is not None

    def _ok(self) -> Reply:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return Reply(200, {"version": self.version, "name": self.name, "time": now})

    def _too_large(self) -> Reply:
        logger.warning("refused a notification larger than %d bytes", self.max_body_size)
        return Reply.error(
            413, "WRONG_EVENT_FORMAT", f"the body is larger than {self.max_body_size} bytes"
        )

    # -- the background --------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        n = job.notification
        ok = True
        try:
            if self.on_notification is not None:
                hook = self.on_notification
                ok &= await self._try(job, "on_notification", lambda: hook(n), handler=True)
            if isinstance(n, ChatMessageSent):
                ok &= await self._message(job, n)
            elif isinstance(n, ChatCreated) and self.on_chat_created is not None:
                created = self.on_chat_created
                ok &= await self._try(job, "on_chat_created", lambda: created(n), handler=True)
        finally:
            # A cancelled job (drain timeout) lands here too: neither handled nor failed.
            del self._active[job.key]
            if not self._active:
                self._idle.set()
        if ok:
            self._counts["handled"] += 1
            if job.remember:
                self._done[job.key] = None
                while len(self._done) > self.dedup_size:
                    self._done.popitem(last=False)
        else:
            self._counts["failed"] += 1  # forgotten, so a redelivery is tried afresh

    async def _message(self, job: _Job, n: ChatMessageSent) -> bool:
        fetched: list[ChatMessage] = []

        async def fetch() -> None:
            fetched.append(await self.client.get_message(n.business_id, n.chat_id, n.message_id))

        if not await self._try(job, "fetch", fetch, handler=False):
            return False
        message = fetched[0]
        on_message = self.on_message
        return await self._try(job, "on_message", lambda: on_message(n, message), handler=True)

    async def _try(
        self, job: _Job, stage: str, call: Callable[[], Awaitable[object]], *, handler: bool
    ) -> bool:
        """Run ``call`` with bounded retries; ``handler`` calls take a concurrency slot."""
        attempt = 0
        while True:
            attempt += 1
            try:
                if handler and self._slots is not None:
                    async with self._slots:
                        await call()
                else:
                    await call()
            except Exception as exc:
                delay = retry_delay(self.retry, exc, attempt, self._rng)
                if delay is None:
                    self.failures.append(Failure(job.notification, stage, exc, attempt))
                    logger.error(
                        "%s failed after %d attempt(s), giving up on %r",
                        stage,
                        attempt,
                        job.notification,
                        exc_info=exc,
                    )
                    return False
                logger.warning(
                    "%s failed (attempt %d of %d: %s); retry in %.2f s for %r",
                    stage,
                    attempt,
                    self.retry.attempts,
                    _short(exc),
                    delay,
                    job.notification,
                )
                await asyncio.sleep(delay)
            else:
                return True

    # -- aiohttp ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """The ``aiohttp`` handler for ``POST /notification``.

        Checks the source before reading anything and stops reading at ``max_body_size``.
        """
        try:
            refused = self.check_source(
                request.remote, request.headers.getall("X-Forwarded-For", [])
            )
            if refused is None:
                body = await self._read(request)
                reply = self._too_large() if body is None else self.answer(body)
            else:
                reply = refused
        except (ConnectionError, aiohttp.ClientError) as exc:  # the body never fully arrived
            logger.info("a notification's body was cut off: %s", _short(exc))
            reply = Reply.error(400, "WRONG_EVENT_FORMAT", "the body was cut off")
        except Exception:  # our own failure: 500, and the Market retries later
            logger.exception("failed to answer a notification")
            reply = Reply.error(500, "UNKNOWN", "internal error; retry later")
        return web.json_response(reply.body, status=reply.status)

    async def _read(self, request: web.Request) -> bytes | None:
        """The body, or ``None`` as soon as it is known to be over ``max_body_size``."""
        length = request.content_length
        if length is not None and length > self.max_body_size:
            return None
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > self.max_body_size:
                return None
        return bytes(body)

    def setup(self, app: web.Application, path: str = "/notification") -> None:
        """Mount on ``app``: the ``POST`` route, start/drain with the app, ``app[RECEIVER]``."""
        app.router.add_post(path, self.handle)
        app.cleanup_ctx.append(self._lifecycle)
        app[RECEIVER] = self

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        self.start()
        yield
        await self.close()


def _short(exc: BaseException, limit: int = 200) -> str:
    """An error in one bounded line: never the whole of a 64 KiB input."""
    text = str(exc) if isinstance(exc, NotificationFormatError) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


RECEIVER: Final = web.AppKey("market_chat_async.notifications.receiver", NotificationReceiver)
"""Where :func:`create_app` puts its :class:`NotificationReceiver`: ``app[RECEIVER]``."""


def create_app(
    client: MessageSource,
    on_message: MessageHandler,
    *,
    name: str = "market-chat-async",
    version: str = __version__,
    on_chat_created: ChatCreatedHandler | None = None,
    on_notification: NotificationHandler | None = None,
    allow_from: NetworkSpec | Iterable[NetworkSpec] | None = MARKET_NETWORKS,
    trusted_proxies: NetworkSpec | Iterable[NetworkSpec] = (),
    path: str = "/notification",
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    max_pending: int = 10_000,
    concurrency: int = 4,
    retry: HandlerRetry | None = None,
    drain_timeout: float = 30.0,
    dedup_size: int = 100_000,
    seed: int | None = None,
) -> web.Application:
    """An ``aiohttp`` application that receives the Market's notifications on ``POST path``.

    ``on_message(notification, message)`` is awaited for every new ``CHAT_MESSAGE_SENT``, with
    the :class:`~market_chat_async.ChatMessage` fetched through ``client``;
    ``on_chat_created(notification)`` for every new ``CHAT_CREATED``;
    ``on_notification(notification)`` for every notification but ``PING``, before the specific
    hook (a failure in one hook does not skip the other). The app never closes ``client``.

    Options: ``name`` and ``version`` go into every 200 answer (1 to 100 characters each).
    ``allow_from`` lists the networks that may post (default :data:`MARKET_NETWORKS`; ``None``
    allows everyone), ``trusted_proxies`` the reverse proxies whose ``X-Forwarded-For`` is
    believed. ``max_body_size`` bytes at most per request (413 above). ``max_pending``
    notifications may be queued or in progress (500 above, so the Market retries later);
    ``concurrency`` handler calls run at once. ``retry`` says how failures are retried
    (:class:`HandlerRetry`). On shutdown the app waits ``drain_timeout`` seconds for pending
    work, then cancels and reports the rest. ``dedup_size`` successes are remembered for
    spotting duplicates. ``seed`` fixes the retry jitter. The receiver is ``app[RECEIVER]``.

    >>> async def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
    ...     print(notification.chat_id, message.message)
    >>> from market_chat_async import MarketChatClient
    >>> app = create_app(MarketChatClient(api_key="..."), on_message, name="my-shop")
    >>> app[RECEIVER].name, [r.method for r in app.router.routes()]
    ('my-shop', ['POST'])
    """
    receiver = NotificationReceiver(
        client,
        on_message,
        name=name,
        version=version,
        on_chat_created=on_chat_created,
        on_notification=on_notification,
        allow_from=allow_from,
        trusted_proxies=trusted_proxies,
        max_body_size=max_body_size,
        max_pending=max_pending,
        concurrency=concurrency,
        retry=retry,
        drain_timeout=drain_timeout,
        dedup_size=dedup_size,
        seed=seed,
    )
    app = web.Application(client_max_size=max_body_size)
    receiver.setup(app, path)
    return app
