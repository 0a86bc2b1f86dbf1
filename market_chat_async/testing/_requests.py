"""What a request asks for, checked against the OpenAPI files: pure functions of its parts.

Each function returns the value the handler needs or raises :class:`BadRequest` with the
message of the ``400`` answer. Page tokens are opaque to clients: URL-safe base64 of
``"<kind>:<numbers>"``, tied to the operation (a getChats token is no history token).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from multidict import MultiMapping

from ._data import CHAT_STATUSES, CHAT_TYPES, CONTEXT_TYPES, INT64_MAX, ChatFilter

MAX_TEXT: Final = 4096
"""sendMessageToChat: the longest ``message``, in characters (SendMessageToChatRequest)."""
MAX_FILE: Final = 5 * 1024 * 1024
"""sendFileToChat: the largest ``file``, in bytes ("5 Мбайт", SendFileToChatRequest)."""

_DECIMAL = re.compile(r"[0-9]{1,40}")


class BadRequest(Exception):
    """The request breaks the spec: answered ``400`` with this message."""


def parse_id(raw: str | None) -> int | None:
    """An id as the schema wants it (int64, minimum 1, plain decimal), or ``None``.

    >>> parse_id("12"), parse_id("0"), parse_id("+1"), parse_id(str(2**63))
    (12, None, None, None)
    """
    if raw is None or not _DECIMAL.fullmatch(raw):
        return None
    value = int(raw)
    return value if 1 <= value <= INT64_MAX else None


def bad_param(name: str, raw: str) -> str:
    return f"Parameter {name} must be an integer from 1 to {INT64_MAX}, got {raw!r}"


def _single(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"Parameter {name} must be given once")
    return values[0] if values else None


def query_id(query: MultiMapping[str], name: str) -> int:
    """A required int64 id of the query string (``chatId``, ``messageId``)."""
    raw = _single(query, name)
    if raw is None:
        raise BadRequest(f"Required parameter {name} is missing")
    value = parse_id(raw)
    if value is None:
        raise BadRequest(bad_param(name, raw))
    return value


def query_limit(query: MultiMapping[str], default: int, maximum: int) -> int:
    """``limit``: 1 to ``maximum``, ``default`` when absent."""
    raw = _single(query, "limit")
    if raw is None:
        return default
    if not _DECIMAL.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise BadRequest(f"Parameter limit must be an integer from 1 to {maximum}, got {raw!r}")
    return int(raw)


def encode_token(kind: str, *numbers: int) -> str:
    """An opaque page token.

    >>> decode_token(encode_token("chats", 41), "chats", 1)
    (41,)
    """
    text = ":".join([kind, *map(str, numbers)])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_token(token: str, kind: str, count: int) -> tuple[int, ...]:
    try:
        padded = token + "=" * (-len(token) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        text = ""
    parts = text.split(":")
    numbers = [parse_id(part) for part in parts[1:]]
    if parts[0] != kind or len(numbers) != count or None in numbers:
        raise BadRequest(f"Parameter page_token is not a token this method gave: {token!r}")
    return tuple(n for n in numbers if n is not None)


def query_page_token(query: MultiMapping[str]) -> str | None:
    """``page_token`` or its alias ``pageToken`` (both at once only if equal)."""
    tokens = {t for name in ("page_token", "pageToken") if (t := _single(query, name)) is not None}
    if len(tokens) > 1:
        raise BadRequest("Parameters page_token and pageToken disagree: give one of them")
    return tokens.pop() if tokens else None


def json_object(raw: bytes) -> Mapping[str, Any]:
    """The request body: a JSON object (the spec marks every body required)."""
    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    return body


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= INT64_MAX


def _array(body: Mapping[str, Any], name: str) -> list[Any] | None:
    """A filter: absent/null, else a non-empty array of unique items."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise BadRequest(f"Filter {name} must be null or a non-empty array")
    if len({json.dumps(item, sort_keys=True) for item in value}) != len(value):
        raise BadRequest(f"Filter {name} must not repeat an item")
    return value


def _enums(body: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> frozenset[str] | None:
    values = _array(body, name)
    if values is None:
        return None
    for value in values:
        if value not in allowed:
            raise BadRequest(f"Filter {name} takes {', '.join(allowed)}; got {value!r}")
    return frozenset(values)


def context_of(value: object, where: str) -> tuple[str, int]:
    """A ``ChatContextDTO``: ``{"type": "ORDER" | "RETURN", "id": n}``."""
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object {{type, id}}")
    kind, context_id = value.get("type"), value.get("id")
    if kind not in ("ORDER", "RETURN"):
        raise BadRequest(f"{where}.type must be ORDER or RETURN, got {kind!r}")
    if not _is_id(context_id):
        raise BadRequest(f"{where}.id must be an integer from 1 to {INT64_MAX}, got {context_id!r}")
    assert isinstance(context_id, int)
    return kind, context_id


def chats_filter(body: Mapping[str, Any]) -> ChatFilter:
    """getChats' ``GetChatsRequest`` body.

    >>> chats_filter({"statuses": ["NEW"], "contexts": [{"type": "ORDER", "id": 5}]}).contexts
    frozenset({('ORDER', 5)})
    """
    contexts = _array(body, "contexts")
    order_ids = _array(body, "orderIds")
    if order_ids is not None and not all(map(_is_id, order_ids)):
        raise BadRequest(f"Filter orderIds takes integers from 1 to {INT64_MAX}")
    return ChatFilter(
        contexts=None
        if contexts is None
        else frozenset(context_of(c, f"contexts[{n}]") for n, c in enumerate(contexts)),
        context_types=_enums(body, "contextTypes", CONTEXT_TYPES),
        types=_enums(body, "types", CHAT_TYPES),
        statuses=_enums(body, "statuses", CHAT_STATUSES),
        order_ids=None if order_ids is None else frozenset(order_ids),
    )


def history_from(body: Mapping[str, Any]) -> int:
    """getChatHistory's ``messageIdFrom`` (inclusive); 1 when absent or null."""
    value = body.get("messageIdFrom")
    if value is None:
        return 1
    if not _is_id(value):
        raise BadRequest(f"messageIdFrom must be an integer from 1 to {INT64_MAX}, got {value!r}")
    assert isinstance(value, int)
    return value


def message_text(body: Mapping[str, Any]) -> str:
    """sendMessageToChat's ``message``: a string of 1 to 4,096 characters."""
    text = body.get("message")
    if not isinstance(text, str) or not 1 <= len(text) <= MAX_TEXT:
        shown = len(text) if isinstance(text, str) else repr(text)
        raise BadRequest(f"message must be a string of 1 to {MAX_TEXT} characters, got {shown}")
    return text


def create_context(body: Mapping[str, Any]) -> tuple[str, int]:
    """createChat's context: ``context`` or the deprecated ``orderId`` (an ORDER context)."""
    if body.get("context") is not None:
        return context_of(body["context"], "context")
    order_id = body.get("orderId")
    if order_id is None:
        raise BadRequest("createChat needs context {type, id} (or the deprecated orderId)")
    if not _is_id(order_id):
        raise BadRequest(f"orderId must be an integer from 1 to {INT64_MAX}, got {order_id!r}")
    assert isinstance(order_id, int)
    return "ORDER", order_id
