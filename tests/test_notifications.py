"""The notification receiver: real HTTP to the app, the bundled Market server behind the client.

Parsing, the source-address rule and the retry decision are pure functions and are tested with
plain values first; everything else goes over localhost sockets (aiohttp's ``TestServer``), with
a :class:`MarketChatClient` that fetches from the bundled Market test server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_chat_async import (
    BadRequestError,
    ChatMessage,
    ForbiddenError,
    MarketChatClient,
    NotFoundError,
    Quota,
    RateLimitError,
    ServerError,
)
from market_chat_async.notifications import (
    MARKET_NETWORKS,
    RECEIVER,
    ChatCreated,
    ChatMessageSent,
    HandlerRetry,
    Notification,
    NotificationFormatError,
    NotificationReceiver,
    client_address,
    create_app,
    decode_json,
    dedup_key,
    parse_notification,
    retry_delay,
)
from market_chat_async.notifications._events import _nested_deeper_than
from market_chat_async.testing import RunningServer

from .conftest import API_KEY, FAST_RETRY

T = TypeVar("T")
BUSINESS = 12345
SENT_AT = "2017-11-21T00:00:00.213Z"
QUICK = HandlerRetry(attempts=3, backoff_initial=0.01, backoff_max=0.02)


def message_sent(chat_id: int = 67, message_id: str | int = "89", **extra: Any) -> dict[str, Any]:
    return {
        "notificationType": "CHAT_MESSAGE_SENT",
        "businessId": BUSINESS,
        "chatId": chat_id,
        "messageId": message_id,
        "sentAt": SENT_AT,
        **extra,
    }


def chat_created(chat_id: int = 67) -> dict[str, Any]:
    return {
        "notificationType": "CHAT_CREATED",
        "businessId": BUSINESS,
        "chatId": chat_id,
        "createdAt": "2017-11-21T03:00:00+03:00",
    }


class Recorder:
    """An ``on_message`` that records its calls and can be told to fail or to wait."""

    def __init__(self) -> None:
        self.calls: list[tuple[ChatMessageSent, ChatMessage]] = []
        self.failures_left: dict[int, int] = {}  # message_id -> how many calls raise
        self.gate: asyncio.Event | None = None  # when set up, calls wait for it
        self.entered = asyncio.Event()

    async def __call__(self, notification: ChatMessageSent, message: ChatMessage) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        left = self.failures_left.get(notification.message_id, 0)
        if left:
            self.failures_left[notification.message_id] = left - 1
            raise RuntimeError(f"handler failed for message {notification.message_id}")
        self.calls.append((notification, message))

    @property
    def message_ids(self) -> list[int]:
        return [n.message_id for n, _ in self.calls]


@asynccontextmanager
async def running_app(
    client: MarketChatClient, on_message: Callable[..., object], **options: Any
) -> AsyncIterator[tuple[TestClient[Any, Any], NotificationReceiver]]:
    """``create_app`` on a real 127.0.0.1 port; leaving the block shuts the app down (drain)."""
    options.setdefault("allow_from", None)
    options.setdefault("retry", QUICK)
    options.setdefault("name", "test-shop")
    options.setdefault("version", "9.9")
    app = create_app(client, on_message, **options)
    http = TestClient(TestServer(app, host="127.0.0.1"))
    await http.start_server()
    try:
        yield http, app[RECEIVER]
    finally:
        await http.close()


@pytest.fixture
def on_message() -> Recorder:
    return Recorder()


@pytest.fixture
async def app(
    client: MarketChatClient, on_message: Recorder
) -> AsyncIterator[tuple[TestClient[Any, Any], NotificationReceiver]]:
    async with running_app(client, on_message) as pair:
        yield pair


async def post(
    http: TestClient[Any, Any], body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post("/notification", data=data, headers=headers) as resp:
        return resp.status, await resp.json()


async def eventually(
    probe: Callable[[], Awaitable[T]], good: Callable[[T], bool], within: float = 30.0
) -> T:
    """Poll ``probe`` until ``good`` holds (the overall bound only catches a hang)."""
    async with asyncio.timeout(within):
        while True:
            value = await probe()
            if good(value):
                return value
            await asyncio.sleep(0.01)


def assert_ok_body(body: Any) -> None:
    assert set(body) == {"version", "name", "time"}
    assert (body["name"], body["version"]) == ("test-shop", "9.9")
    when = datetime.fromisoformat(body["time"])
    assert when.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - when) < timedelta(seconds=5)


# -- parsing (pure) --------------------------------------------------------------------------


def test_message_id_string_becomes_an_int() -> None:
    n = parse_notification(message_sent(message_id="89"))
    assert n == ChatMessageSent(
        BUSINESS, 67, 89, datetime(2017, 11, 21, 0, 0, 0, 213000, tzinfo=UTC)
    )
    assert isinstance(n.message_id, int)


def test_integer_message_id_is_accepted_too() -> None:
    n = parse_notification(message_sent(message_id=89))
    assert isinstance(n, ChatMessageSent)
    assert n.message_id == 89


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("2017-11-21T00:00:00Z", timedelta(0)),
        ("2017-11-21T00:00:00.213Z", timedelta(0)),
        ("2017-11-21T00:00:00.123456+03:00", timedelta(hours=3)),
        ("2017-11-21T00:00:00-05:30", timedelta(hours=-5, minutes=-30)),
    ],
)
def test_date_times_keep_their_offset(text: str, offset: timedelta) -> None:
    n = parse_notification(message_sent(sentAt=text))
    assert isinstance(n, ChatMessageSent)
    assert n.sent_at.utcoffset() == offset


def test_chat_created() -> None:
    n = parse_notification(chat_created(chat_id=5))
    assert n == ChatCreated(
        BUSINESS, 5, datetime(2017, 11, 21, 3, tzinfo=timezone(timedelta(hours=3)))
    )


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("businessId", True, "businessId must be an int, not bool"),
        ("businessId", 5.0, "businessId must be an int, not float"),
        ("businessId", "12345", "businessId must be an int, not str"),
        ("businessId", 0, "businessId must be between 1"),
        ("chatId", -1, "chatId must be between 1"),
        ("chatId", 2**63, "chatId must be between 1"),
        ("chatId", None, "chatId must be an int, not NoneType"),
        ("messageId", "", "messageId must be a string of at most 19 digits"),
        ("messageId", "12a", "messageId must be a string of at most 19 digits"),
        ("messageId", "+5", "messageId must be a string of at most 19 digits"),
        ("messageId", " 5", "messageId must be a string of at most 19 digits"),
        ("messageId", "\u0663", "messageId must be a string of at most 19 digits"),  # Arabic 3
        ("messageId", "1" * 20, "messageId must be a string of at most 19 digits"),
        ("messageId", "0", "messageId must be between 1"),
        ("messageId", str(2**63), "messageId must be between 1"),
        ("messageId", True, "messageId must be a string of digits, not a boolean"),
        ("messageId", 1.5, "messageId must be a string of digits, not a number"),
        ("messageId", ["1"], "messageId must be a string of digits, not an array"),
        ("sentAt", "2017-11-21T00:00:00", "sentAt has no UTC offset"),
        ("sentAt", "2017-11-21", "sentAt has no UTC offset"),
        ("sentAt", "yesterday", "sentAt is not an ISO 8601 date-time"),
        ("sentAt", 1511222400, "sentAt must be an ISO 8601 date-time string, not a number"),
    ],
)
def test_wrong_fields_are_refused_by_name(field: str, value: object, problem: str) -> None:
    with pytest.raises(NotificationFormatError) as info:
        parse_notification({**message_sent(), field: value})
    assert problem in str(info.value)


def test_every_missing_field_is_named() -> None:
    with pytest.raises(NotificationFormatError) as info:
        parse_notification({"notificationType": "CHAT_MESSAGE_SENT"})
    assert str(info.value) == (
        "businessId is required; chatId is required; messageId is required; sentAt is required"
    )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "the body must be a JSON object, not an array"),
        ("PING", "the body must be a JSON object, not a string"),
        (None, "the body must be a JSON object, not null"),
        ({}, "notificationType is required"),
        ({"notificationType": None}, "notificationType is required"),
        ({"notificationType": 1}, "notificationType must be a non-empty string, not a number"),
        ({"notificationType": ""}, "notificationType must be a non-empty string"),
    ],
)
def test_not_a_notification(body: object, problem: str) -> None:
    with pytest.raises(NotificationFormatError, match=problem):
        parse_notification(body)


def test_other_types_are_generic_and_unchecked() -> None:
    raw = {"notificationType": "ORDER_CREATED", "orderId": "whatever", "x": [1]}
    assert parse_notification(raw) == Notification("ORDER_CREATED", raw)
    assert parse_notification({"notificationType": "PING"}) == Notification(
        "PING", {"notificationType": "PING"}
    )


def test_unknown_keys_are_ignored() -> None:
    assert parse_notification(message_sent(newField={"a": 1})) == parse_notification(message_sent())


def test_dedup_keys() -> None:
    a = parse_notification(message_sent(message_id="89"))
    b = parse_notification(message_sent(message_id="089", sentAt="2017-11-21T03:00:00+03:00"))
    assert dedup_key(a) == dedup_key(b) == ("CHAT_MESSAGE_SENT", BUSINESS, 67, 89)
    assert dedup_key(parse_notification(chat_created(5))) == ("CHAT_CREATED", BUSINESS, 5)
    x = parse_notification({"notificationType": "ORDER_CREATED", "a": 1, "b": 2})
    y = parse_notification({"b": 2, "a": 1, "notificationType": "ORDER_CREATED"})
    z = parse_notification({"notificationType": "ORDER_CREATED", "a": 2, "b": 2})
    assert dedup_key(x) == dedup_key(y) != dedup_key(z)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
field_values = st.one_of(
    json_values,
    st.integers(min_value=-10, max_value=2**64),
    st.from_regex(r"\A[0-9]{1,21}\Z").map(str),
    st.sampled_from([SENT_AT, "2017-11-21T00:00:00", "2017-11-21T00:00:00+03:00", ""]),
)
notification_like = st.fixed_dictionaries(
    {
        "notificationType": st.sampled_from(
            ["CHAT_MESSAGE_SENT", "CHAT_CREATED", "PING", "ORDER_CREATED"]
        )
        | json_values
    },
    optional=dict.fromkeys(
        ("businessId", "chatId", "messageId", "sentAt", "createdAt"), field_values
    ),
)


@given(st.one_of(json_values, notification_like))
def test_parsing_only_ever_raises_the_format_error(data: object) -> None:
    try:
        n = parse_notification(data)
    except NotificationFormatError:
        return
    assert isinstance(data, dict)
    assert n.type == data["notificationType"]
    if isinstance(n, ChatMessageSent):
        assert 1 <= n.message_id < 2**63
        assert n.sent_at.tzinfo is not None


def depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


@given(json_values, st.integers(min_value=0, max_value=4))
def test_nesting_depth_is_measured_outside_strings(value: object, limit: int) -> None:
    body = json.dumps(value).encode()
    assert _nested_deeper_than(body, limit) == (depth(value) > limit)


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"notificationType": "X", "text": "[[[[" * 100}).encode(),
        json.dumps({"notificationType": "X", "text": '\\"[' * 100}).encode(),
        json.dumps({"notificationType": "X", "list": [[1]] * 1000}).encode(),
    ],
)
def test_brackets_in_strings_or_side_by_side_are_not_depth(body: bytes) -> None:
    assert not _nested_deeper_than(body, 64)
    assert isinstance(decode_json(body), dict)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 65 + b"]" * 65,
        b'{"a":' * 65 + b"1" + b"}" * 65,
        b"[" * 60_000,
        b'"' + b'\\"' * 30_000,
    ],
)
def test_too_deep_or_hostile_bodies_are_refused_quickly(body: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(NotificationFormatError):
        parse_notification(decode_json(body))
    assert time.perf_counter() - started < 0.2


# -- source addresses (pure) -----------------------------------------------------------------

PROXIES = [ip_network("127.0.0.1/32"), ip_network("10.0.0.0/8")]


@pytest.mark.parametrize(
    ("remote", "forwarded_for", "expected"),
    [
        ("5.45.207.9", [], "5.45.207.9"),
        ("8.8.8.8", ["5.45.207.9"], "8.8.8.8"),  # not a proxy: the header is not believed
        ("127.0.0.1", ["5.45.207.9"], "5.45.207.9"),
        ("127.0.0.1", ["5.45.207.9, 10.1.1.1"], "5.45.207.9"),  # trusted hops are skipped
        ("127.0.0.1", ["5.45.207.9, 8.8.8.8"], "8.8.8.8"),  # right-most untrusted wins
        ("127.0.0.1", ["5.45.207.9", "8.8.8.8"], "8.8.8.8"),  # several headers, in order
        ("127.0.0.1", ["8.8.8.8, 5.45.207.9"], "5.45.207.9"),  # a spoofed left part is moot
        ("127.0.0.1", ["5.45.207.9:4711"], "5.45.207.9"),
        ("127.0.0.1", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("127.0.0.1", [], "127.0.0.1"),  # the proxy itself, with nothing forwarded
        ("127.0.0.1", ["10.2.2.2"], "10.2.2.2"),  # all trusted: the left-most
        ("127.0.0.1", ["unknown"], None),
        ("127.0.0.1", ["5.45.207.9, garbage"], None),
        ("::ffff:5.45.207.9", [], "5.45.207.9"),  # a dual-stack socket's IPv4 client
        (None, ["5.45.207.9"], None),
    ],
)
def test_client_address(remote: str | None, forwarded_for: list[str], expected: str | None) -> None:
    addr = client_address(remote, forwarded_for, PROXIES)
    assert addr == (None if expected is None else ip_address(expected))


def test_market_networks_are_the_documented_ones() -> None:
    assert [str(n) for n in MARKET_NETWORKS] == [
        "5.45.207.0/25",
        "141.8.142.0/25",
        "5.255.253.0/25",
    ]


# -- retry decisions (pure) ------------------------------------------------------------------


def test_retry_delays_grow_and_stop() -> None:
    policy = HandlerRetry(attempts=4, backoff_initial=1.0, backoff_max=3.0)
    rng = random.Random(1)
    for attempt, (low, high) in enumerate([(0.5, 1.0), (1.0, 2.0), (1.5, 3.0)], start=1):
        for _ in range(50):
            delay = retry_delay(policy, RuntimeError(), attempt, rng)
            assert delay is not None
            assert low <= delay <= high
    assert retry_delay(policy, RuntimeError(), 4, rng) is None


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (BadRequestError(400), False),
        (ForbiddenError(403), True),  # kept: a fixed key makes it work
        (NotFoundError(404), True),
        (ServerError(503), True),
        (ValueError("handler bug"), True),
    ],
)
def test_what_is_retried(error: Exception, retried: bool) -> None:
    assert (retry_delay(HandlerRetry(), error, 1, random.Random(0)) is not None) is retried


def test_rate_limit_waits_at_least_its_retry_after() -> None:
    error = RateLimitError(420, retry_after=90.0)
    assert retry_delay(HandlerRetry(), error, 1, random.Random(0)) == 90.0


# -- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"name": ""}, "name must be a string of 1 to 100 characters"),
        ({"version": "x" * 101}, "version must be a string of 1 to 100 characters"),
        ({"allow_from": ["not a network"]}, "allow_from: .* does not appear to be"),
        ({"trusted_proxies": "10.0.0.1/8"}, "trusted_proxies: .* has host bits set"),
        ({"max_pending": 0}, "max_pending must be an int of at least 1"),
        ({"concurrency": True}, "concurrency must be an int of at least 1"),
        ({"drain_timeout": -1}, "drain_timeout must be >= 0"),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        create_app(MarketChatClient(api_key="k"), Recorder(), **options)


def test_a_single_network_may_be_given_as_a_string() -> None:
    app = create_app(MarketChatClient(api_key="k"), Recorder(), allow_from="127.0.0.1")
    assert app[RECEIVER].allow_from == (ip_network("127.0.0.1/32"),)


# -- over HTTP: the happy path ---------------------------------------------------------------


async def test_ping_answers_version_name_and_time(
    app: tuple[TestClient[Any, Any], NotificationReceiver],
) -> None:
    http, receiver = app
    status, body = await post(http, {"notificationType": "PING", "time": SENT_AT})
    assert status == 200
    assert_ok_body(body)
    assert receiver.stats().accepted == 0  # a PING is never queued


async def test_message_is_fetched_through_the_client_and_handed_over(
    market: RunningServer, on_message: Recorder
) -> None:
    async with (
        MarketChatClient(
            api_key=API_KEY, base_url=market.url, retry=FAST_RETRY, quota=Quota(limit=10)
        ) as client,
        running_app(client, on_message) as (http, receiver),
    ):
        status, body = await post(http, message_sent(chat_id=67, message_id="89"))
        assert status == 200
        assert_ok_body(body)
        await receiver.join()
        assert (await client.quota_state(BUSINESS)).remaining == 9  # the shared limiter
    [(notification, message)] = on_message.calls
    assert notification == ChatMessageSent(BUSINESS, 67, 89, datetime.fromisoformat(SENT_AT))
    assert message.message_id == 89
    assert market.server.stats.requests == 1
    assert receiver.stats().handled == 1


async def test_acknowledged_before_the_handler_finishes(
    app: tuple[TestClient[Any, Any], NotificationReceiver], on_message: Recorder
) -> None:
    http, receiver = app
    on_message.gate = asyncio.Event()
    status, _ = await post(http, message_sent())
    assert status == 200
    await on_message.entered.wait()
    assert receiver.pending() == [parse_notification(message_sent())]
    on_message.gate.set()
    await receiver.join()
    assert on_message.message_ids == [89]
    assert receiver.pending() == []


async def test_duplicates_are_handled_once(
    market: RunningServer,
    app: tuple[TestClient[Any, Any], NotificationReceiver],
    on_message: Recorder,
) -> None:
    http, receiver = app
    on_message.gate = asyncio.Event()
    answers = await asyncio.gather(*(post(http, message_sent()) for _ in range(3)))
    assert [status for status, _ in answers] == [200, 200, 200]
    on_message.gate.set()
    await receiver.join()
    # Redelivered after it was done, with the id spelled differently: still the same message.
    assert (await post(http, message_sent(message_id="089")))[0] == 200
    assert (await post(http, message_sent(message_id="90")))[0] == 200
    await receiver.join()
    assert on_message.message_ids == [89, 90]
    assert market.server.stats.requests == 2
    assert receiver.stats().duplicates == 3


async def test_chat_created_and_other_types(client: MarketChatClient, on_message: Recorder) -> None:
    created: list[ChatCreated] = []
    everything: list[str] = []

    async def on_chat_created(notification: ChatCreated) -> None:
        created.append(notification)

    async def on_notification(notification: Any) -> None:
        everything.append(notification.type)

    async with running_app(
        client, on_message, on_chat_created=on_chat_created, on_notification=on_notification
    ) as (http, receiver):
        for body in (chat_created(5), chat_created(5), {"notificationType": "ORDER_CREATED"}):
            assert (await post(http, body))[0] == 200
        assert (await post(http, {"notificationType": "PING"}))[0] == 200
        await receiver.join()
    assert [n.chat_id for n in created] == [5]
    assert sorted(everything) == ["CHAT_CREATED", "ORDER_CREATED"]


async def test_unhandled_types_are_acknowledged_and_ignored(
    app: tuple[TestClient[Any, Any], NotificationReceiver], caplog: pytest.LogCaptureFixture
) -> None:
    http, receiver = app
    caplog.set_level(logging.DEBUG, logger="market_chat_async.notifications")
    for body in (chat_created(), {"notificationType": "ORDER_CREATED"}, {"notificationType": "X"}):
        status, answer = await post(http, body)
        assert status == 200
        assert_ok_body(answer)
    assert receiver.stats().ignored == 3
    assert receiver.stats().accepted == 0
    ignored = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert [r.levelno for r in ignored] == [logging.DEBUG] * 3


# -- over HTTP: refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b'"PING"',
        b"{}",
        b'{"notificationType": 5}',
        b'{"notificationType": "CHAT_MESSAGE_SENT", "businessId": 1, "chatId": 2}',
        json.dumps(message_sent(message_id="abc")).encode(),
        json.dumps(message_sent(chatId="67")).encode(),
        json.dumps(message_sent(sentAt="2017-11-21T00:00:00")).encode(),
        b"[" * 60_000,  # deeper than the JSON parser's recursion limit, still under 64 KiB
        b'{"notificationType": "CHAT_MESSAGE_SENT", "businessId": 1' + b"9" * 5000 + b"}",
    ],
)
async def test_malformed_bodies_get_400(
    app: tuple[TestClient[Any, Any], NotificationReceiver], body: bytes
) -> None:
    http, receiver = app
    status, answer = await post(http, body)
    assert status == 400
    assert answer["error"]["type"] == "WRONG_EVENT_FORMAT"
    assert isinstance(answer["error"]["message"], str)
    assert len(answer["error"]["message"]) <= 500
    assert receiver.stats().accepted == 0


async def test_content_type_is_not_required(
    app: tuple[TestClient[Any, Any], NotificationReceiver],
) -> None:
    http, _ = app
    headers = {"Content-Type": "text/plain"}
    assert (await post(http, {"notificationType": "PING"}, headers))[0] == 200


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        notification_like.map(lambda v: json.dumps(v).encode()),
    )
)
async def test_fuzzed_bodies_answer_200_or_400(
    app: tuple[TestClient[Any, Any], NotificationReceiver], body: bytes
) -> None:
    http, _ = app
    async with http.post("/notification", data=body) as resp:
        answer = await resp.json()
        assert resp.status in (200, 400), answer
    if resp.status == 200:
        assert set(answer) == {"version", "name", "time"}
    else:
        assert answer["error"]["type"] == "WRONG_EVENT_FORMAT"


async def test_bodies_over_64_kib_are_refused(
    app: tuple[TestClient[Any, Any], NotificationReceiver],
) -> None:
    http, receiver = app
    big = json.dumps(message_sent(padding="x" * 70_000)).encode()
    async with http.post("/notification", data=big) as resp:
        assert resp.status == 413

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(70):
            yield b" " * 1024

    async with http.post("/notification", data=chunked()) as resp:
        assert resp.status == 413
    assert (await post(http, {"notificationType": "PING"}))[0] == 200
    assert receiver.stats().accepted == 0


async def test_a_body_cut_off_mid_way_breaks_nothing(
    app: tuple[TestClient[Any, Any], NotificationReceiver], caplog: pytest.LogCaptureFixture
) -> None:
    http, receiver = app
    reader, writer = await asyncio.open_connection(http.host, http.port)
    writer.write(
        b"POST /notification HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        b'{"notificationType": "CHAT_MESSAGE_SENT", '
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await reader.read()  # the server has seen the end of the connection
    assert (await post(http, {"notificationType": "PING"}))[0] == 200
    assert receiver.stats().accepted == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_only_post(app: tuple[TestClient[Any, Any], NotificationReceiver]) -> None:
    http, _ = app
    async with http.get("/notification") as resp:
        assert resp.status == 405


# -- over HTTP: source addresses -------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "forwarded_for", "status"),
    [
        ({}, None, 403),  # the default: only the Market's networks, and this is 127.0.0.1
        ({}, "5.45.207.9", 403),  # no trusted proxy: the header is not believed
        ({"allow_from": ["127.0.0.0/8"]}, None, 200),
        ({"allow_from": None}, "8.8.8.8", 200),  # the check is off
        ({"trusted_proxies": ["127.0.0.1"]}, "5.45.207.9", 200),
        ({"trusted_proxies": ["127.0.0.1"]}, "141.8.142.100", 200),
        ({"trusted_proxies": ["127.0.0.1"]}, "5.255.253.127", 200),
        ({"trusted_proxies": ["127.0.0.1"]}, "5.255.253.128", 403),  # just outside the /25
        ({"trusted_proxies": ["127.0.0.1"]}, "8.8.8.8", 403),
        ({"trusted_proxies": ["127.0.0.1"]}, "8.8.8.8, 5.45.207.9", 200),
        ({"trusted_proxies": ["127.0.0.1"]}, "5.45.207.9, 8.8.8.8", 403),
        ({"trusted_proxies": ["127.0.0.1"]}, None, 403),  # the proxy itself is no Market
        ({"trusted_proxies": ["10.0.0.0/8"]}, "5.45.207.9", 403),  # peer is not that proxy
    ],
)
async def test_source_address_rules(
    client: MarketChatClient,
    options: dict[str, Any],
    forwarded_for: str | None,
    status: int,
) -> None:
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    options = {"allow_from": MARKET_NETWORKS, **options}
    async with running_app(client, Recorder(), **options) as (http, _):
        for body in ({"notificationType": "PING"}, message_sent()):
            answer_status, answer = await post(http, body, headers)
            assert answer_status == status
            if status == 403:
                assert answer["error"]["type"] == "UNKNOWN"


async def test_refused_source_is_not_read(client: MarketChatClient) -> None:
    async with running_app(client, Recorder(), allow_from=MARKET_NETWORKS) as (http, receiver):
        status, _ = await post(http, b"not even json")
        assert status == 403
        assert receiver.stats().accepted == 0


# -- the background: failures, backpressure, shutdown ----------------------------------------


async def test_failing_handler_is_retried_then_succeeds(
    app: tuple[TestClient[Any, Any], NotificationReceiver],
    on_message: Recorder,
    market: RunningServer,
) -> None:
    http, receiver = app
    on_message.failures_left[89] = 2
    assert (await post(http, message_sent()))[0] == 200
    await receiver.join()
    assert on_message.message_ids == [89]
    assert receiver.stats().handled == 1
    assert market.server.stats.requests == 1  # handler retries reuse the fetched message


async def test_handler_that_keeps_failing_is_logged_and_may_be_redelivered(
    app: tuple[TestClient[Any, Any], NotificationReceiver],
    on_message: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    http, receiver = app
    on_message.failures_left[89] = 3  # every attempt
    assert (await post(http, message_sent()))[0] == 200
    assert (await post(http, message_sent(message_id="90")))[0] == 200
    await receiver.join()
    assert on_message.message_ids == [90]  # the failure blocked nothing
    [failure] = receiver.failures
    assert (failure.stage, failure.attempts) == ("on_message", 3)
    assert failure.notification == parse_notification(message_sent())
    assert isinstance(failure.error, RuntimeError)
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "message_id=89" in record.getMessage()
    assert record.exc_info is not None
    assert receiver.stats().failed == 1
    # A redelivery of the failed notification gets a fresh try.
    assert (await post(http, message_sent()))[0] == 200
    await receiver.join()
    assert on_message.message_ids == [90, 89]


async def test_fetch_failures_are_retried_and_reported(
    market: RunningServer,
    app: tuple[TestClient[Any, Any], NotificationReceiver],
    on_message: Recorder,
) -> None:
    http, receiver = app
    market.server.not_found.add((BUSINESS, 67, 404))
    assert (await post(http, message_sent(message_id="404")))[0] == 200
    await receiver.join()
    [failure] = receiver.failures
    assert failure.stage == "fetch"
    assert isinstance(failure.error, NotFoundError)
    assert market.server.stats.requests == QUICK.attempts
    assert on_message.calls == []


async def test_a_refused_key_is_kept_retried_and_logged_loudly(
    market: RunningServer, on_message: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        MarketChatClient(api_key="wrong", base_url=market.url, retry=FAST_RETRY) as client,
        running_app(client, on_message) as (http, receiver),
    ):
        assert (await post(http, message_sent()))[0] == 200
        await receiver.join()
        [dead] = await receiver.queue.dead_letters()
    [failure] = receiver.failures
    assert isinstance(failure.error, ForbiddenError)
    assert failure.attempts == QUICK.attempts  # tried again, not dropped at the first 403
    assert market.server.stats.requests == QUICK.attempts
    assert parse_notification(json.loads(dead.body)) == parse_notification(message_sent())
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum("refused the API key" in line for line in loud) == QUICK.attempts - 1
    assert any(line.startswith("gave up: event=dead_letter") for line in loud)
    assert not any("wrong" in r.getMessage() for r in caplog.records)  # the key never shows


async def test_retry_backoff_holds_up_no_other_notification(
    client: MarketChatClient, on_message: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    slow_retry = HandlerRetry(attempts=2, backoff_initial=60.0, backoff_max=60.0)
    on_message.failures_left[89] = 1
    async with running_app(
        client, on_message, concurrency=1, retry=slow_retry, drain_timeout=0.0
    ) as (http, receiver):
        assert (await post(http, message_sent()))[0] == 200
        assert (await post(http, message_sent(message_id="90")))[0] == 200
        while on_message.message_ids != [90]:  # 89 is waiting 30-60 s for its second try
            on_message.entered.clear()
            await on_message.entered.wait()
        await eventually(lambda: receiver.health(), lambda h: h.backlog == 1 and not h.in_flight)
    # The app shut down with 89 still waiting: cancelled, reported, logged.
    assert receiver.unfinished == [parse_notification(message_sent())]
    assert receiver.state == "closed"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "shutdown" in errors[0]
    assert "message_id=89" in errors[0]


async def test_shutdown_drains_what_is_pending(
    client: MarketChatClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    app = create_app(client, recorder, allow_from=None, retry=QUICK, drain_timeout=10.0)
    http = TestClient(TestServer(app, host="127.0.0.1"))
    await http.start_server()
    receiver = app[RECEIVER]
    for message_id in ("1", "2", "3"):
        assert (await post(http, message_sent(message_id=message_id)))[0] == 200
    await recorder.entered.wait()
    close_called = asyncio.Event()
    close = receiver.close

    async def spy() -> list[Any]:
        close_called.set()
        return await close()

    monkeypatch.setattr(receiver, "close", spy)
    closing = asyncio.create_task(http.close())  # the app's cleanup drains the receiver
    await close_called.wait()
    assert receiver.state == "draining"
    late = await receiver.receive(json.dumps(message_sent(message_id="4")).encode(), remote=None)
    assert late.status == 503  # refused while draining: the Market retries elsewhere/later
    assert late.body["error"]["type"] == "UNKNOWN"
    assert (await receiver.receive(b'{"notificationType": "PING"}', remote=None)).status == 200
    recorder.gate.set()
    await closing
    assert sorted(recorder.message_ids) == [1, 2, 3]
    assert receiver.unfinished == []
    assert receiver.stats().handled == 3


async def test_ping_is_fast_while_the_quota_holds_everything_back(
    market: RunningServer, on_message: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    # One request per hour: the first message is fetched (and its handler hangs), the next ones
    # wait for the window.
    on_message.gate = asyncio.Event()
    async with (
        MarketChatClient(
            api_key=API_KEY, base_url=market.url, quota=Quota(limit=1, period=3600.0)
        ) as client,
        running_app(client, on_message, max_pending=4, drain_timeout=0.1) as (http, receiver),
    ):
        for message_id in range(1, 5):
            assert (await post(http, message_sent(message_id=str(message_id))))[0] == 200
        await on_message.entered.wait()
        status, answer = await post(http, message_sent(message_id="5"))
        assert status == 500  # full: the Market will retry later
        assert answer["error"]["type"] == "UNKNOWN"
        started = time.perf_counter()
        status, answer = await post(http, {"notificationType": "PING"})
        elapsed = time.perf_counter() - started
        assert status == 200
        assert_ok_body(answer)
        assert elapsed < 0.5
        assert receiver.stats().busy == 1
    assert on_message.message_ids == []
    assert receiver.unfinished == [
        parse_notification(message_sent(message_id=str(i))) for i in range(1, 5)
    ]
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 4
    assert market.server.stats.requests == 1


async def test_receiver_without_aiohttp(client: MarketChatClient, on_message: Recorder) -> None:
    async with NotificationReceiver(client, on_message, allow_from=MARKET_NETWORKS) as receiver:
        body = json.dumps(message_sent()).encode()
        assert (await receiver.receive(body, remote="8.8.8.8")).status == 403
        assert (await receiver.receive(body, remote="5.45.207.1")).status == 200
        assert (await receiver.receive(b" " * 70_000, remote="5.45.207.1")).status == 413
        await receiver.join()
    assert on_message.message_ids == [89]


async def test_not_started_receiver_refuses_with_503(client: MarketChatClient) -> None:
    receiver = NotificationReceiver(client, Recorder(), allow_from=None)
    reply = await receiver.receive(json.dumps(message_sent()).encode(), remote=None)
    assert reply.status == 503
    assert await receiver.close() == []


# -- the import rules -------------------------------------------------------------------------


def _modules_after(code: str, *, bare: bool = False) -> set[str]:
    """What ``code`` loads in a fresh interpreter; ``bare`` skips the packages' ``__init__``
    (which re-export the client and the aiohttp app), so only the modules' own imports count."""
    import market_chat_async

    root = Path(market_chat_async.__file__).parent
    stubs = (
        "import sys, types\n"
        f"for name, path in (('market_chat_async', {str(root)!r}), "
        f"('market_chat_async.notifications', {str(root / 'notifications')!r})):\n"
        "    module = types.ModuleType(name); module.__path__ = [path]\n"
        "    sys.modules[name] = module\n"
    )
    script = (stubs if bare else "") + code + "\nimport sys; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_receiver_core_and_the_queues_do_not_import_aiohttp() -> None:
    loaded = _modules_after(
        "import market_chat_async.notifications._receiver, "
        "market_chat_async.notifications._sqlite, market_chat_async.notifications._redis",
        bare=True,
    )
    assert "market_chat_async.notifications._receiver" in loaded
    assert not {"aiohttp", "aiohttp.web", "market_chat_async.notifications._app"} & loaded
    assert "redis" not in loaded


def test_importing_notifications_does_not_import_redis() -> None:
    loaded = _modules_after("import market_chat_async.notifications")
    assert "market_chat_async.notifications._redis" in loaded
    assert "redis" not in loaded


@given(notification_like)
def test_a_notification_built_in_python_is_queued_as_the_market_would_send_it(
    data: dict[str, Any],
) -> None:
    from market_chat_async.notifications._receiver import _raw

    try:
        notification = parse_notification(data)
    except NotificationFormatError:
        return
    again = parse_notification(json.loads(json.dumps(_raw(notification))))
    assert repr(again) == repr(notification)  # repr: a NaN is not equal to itself
