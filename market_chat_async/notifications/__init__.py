"""The receiving side of the Market's push notifications: ``POST /notification``.

The Market POSTs a notification when a chat is created (``CHAT_CREATED``) or a message is sent
(``CHAT_MESSAGE_SENT``), and never sends again one it got a 200 for. So the receiver writes
every notification to a queue -- durably, for the ``sqlite://`` and ``redis://`` backends --
*before* it answers 200, and answers 500 (the Market retries) when it cannot. Workers then
fetch the message through your :class:`~market_chat_async.MarketChatClient` (so through the
cabinet's shared limiter) and call your handler, at least once: a failure or a handler stuck
past ``handler_timeout`` is retried with backoff for up to 24 hours, then kept as a dead letter
that ``market-chat queue list|retry|drop`` shows and replays. ::

    from market_chat_async import ChatMessage, MarketChatClient
    from market_chat_async.notifications import ChatMessageSent, create_app, serve


    async def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
        print(notification.chat_id, message.sender, message.message)


    async def main() -> int:
        async with MarketChatClient() as client:  # reads YANDEX_MARKET_API_KEY
            app = create_app(client, on_message, name="my-shop", version="1.0",
                             queue="sqlite:///queue.db", trusted_proxies=["127.0.0.1"])
            return await serve(app, host="127.0.0.1", port=8080)

The package, one concern per module:

* ``_events`` -- the notifications and their parsing (:func:`parse_notification`), pure;
* ``_sources`` -- the source-address rule (:data:`MARKET_NETWORKS`, :func:`client_address`);
* ``_retry`` -- retry decisions as values (:class:`HandlerRetry`, :func:`retry_delay`);
* ``_queue``, ``_sqlite``, ``_redis`` -- the queue contract and its three backends;
* ``_values`` -- :class:`ReceiverOptions` and the receiver's other plain values;
* ``_calls`` -- how handlers are called (async, or on a thread), with their timeout;
* ``_receiver`` -- :class:`NotificationReceiver`, framework-neutral (no aiohttp);
* ``_delivery`` -- the receiver's delivery loop: claim, fetch, call the handlers, retry, bury;
* ``_app`` -- the aiohttp adapter: :func:`create_app`, :func:`serve`.

Everything is logged under the ``market_chat_async.notifications`` logger; credentials never
appear there. Every give-up is one error line starting ``gave up: event=dead_letter``.
"""

from . import _app, _events, _queue, _sources, _values
from ._app import create_app, serve
from ._events import (
    ChatCreated,
    ChatMessageSent,
    Notification,
    NotificationFormatError,
    decode_json,
    dedup_key,
    parse_notification,
)
from ._open import open_queue
from ._queue import (
    MemoryQueue,
    NotificationQueue,
    QueueEntry,
    QueueError,
    QueueStats,
)
from ._receiver import NotificationReceiver
from ._redis import RedisQueue
from ._retry import HandlerRetry, is_auth_error, retry_delay
from ._sources import client_address
from ._sqlite import SqliteQueue
from ._values import (
    Failure,
    HandlerTimeoutError,
    Health,
    MessageSource,
    ReceiverOptions,
    ReceiverStats,
    Reply,
)

# Public constants and type aliases: documented here, at their public home.

AnyNotification = _events.AnyNotification
"""What :func:`parse_notification` returns; every variant has a ``type`` string."""

MARKET_NETWORKS = _sources.MARKET_NETWORKS
"""The networks the Market documents as the only sources of notifications."""

DEFAULT_DEDUP_WINDOW = _queue.DEFAULT_DEDUP_WINDOW
"""Seconds a notification's key is remembered: a resend within it is acknowledged, not queued."""

DEFAULT_MAX_BODY_SIZE = _values.DEFAULT_MAX_BODY_SIZE
"""Bodies larger than this (bytes) are refused with 413; a notification is a few hundred."""

MessageHandler = _values.MessageHandler
"""``async def on_message(notification, message)``, or a plain ``def`` (run in a thread)."""

ChatCreatedHandler = _values.ChatCreatedHandler
"""``async def on_chat_created(notification: ChatCreated)``, or a plain ``def``."""

NotificationHandler = _values.NotificationHandler
"""``async def on_notification(notification)`` (every type but PING), or a plain ``def``."""

Outcome = _values.Outcome
"""What :meth:`NotificationReceiver.submit` did with a notification."""

RECEIVER = _app.RECEIVER
"""Where :func:`create_app` puts its :class:`NotificationReceiver`: ``app[RECEIVER]``."""

__all__ = [
    "AnyNotification",
    "ChatCreated",
    "ChatCreatedHandler",
    "ChatMessageSent",
    "DEFAULT_DEDUP_WINDOW",
    "DEFAULT_MAX_BODY_SIZE",
    "Failure",
    "HandlerRetry",
    "HandlerTimeoutError",
    "Health",
    "MARKET_NETWORKS",
    "MemoryQueue",
    "MessageHandler",
    "MessageSource",
    "Notification",
    "NotificationFormatError",
    "NotificationHandler",
    "NotificationQueue",
    "NotificationReceiver",
    "Outcome",
    "QueueEntry",
    "QueueError",
    "QueueStats",
    "RECEIVER",
    "ReceiverOptions",
    "ReceiverStats",
    "RedisQueue",
    "Reply",
    "SqliteQueue",
    "client_address",
    "create_app",
    "decode_json",
    "dedup_key",
    "is_auth_error",
    "open_queue",
    "parse_notification",
    "retry_delay",
    "serve",
]

for _error in (NotificationFormatError, QueueError, HandlerTimeoutError):
    _error.__module__ = __name__  # raised to users: show them under their public home
del _error
