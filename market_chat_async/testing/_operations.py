"""The seven operations, each a pair: *read* (request -> arguments) and *act* (-> ``200`` body).

*read* checks the query and body against the spec (raising :class:`BadRequest`), before any
fault or latency; *act* performs the operation on the cabinet data and returns the JSON text of
the ``200`` answer, or raises :class:`NotFound`. Neither knows about limits or faults: the
funnel in ``_app`` does.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from aiohttp import BodyPartReader, web

from . import _requests as req
from ._data import CabinetData, Chat, auto_message, encode, iso_time
from ._requests import BadRequest

if TYPE_CHECKING:
    from ._server import MarketTestServer

# A partner's message leaves the customer to answer, unless an arbiter or the Market still must.
_AFTER_PARTNER_MESSAGE: Final = {
    "NEW": "WAITING_FOR_CUSTOMER",
    "WAITING_FOR_PARTNER": "WAITING_FOR_CUSTOMER",
    "WAITING_FOR_CUSTOMER": "WAITING_FOR_CUSTOMER",
    "FINISHED": "WAITING_FOR_CUSTOMER",
}


class NotFound(Exception):
    """The chat or message does not exist: ``404`` with this message."""


def error_body(code: str, message: str) -> str:
    return json.dumps({"status": "ERROR", "errors": [{"code": code, "message": message}]})


def _ok(result: str | None = None) -> str:
    # The same text json.dumps({"status": "OK", "result": ...}) writes.
    return '{"status": "OK"}' if result is None else '{"status": "OK", "result": ' + result + "}"


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
        raise NotFound(f"Chat {chat_id} not found")
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
        raise NotFound(f"Message {message_id} not found in chat {chat_id}")
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
