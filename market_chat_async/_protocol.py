"""Sans-I/O: the parts of a ``get_message`` request, and what a response means.

Everything here is a pure function of plain values (status, lower-cased headers, body bytes), so
each decision (is this a message or an error? the parallel cap or the quota? retry or stop?)
is tested without a server. No HTTP library is imported.

>>> path, params = message_request(12345, 2, 3)
>>> path, params
('/v2/businesses/12345/chats/message', {'chatId': '2', 'messageId': '3'})
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import attrs
import cattrs

from ._errors import (
    MalformedResponseError,
    MarketApiError,
    MarketConnectionError,
    RateLimitError,
    ServerError,
    error_class_for,
)
from ._models import ApiErrorItem, ChatMessage
from ._wire import converter

__all__ = [
    "INT64_MAX",
    "RateLimitInfo",
    "RetryPolicy",
    "decode_message",
    "error_from_response",
    "message_request",
    "parse_rate_limit",
    "rate_limit_reason",
    "retry_delay",
    "validate_id",
]

INT64_MAX = 2**63 - 1

RateLimitReason = Literal["quota", "parallel"]


def validate_id(name: str, value: object) -> int:
    """Check an id the way the API's schema does (int64, minimum 1), before anything is sent.

    >>> validate_id("chat_id", 5)
    5
    >>> validate_id("chat_id", True)
    Traceback (most recent call last):
    TypeError: chat_id must be an int, not bool
    >>> validate_id("chat_id", 0)
    Traceback (most recent call last):
    ValueError: chat_id must be between 1 and 9223372036854775807, got 0
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= value <= INT64_MAX:
        raise ValueError(f"{name} must be between 1 and {INT64_MAX}, got {value}")
    return value


def message_request(business_id: int, chat_id: int, message_id: int) -> tuple[str, dict[str, str]]:
    """Path and query parameters of ``GET /v2/businesses/{businessId}/chats/message``."""
    business_id = validate_id("business_id", business_id)
    chat_id = validate_id("chat_id", chat_id)
    message_id = validate_id("message_id", message_id)
    path = f"/v2/businesses/{business_id}/chats/message"
    return path, {"chatId": str(chat_id), "messageId": str(message_id)}


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
    until: datetime | None
    date: datetime | None

    @property
    def resets_in(self) -> float | None:
        """Seconds from the response until the server's window frees, if the headers say."""
        if self.until is None:
            return None
        now = self.date or datetime.now(self.until.tzinfo)
        return max(0.0, (self.until - now).total_seconds())


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """Read the rate-limit headers (keys lower-cased); ``None`` when the response had none.

    Unparseable values read as absent: a broken header must not fail an otherwise good call.
    """
    limit = _int_header(headers.get("x-ratelimit-resource-limit"))
    remaining = _int_header(headers.get("x-ratelimit-resource-remaining"))
    until = _http_date(headers.get("x-ratelimit-resource-until"))
    if limit is None and remaining is None and until is None:
        return None
    return RateLimitInfo(limit, remaining, until, _http_date(headers.get("date")))


def _json(body: bytes) -> Any:
    return json.loads(body)


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


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> MarketApiError:
    """The exception a non-2xx response stands for; an unreadable body still gives its status."""
    try:
        errors = _parse_errors(_json(body))
    except ValueError:
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


def decode_message(status: int, headers: Mapping[str, str], body: bytes) -> ChatMessage:
    """Turn a response into a ``ChatMessage`` or raise the library's error for it."""
    if not 200 <= status < 300:
        raise error_from_response(status, headers, body)
    try:
        data = _json(body)
    except ValueError as exc:
        raise MalformedResponseError(
            status, message="response body is not JSON", headers=headers
        ) from exc
    if not isinstance(data, dict) or data.get("status") != "OK" or "result" not in data:
        errors = _parse_errors(data)
        raise MalformedResponseError(
            status,
            errors,
            message=None if errors else "response is not {'status': 'OK', 'result': ...}",
            headers=headers,
        )
    try:
        return converter.structure(data["result"], ChatMessage)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        detail = "; ".join(cattrs.transform_error(exc)) if isinstance(exc, Exception) else ""
        raise MalformedResponseError(
            status, message=f"unexpected message shape: {detail or exc}", headers=headers
        ) from exc


@attrs.frozen
class RetryPolicy:
    """How transient failures are retried, in one place.

    5xx answers, dropped connections and timeouts are retried up to ``max_retries`` times with
    exponential backoff and full jitter (``uniform(0, min(backoff_max, backoff_initial * 2**n))``);
    a 420 for the parallel cap is retried after ``uniform(parallel_min, parallel_max)`` seconds,
    doubling for each further refusal of the same call up to 16 times that, for as long as the
    client's maximum rate-limit wait allows. Client errors are never retried.

    >>> RetryPolicy(max_retries=0).max_retries
    0
    """

    max_retries: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    backoff_initial: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    backoff_max: float = attrs.field(default=8.0, validator=attrs.validators.gt(0))
    parallel_min: float = attrs.field(default=0.05, validator=attrs.validators.ge(0))
    parallel_max: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))


def retry_delay(
    policy: RetryPolicy, error: MarketApiError, attempt: int, rng: random.Random
) -> float | None:
    """Seconds to wait before retrying ``error`` after ``attempt`` failed tries, or ``None``.

    Quota 420s are not decided here: they wait for the window, which the limiter knows.

    >>> rng = random.Random(0)
    >>> retry_delay(RetryPolicy(), ServerError(503), attempt=1, rng=rng) is not None
    True
    >>> retry_delay(RetryPolicy(), ServerError(503), attempt=4, rng=rng) is None
    True
    >>> from ._errors import NotFoundError
    >>> retry_delay(RetryPolicy(), NotFoundError(404), attempt=1, rng=rng) is None
    True
    """
    if isinstance(error, RateLimitError) and error.reason == "parallel":
        # Brief, but growing while the cap stays full, so waiting calls do not burn quota.
        return rng.uniform(policy.parallel_min, policy.parallel_max) * (1 << min(attempt - 1, 4))
    if not isinstance(error, (ServerError, MarketConnectionError)):
        return None
    if attempt > policy.max_retries:
        return None
    ceiling = min(policy.backoff_max, policy.backoff_initial * 2 ** (attempt - 1))
    return rng.uniform(0, ceiling)
