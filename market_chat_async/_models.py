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

__all__ = ["ApiErrorItem", "Attachment", "ChatMessage", "Sender"]


class Sender(enum.StrEnum):
    """Who sent a chat message.

    A value the service adds after this release does not make a message unreadable: it becomes a
    pseudo-member that is none of the known ones but keeps the raw string as its ``value``.

    >>> Sender("CUSTOMER") is Sender.CUSTOMER
    True
    >>> Sender("ROBOT").value, Sender("ROBOT").is_known
    ('ROBOT', False)
    """

    PARTNER = "PARTNER"
    """The shop (you)."""
    CUSTOMER = "CUSTOMER"
    """The buyer."""
    MARKET = "MARKET"
    """The Market itself (an automatic message)."""
    SUPPORT = "SUPPORT"
    """A Market support employee."""

    @classmethod
    def _missing_(cls, value: object) -> Sender | None:
        if not isinstance(value, str):
            return None
        pseudo = str.__new__(cls, value)
        pseudo._name_ = value
        pseudo._value_ = value
        return pseudo

    @property
    def is_known(self) -> bool:
        """Whether this is one of the senders this release was built with."""
        return self._name_ in type(self).__members__


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
class ApiErrorItem:
    """One entry of the ``errors`` list in a Market error response.

    >>> ApiErrorItem(code="NOT_FOUND", message="Message not found").code
    'NOT_FOUND'
    """

    code: str
    message: str | None = None
