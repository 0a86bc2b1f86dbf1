"""The data a chat-message call returns: frozen, slotted attrs classes with no I/O.

The field names mirror the Market API's in snake_case (``messageId`` -> ``message_id``), so the
official documentation reads across directly. How JSON becomes these classes is the business of
``_wire``; nothing here knows the wire format.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

__all__ = [
    "ApiErrorItem",
    "Attachment",
    "Chat",
    "ChatContext",
    "ChatContextType",
    "ChatMessage",
    "ChatStatus",
    "ChatType",
    "Customer",
    "OpenEnum",
    "Sender",
]


class OpenEnum(enum.StrEnum):
    """A string enum of the API that tolerates values the service adds after this release.

    Such a value does not make a response unreadable: it becomes a pseudo-member that is none of
    the known ones but keeps the raw string as its ``value``.

    >>> Sender("CUSTOMER") is Sender.CUSTOMER
    True
    >>> Sender("ROBOT").value, Sender("ROBOT").is_known
    ('ROBOT', False)
    """

    @classmethod
    def _missing_(cls, value: object) -> OpenEnum | None:
        if not isinstance(value, str):
            return None
        pseudo = str.__new__(cls, value)
        pseudo._name_ = value
        pseudo._value_ = value
        return pseudo

    @property
    def is_known(self) -> bool:
        """Whether this is one of the values this release was built with."""
        return self._name_ in type(self).__members__


class Sender(OpenEnum):
    """Who sent a chat message (an :class:`OpenEnum`).

    >>> Sender("CUSTOMER") is Sender.CUSTOMER
    True
    """

    PARTNER = "PARTNER"
    """The shop (you)."""
    CUSTOMER = "CUSTOMER"
    """The buyer."""
    MARKET = "MARKET"
    """The Market itself (an automatic message)."""
    SUPPORT = "SUPPORT"
    """A Market support employee."""


class ChatType(OpenEnum):
    """What kind of chat it is (an :class:`OpenEnum`).

    >>> ChatType("ARBITRAGE") is ChatType.ARBITRAGE
    True
    """

    CHAT = "CHAT"
    """A chat with a customer."""
    ARBITRAGE = "ARBITRAGE"
    """A dispute."""


class ChatStatus(OpenEnum):
    """Whose turn it is in a chat (an :class:`OpenEnum`).

    >>> ChatStatus("WAITING_FOR_PARTNER").value
    'WAITING_FOR_PARTNER'
    """

    NEW = "NEW"
    """A new chat."""
    WAITING_FOR_CUSTOMER = "WAITING_FOR_CUSTOMER"
    """The customer is to answer."""
    WAITING_FOR_PARTNER = "WAITING_FOR_PARTNER"
    """The shop (you) is to answer."""
    WAITING_FOR_ARBITER = "WAITING_FOR_ARBITER"
    """The arbiter is to answer."""
    WAITING_FOR_MARKET = "WAITING_FOR_MARKET"
    """The Market is to answer."""
    FINISHED = "FINISHED"
    """The chat is over."""


class ChatContextType(OpenEnum):
    """What a chat is about (an :class:`OpenEnum`).

    >>> ChatContextType("DIRECT") is ChatContextType.DIRECT
    True
    """

    ORDER = "ORDER"
    """An order."""
    RETURN = "RETURN"
    """A return (FBY, FBS and Express)."""
    DIRECT = "DIRECT"
    """A chat the customer started."""


@attrs.frozen
class Attachment:
    """A file attached to a chat message.

    ``url`` is a download link on the Market's file storage; the client never requests it with
    your credentials.

    >>> Attachment(name="invoice.pdf", url="https://example.invalid/f/1", size=2048).size
    2048
    """

    name: str
    url: str
    size: int


@attrs.frozen
class ChatMessage:
    """One message of a chat, as ``GET /v2/businesses/{businessId}/chats/message`` returns it.

    ``message`` is ``None`` for a message that only carries files, and ``payload`` is empty for a
    text-only one. ``extra`` holds any fields the service sent that this release does not know,
    untouched, so nothing the API says is lost.

    >>> from datetime import datetime, timezone
    >>> m = ChatMessage(
    ...     message_id=1,
    ...     created_at=datetime(2017, 11, 21, tzinfo=timezone.utc),
    ...     sender=Sender.CUSTOMER,
    ...     message="Hello",
    ... )
    >>> m.payload
    ()
    """

    message_id: int
    created_at: datetime
    sender: Sender
    message: str | None = None
    payload: tuple[Attachment, ...] = ()
    extra: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


@attrs.frozen
class Customer:
    """The customer of a chat, as public as their Yandex ID profile.

    >>> Customer(name="Ivan P.", public_id="abc123").name
    'Ivan P.'
    """

    name: str | None = None
    public_id: str | None = None


@attrs.frozen
class ChatContext:
    """What a chat is about: an order, a return, or nothing (a chat the customer started).

    ``order_id`` and ``campaign_id`` come for orders and returns, ``return_id`` for returns only.

    >>> ChatContext(type=ChatContextType.ORDER, order_id=42).order_id
    42
    """

    type: ChatContextType
    order_id: int | None = None
    return_id: int | None = None
    campaign_id: int | None = None
    customer: Customer | None = None


@attrs.frozen
class Chat:
    """One chat of a cabinet, as getChat and getChats return it.

    ``updated_at`` is the time of the chat's last message. ``extra`` holds any fields this
    release does not know (the deprecated ``orderId`` among them), untouched.

    >>> from datetime import datetime, timezone
    >>> when = datetime(2017, 11, 21, tzinfo=timezone.utc)
    >>> chat = Chat(chat_id=7, type=ChatType.CHAT, status=ChatStatus.NEW, created_at=when,
    ...             updated_at=when, context=ChatContext(type=ChatContextType.DIRECT))
    >>> chat.status.value
    'NEW'
    """

    chat_id: int
    type: ChatType
    status: ChatStatus
    created_at: datetime
    updated_at: datetime
    context: ChatContext
    extra: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)


@attrs.frozen
class ApiErrorItem:
    """One entry of the ``errors`` list in a Market error response.

    >>> ApiErrorItem(code="NOT_FOUND", message="Message not found").code
    'NOT_FOUND'
    """

    code: str
    message: str | None = None
