"""The test server's limits: the window model on plain floats, a quota per operation, one
parallel cap per cabinet shared by all operations; and the corpus it can hold."""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import AsyncIterator, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from market_chat_async.testing import (
    DEFAULT_API_KEY,
    DOCUMENTED_QUOTAS,
    OPERATIONS,
    MarketTestServer,
    QuotaWindow,
    RunningServer,
    corpus,
    serve,
)

BUSINESS = 12345
OTHER_BUSINESS = 777
KEY = {"Api-Key": DEFAULT_API_KEY}
EPOCH = 1_700_000_000.0
HOUR = 3600.0


# -- the window, as plain values ------------------------------------------------------------------


def test_fixed_window_counts_per_period_and_resets_at_its_end() -> None:
    window = QuotaWindow(limit=3, period=100.0)
    assert [window.count(t) for t in (0.0, 10.0, 99.9, 99.95)] == [1, 1, 1, 0]
    assert (window.remaining(99.99), window.until(99.99)) == (0, 100.0)
    assert (window.remaining(100.0), window.until(100.0)) == (3, 200.0)
    assert window.count(250.0, n=5) == 3  # the rest would have been refused
    assert window.until(250.0) == 300.0


def test_sliding_window_frees_a_slot_as_its_oldest_request_leaves() -> None:
    window = QuotaWindow(limit=2, period=100.0, kind="sliding")
    assert window.until(5.0) == 105.0  # empty: a full period from now
    window.count(0.0)
    window.count(50.0)
    assert (window.remaining(99.0), window.until(99.0)) == (0, 100.0)
    assert (window.remaining(100.0), window.until(100.0)) == (1, 150.0)  # (t - period, t]
    assert window.count(120.0) == 1
    assert (window.remaining(149.9), window.until(149.9)) == (0, 150.0)
    assert (window.used(219.9), window.used(220.0)) == (1, 0)


