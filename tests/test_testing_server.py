"""The bundled Market test server, checked with a plain aiohttp client over real sockets.

No part of the library's client is used here: the server is the yardstick the client is measured
with, so it is measured on its own against the documented API. Hours of quota pass on looptime's
virtual clock while the HTTP stays real (localhost sockets).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from market_chat_async.testing import (
    DEFAULT_API_KEY,
    DEFAULT_OAUTH_TOKEN,
    Fault,
    MarketTestServer,
    RunningServer,
    ServerStats,
    auto_message,
    serve,
)

BUSINESS = 12345
OTHER_BUSINESS = 777
KEY = {"Api-Key": DEFAULT_API_KEY}
EPOCH = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
HOUR = 3600.0
INT64_MAX = 2**63 - 1


class Answer(NamedTuple):
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header_date(self, name: str) -> datetime:
        return parsedate_to_datetime(self.headers[name])

    def resets_in(self) -> float:
        """What a client computes: ``Until`` minus ``Date``, both from the server's clock."""
        return (
            self.header_date("X-RateLimit-Resource-Until") - self.header_date("Date")
        ).total_seconds()


async def call(
    session: aiohttp.ClientSession,
    running: RunningServer,
    chat_id: int | str = 1,
    message_id: int | str = 2,
    *,
    business_id: int | str = BUSINESS,
    headers: Mapping[str, str] = KEY,
    query: Mapping[str, str] | None = None,
    **options: Any,
) -> Answer:
    params = {"chatId": str(chat_id), "messageId": str(message_id)} if query is None else query
    url = f"{running.url}/v2/businesses/{business_id}/chats/message"
    options.setdefault("allow_redirects", False)
    async with session.get(url, params=params, headers=headers, **options) as response:
        return Answer(response.status, response.headers, await response.read())


def assert_error_body(answer: Answer, code: str | None = None) -> str:
    """The official ApiErrorResponse: ``status`` and non-empty ``errors`` of ``{code, message}``."""
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"status", "errors"}
    assert body["status"] == "ERROR"
    [error] = body["errors"]
    assert set(error) == {"code", "message"}
    assert isinstance(error["code"], str)
    assert isinstance(error["message"], str)
    if code is not None:
        assert error["code"] == code
    message: str = error["message"]
    return message


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def running() -> AsyncIterator[RunningServer]:
    async with serve(MarketTestServer(epoch=EPOCH)) as started:
        yield started


# -- credentials ------------------------------------------------------------------------------


