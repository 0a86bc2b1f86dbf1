"""The notifications the Market sends, parsed by pure functions: no I/O, no aiohttp.

:func:`decode_json` turns a body into a JSON value, :func:`parse_notification` that value into
a :class:`ChatMessageSent`, a :class:`ChatCreated` or a generic :class:`Notification`, and
:func:`dedup_key` says which deliveries are the same notification.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import attrs

from market_chat_async._protocol import validate_id
from market_chat_async._wire import parse_api_datetime

logger = logging.getLogger("market_chat_async.notifications")

T = TypeVar("T")

_MAX_DEPTH = 64  # JSON nesting; a notification needs about 4, json.loads recurses per level

# -- the notifications ---------------------------------------------------------------------


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
        logger.debug("body is not JSON: %s", short_error(exc))
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
        return parse_api_datetime(value)  # the API's one date rule
    except (ValueError, OverflowError) as exc:
        if "offset" in str(exc):
            raise ValueError(f"{name} has no UTC offset: {value[:40]!r}") from None
        raise ValueError(f"{name} is not an ISO 8601 date-time: {value[:40]!r}") from None


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


def key_text(notification: AnyNotification) -> str | None:
    """:func:`dedup_key` as one string, the form the queues store (``None``: never deduped).

    >>> key_text(parse_notification({"notificationType": "CHAT_CREATED", "businessId": 1,
    ...     "chatId": 2, "createdAt": "2017-11-21T00:00:00Z"}))
    'CHAT_CREATED:1:2'
    """
    key = dedup_key(notification)
    if key is None:
        return None
    assert isinstance(key, tuple)
    return ":".join(str(part) for part in key)


def canonical_body(data: Mapping[str, Any]) -> bytes:
    """The bytes a queue stores for a decoded body: compact UTF-8 JSON, read back as it was.

    >>> canonical_body({"notificationType": "PING", "x": "é"})
    b'{"notificationType":"PING","x":"\\xc3\\xa9"}'
    """
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def short_error(exc: BaseException, limit: int = 200) -> str:
    """An error in one bounded line: never the whole of a 64 KiB input.

    >>> short_error(RuntimeError("x" * 300), 20)
    'RuntimeError: xxx...'
    """
    text = str(exc) if isinstance(exc, NotificationFormatError) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
