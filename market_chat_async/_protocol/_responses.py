"""What an answer means: its body, its error, and what its rate-limit headers say.

Everything here is a pure function of plain values: a status, the headers (any mapping that
finds keys case-insensitively, such as aiohttp's, or a plain dict with lower-case keys) and the
body bytes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import attrs
import cattrs

from market_chat_async._errors import (
    MalformedResponseError,
    MarketApiError,
    RateLimitError,
    error_class_for,
)
from market_chat_async._limits import Answer
from market_chat_async._models import ApiErrorItem, Chat, ChatMessage
from market_chat_async._wire import converter

__all__ = [
    "ChatsPage",
    "HistoryPage",
    "RateLimitInfo",
    "answer_for",
    "check_ok",
    "decode",
    "decode_chats_page",
    "decode_created_chat",
    "decode_history_page",
    "error_from_response",
    "parse_rate_limit",
    "rate_limit_reason",
]

RateLimitReason = Literal["quota", "parallel"]
T = TypeVar("T")

_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
)}  # fmt: skip


@functools.lru_cache(maxsize=256)
def _http_date(value: str) -> datetime | None:
    """An RFC 1123 date (``Thu, 10 Jul 2018 00:42:42 GMT``), the fixed format read by slicing;
    ``None`` when unreadable. Cached: ``Until`` repeats for a whole window, ``Date`` a second."""
    try:
        if len(value) == 29 and value.endswith(" GMT") and value[3:5] == ", ":
            return datetime(
                int(value[12:16]),
                _MONTHS[value[8:11]],
                int(value[5:7]),
                int(value[17:19]),
                int(value[20:22]),
                int(value[23:25]),
                tzinfo=UTC,
            )
        from email.utils import parsedate_to_datetime  # other RFC 822 spellings, rarely

        parsed = parsedate_to_datetime(value)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


@functools.lru_cache(maxsize=256)
def _until_minus_date(date_text: str, until_text: str) -> float | None:
    """``Until`` minus ``Date`` in seconds, on the server's clock (cached: both repeat)."""
    until, date = _http_date(until_text), _http_date(date_text)
    if until is None or date is None:
        return None
    return max(0.0, (until - date).total_seconds())


def _resets_in(date_text: str | None, until_text: str | None) -> float | None:
    """Seconds until the server's window frees, if the headers say. Without a readable ``Date``
    it is measured from the local clock, so never from the cache."""
    if not until_text:
        return None
    if date_text:
        seconds = _until_minus_date(date_text, until_text)
        if seconds is not None:
            return seconds
    until = _http_date(until_text)
    return None if until is None else max(0.0, (until - datetime.now(UTC)).total_seconds())


@attrs.frozen
class RateLimitInfo:
    """The ``X-RateLimit-Resource-*`` headers of one response.

    ``resets_in`` is measured on the server's own clock (``Until`` minus the response's ``Date``),
    so a skewed local clock does not matter; both have whole seconds only.

    >>> info = parse_rate_limit({
    ...     "x-ratelimit-resource-limit": "1000",
    ...     "x-ratelimit-resource-remaining": "998",
    ...     "x-ratelimit-resource-until": "Thu, 10 Jul 2018 00:42:42 GMT",
    ...     "date": "Thu, 10 Jul 2018 00:40:00 GMT",
    ... })
    >>> info.limit, info.remaining, info.resets_in
    (1000, 998, 162.0)
    """

    limit: int | None
    remaining: int | None
    until_text: str | None = attrs.field(default=None, repr=False)
    date_text: str | None = attrs.field(default=None, repr=False)

    @property
    def until(self) -> datetime | None:
        """When the server's window frees (``Until``), if it said."""
        return _http_date(self.until_text) if self.until_text else None

    @property
    def resets_in(self) -> float | None:
        """Seconds from the response until the server's window frees, if the headers say."""
        return _resets_in(self.date_text, self.until_text)


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """Read the rate-limit headers; ``None`` when the response had none.

    Unparseable values read as absent: a broken header must not fail an otherwise good call.
    Dates are only parsed when asked for (:attr:`RateLimitInfo.resets_in`).
    """
    limit = headers.get("x-ratelimit-resource-limit")
    remaining = headers.get("x-ratelimit-resource-remaining")
    until = headers.get("x-ratelimit-resource-until")
    if limit is None and remaining is None and until is None:
        return None
    return RateLimitInfo(_int_header(limit), _int_header(remaining), until, headers.get("date"))


