"""The aiohttp adapter: routes, body reading with timeouts, a connection cap, signals.

Thin on purpose: every decision is the receiver's (:mod:`._receiver`); this module reads
bytes off sockets and writes the :class:`Reply` back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ._events import short_error
from ._queue import NotificationQueue
from ._receiver import NotificationReceiver
from ._values import (
    ChatCreatedHandler,
    MessageHandler,
    MessageSource,
    NotificationHandler,
    ReceiverOptions,
    Reply,
)

logger = logging.getLogger("market_chat_async.notifications")

RECEIVER: Final = web.AppKey("market_chat_async.notifications.receiver", NotificationReceiver)


class _Connections:
    """Open connections, oldest first; at the cap the oldest idle one makes room.

    "Idle" is a connection with no request being handled: one that never finished sending
    its headers, or a kept-alive one between requests. Such a connection costs the Market
    nothing to lose, while refusing a new one could refuse the Market's PING.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[RequestHandler, list[Any]] = {}  # handler -> [opened at, seen, busy]

    def track(self, handler: RequestHandler) -> None:
        now = time.monotonic()
        for old, (opened, seen, _) in list(self.open.items()):
            if old.connected:
                self.open[old][1] = True
            elif seen or now - opened > 5.0:  # closed (or never got a socket)
                del self.open[old]
        if len(self.open) >= self.limit:
            idle = next((h for h, (_, _, busy) in self.open.items() if not busy), None)
            if idle is None:
                logger.warning("refused a connection: %d open, all busy", len(self.open))
                asyncio.get_running_loop().call_soon(handler.force_close)
                return
            logger.info("closed an idle connection to make room (max_connections=%d)", self.limit)
            del self.open[idle]
            idle.force_close()
        self.open[handler] = [now, False, 0]

    @contextlib.contextmanager
    def busy(self, handler: Any) -> Any:
        state = self.open.get(handler)
        if state is not None:
            state[2] += 1
        try:
            yield
        finally:
            if state is not None:
                state[2] -= 1


_CONNECTIONS: Final = web.AppKey("market_chat_async.notifications.connections", _Connections)


async def _read(request: web.Request, limit: int, seconds: float) -> bytes | None:
    """The body, or ``None`` as soon as it is known to be over ``limit``; ``TimeoutError``
    when it takes longer than ``seconds``."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    body = bytearray()
    async with asyncio.timeout(seconds):
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > limit:
                return None
    return bytes(body)


def _json(reply: Reply) -> web.Response:
    return web.json_response(reply.body, status=reply.status)


def _handlers(
    receiver: NotificationReceiver, connections: _Connections
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    options = receiver.options

    async def notification(request: web.Request) -> web.Response:
        """``POST /notification``: check the source before reading, then read with limits."""
        with connections.busy(request.protocol):
            try:
                refused = receiver.check_source(
                    request.remote, request.headers.getall("X-Forwarded-For", [])
                )
                if refused is not None:
                    return _json(refused)
                body = await _read(request, options.max_body_size, options.body_timeout)
                if body is None:
                    return _json(receiver.too_large())
                return _json(await receiver.answer(body))
            except TimeoutError:
                logger.info("a notification's body took over %s s; 408", options.body_timeout)
                return _json(Reply.error(408, "WRONG_EVENT_FORMAT", "the body came too slowly"))
            except (ConnectionError, aiohttp.ClientError) as exc:  # the body never arrived
                logger.info("a notification's body was cut off: %s", short_error(exc))
                return _json(Reply.error(400, "WRONG_EVENT_FORMAT", "the body was cut off"))
            except Exception:  # our own failure: 500, and the Market retries later
                logger.exception("failed to answer a notification")
                return _json(Reply.error(500, "UNKNOWN", "internal error; retry later"))

    async def health(request: web.Request) -> web.Response:
        """``GET /health``: 200 or 503 with the backlog, ages, dead letters, failures."""
        with connections.busy(request.protocol):
            report = await receiver.health()
            return web.json_response(report.as_json(), status=200 if report.ok else 503)

    return notification, health


def create_app(
    client: MessageSource,
    on_message: MessageHandler,
    options: ReceiverOptions | None = None,
    *,
    queue: str | NotificationQueue | None = None,
    on_chat_created: ChatCreatedHandler | None = None,
    on_notification: NotificationHandler | None = None,
    **overrides: Any,
) -> web.Application:
    """An ``aiohttp`` application that receives the Market's notifications on ``POST path``.

    ``on_message(notification, message)`` is called for every new ``CHAT_MESSAGE_SENT``, with
    the :class:`~market_chat_async.ChatMessage` fetched through ``client``;
    ``on_chat_created(notification)`` for every new ``CHAT_CREATED``;
    ``on_notification(notification)`` for every notification but ``PING``, before the
    specific hook. Each may be ``async def`` or a plain ``def`` (run in a thread). The app
    never closes ``client``.

    ``options`` (a :class:`ReceiverOptions`) holds every other setting; keyword arguments
    override single options (``create_app(client, on_message, name="my-shop",
    allow_from=None)``). ``queue`` is where notifications wait between the 200 and the
    handler: a URL (``"memory"``, ``"sqlite:///queue.db"``, ``"redis://host:6379/0"``) or a
    queue object; the default, ``"memory"``, **loses what is queued if the process dies** (a
    warning says so at start). Routes: ``POST path`` and ``GET /health``; the receiver is
    ``app[RECEIVER]``.

    >>> def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
    ...     print(notification.chat_id, message.message)
    >>> from market_chat_async import MarketChatClient
    >>> app = create_app(MarketChatClient(api_key="..."), on_message, name="my-shop",
    ...                  queue="sqlite:///queue.db")
    >>> app[RECEIVER].name, sorted(r.method for r in app.router.routes())
    ('my-shop', ['GET', 'HEAD', 'POST'])
    """
    receiver = NotificationReceiver(
        client,
        on_message,
        options,
        queue=queue,
        on_chat_created=on_chat_created,
        on_notification=on_notification,
        **overrides,
    )
    connections = _Connections(receiver.options.max_connections)
    app = web.Application(client_max_size=receiver.options.max_body_size)
    notification, health = _handlers(receiver, connections)
    app.router.add_post(receiver.options.path, notification)
    app.router.add_get("/health", health)
    app[RECEIVER] = receiver
    app[_CONNECTIONS] = connections

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await receiver.start()
        yield
        await receiver.close()

    app.cleanup_ctx.append(lifecycle)
    return app


class _GuardedSite(web.TCPSite):
    """A TCP site whose connections go through the app's connection cap."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, connections: _Connections):
        super().__init__(runner, host, port)
        self._connections = connections

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        connections = self._connections

        def factory() -> RequestHandler:
            handler = server()
            connections.track(handler)
            return handler

        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host, self._port, backlog=self._backlog
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]


