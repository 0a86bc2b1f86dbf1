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
* ``_receiver`` -- :class:`NotificationReceiver`, framework-neutral (no aiohttp);
* ``_app`` -- the aiohttp adapter: :func:`create_app`, :func:`serve`.

Everything is logged under the ``market_chat_async.notifications`` logger; credentials never
appear there. Every give-up is one error line starting ``gave up: event=dead_letter``.
"""

from ._app import RECEIVER, create_app, serve
from ._events import (
    AnyNotification,
    ChatCreated,
    ChatMessageSent,
    Notification,
    NotificationFormatError,
    decode_json,
    dedup_key,
    parse_notification,
)
from ._queue import (
    DEFAULT_DEDUP_WINDOW,
    MemoryQueue,
    NotificationQueue,
    QueueEntry,
    QueueError,
    QueueStats,
    open_queue,
)
from ._receiver import (
    DEFAULT_MAX_BODY_SIZE,
    ChatCreatedHandler,
    Failure,
    HandlerTimeoutError,
    Health,
    MessageHandler,
    MessageSource,
    NotificationHandler,
    NotificationReceiver,
    Outcome,
    ReceiverOptions,
    ReceiverStats,
    Reply,
)
from ._redis import RedisQueue
from ._retry import HandlerRetry, is_auth_error, retry_delay
from ._sources import MARKET_NETWORKS, client_address
from ._sqlite import SqliteQueue

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