def _parse_errors(data: Any) -> list[ApiErrorItem]:
    raw = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        return []
    items = []
    for entry in raw:
        if isinstance(entry, dict):
            code, message = entry.get("code"), entry.get("message")
            items.append(
                ApiErrorItem(
                    code=code if isinstance(code, str) else "UNKNOWN",
                    message=message if isinstance(message, str) else None,
                )
            )
    return items


def rate_limit_reason(errors: list[ApiErrorItem], info: RateLimitInfo | None) -> RateLimitReason:
    """Tell the parallel cap from the quota in a 420.

    The service words the parallel cap as ``Hit rate limit of 4 parallel requests ...``; failing
    that, quota left over (``Remaining > 0``) means it was not the quota.

    >>> rate_limit_reason([ApiErrorItem("420", "Hit rate limit of 4 parallel requests")], None)
    'parallel'
    >>> rate_limit_reason([ApiErrorItem("LIMIT_EXCEEDED", "Resource limit exceeded")], None)
    'quota'
    """
    if any("parallel" in (e.message or "").lower() for e in errors):
        return "parallel"
    if info is not None and info.remaining is not None and info.remaining > 0:
        return "parallel"
    return "quota"


_raw_decode = json.JSONDecoder().raw_decode


def _json(body: bytes, status: int, headers: Mapping[str, str]) -> Any:
    try:
        # JSON between systems is UTF-8 (RFC 8259 section 8.1): no guessing of the encoding.
        text = body.decode()
        try:
            # The usual body, one JSON value and nothing else, read without json.loads'
            # wrappers: two calls and two whitespace scans fewer on every answer.
            value, end = _raw_decode(text)
        except ValueError:
            end = -1
        if end != len(text):  # whitespace around it, or not JSON: json.loads has the whole rule
            value = json.loads(text)
        return value
    except RecursionError:
        raise MalformedResponseError(
            status, message="response body is JSON nested too deeply", headers=headers
        ) from None
    except UnicodeDecodeError:  # not chained: the error would hold the whole body
        raise MalformedResponseError(
            status, message="response body is not UTF-8", headers=headers
        ) from None
    except ValueError as exc:
        raise MalformedResponseError(
            status, message="response body is not JSON", headers=headers
        ) from exc


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> MarketApiError:
    """The exception a non-2xx response stands for; an unreadable body still gives its status."""
    try:
        errors = _parse_errors(_json(body, status, headers))
    except MalformedResponseError:
        errors = []
    message = None if errors else f"HTTP {status} with no error details"
    if status == 420:
        info = parse_rate_limit(headers)
        return RateLimitError(
            status,
            errors,
            retry_after=info.resets_in if info else None,
            reason=rate_limit_reason(errors, info),
            message=message,
            headers=headers,
        )
    return error_class_for(status)(status, errors, message=message, headers=headers)


def answer_for(status: int, headers: Mapping[str, str], error: MarketApiError | None) -> Answer:
    """What the limiter is to learn from an answer.

    >>> answer_for(200, {"x-ratelimit-resource-remaining": "7"}, None)
    Answer(remaining=7, resets_in=None, parallel_refused=False)
    """
    remaining = _int_header(headers.get("x-ratelimit-resource-remaining"))
    resets_in = _resets_in(headers.get("date"), headers.get("x-ratelimit-resource-until"))
    if error is None:
        return Answer(remaining, resets_in)
    refused = isinstance(error, RateLimitError) and error.reason == "parallel"
    if isinstance(error, RateLimitError) and not refused and remaining is None:
        remaining = 0  # spent, says the status, even without the headers
    return Answer(remaining, resets_in, parallel_refused=refused)