@pytest.mark.parametrize(
    "options",
    [
        {"limit": 0, "period": 1.0},
        {"limit": 1, "period": 0.0},
        {"limit": 1, "period": 1.0, "kind": "x"},
    ],
)
def test_window_refuses_what_cannot_be_a_quota(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - attrs' and our own messages differ
        QuotaWindow(**options)


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"quotas": {"getChatz": 5}}, "getChatz"),
        ({"quotas": {"getChat": 0}}, "getChat: 0"),
        ({"quotas": {"getChatMessage": 5}, "quota": 6}, "once"),
        ({"quotas": "all"}, "documented"),
    ],
)
def test_bad_quotas_are_refused(options: dict[str, Any], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        MarketTestServer(**options)


def test_quota_option_keeps_meaning_get_chat_message() -> None:
    assert MarketTestServer(quota=7).quotas == {
        name: 7 if name == "getChatMessage" else None for name in OPERATIONS
    }
    documented = MarketTestServer(quotas="documented", quota=3).quotas
    assert documented == {**DOCUMENTED_QUOTAS, "getChatMessage": 3}
    assert DOCUMENTED_QUOTAS["getChats"] == 5000
    assert DOCUMENTED_QUOTAS["getChatHistory"] == 10_000
    assert {DOCUMENTED_QUOTAS[name] for name in OPERATIONS[:1] + OPERATIONS[4:]} >= {1000}


# -- over sockets ---------------------------------------------------------------------------------


class Answer(NamedTuple):
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def error(self) -> str:
        [error] = json.loads(self.body)["errors"]
        message: str = error["message"]
        return message


CHAT = 1
CALLS: Mapping[str, tuple[str, str, dict[str, str], dict[str, Any]]] = {
    "getChats": ("POST", "/chats", {}, {"json": {}}),
    "getChat": ("GET", "/chat", {"chatId": "1"}, {}),
    "getChatHistory": ("POST", "/chats/history", {"chatId": "1"}, {"json": {}}),
    "getChatMessage": ("GET", "/chats/message", {"chatId": "1", "messageId": "1"}, {}),
    "sendMessageToChat": ("POST", "/chats/message", {"chatId": "1"}, {"json": {"message": "hi"}}),
    "sendFileToChat": ("POST", "/chats/file/send", {"chatId": "1"}, {}),
    "createChat": ("POST", "/chats/new", {}, {"json": {"context": {"type": "ORDER", "id": 9}}}),
}


async def call(
    session: aiohttp.ClientSession,
    running: RunningServer,
    operation: str,
    *,
    business_id: int = BUSINESS,
) -> Answer:
    method, path, params, options = CALLS[operation]
    if operation == "sendFileToChat":
        form = aiohttp.FormData()
        form.add_field("file", b"%PDF", filename="a.pdf")
        options = {"data": form}
    url = f"{running.url}/v2/businesses/{business_id}{path}"
    async with session.request(method, url, params=params, headers=KEY, **options) as response:
        return Answer(response.status, response.headers, await response.read())


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def with_chat(server: MarketTestServer) -> MarketTestServer:
    for business_id in (BUSINESS, OTHER_BUSINESS):
        server.add_chat(
            business_id,
            chat_id=CHAT,
            messages=[{"messageId": 1, "createdAt": "2026-01-01T00:00:00Z", "sender": "CUSTOMER"}],
        )
    return server


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_every_operation_answers_200_on_its_route(
    session: aiohttp.ClientSession, operation: str
) -> None:
    server = with_chat(MarketTestServer())
    async with serve(server) as running:
        answer = await call(session, running, operation)
    assert answer.status == 200, answer.body
    assert server.stats.requests_by_operation == {operation: 1}
    assert "Date" in answer.headers


@pytest.mark.looptime
async def test_documented_quotas_send_each_resources_headers_on_every_answer(
    session: aiohttp.ClientSession,
) -> None:
    server = with_chat(MarketTestServer(quotas="documented", epoch=EPOCH))
    async with serve(server) as running:
        await asyncio.sleep(600)
        for operation in OPERATIONS:
            answer = await call(session, running, operation)
            headers = answer.headers
            assert headers["X-RateLimit-Resource-Limit"] == str(DOCUMENTED_QUOTAS[operation])
            assert headers["X-RateLimit-Resource-Remaining"] == str(
                DOCUMENTED_QUOTAS[operation] - 1
            )
            until = parsedate_to_datetime(headers["X-RateLimit-Resource-Until"]).timestamp()
            date = parsedate_to_datetime(headers["Date"]).timestamp()
            assert (date, until) == (EPOCH + 600, EPOCH + HOUR)
        missing = await call(session, running, "getChat", business_id=4242)  # a 404 too
        assert missing.status == 404
        assert missing.headers["X-RateLimit-Resource-Remaining"] == "999"


@pytest.mark.looptime
async def test_each_operation_spends_its_own_quota(session: aiohttp.ClientSession) -> None:
    server = with_chat(MarketTestServer(quotas={"getChat": 2, "getChatHistory": 3}))
    async with serve(server) as running:
        chat = [await call(session, running, "getChat") for _ in range(3)]
        listed = [await call(session, running, "getChatHistory") for _ in range(3)]
        unlimited = await call(session, running, "getChatMessage")
        other_cabinet = await call(session, running, "getChat", business_id=OTHER_BUSINESS)
        await asyncio.sleep(HOUR)
        next_hour = await call(session, running, "getChat")
    assert [a.status for a in chat] == [200, 200, 420]
    assert chat[2].error() == "Resource limit exceeded for businessId 12345: 2 requests per hour"
    assert [a.headers["X-RateLimit-Resource-Remaining"] for a in listed] == ["2", "1", "0"]
    assert {a.status for a in listed} == {200}
    assert not [h for h in unlimited.headers if h.startswith("X-RateLimit")]
    assert other_cabinet.status == 200
    assert next_hour.status == 200
    stats = server.stats
    assert stats.quota_420_by_operation == {"getChat": 1}
    assert stats.quota_420 == 1
    assert len(stats.counted_by_operation["getChat"][BUSINESS]) == 3  # the 420 was free
    assert server.quota_remaining(BUSINESS, operation="getChatHistory") == 3
    assert server.quota_remaining(BUSINESS, operation="getChats") is None


async def test_spend_quota_of_one_operation(session: aiohttp.ClientSession) -> None:
    server = with_chat(MarketTestServer(quotas="documented"))
    server.spend_quota(BUSINESS, 4999, operation="getChats")
    async with serve(server) as running:
        assert (await call(session, running, "getChats")).status == 200
        assert (await call(session, running, "getChats")).status == 420
        assert (await call(session, running, "getChat")).status == 200
    assert server.quota_remaining(BUSINESS, operation="getChatMessage") == 1000
    with pytest.raises(ValueError, match="getChatz"):
        server.spend_quota(BUSINESS, 1, operation="getChatz")


@pytest.mark.looptime
async def test_the_parallel_cap_is_shared_by_all_operations(
    session: aiohttp.ClientSession,
) -> None:
    server = with_chat(MarketTestServer(quotas="documented", max_parallel=4, latency=1.0))
    async with serve(server) as running:
        answers = await asyncio.gather(*(call(session, running, op) for op in OPERATIONS))
        assert server.in_flight(BUSINESS) == 0
    statuses = {op: a.status for op, a in zip(OPERATIONS, answers, strict=True)}
    refused = [a for a in answers if a.status == 420]
    assert sorted(statuses.values()) == [200, 200, 200, 200, 420, 420, 420]
    assert {a.error() for a in refused} == {
        "Hit rate limit of 4 parallel requests for businessId 12345"
    }
    stats = server.stats
    assert stats.max_in_flight[BUSINESS] == 4
    assert stats.parallel_420 == 3
    assert sum(stats.parallel_420_by_operation.values()) == 3
    assert stats.quota_420 == 0
    # the parallel 420 spent its operation's quota, and answered with that resource's headers
    for op, answer in zip(OPERATIONS, answers, strict=True):
        left = int(answer.headers["X-RateLimit-Resource-Remaining"])
        assert left == DOCUMENTED_QUOTAS[op] - 1


@pytest.mark.looptime
async def test_mixed_methods_within_the_cap_get_no_420(session: aiohttp.ClientSession) -> None:
    server = with_chat(MarketTestServer(quotas="documented", latency=0.05))
    reads = ("getChats", "getChat", "getChatHistory", "getChatMessage")
    async with serve(server) as running:
        slots = asyncio.Semaphore(4)

        async def polite(operation: str) -> int:
            async with slots:
                return (await call(session, running, operation)).status

        statuses = await asyncio.gather(*(polite(reads[n % 4]) for n in range(200)))
    assert set(statuses) == {200}
    assert server.stats.parallel_420 == server.stats.quota_420 == 0
    assert server.stats.max_in_flight[BUSINESS] == 4
    assert server.stats.requests_by_operation == dict.fromkeys(reads, 50)


# -- the corpus -----------------------------------------------------------------------------------


def test_corpus_is_deterministic_per_seed() -> None:
    assert corpus(seed=5, chats=200) == corpus(seed=5, chats=200)
    assert corpus(seed=5, chats=200) != corpus(seed=6, chats=200)


def test_corpus_message_counts_are_heavy_tailed() -> None:
    made = corpus(seed=0, chats=1000)
    counts = made.message_counts()
    assert 11 <= statistics.mean(counts) <= 13
    assert statistics.median(counts) <= 5  # most chats are short
    assert sum(c > 300 for c in counts) >= 2  # a few are very long
    assert min(counts) >= 1
    assert made.total_messages == sum(counts)


def test_corpus_chats_vary_and_follow_the_spec() -> None:
    made = corpus(seed=0, chats=1000)
    assert {c.context_type for c in made.chats} == {"ORDER", "RETURN", "DIRECT"}
    assert {c.type for c in made.chats} == {"CHAT", "ARBITRAGE"}
    assert len({c.status for c in made.chats}) >= 4
    ids = [m["messageId"] for c in made.chats for m in c.messages]
    assert ids == sorted(set(ids))  # unique and growing through the cabinet
    senders = {m["sender"] for c in made.chats for m in c.messages}
    assert senders == {"PARTNER", "CUSTOMER", "MARKET", "SUPPORT"}
    assert all(("message" in m) != ("payload" in m) for c in made.chats for m in c.messages)


async def test_a_loaded_corpus_pages_through_its_longest_chat(
    session: aiohttp.ClientSession,
) -> None:
    made = corpus(seed=0, chats=300)
    longest = max(made.chats, key=lambda c: len(c.messages))
    server = MarketTestServer(quotas="documented")
    server.load(BUSINESS, made)
    assert len(server.chats(BUSINESS)) == 300
    async with serve(server) as running:
        url = f"{running.url}/v2/businesses/{BUSINESS}/chats/history"
        seen: list[int] = []
        params = {"chatId": str(longest.chat_id), "limit": "100"}
        while True:
            async with session.post(url, params=params, json={}, headers=KEY) as response:
                result = (await response.json())["result"]
            seen += [m["messageId"] for m in result["messages"]]
            token = result["paging"].get("nextPageToken")
            if token is None:
                break
            params["page_token"] = token
    assert seen == [m["messageId"] for m in longest.messages]
    assert server.stats.requests == -(-len(seen) // 100)
