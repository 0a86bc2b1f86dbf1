"""The cabinet data: chats (context, type, status, customer, dates) and their messages.

Everything here is raw camelCase JSON values as the API sends them, kept in memory and indexed
so that a page costs what it returns: chats sorted by ``chatId``, each chat's messages sorted by
``messageId`` (``bisect`` finds where a page starts). A message is kept encoded once, so
getChatHistory and getChatMessage answer it with the very same JSON text.
"""

from __future__ import annotations

import bisect
import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import attrs

INT64_MAX: Final = 2**63 - 1
SENDERS: Final = ("PARTNER", "CUSTOMER", "MARKET", "SUPPORT")
CONTEXT_TYPES: Final = ("ORDER", "RETURN", "DIRECT")
CHAT_TYPES: Final = ("CHAT", "ARBITRAGE")
CHAT_STATUSES: Final = (
    "NEW",
    "WAITING_FOR_CUSTOMER",
    "WAITING_FOR_PARTNER",
    "WAITING_FOR_ARBITER",
    "WAITING_FOR_MARKET",
    "FINISHED",
)

MSK: Final = timezone(timedelta(hours=3))
_CREATED_BASE = datetime(2024, 1, 1, tzinfo=UTC)
_CREATED_SPAN = 2 * 365 * 86_400  # synthetic messages are spread over two years