def _result(status: int, headers: Mapping[str, str], body: bytes) -> Any:
    data = _json(body, status, headers)
    if not isinstance(data, dict) or data.get("status") != "OK":
        errors = _parse_errors(data)
        raise MalformedResponseError(
            status,
            errors,
            message=None if errors else "response is not {'status': 'OK', ...}",
            headers=headers,
        )
    return data.get("result")


def _structure(value: Any, kind: type[T], status: int, headers: Mapping[str, str]) -> T:
    try:
        model: T = converter.get_structure_hook(kind)(value, kind)  # the cached hook, no dispatch
        return model
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        detail = "; ".join(cattrs.transform_error(exc)) if isinstance(exc, Exception) else ""
        raise MalformedResponseError(
            status,
            message=f"unexpected {kind.__name__} shape: {detail or exc}",
            headers=headers,
        ) from exc


def decode(status: int, headers: Mapping[str, str], body: bytes, kind: type[T]) -> T:
    """A 2xx ``{"status": "OK", "result": {...}}`` answer's result as ``kind``.

    >>> decode(200, {}, b'{"status": "OK", "result": {"messageId": 1, '
    ...        b'"createdAt": "2024-01-01T00:00:00Z", "sender": "MARKET"}}', ChatMessage).sender
    <Sender.MARKET: 'MARKET'>
    """
    result = _result(status, headers, body)
    if not isinstance(result, dict):
        raise MalformedResponseError(status, message="response has no result", headers=headers)
    return _structure(result, kind, status, headers)


def _next_token(result: dict[str, Any], status: int, headers: Mapping[str, str]) -> str | None:
    paging = result.get("paging")
    token = paging.get("nextPageToken") if isinstance(paging, dict) else None
    if token is not None and (not isinstance(token, str) or not token):
        raise MalformedResponseError(
            status, message=f"nextPageToken is not a non-empty string: {token!r}", headers=headers
        )
    return token


def _page_result(status: int, headers: Mapping[str, str], body: bytes, key: str) -> Any:
    result = _result(status, headers, body)
    if not isinstance(result, dict) or not isinstance(result.get(key), list):
        raise MalformedResponseError(
            status, message=f"response result has no {key!r} list", headers=headers
        )
    return result


@attrs.frozen
class ChatsPage:
    """One page of getChats."""

    chats: list[Chat]
    next_page_token: str | None


@attrs.frozen
class HistoryPage:
    """One page of getChatHistory, oldest message first."""

    messages: list[ChatMessage]
    next_page_token: str | None


def decode_chats_page(status: int, headers: Mapping[str, str], body: bytes) -> ChatsPage:
    """getChats' result: the chats and the next page's token."""
    result = _page_result(status, headers, body, "chats")
    chats = [_structure(item, Chat, status, headers) for item in result["chats"]]
    return ChatsPage(chats, _next_token(result, status, headers))


def decode_history_page(status: int, headers: Mapping[str, str], body: bytes) -> HistoryPage:
    """getChatHistory's result: the messages and the next page's token."""
    result = _page_result(status, headers, body, "messages")
    messages = [_structure(item, ChatMessage, status, headers) for item in result["messages"]]
    return HistoryPage(messages, _next_token(result, status, headers))


def decode_created_chat(status: int, headers: Mapping[str, str], body: bytes) -> int:
    """createChat's result: the chat's id."""
    result = _result(status, headers, body)
    chat_id = result.get("chatId") if isinstance(result, dict) else None
    if not isinstance(chat_id, int) or isinstance(chat_id, bool) or chat_id < 1:
        raise MalformedResponseError(
            status, message=f"createChat result has no chatId: {result!r}"[:200], headers=headers
        )
    return chat_id


def check_ok(status: int, headers: Mapping[str, str], body: bytes) -> None:
    """An answer that carries nothing but ``{"status": "OK"}`` (sendMessage, sendFile)."""
    _result(status, headers, body)