async def test_missing_credentials_are_401(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    answer = await call(session, running, headers={})
    assert answer.status == 401
    assert_error_body(answer, "UNAUTHORIZED")


@pytest.mark.parametrize(
    "headers",
    [
        {"Api-Key": "wrong-key"},
        {"Api-Key": ""},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": DEFAULT_OAUTH_TOKEN},  # no scheme
        {"Authorization": f"Basic {DEFAULT_OAUTH_TOKEN}"},
        {"Api-Key": DEFAULT_API_KEY, "Authorization": "Bearer wrong-key"},
    ],
)
async def test_wrong_credentials_are_403_and_not_echoed(
    session: aiohttp.ClientSession, running: RunningServer, headers: dict[str, str]
) -> None:
    answer = await call(session, running, headers=headers)
    assert answer.status == 403
    assert_error_body(answer, "FORBIDDEN")
    assert b"wrong-key" not in answer.body


@pytest.mark.parametrize(
    "headers",
    [
        {"Api-Key": DEFAULT_API_KEY},
        {"Authorization": f"Bearer {DEFAULT_OAUTH_TOKEN}"},
        {"Authorization": f"bearer {DEFAULT_OAUTH_TOKEN}"},
        {"Api-Key": "added-later"},
    ],
)
async def test_accepted_credentials(
    session: aiohttp.ClientSession, running: RunningServer, headers: dict[str, str]
) -> None:
    running.server.api_keys.add("added-later")
    assert (await call(session, running, headers=headers)).status == 200


async def test_refused_credentials_spend_no_quota(session: aiohttp.ClientSession) -> None:
    server = MarketTestServer(quota=5, epoch=EPOCH)
    async with serve(server) as running:
        assert (await call(session, running, headers={})).status == 401
        refused = await call(session, running, headers={"Api-Key": "nope"})
    assert refused.status == 403
    assert refused.headers["X-RateLimit-Resource-Remaining"] == "5"
    assert server.quota_remaining(BUSINESS) == 5
    assert server.stats.requests == 2
    assert server.stats.counted[BUSINESS] == []


# -- validation -------------------------------------------------------------------------------

BAD_IDS = ["abc", "0", "-1", str(INT64_MAX + 1), "1.5", "+1", " 1", "1e3", "٣", "0x10"]


@pytest.mark.parametrize("raw", BAD_IDS)
@pytest.mark.parametrize("name", ["businessId", "chatId", "messageId"])
async def test_ids_that_are_not_positive_int64_are_400(
    session: aiohttp.ClientSession, running: RunningServer, name: str, raw: str
) -> None:
    ids = {"businessId": str(BUSINESS), "chatId": "1", "messageId": "2", name: raw}
    answer = await call(
        session, running, ids["chatId"], ids["messageId"], business_id=ids["businessId"]
    )
    assert answer.status == 400
    assert name in assert_error_body(answer, "BAD_REQUEST")


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ({"messageId": "2"}, "chatId is missing"),
        ({"chatId": "1"}, "messageId is missing"),
    ],
)
async def test_missing_query_parameters_are_400(
    session: aiohttp.ClientSession, running: RunningServer, query: dict[str, str], text: str
) -> None:
    answer = await call(session, running, query=query)
    assert answer.status == 400
    assert text in assert_error_body(answer)