async def serve(
    app: web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Run an app from :func:`create_app` until SIGINT or SIGTERM; the exit status.

    The first signal stops taking notifications (new ones get 503, so the Market retries;
    ``PING`` and ``/health`` still answer) and lets the workers go on for ``drain_timeout``
    seconds; a second signal stops at once. Either way nothing accepted is lost from a
    durable queue: what is left is handled after the next start. Connections must send their
    headers within ``header_timeout`` seconds, at most ``max_connections`` are open.
    ``on_ready(url)`` is called once listening. Returns 0 after a drain, ``128 + signal``
    (130 for Ctrl-C, 143 for SIGTERM) after a second signal.

    Example::

        app = create_app(client, on_message, queue="sqlite:///queue.db")
        status = asyncio.run(serve(app, host="127.0.0.1", port=8080))
    """
    receiver = app[RECEIVER]
    options = receiver.options
    runner = web.AppRunner(
        app, handle_signals=False, keepalive_timeout=options.header_timeout, access_log=None
    )
    await runner.setup()  # starts the receiver: the queue is open before the first request
    loop = asyncio.get_running_loop()
    first = asyncio.Event()
    signals = status = 0
    main = asyncio.current_task()
    assert main is not None

    def on_signal(signum: int) -> None:
        nonlocal signals, status
        signals += 1
        if signals == 1:
            logger.warning("%s: draining for up to %s s", signal.Signals(signum).name,
                           options.drain_timeout)  # fmt: skip
            receiver.stop_accepting()
            first.set()
        else:
            logger.warning("second signal: stopping now; the queue keeps what is left")
            status = 128 + signum
            main.cancel()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
    try:
        site = _GuardedSite(runner, host, port, app[_CONNECTIONS])
        await site.start()
        url = f"http://{host}:{site.port}{options.path}"
        logger.info("receiving notifications at %s", url)
        if on_ready is not None:
            on_ready(url)
        await first.wait()
        await receiver.close()  # drains; requests still get answers (503) meanwhile
    except asyncio.CancelledError:
        if not status:  # cancelled from outside, not by a second signal
            raise
        main.uncancel()
        await receiver.close(drain_timeout=0)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        with contextlib.suppress(asyncio.CancelledError):
            await runner.cleanup()
    return status