def auto_message(chat_id: int, message_id: int) -> dict[str, Any]:
    """The synthetic message ``messages="auto"`` answers for ``(chat_id, message_id)``.

    Deterministic, and varied so that every field variant occurs within twelve ids:
    ``message_id % 3`` picks text only (1), attachments only (2) or both (0); the sender cycles
    through PARTNER, CUSTOMER, MARKET, SUPPORT; ``createdAt`` alternates between a ``+03:00``
    offset and ``Z`` with milliseconds.

    >>> auto_message(7, 1)["message"], auto_message(7, 1)["sender"]
    ('Сообщение 1 в чате 7', 'PARTNER')
    >>> (attachment,) = auto_message(7, 2)["payload"]
    >>> attachment["name"], attachment["url"], attachment["size"]
    ('file-2-1.pdf', 'https://market-files.invalid/7/2/1', 16863)
    >>> auto_message(7, 2)["createdAt"], auto_message(7, 3)["createdAt"]
    ('2024-01-01T15:25:55.002Z', '2024-01-01T18:26:56+03:00')
    """
    offset = (chat_id * 7919 + message_id * 61) % _CREATED_SPAN
    created = _CREATED_BASE + timedelta(seconds=offset)
    if message_id % 2:
        created_at = created.astimezone(MSK).isoformat(timespec="seconds")
    else:
        created_at = f"{created:%Y-%m-%dT%H:%M:%S}.{message_id % 1000:03d}Z"
    result: dict[str, Any] = {
        "messageId": message_id,
        "createdAt": created_at,
        "sender": SENDERS[(message_id - 1) % len(SENDERS)],
    }
    if message_id % 3 != 2:
        result["message"] = f"Сообщение {message_id} в чате {chat_id}"
    if message_id % 3 != 1:
        result["payload"] = [
            {
                "name": f"file-{message_id}-{n}.pdf",
                "url": f"https://market-files.invalid/{chat_id}/{message_id}/{n}",
                "size": 1024 + (message_id * 7919 + n) % 1_000_000,
            }
            for n in range(1, 2 + (message_id // 3) % 2)
        ]
    return result


def iso_time(unix: float) -> str:
    """A Unix time as the API writes dates: ISO 8601, whole seconds, Moscow offset.

    >>> iso_time(1_700_000_000)
    '2023-11-15T01:13:20+03:00'
    """
    return datetime.fromtimestamp(unix, MSK).isoformat(timespec="seconds")


def encode(value: Any) -> str:
    """JSON text as the server writes it (UTF-8 text, not ``\\u`` escapes)."""
    return json.dumps(value, ensure_ascii=False)


@attrs.define(eq=False)
class Chat:
    """One chat of a cabinet: what getChat answers, plus its messages in ``messageId`` order."""

    chat_id: int
    context_type: str
    order_id: int | None
    return_id: int | None
    campaign_id: int | None
    type: str
    status: str
    customer: dict[str, str] | None
    created_at: str
    updated_at: str
    message_ids: list[int] = attrs.field(factory=list)
    encoded: list[str] = attrs.field(factory=list)  # the JSON of each message, same order

    def context(self) -> dict[str, Any]:
        """``ChatFullContextDTO``."""
        context: dict[str, Any] = {"type": self.context_type}
        if self.customer is not None:
            context["customer"] = self.customer
        if self.campaign_id is not None:
            context["campaignId"] = self.campaign_id
        if self.order_id is not None:
            context["orderId"] = self.order_id
        if self.return_id is not None:
            context["returnId"] = self.return_id
        return context

    def info(self) -> dict[str, Any]:
        """``GetChatInfoDTO``, with the deprecated ``orderId`` where there is an order."""
        info: dict[str, Any] = {"chatId": self.chat_id}
        if self.order_id is not None:
            info["orderId"] = self.order_id
        info |= {
            "context": self.context(),
            "type": self.type,
            "status": self.status,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }
        return info

    def context_key(self) -> tuple[str, int] | None:
        """What createChat and the ``contexts`` filter know the chat by."""
        if self.context_type == "ORDER" and self.order_id is not None:
            return ("ORDER", self.order_id)
        if self.context_type == "RETURN" and self.return_id is not None:
            return ("RETURN", self.return_id)
        return None

    def put(self, message_id: int, message: Mapping[str, Any]) -> None:
        """Store (or replace) a message under ``message_id``, keeping the id order."""
        text = encode(message)
        at = bisect.bisect_left(self.message_ids, message_id)
        if at < len(self.message_ids) and self.message_ids[at] == message_id:
            self.encoded[at] = text
        else:
            self.message_ids.insert(at, message_id)
            self.encoded.insert(at, text)

    def drop(self, message_id: int) -> None:
        at = bisect.bisect_left(self.message_ids, message_id)
        if at < len(self.message_ids) and self.message_ids[at] == message_id:
            del self.message_ids[at]
            del self.encoded[at]

    def find(self, message_id: int) -> str | None:
        at = bisect.bisect_left(self.message_ids, message_id)
        if at < len(self.message_ids) and self.message_ids[at] == message_id:
            return self.encoded[at]
        return None

    def page(self, message_id_from: int, limit: int) -> tuple[list[str], int | None]:
        """Up to ``limit`` messages with ids ``>= message_id_from``; the next page's first id."""
        start = bisect.bisect_left(self.message_ids, message_id_from)
        end = start + limit
        following = self.message_ids[end] if end < len(self.message_ids) else None
        return self.encoded[start:end], following

    def last_message_id(self) -> int:
        return self.message_ids[-1] if self.message_ids else 0


@attrs.frozen
class ChatFilter:
    """getChats' filters, each ``None`` (no filter) or the accepted values."""

    contexts: frozenset[tuple[str, int]] | None = None
    context_types: frozenset[str] | None = None
    types: frozenset[str] | None = None
    statuses: frozenset[str] | None = None
    order_ids: frozenset[int] | None = None

    def matches(self, chat: Chat) -> bool:
        return (
            (self.contexts is None or chat.context_key() in self.contexts)
            and (self.context_types is None or chat.context_type in self.context_types)
            and (self.types is None or chat.type in self.types)
            and (self.statuses is None or chat.status in self.statuses)
            and (self.order_ids is None or chat.order_id in self.order_ids)
        )


class CabinetData:
    """The chats of one cabinet, by ``chatId``, with the context index createChat needs."""

    def __init__(self) -> None:
        self.chats: dict[int, Chat] = {}
        self._ids: list[int] = []  # sorted: getChats pages in chatId order
        self._by_context: dict[tuple[str, int], int] = {}
        self.top_message_id = 0  # new messages get ids above every id of the cabinet

    def add(self, chat: Chat) -> None:
        if chat.chat_id in self.chats:
            raise ValueError(f"chat {chat.chat_id} already exists in this cabinet")
        key = chat.context_key()
        if key is not None and key in self._by_context:
            raise ValueError(
                f"the {key[0]} context {key[1]} already has chat {self._by_context[key]}"
            )
        self.chats[chat.chat_id] = chat
        bisect.insort(self._ids, chat.chat_id)
        if key is not None:
            self._by_context[key] = chat.chat_id
        self.top_message_id = max(self.top_message_id, chat.last_message_id())

    def by_context(self, context_type: str, context_id: int) -> Chat | None:
        chat_id = self._by_context.get((context_type, context_id))
        return None if chat_id is None else self.chats[chat_id]

    def next_chat_id(self) -> int:
        return self._ids[-1] + 1 if self._ids else 1

    def page(
        self, chat_filter: ChatFilter, after: int, limit: int
    ) -> tuple[list[Chat], int | None]:
        """Up to ``limit`` matching chats with ids above ``after``; the last id if more follow."""
        found: list[Chat] = []
        for chat in self._scan(bisect.bisect_right(self._ids, after)):
            if chat_filter.matches(chat):
                if len(found) == limit:
                    return found, found[-1].chat_id
                found.append(chat)
        return found, None

    def _scan(self, start: int) -> Iterator[Chat]:
        for chat_id in self._ids[start:]:
            yield self.chats[chat_id]


def new_chat(
    chat_id: int,
    *,
    context_type: str,
    context_id: int | None,
    order_id: int | None,
    campaign_id: int | None,
    type: str,
    status: str,
    customer: Mapping[str, str] | None,
    created_at: str,
    updated_at: str | None,
    messages: Sequence[Mapping[str, Any]],
) -> Chat:
    """A :class:`Chat` from :meth:`MarketTestServer.add_chat`'s arguments, checked."""
    if context_type not in CONTEXT_TYPES:
        raise ValueError(f"context_type must be one of {CONTEXT_TYPES}, got {context_type!r}")
    if type not in CHAT_TYPES:
        raise ValueError(f"type must be one of {CHAT_TYPES}, got {type!r}")
    if status not in CHAT_STATUSES:
        raise ValueError(f"status must be one of {CHAT_STATUSES}, got {status!r}")
    for name, value in (("chat_id", chat_id), ("context_id", context_id), ("order_id", order_id)):
        if value is not None and not (isinstance(value, int) and 1 <= value <= INT64_MAX):
            raise ValueError(f"{name} must be an integer from 1 to {INT64_MAX}, got {value!r}")
    if context_type == "DIRECT":
        if context_id is not None:
            raise ValueError("a DIRECT chat has no context id (no order, no return)")
        order_id = return_id = None
    elif context_type == "ORDER":
        if order_id is not None and context_id is not None and order_id != context_id:
            raise ValueError("for an ORDER chat, context_id is the order id: give one of the two")
        order_id = context_id if context_id is not None else order_id or chat_id
        return_id = None
    else:
        return_id = context_id if context_id is not None else chat_id
    chat = Chat(
        chat_id=chat_id,
        context_type=context_type,
        order_id=order_id,
        return_id=return_id,
        campaign_id=None if context_type == "DIRECT" else campaign_id,
        type=type,
        status=status,
        customer=None if customer is None else dict(customer),
        created_at=created_at,
        updated_at=created_at if updated_at is None else updated_at,
    )
    for message in messages:
        message_id = message.get("messageId")
        if not isinstance(message_id, int) or isinstance(message_id, bool) or message_id < 1:
            raise ValueError(f"each message needs a positive int messageId, got {message_id!r}")
        chat.put(message_id, copy.deepcopy(dict(message)))
    return chat