async def test_repeated_query_parameter_is_400(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    url = f"{running.url}/v2/businesses/{BUSINESS}/chats/message?chatId=1&chatId=2&messageId=3"
    async with session.get(url, headers=KEY) as response:
        assert response.status == 400


async def test_largest_int64_ids_are_valid(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    answer = await call(session, running, INT64_MAX, INT64_MAX, business_id=INT64_MAX)
    assert answer.status == 200
    assert answer.json()["result"]["messageId"] == INT64_MAX


async def test_bad_cabinet_is_free_and_bad_query_is_counted(session: aiohttp.ClientSession) -> None:
    server = MarketTestServer(quota=10)
    async with serve(server) as running:
        bad_cabinet = await call(session, running, business_id="0")
        bad_chat = await call(session, running, chat_id="x")
    assert (bad_cabinet.status, bad_chat.status) == (400, 400)
    assert "X-RateLimit-Resource-Remaining" not in bad_cabinet.headers  # no cabinet to speak of
    assert bad_chat.headers["X-RateLimit-Resource-Remaining"] == "9"
    assert server.quota_remaining(BUSINESS) == 9


# -- messages ---------------------------------------------------------------------------------


async def test_auto_messages_show_every_field_variant(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    shapes, senders, zones, attachment_counts = set(), set(), set(), set()
    for message_id in range(1, 13):
        answer = await call(session, running, 7, message_id)
        assert answer.status == 200
        body = answer.json()
        assert body["status"] == "OK"
        result = body["result"]
        assert result == auto_message(7, message_id)
        assert result["messageId"] == message_id
        assert {"messageId", "createdAt", "sender"} <= set(result)
        assert set(result) <= {"messageId", "createdAt", "sender", "message", "payload"}
        shapes.add(("message" in result, "payload" in result))
        senders.add(result["sender"])
        created = datetime.fromisoformat(result["createdAt"])
        assert created.tzinfo is not None
        zones.add("Z" if result["createdAt"].endswith("Z") else result["createdAt"][-6:])
        if result["createdAt"].endswith("Z"):
            assert re.search(r"\.\d{3}Z$", result["createdAt"])
        for n, attachment in enumerate(result.get("payload", []), start=1):
            assert set(attachment) == {"name", "url", "size"}
            assert attachment["url"] == f"https://market-files.invalid/7/{message_id}/{n}"
            assert isinstance(attachment["size"], int)
        if "payload" in result:
            attachment_counts.add(len(result["payload"]))
    assert shapes == {(True, False), (False, True), (True, True)}
    assert senders == {"PARTNER", "CUSTOMER", "MARKET", "SUPPORT"}
    assert zones == {"Z", "+03:00"}
    assert attachment_counts == {1, 2}


async def test_auto_messages_are_deterministic_and_utf8(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    first = await call(session, running, 3, 4)
    again = await call(session, running, 3, 4)
    assert first.body == again.body
    assert first.headers["Content-Type"] == "application/json; charset=utf-8"
    assert "Сообщение 4 в чате 3".encode() in first.body


async def test_stored_message_is_served_verbatim_and_wins_over_auto(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    message = {
        "messageId": 2,
        "createdAt": "2017-11-21T00:00:00+03:00",
        "sender": "SUPPORT",
        "message": "Здравствуйте!",
        "someFutureField": [1, None],
    }
    running.server.add_message(BUSINESS, 1, message)
    message["message"] = "changed after storing"
    answer = await call(session, running, 1, 2)
    assert answer.json() == {"status": "OK", "result": {**message, "message": "Здравствуйте!"}}
    other_cabinet = await call(session, running, 1, 2, business_id=OTHER_BUSINESS)
    assert other_cabinet.json()["result"] == auto_message(1, 2)


async def test_not_found_and_remove_message_answer_404(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    server = running.server
    server.not_found.add((BUSINESS, 1, 404))
    answer = await call(session, running, 1, 404)
    assert answer.status == 404
    assert_error_body(answer, "NOT_FOUND")
    server.add_message(BUSINESS, 1, {"messageId": 5, "createdAt": "x", "sender": "PARTNER"})
    server.remove_message(BUSINESS, 1, 5)
    assert (await call(session, running, 1, 5)).status == 404
    server.add_message(BUSINESS, 1, {"messageId": 5, "createdAt": "x", "sender": "PARTNER"})
    assert (await call(session, running, 1, 5)).status == 200  # adding takes it off not_found
    server.not_found.clear()
    assert (await call(session, running, 1, 404)).status == 200


async def test_without_auto_only_stored_messages_exist(session: aiohttp.ClientSession) -> None:
    server = MarketTestServer(messages=None)
    server.add_message(BUSINESS, 1, {"bad": "shape"}, message_id=9)
    async with serve(server) as running:
        assert (await call(session, running, 1, 2)).status == 404
        stored = await call(session, running, 1, 9)
    assert stored.json() == {"status": "OK", "result": {"bad": "shape"}}


# -- faults -----------------------------------------------------------------------------------


async def test_error_faults_answer_documented_error_bodies(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    running.server.inject(Fault.SERVER_ERROR, Fault.UNAVAILABLE, Fault.error(423, "LOCKED"))
    statuses = []
    for _ in range(3):
        answer = await call(session, running)
        assert_error_body(answer)
        statuses.append(answer.status)
    assert statuses == [500, 503, 423]
    assert (await call(session, running)).status == 200
    assert running.server.pending_faults() == 0


async def test_drop_closes_the_connection_without_a_byte(running: RunningServer) -> None:
    running.server.inject(Fault.DROP)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    request = (
        f"GET /v2/businesses/{BUSINESS}/chats/message?chatId=1&messageId=2 HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{running.port}\r\nApi-Key: {DEFAULT_API_KEY}\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()
    assert running.server.stats.dropped == 1
    assert sum(running.server.stats.by_status.values()) == 0


async def test_aiohttp_resends_a_dropped_get_once_by_itself(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    """aiohttp's ``ClientSession`` retries an idempotent request once when the connection drops,
    so one ``DROP`` is invisible to it and two in a row raise ``ServerDisconnectedError``."""
    running.server.inject(Fault.DROP)
    assert (await call(session, running)).status == 200
    assert running.server.stats.requests == 2
    running.server.inject(Fault.DROP, Fault.DROP)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await call(session, running)
    assert running.server.stats.requests == 4
    assert running.server.stats.dropped == 3


async def test_malformed_is_json_labelled_but_not_json(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    running.server.inject(Fault.MALFORMED)
    answer = await call(session, running)
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    with pytest.raises(ValueError, match="Expecting"):
        answer.json()


async def test_wrong_shape_is_valid_json_of_another_shape(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    running.server.inject(Fault.WRONG_SHAPE)
    answer = await call(session, running)
    assert answer.status == 200
    assert answer.json() == {"status": "OK", "result": {"messageId": "x"}}


@pytest.mark.looptime
async def test_slow_fault_trips_client_timeouts(session: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    server = MarketTestServer(latency=0.5)
    async with serve(server) as running:
        server.inject(Fault.slow(60.0), Fault.slow(30.0))
        with pytest.raises(asyncio.TimeoutError):
            await call(session, running, timeout=aiohttp.ClientTimeout(total=5.0))
        started = loop.time()
        assert (await call(session, running)).status == 200
        assert loop.time() - started == pytest.approx(30.5, abs=0.05)
        assert (await call(session, running)).status == 200  # both faults used up
        assert server.in_flight(BUSINESS) == 1  # the abandoned slow one still runs


async def test_faults_are_taken_in_order_by_requests_that_reach_the_backend(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    running.server.inject(Fault.SERVER_ERROR, Fault.MALFORMED)
    assert (await call(session, running, headers={})).status == 401
    assert (await call(session, running, chat_id="x")).status == 400
    assert running.server.pending_faults() == 2
    assert (await call(session, running)).status == 500
    malformed = await call(session, running)
    assert malformed.status == 200
    assert malformed.body == b'{"status": "OK", "result": {'
    assert (await call(session, running)).json()["status"] == "OK"


async def test_faults_spend_quota(session: aiohttp.ClientSession) -> None:
    server = MarketTestServer(quota=10)
    async with serve(server) as running:
        server.inject(Fault.SERVER_ERROR, Fault.DROP, Fault.DROP, Fault.WRONG_SHAPE)
        assert (await call(session, running)).status == 500
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(session, running)
        assert (await call(session, running)).status == 200
    assert server.quota_remaining(BUSINESS) == 6
    assert server.stats.by_status == {500: 1, 200: 1}


async def test_redirect_fault_answers_307_once(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    running.server.inject(Fault.redirect("http://127.0.0.1:9/elsewhere"))
    answer = await call(session, running)
    assert answer.status == 307
    assert answer.headers["Location"] == "http://127.0.0.1:9/elsewhere"
    assert (await call(session, running)).status == 200


async def test_standing_redirect_does_not_loop_to_its_own_target(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    target = f"{running.url}/v2/businesses/{BUSINESS}/chats/message?chatId=1&messageId=3"
    running.server.redirect_to = target
    refused = await call(session, running, headers={})
    assert refused.status == 307  # the redirect comes before anything else
    followed = await call(session, running, 1, 2, allow_redirects=True)
    assert followed.status == 200
    assert followed.json()["result"]["messageId"] == 3
    assert running.server.stats.by_status == {307: 2, 200: 1}
    assert running.server.stats.request_headers[-1]["Api-Key"] == DEFAULT_API_KEY


# -- quota ------------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_fixed_window_quota_with_420_body_and_headers(session: aiohttp.ClientSession) -> None:
    server = MarketTestServer(quota=3, period=HOUR, epoch=EPOCH)
    async with serve(server) as running:
        answers = [await call(session, running, 1, m) for m in (1, 2, 3)]
        assert [a.headers["X-RateLimit-Resource-Remaining"] for a in answers] == ["2", "1", "0"]
        assert {a.headers["X-RateLimit-Resource-Limit"] for a in answers} == {"3"}
        assert answers[0].headers["Date"] == "Tue, 14 Nov 2023 22:13:20 GMT"
        assert answers[0].headers["X-RateLimit-Resource-Until"] == "Tue, 14 Nov 2023 23:13:20 GMT"

        refused = await call(session, running, 1, 4)
        assert refused.status == 420
        assert refused.json() == {
            "status": "ERROR",
            "errors": [
                {
                    "code": "LIMIT_EXCEEDED",
                    "message": "Resource limit exceeded for businessId 12345: 3 requests per hour",
                }
            ],
        }
        assert refused.headers["X-RateLimit-Resource-Remaining"] == "0"
        assert refused.resets_in() == HOUR

        await asyncio.sleep(HOUR - 1)
        still = await call(session, running, 1, 5)
        assert still.status == 420
        assert still.resets_in() == 1.0
        await asyncio.sleep(1)
        fresh = await call(session, running, 1, 6)
        assert fresh.status == 200
        assert fresh.headers["X-RateLimit-Resource-Remaining"] == "2"
        assert fresh.resets_in() == HOUR
        assert (await call(session, running, 1, 7, business_id=OTHER_BUSINESS)).status == 200
    assert server.stats.quota_420 == 2
    assert server.stats.counted[BUSINESS] == [0.0, 0.0, 0.0, HOUR]  # a quota 420 is free


@pytest.mark.looptime
async def test_sliding_window_frees_as_the_oldest_request_leaves(
    session: aiohttp.ClientSession,
) -> None:
    server = MarketTestServer(quota=2, period=100.0, window="sliding", epoch=EPOCH)
    async with serve(server) as running:
        statuses, remaining, resets = [], [], []
        for wait in (0, 50, 10, 40, 20, 30):  # arrivals at 0, 50, 60, 100, 120, 150
            await asyncio.sleep(wait)
            answer = await call(session, running)
            statuses.append(answer.status)
            remaining.append(answer.headers["X-RateLimit-Resource-Remaining"])
            resets.append(answer.resets_in())
    assert statuses == [200, 200, 420, 200, 420, 200]
    assert remaining == ["1", "0", "0", "0", "0", "0"]
    assert resets == [100, 50, 40, 50, 30, 50]
    assert server.stats.counted[BUSINESS] == [0, 50, 100, 150]
    assert server.stats.max_in_any_window(BUSINESS, 100.0) == 2


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("window", "statuses", "most_in_a_period"),
    [("fixed", [200, 200, 200, 200], 4), ("sliding", [200, 200, 420, 420], 2)],
)
async def test_fixed_window_allows_a_double_burst_across_its_edge(
    session: aiohttp.ClientSession, window: Any, statuses: list[int], most_in_a_period: int
) -> None:
    server = MarketTestServer(quota=2, period=100.0, window=window)
    async with serve(server) as running:
        await asyncio.sleep(99)
        seen = [(await call(session, running)).status for _ in range(2)]
        await asyncio.sleep(1)
        seen += [(await call(session, running)).status for _ in range(2)]
    assert seen == statuses
    assert server.stats.max_in_any_window(BUSINESS, 100.0) == most_in_a_period


@pytest.mark.looptime
async def test_until_is_rounded_up_and_date_down(session: aiohttp.ClientSession) -> None:
    server = MarketTestServer(quota=5, period=10.5, epoch=EPOCH)
    async with serve(server) as running:
        await asyncio.sleep(0.7)
        answer = await call(session, running)
    assert answer.header_date("Date").timestamp() == EPOCH
    assert answer.header_date("X-RateLimit-Resource-Until").timestamp() == EPOCH + 11


async def test_spend_quota_acts_as_another_process(session: aiohttp.ClientSession) -> None:
    server = MarketTestServer(quota=10)
    async with serve(server) as running:
        server.spend_quota(BUSINESS, 9)
        last = await call(session, running)
        assert (last.status, last.headers["X-RateLimit-Resource-Remaining"]) == (200, "0")
        assert (await call(session, running)).status == 420
        server.spend_quota(OTHER_BUSINESS, 100)  # more than is left: the rest were refused
    assert server.quota_remaining(OTHER_BUSINESS) == 0
    assert len(server.stats.counted[OTHER_BUSINESS]) == 10
    assert server.stats.requests == 2
    assert server.stats.quota_420 == 1


def test_no_quota_means_no_remaining_and_spending_is_only_recorded() -> None:
    server = MarketTestServer()
    server.spend_quota(BUSINESS, 3)
    assert server.quota_remaining(BUSINESS) is None
    assert server.stats.counted[BUSINESS] == [0.0, 0.0, 0.0]


async def test_without_quota_there_are_no_rate_limit_headers_but_a_date(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    answer = await call(session, running)
    assert not [name for name in answer.headers if name.startswith("X-RateLimit")]
    date = answer.header_date("Date")
    assert date.tzinfo is not None
    assert abs(date.timestamp() - EPOCH) < 60


# -- parallel cap -----------------------------------------------------------------------------


@pytest.mark.looptime
async def test_fifth_parallel_request_gets_the_services_420(session: aiohttp.ClientSession) -> None:
    server = MarketTestServer(quota=100, max_parallel=4, latency=1.0)
    async with serve(server) as running:
        answers = await asyncio.gather(*(call(session, running, 1, m) for m in range(1, 6)))
        other = await call(session, running, business_id=OTHER_BUSINESS)
        assert server.in_flight(BUSINESS) == 0
    assert sorted(a.status for a in answers) == [200, 200, 200, 200, 420]
    [refused] = [a for a in answers if a.status == 420]
    message = assert_error_body(refused, "LIMIT_EXCEEDED")
    assert message == "Hit rate limit of 4 parallel requests for businessId 12345"
    assert int(refused.headers["X-RateLimit-Resource-Remaining"]) > 0  # not the quota
    assert other.status == 200
    stats = server.stats
    assert (stats.parallel_420, stats.quota_420) == (1, 0)
    assert stats.max_in_flight[BUSINESS] == 4
    assert len(stats.counted[BUSINESS]) == 5  # the parallel 420 spent quota too
    assert server.quota_remaining(BUSINESS) == 95


@pytest.mark.looptime
async def test_hold_parallel_occupies_foreign_slots(session: aiohttp.ClientSession) -> None:
    server = MarketTestServer(max_parallel=2, latency=1.0)
    async with serve(server) as running:
        with server.hold_parallel(BUSINESS, 2):
            assert server.in_flight(BUSINESS) == 2
            refused = await call(session, running)
            assert (await call(session, running, business_id=OTHER_BUSINESS)).status == 200
        assert refused.status == 420
        assert "2 parallel requests" in assert_error_body(refused)
        with server.hold_parallel(BUSINESS, 1):
            pair = await asyncio.gather(call(session, running), call(session, running))
        assert sorted(a.status for a in pair) == [200, 420]
        assert (await call(session, running)).status == 200
    assert server.in_flight(BUSINESS) == 0
    assert server.stats.max_in_flight[BUSINESS] == 2
    assert server.stats.max_in_flight[OTHER_BUSINESS] == 1
    assert server.stats.max_in_flight[4242] == 0
    assert server.stats.parallel_420 == 2


async def test_no_parallel_cap(session: aiohttp.ClientSession) -> None:
    server = MarketTestServer(max_parallel=None, latency=0.05)
    async with serve(server) as running:
        answers = await asyncio.gather(*(call(session, running, 1, m) for m in range(1, 9)))
    assert {a.status for a in answers} == {200}
    assert server.stats.max_in_flight[BUSINESS] == 8


# -- stats ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "period", "expected"),
    [
        ([], 100.0, 0),
        ([0.0, 100.0], 100.0, 1),  # (t - period, t]: the first has left when the second comes
        ([0.0, 99.9], 100.0, 2),
        ([0.0, 10.0, 20.0, 100.0, 110.0], 100.0, 3),
        ([0.0, 10.0, 20.0, 99.0, 110.0], 100.0, 4),
        ([5.0, 5.0, 5.0], 1.0, 3),
        ([99.0, 0.0, 10.0], 100.0, 3),  # order does not matter
    ],
)
def test_max_in_any_window(times: list[float], period: float, expected: int) -> None:
    stats = ServerStats()
    stats.counted[BUSINESS] = times
    assert stats.max_in_any_window(BUSINESS, period) == expected


async def test_stats_record_headers_and_every_answer(session: aiohttp.ClientSession) -> None:
    server = MarketTestServer()
    async with serve(server) as running:
        await call(session, running, headers={"Api-Key": DEFAULT_API_KEY, "User-Agent": "probe/1"})
        server.inject(Fault.DROP, Fault.DROP, Fault.SERVER_ERROR)
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(session, running)
        await call(session, running)
        await call(session, running, headers={})
    stats = server.stats
    assert stats.requests == 5
    assert stats.by_status == {200: 1, 500: 1, 401: 1}
    assert stats.dropped == 2
    assert sum(stats.by_status.values()) + stats.dropped == stats.requests
    first = stats.request_headers[0]
    assert first["user-agent"] == "probe/1"
    assert first["API-KEY"] == DEFAULT_API_KEY
    assert "Authorization" not in stats.request_headers[-1]


# -- running it -------------------------------------------------------------------------------


async def test_serve_gives_a_base_url_without_trailing_slash() -> None:
    async with serve() as running:
        assert re.fullmatch(rf"http://127\.0\.0\.1:{running.port}", running.url)
        assert running.port > 0
        assert isinstance(running.server, MarketTestServer)


@pytest.mark.looptime
async def test_serve_stops_at_once_with_requests_in_flight(session: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    server = MarketTestServer(latency=3600.0)
    async with serve(server) as running:
        task = asyncio.create_task(call(session, running))
        for _ in range(6000):  # generous (a minute of polls): until the request is served
            if server.in_flight(BUSINESS):
                break
            await asyncio.sleep(0.01)
        assert server.in_flight(BUSINESS) == 1
        started = loop.time()
    assert loop.time() - started < 60.0  # on the loop's clock: the hour of latency was cut short
    with pytest.raises(aiohttp.ClientConnectionError):
        await task
    assert server.in_flight(BUSINESS) == 0
    assert server.stats.dropped == 1
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


@pytest.mark.parametrize(
    "options",
    [
        {"quota": 0},
        {"period": 0},
        {"window": "rolling"},
        {"max_parallel": 0},
        {"latency": -1},
        {"messages": "all"},
    ],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        MarketTestServer(**options)


def test_fault_values() -> None:
    assert Fault.slow(2.5) == Fault.slow(2.5)
    assert Fault.SERVER_ERROR.status == 500
    assert Fault.UNAVAILABLE.status == 503
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Fault.error(200)
    with pytest.raises(ValueError, match="seconds"):
        Fault.slow(-1)
    with pytest.raises(TypeError):
        MarketTestServer().inject("DROP")  # type: ignore[arg-type]


async def test_module_runs_as_a_program(session: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "market_chat_async.testing",
        "--port",
        "0",
        "--quota",
        "5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        second = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        match = re.fullmatch(r"Market test server at (http://127\.0\.0\.1:(\d+))\n", first)
        assert match, first
        assert DEFAULT_API_KEY in second
        url = f"{match[1]}/v2/businesses/{BUSINESS}/chats/message?chatId=1&messageId=2"
        async with session.get(url, headers=KEY) as response:
            assert response.status == 200
            assert response.headers["X-RateLimit-Resource-Limit"] == "5"
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
