"""Sans-I/O decisions, tested with plain values: no server, no sockets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from market_chat_async import (
    BadRequestError,
    ForbiddenError,
    MalformedResponseError,
    MarketApiError,
    MarketConnectionError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    Sender,
    ServerError,
    UnauthorizedError,
)
from market_chat_async._models import ChatMessage
from market_chat_async._protocol import (
    decode,
    error_from_response,
    message_request,
    parse_rate_limit,
    validate_id,
)
from market_chat_async._retry import retry_delay

from .conftest import ALL_ERRORS

FIXTURES = Path(__file__).parent / "fixtures"
HEADERS = {
    "x-ratelimit-resource-limit": "1000",
    "x-ratelimit-resource-remaining": "0",
    "x-ratelimit-resource-until": "Thu, 10 Jul 2018 00:42:42 GMT",
    "date": "Thu, 10 Jul 2018 00:40:00 GMT",
}


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"status": "ERROR", "errors": [{"code": code, "message": message}]}).encode()


@pytest.mark.parametrize("value", [1, 2**63 - 1])
def test_valid_ids(value: int) -> None:
    assert validate_id("chat_id", value) == value


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        (0, ValueError),
        (-1, ValueError),
        (2**63, ValueError),
        (True, TypeError),
        (False, TypeError),
        ("5", TypeError),
        (5.0, TypeError),
        (None, TypeError),
    ],
)
def test_invalid_ids(value: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="chat_id"):
        validate_id("chat_id", value)


def decode_message(status: int, headers: dict[str, str], body: bytes) -> ChatMessage:
    if not 200 <= status < 300:
        raise error_from_response(status, headers, body)
    return decode(status, headers, body, ChatMessage)


def test_request_parts() -> None:
    request = message_request(1, 2, 3)
    assert (request.endpoint.method, request.path, dict(request.params)) == (
        "GET",
        "/v2/businesses/1/chats/message",
        {"chatId": "2", "messageId": "3"},
    )
    with pytest.raises(ValueError, match="message_id"):
        message_request(1, 2, 0)


def test_decode_ok() -> None:
    body = (FIXTURES / "message_text.json").read_bytes()
    msg = decode_message(200, {}, body)
    assert (msg.message_id, msg.sender, msg.message) == (1, Sender.PARTNER, "example")


@pytest.mark.parametrize(("status", "cls"), ALL_ERRORS)
def test_decode_error_statuses(status: int, cls: type[MarketApiError]) -> None:
    with pytest.raises(cls) as info:
        decode_message(status, {}, error_body("CODE", "what went wrong"))
    assert type(info.value) is cls
    assert info.value.status == status
    assert [(e.code, e.message) for e in info.value.errors] == [("CODE", "what went wrong")]


@pytest.mark.parametrize("body", [b"", b"<html>502 Bad Gateway</html>", b"[1, 2]", b"{}"])
def test_error_status_with_unreadable_body_keeps_the_status(body: bytes) -> None:
    err = error_from_response(502, {}, body)
    assert isinstance(err, ServerError)
    assert err.status == 502
    assert err.errors == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"status": "OK", "result": {',
        b"[]",
        b'{"status": "OK"}',
        b'{"status": "ERROR", "errors": [{"code": "X"}]}',
        b'{"status": "OK", "result": null}',
        b'{"status": "OK", "result": {"messageId": "x"}}',
        b'{"status": "OK", "result": {"messageId": 1, "createdAt": "2017-11-21", "sender": 1}}',
        "\xff".encode("latin-1"),
    ],
)
def test_malformed_200_raises_library_error(body: bytes) -> None:
    with pytest.raises(MalformedResponseError) as info:
        decode_message(200, {}, body)
    assert info.value.status == 200


def test_rate_limit_headers() -> None:
    info = parse_rate_limit(HEADERS)
    assert info is not None
    assert (info.limit, info.remaining, info.resets_in) == (1000, 0, 162.0)
    assert parse_rate_limit({}) is None
    broken = parse_rate_limit(
        {"x-ratelimit-resource-remaining": "lots", "x-ratelimit-resource-until": "soon"}
    )
    assert broken is not None
    assert (broken.remaining, broken.until, broken.resets_in) == (None, None, None)


def test_420_parallel_cap_is_told_from_quota() -> None:
    parallel = error_from_response(
        420,
        dict(HEADERS, **{"x-ratelimit-resource-remaining": "500"}),
        error_body("420", "Hit rate limit of 4 parallel requests for businessId 12345"),
    )
    assert isinstance(parallel, RateLimitError)
    assert parallel.reason == "parallel"
    quota = error_from_response(420, HEADERS, error_body("LIMIT_EXCEEDED", "Resource limit"))
    assert isinstance(quota, RateLimitError)
    assert quota.reason == "quota"
    assert quota.retry_after == 162.0
    # Quota left over means it cannot have been the quota, whatever the wording.
    unclear = error_from_response(
        420, dict(HEADERS, **{"x-ratelimit-resource-remaining": "3"}), b"{}"
    )
    assert isinstance(unclear, RateLimitError)
    assert unclear.reason == "parallel"


def test_retry_decisions() -> None:
    policy = RetryPolicy(max_retries=3, backoff_initial=1.0, backoff_max=3.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 3.0)]:
        for error in (ServerError(503), MarketConnectionError(None, message="reset")):
            delay = retry_delay(policy, error, attempt, rng)
            assert delay is not None
            assert 0 <= delay <= ceiling
    assert retry_delay(policy, ServerError(500), 4, rng) is None
    for client_error in (
        BadRequestError(400),
        UnauthorizedError(401),
        ForbiddenError(403),
        NotFoundError(404),
        MalformedResponseError(200),
    ):
        assert retry_delay(policy, client_error, 1, rng) is None
    refused = RateLimitError(reason="parallel")
    first = retry_delay(policy, refused, 1, rng)
    assert first is not None
    assert policy.parallel_min <= first <= policy.parallel_max
    later = retry_delay(policy, refused, 50, rng)  # never given up, but backed off to 16x
    assert later is not None
    assert 16 * policy.parallel_min <= later <= 16 * policy.parallel_max


def test_a_body_that_is_not_utf8_is_malformed_and_keeps_no_copy_of_it() -> None:
    body = '{"status": "OK", "result": {"message": "привет"}}'.encode("cp1251")
    with pytest.raises(MalformedResponseError, match="not UTF-8") as caught:
        decode(200, {}, body, ChatMessage)
    assert caught.value.__cause__ is None


OK_MESSAGE = (
    b'{"status": "OK", "result": '
    b'{"messageId": 1, "createdAt": "2024-01-01T00:00:00Z", "sender": "MARKET"}}'
)


@pytest.mark.parametrize("body", [OK_MESSAGE, b" \r\n" + OK_MESSAGE + b"\n\t "])
def test_a_json_body_may_have_whitespace_around_it(body: bytes) -> None:
    assert decode(200, {}, body, ChatMessage).message_id == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (OK_MESSAGE + b" {}", "not JSON"),  # a second value after the first
        (OK_MESSAGE[:-1], "not JSON"),
        (b"\xef\xbb\xbf" + OK_MESSAGE, "not JSON"),  # a byte-order mark is not JSON text
        (b"", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_a_body_that_is_not_one_json_value_is_malformed(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedResponseError, match=reason):
        decode(200, {}, body, ChatMessage)
