"""The aiohttp side: seven routes, one funnel of checks, one small function per operation.

The funnel (:func:`_handle`) applies the order of checks the package docstring lists; each
operation is a pair of functions: *read* turns the request into its arguments (or raises
:class:`BadRequest`), *act* performs it on the cabinet data and returns the ``200`` body (or
raises :class:`_NotFound`). A fault is applied between the two, or after *act* for a fault
made with :meth:`Fault.after_acting`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any, Final

import attrs
from aiohttp import BodyPartReader, web
from yarl import URL

from . import _requests as req
from ._data import CabinetData, Chat, auto_message, encode, iso_time
from ._faults import Fault
from ._quota import period_text
from ._requests import BadRequest

if TYPE_CHECKING:
    from ._server import MarketTestServer

_BASE: Final = "/v2/businesses/{businessId}"
_PAUSES: Final[web.AppKey[set[asyncio.Future[bool]]]] = web.AppKey("market_test_pauses")

# A partner's message leaves the customer to answer, unless an arbiter or the Market still must.
_AFTER_PARTNER_MESSAGE: Final = {
    "NEW": "WAITING_FOR_CUSTOMER",
    "WAITING_FOR_PARTNER": "WAITING_FOR_CUSTOMER",
    "WAITING_FOR_CUSTOMER": "WAITING_FOR_CUSTOMER",
    "FINISHED": "WAITING_FOR_CUSTOMER",
}


class _NotFound(Exception):
    """The chat or message does not exist: ``404`` with this message."""


def http_date(seconds: float) -> str:
    """RFC 822 date of a whole second since the Unix epoch.

    >>> http_date(1_700_000_000)
    'Tue, 14 Nov 2023 22:13:20 GMT'
    """
    return format_datetime(datetime.fromtimestamp(seconds, UTC), usegmt=True)


def _error_body(code: str, message: str) -> str:
    return json.dumps({"status": "ERROR", "errors": [{"code": code, "message": message}]})


def _ok(result: str | None = None) -> str:
    # The same text json.dumps({"status": "OK", "result": ...}) writes.
    return '{"status": "OK"}' if result is None else '{"status": "OK", "result": ' + result + "}"


def _wake(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


@attrs.frozen
class _Exchange:
    """One request being answered: what every reply needs to know."""

    server: MarketTestServer
    request: web.Request
    operation: str
    business_id: int | None

    def reply(
        self, status: int, body: str | None, *, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        """A response with ``Date`` and, for a cabinet, the operation's rate-limit headers."""
        server = self.server
        now = server.now()
        all_headers = {"Date": http_date(math.floor(server.epoch + now))}
        if self.business_id is not None:
            window = server._quota_window(self.business_id, self.operation)
            if window is not None:
                all_headers["X-RateLimit-Resource-Limit"] = str(window.limit)
                all_headers["X-RateLimit-Resource-Remaining"] = str(window.remaining(now))
                until = math.ceil(server.epoch + window.until(now))
                all_headers["X-RateLimit-Resource-Until"] = http_date(until)
        all_headers.update(headers or {})
        server.stats.by_status[status] += 1
        server.stats.status_by_operation[self.operation][status] += 1
        reason = "Enhance Your Calm" if status == 420 else None
        if body is None:
            return web.Response(status=status, reason=reason, headers=all_headers)
        return web.Response(
            status=status,
            reason=reason,
            text=body,
            content_type="application/json",
            headers=all_headers,
        )

    def error(self, status: int, code: str, message: str) -> web.Response:
        return self.reply(status, _error_body(code, message))

    def redirect(self, location: str) -> web.Response:
        return self.reply(307, None, headers={"Location": location})

    def drop(self) -> web.Response:
        """Close the connection without answering."""
        self.server.stats.dropped += 1
        if self.request.transport is not None:
            self.request.transport.close()
        # Never sent: aiohttp finds the transport closing and treats it as a disconnect.
        return web.Response(status=444, reason="No Response")

    def fault(self, fault: Fault) -> web.Response:
        if fault.kind == "drop":
            return self.drop()
        if fault.kind == "malformed":
            return self.reply(200, '{"status": "OK", "result": {')
        if fault.kind == "wrong_shape":
            return self.reply(200, json.dumps({"status": "OK", "result": {"messageId": "x"}}))
        if fault.kind == "redirect":
            assert fault.url is not None
            return self.redirect(fault.url)
        return self.error(fault.status, fault.code, f"Injected fault: HTTP {fault.status}")

    async def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` of loop time; ``False`` if the app shut down meanwhile."""
        if seconds <= 0:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        handle = loop.call_later(seconds, _wake, waiter, True)
        pauses = self.request.app[_PAUSES]
        pauses.add(waiter)
        try:
            return await waiter
        finally:
            handle.cancel()
            pauses.discard(waiter)


# -- the operations: read (request -> arguments), act (arguments -> 200 body) --------------------

Read = Callable[[web.Request], Awaitable[Any]]
Act = Callable[["MarketTestServer", int, Any], str]


async def _read_get_chats(request: web.Request) -> Any:
    query = request.query
    limit = req.query_limit(query, default=10, maximum=20)
    token = req.query_page_token(query)
    after = req.decode_token(token, "chats", 1)[0] if token is not None else 0
    return req.chats_filter(req.json_object(await request.read())), after, limit


def _act_get_chats(server: MarketTestServer, business_id: int, args: Any) -> str:
    chat_filter, after, limit = args
    data = server._data.get(business_id) or CabinetData()
    chats, last = data.page(chat_filter, after, limit)
    paging = {} if last is None else {"nextPageToken": req.encode_token("chats", last)}
    return _ok(encode({"chats": [chat.info() for chat in chats], "paging": paging}))


async def _read_chat_id(request: web.Request) -> Any:
    return req.query_id(request.query, "chatId")


def _known_chat(server: MarketTestServer, business_id: int, chat_id: int) -> Chat:
    chat = server._chat(business_id, chat_id)
    if chat is None:
        raise _NotFound(f"Chat {chat_id} not found")
    return chat


def _act_get_chat(server: MarketTestServer, business_id: int, chat_id: Any) -> str:
    return _ok(encode(_known_chat(server, business_id, chat_id).info()))


async def _read_history(request: web.Request) -> Any:
    query = request.query
    chat_id = req.query_id(query, "chatId")
    limit = req.query_limit(query, default=50, maximum=100)
    token = req.query_page_token(query)
    message_id_from = req.history_from(req.json_object(await request.read()))
    if token is not None:
        token_chat, message_id_from = req.decode_token(token, "history", 2)
        if token_chat != chat_id:
            raise BadRequest(f"Parameter page_token belongs to chat {token_chat}, not {chat_id}")
    return chat_id, message_id_from, limit


def _act_history(server: MarketTestServer, business_id: int, args: Any) -> str:
    chat_id, message_id_from, limit = args
    chat = _known_chat(server, business_id, chat_id)
    messages, following = chat.page(message_id_from, limit)
    paging = (
        "{}"
        if following is None
        else encode({"nextPageToken": req.encode_token("history", chat_id, following)})
    )
    head = '{"orderId": ' + str(chat.order_id) + ", " if chat.order_id is not None else "{"
    return _ok(
        head
        + '"context": '
        + encode(chat.context())
        + ', "messages": ['
        + ", ".join(messages)
        + '], "paging": '
        + paging
        + "}"
    )


async def _read_message_ids(request: web.Request) -> Any:
    return req.query_id(request.query, "chatId"), req.query_id(request.query, "messageId")


def _act_get_message(server: MarketTestServer, business_id: int, args: Any) -> str:
    chat_id, message_id = args
    key = (business_id, chat_id, message_id)
    text = None if key in server.not_found else server._stored.get(key)
    if text is None and key not in server.not_found:
        chat = server._chat(business_id, chat_id)
        if chat is not None:
            text = chat.find(message_id)
        elif server.messages == "auto":
            text = encode(auto_message(chat_id, message_id))
    if text is None:
        raise _NotFound(f"Message {message_id} not found in chat {chat_id}")
    return _ok(text)


def _append(
    server: MarketTestServer, business_id: int, chat: Chat, content: Callable[[int], dict[str, Any]]
) -> None:
    """A partner's message at the end of the chat: a new id, then its dates and status follow."""
    data = server._data[business_id]
    message_id = max(data.top_message_id, chat.last_message_id()) + 1
    data.top_message_id = message_id
    created_at = iso_time(server.epoch + server.now())
    message = {"messageId": message_id, "createdAt": created_at, "sender": "PARTNER"}
    chat.put(message_id, message | content(message_id))
    chat.updated_at = created_at
    chat.status = _AFTER_PARTNER_MESSAGE.get(chat.status, chat.status)


async def _read_send_message(request: web.Request) -> Any:
    chat_id = req.query_id(request.query, "chatId")
    return chat_id, req.message_text(req.json_object(await request.read()))


def _act_send_message(server: MarketTestServer, business_id: int, args: Any) -> str:
    chat_id, text = args
    chat = _known_chat(server, business_id, chat_id)
    _append(server, business_id, chat, lambda _: {"message": text})
    return _ok()


async def _read_send_file(request: web.Request) -> Any:
    chat_id = req.query_id(request.query, "chatId")
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("sendFileToChat takes multipart/form-data with a field named file")
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if isinstance(part, BodyPartReader) and part.name == "file":
            size = 0
            while chunk := await part.read_chunk(64 * 1024):
                size += len(chunk)
                if size > req.MAX_FILE:
                    raise BadRequest(f"The file is larger than {req.MAX_FILE} bytes (5 MB)")
            return chat_id, part.filename or "file", size
    raise BadRequest("Required multipart field file is missing")


def _act_send_file(server: MarketTestServer, business_id: int, args: Any) -> str:
    chat_id, name, size = args
    chat = _known_chat(server, business_id, chat_id)
    url = f"https://market-files.invalid/{chat_id}/{{}}/1"
    _append(
        server,
        business_id,
        chat,
        lambda message_id: {
            "payload": [{"name": name, "url": url.format(message_id), "size": size}]
        },
    )
    return _ok()


async def _read_create_chat(request: web.Request) -> Any:
    return req.create_context(req.json_object(await request.read()))


def _act_create_chat(server: MarketTestServer, business_id: int, args: Any) -> str:
    context_type, context_id = args
    data = server._data.get(business_id)
    chat = None if data is None else data.by_context(context_type, context_id)
    if chat is not None:
        return _ok(encode({"chatId": chat.chat_id}))
    chat_id = server.add_chat(
        business_id,
        context_type=context_type,
        context_id=context_id,
        customer={"name": f"Покупатель {context_id}", "publicId": f"customer-{context_id}"},
    )
    return _ok(encode({"chatId": chat_id}))


ROUTES: Final[tuple[tuple[str, str, str, Read, Act], ...]] = (
    ("POST", "/chats", "getChats", _read_get_chats, _act_get_chats),
    ("GET", "/chat", "getChat", _read_chat_id, _act_get_chat),
    ("POST", "/chats/history", "getChatHistory", _read_history, _act_history),
    ("GET", "/chats/message", "getChatMessage", _read_message_ids, _act_get_message),
    ("POST", "/chats/message", "sendMessageToChat", _read_send_message, _act_send_message),
    ("POST", "/chats/file/send", "sendFileToChat", _read_send_file, _act_send_file),
    ("POST", "/chats/new", "createChat", _read_create_chat, _act_create_chat),
)


# -- the funnel -----------------------------------------------------------------------------------


def _auth_problem(server: MarketTestServer, request: web.Request) -> tuple[int, str, str] | None:
    api_key = request.headers.get("Api-Key")
    authorization = request.headers.get("Authorization")
    if api_key is None and authorization is None:
        return (
            401,
            "UNAUTHORIZED",
            "No credentials: send the Api-Key header (or Authorization: Bearer <token>)",
        )
    if api_key is not None and api_key not in server.api_keys:
        return 403, "FORBIDDEN", "The Api-Key is not valid or has no access to this cabinet"
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in server.oauth_tokens:
            return 403, "FORBIDDEN", "The OAuth token is not valid or has no access to this cabinet"
    return None


def _redirects(server: MarketTestServer, request: web.Request) -> bool:
    if server.redirect_to is None:
        return False
    target = URL(server.redirect_to)
    here = request.url
    same_origin = not target.is_absolute() or (
        target.host == here.host and target.port == here.port
    )
    return not (same_origin and target.path_qs == request.rel_url.path_qs)


async def _handle(
    server: MarketTestServer, operation: str, read: Read, act: Act, request: web.Request
) -> web.StreamResponse:
    stats = server.stats
    stats.requests += 1
    stats.requests_by_operation[operation] += 1
    stats.request_headers.append(request.headers)
    raw_business = request.match_info["businessId"]
    business_id = req.parse_id(raw_business)
    exchange = _Exchange(server, request, operation, business_id)
    if _redirects(server, request):
        assert server.redirect_to is not None
        return attrs.evolve(exchange, business_id=None).redirect(server.redirect_to)
    problem = _auth_problem(server, request)
    if problem is not None:
        return exchange.error(*problem)
    if business_id is None:
        message = req.bad_param("businessId", raw_business)
        return exchange.error(400, "BAD_REQUEST", message)

    limits = server._cabinet(business_id)
    now = server.now()
    window = server._quota_window(business_id, operation)
    if window is not None and window.remaining(now) == 0:
        stats.quota_420 += 1
        stats.quota_420_by_operation[operation] += 1
        message = (
            f"Resource limit exceeded for businessId {business_id}: "
            f"{window.limit} requests per {period_text(window.period)}"
        )
        return exchange.error(420, "LIMIT_EXCEEDED", message)
    if window is not None:
        window.count(now)
    stats.counted_by_operation[operation][business_id].append(now)
    cap = server.max_parallel
    if cap is not None and limits.in_flight + limits.held >= cap:
        stats.parallel_420 += 1
        stats.parallel_420_by_operation[operation] += 1
        message = f"Hit rate limit of {cap} parallel requests for businessId {business_id}"
        return exchange.error(420, "LIMIT_EXCEEDED", message)

    limits.in_flight += 1
    server._observe(business_id, limits)
    try:
        response = await _admitted(exchange, business_id, read, act)
        if request.transport is None or request.transport.is_closing():
            return response  # dropped: aiohttp finds the transport closing, nothing is sent
        with contextlib.suppress(ConnectionError):  # the client has gone: aiohttp sees it too
            await response.prepare(request)
            await response.write_eof()
        return response
    finally:
        limits.in_flight -= 1


async def _admitted(
    exchange: _Exchange, business_id: int, read: Read, act: Act
) -> web.StreamResponse:
    """A request past the limits: in flight until its answer is on the socket."""
    server = exchange.server
    try:
        args, bad = await read(exchange.request), None
    except BadRequest as problem:
        args, bad = None, str(problem)
    fault = server._faults.take(exchange.operation) if bad is None else None
    before = fault if fault is not None and not fault.after else None
    delay = server.latency + (before.seconds if before is not None else 0.0)
    if not await exchange.pause(delay):
        return exchange.drop()  # the server is shutting down
    if bad is not None:
        return exchange.error(400, "BAD_REQUEST", bad)
    if before is not None and before.kind != "slow":
        return exchange.fault(before)
    try:
        status, body = 200, act(server, business_id, args)
    except _NotFound as missing:
        status, body = 404, _error_body("NOT_FOUND", str(missing))
    if fault is not None and fault.after:
        if not await exchange.pause(fault.seconds):
            return exchange.drop()
        if fault.kind != "slow":
            return exchange.fault(fault)
    return exchange.reply(status, body)


async def _on_shutdown(app: web.Application) -> None:
    pauses = app[_PAUSES]
    for waiter in list(pauses):
        _wake(waiter, False)


def build_app(server: MarketTestServer) -> web.Application:
    """The aiohttp application of ``server``: the seven routes, all through :func:`_handle`."""
    app = web.Application()
    app[_PAUSES] = set()
    for method, path, operation, read, act in ROUTES:

        async def handler(
            request: web.Request, operation: str = operation, read: Read = read, act: Act = act
        ) -> web.StreamResponse:
            return await _handle(server, operation, read, act, request)

        app.router.add_route(method, _BASE + path, handler)
    app.on_shutdown.append(_on_shutdown)
    return app
