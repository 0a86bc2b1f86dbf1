"""The planner for known pairs (``strategy="auto" | "history"``): the same results as one
getChatMessage per pair, for far fewer requests, within both quotas and the cap.

Against the bundled server over real sockets, on looptime's virtual clock.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from market_chat_async import ChatMessage, MarketApiError, MarketChatClient, Quota, RetryPolicy
from market_chat_async._bulk import stream_messages
from market_chat_async._bulk._planner import Budget, Planner, route
from market_chat_async._bulk._source import Source
from market_chat_async.testing import Fault, MarketTestServer, RunningServer, corpus, serve

API_KEY = "test-api-key"
BUSINESS = 12345
pytestmark = pytest.mark.looptime

FAST_RETRY = RetryPolicy(max_retries=2, backoff_initial=0.01, backoff_max=0.05)


@pytest.fixture
async def cabinet() -> AsyncIterator[RunningServer]:
    """1,000 chats with heavy-tailed message counts, documented quotas, 50 ms a request."""
    server = MarketTestServer(quotas="documented", latency=0.05)
    server.load(BUSINESS, corpus(seed=11, chats=1000))
    async with serve(server) as running:
        yield running


@pytest.fixture
async def client(cabinet: RunningServer) -> AsyncIterator[MarketChatClient]:
    async with MarketChatClient(api_key=API_KEY, base_url=cabinet.url, retry=FAST_RETRY) as c:
        yield c


def ids_of(server: MarketTestServer, chat_id: int) -> list[int]:
    return [message["messageId"] for message in server.history(BUSINESS, chat_id)]


def same(a: ChatMessage | BaseException, b: ChatMessage | BaseException) -> bool:
    """The same message, or the same error (class, status and message)."""
    if isinstance(a, ChatMessage) or isinstance(b, ChatMessage):
        return a == b
    if isinstance(a, MarketApiError) and isinstance(b, MarketApiError):
        return (type(a), a.status, a.message) == (type(b), b.status, b.message)
    return (type(a), str(a)) == (type(b), str(b))


def mixed_pairs(server: MarketTestServer) -> list[Any]:
    """Whole chats, a few ids of long chats, unknown ids (gaps between a chat's ids, ids past
    its end, another chat's ids), unregistered chats, repeats and bad rows, shuffled."""
    rng = random.Random(3)
    pairs: list[Any] = []
    for chat_id in rng.sample(range(1, 1001), 40):
        ids = ids_of(server, chat_id)
        pairs += [(chat_id, m) for m in ids]
        gaps = sorted(set(range(ids[0], ids[-1] + 1)) - set(ids))
        pairs += [(chat_id, m) for m in gaps[:2]]  # inside the span, not messages of the chat
        pairs.append((chat_id, ids[-1] + 5000))  # past its end
    long_chat = max(range(1, 1001), key=lambda c: len(server.history(BUSINESS, c)))
    pairs += [(long_chat, m) for m in ids_of(server, long_chat)[3:300:37]]
    pairs += [(5000 + c, m) for c in range(3) for m in (1, 2, 3)]  # unregistered: "auto"
    pairs += [(2, ids_of(server, 1)[0])]  # chat 1's message asked of chat 2
    pairs += pairs[:25]  # repeats
    pairs += [(0, 1), (1, 0), ("x", 1), (1,), None, (1, True)]  # bad rows
    rng.shuffle(pairs)
    return pairs


async def test_every_strategy_gives_what_message_gives_on_mixed_input(
    cabinet: RunningServer, client: MarketChatClient
) -> None:
    pairs = mixed_pairs(cabinet.server)
    results = {
        strategy: await client.get_messages(BUSINESS, pairs, strategy=strategy)
        for strategy in ("message", "auto", "history")
    }
    baseline = results["message"]
    assert any(isinstance(r, ChatMessage) for r in baseline)
    assert any(isinstance(r, MarketApiError) and r.status == 404 for r in baseline)
    assert any(isinstance(r, ValueError) for r in baseline)
    assert any(isinstance(r, TypeError) for r in baseline)
    for strategy in ("auto", "history"):
        assert len(results[strategy]) == len(pairs)
        unequal = [
            (i, pairs[i])
            for i, (a, b) in enumerate(zip(baseline, results[strategy], strict=True))
            if not same(a, b)
        ]
        assert unequal == [], strategy


async def test_streamed_results_carry_the_index_where_each_pair_first_appears(
    client: MarketChatClient, cabinet: RunningServer
) -> None:
    pairs = mixed_pairs(cabinet.server)
    by_strategy = {}
    for strategy in ("message", "auto"):
        got = [r async for r in client.stream_messages(BUSINESS, pairs, strategy=strategy)]
        by_strategy[strategy] = {r.index: (r.chat_id, r.message_id, r.ok) for r in got}
        assert len(got) == len(by_strategy[strategy])  # each distinct pair once
    assert by_strategy["auto"] == by_strategy["message"]


async def test_auto_reads_histories_for_far_fewer_requests_with_no_420(
    cabinet: RunningServer, client: MarketChatClient
) -> None:
    server = cabinet.server
    rng = random.Random(8)
    chats = rng.sample(range(1, 1001), 300)
    pairs = [(c, m) for c in chats for m in ids_of(server, c)]
    rng.shuffle(pairs)
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = [r async for r in client.stream_messages(BUSINESS, pairs)]
    elapsed = loop.time() - started
    assert len(results) == len(pairs)
    assert all(r.ok for r in results)
    stats = server.stats
    used = stats.requests_by_operation
    assert used["getChatMessage"] > 0
    assert used["getChatHistory"] > 0
    assert used["getChatMessage"] + used["getChatHistory"] < len(pairs) / 5
    assert stats.quota_420 == stats.parallel_420 == 0
    assert stats.max_in_flight[BUSINESS] <= 4
    # Fewer requests than one by one, and the cap kept busy: near requests x latency / 4.
    assert elapsed <= 1.3 * (used["getChatMessage"] + used["getChatHistory"]) * 0.05 / 4 + 1


async def test_when_the_message_quota_runs_short_history_takes_the_rest() -> None:
    quotas = {"getChatMessage": 20, "getChatHistory": 10_000}
    server = MarketTestServer(quotas=quotas, latency=0.05)
    server.load(BUSINESS, corpus(seed=5, chats=300))
    pairs = [(c, server.history(BUSINESS, c)[0]["messageId"]) for c in range(1, 201)]
    async with (
        serve(server) as running,
        MarketChatClient(
            api_key=API_KEY,
            base_url=running.url,
            quotas={name: Quota(limit, 3600.0) for name, limit in quotas.items()},
        ) as client,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await client.get_messages(BUSINESS, pairs)
        elapsed = loop.time() - started
    assert all(isinstance(r, ChatMessage) for r in results)
    used = server.stats.requests_by_operation
    assert 0 < used["getChatMessage"] <= 20  # single ids one by one while the quota lasts
    assert used["getChatMessage"] + used["getChatHistory"] == len(pairs)
    assert elapsed < 60  # nobody waited for the hour
    assert server.stats.quota_420 == server.stats.parallel_420 == 0


async def test_paging_stops_at_the_page_with_the_largest_wanted_id(
    cabinet: RunningServer, client: MarketChatClient
) -> None:
    server = cabinet.server
    long_chat = max(range(1, 1001), key=lambda c: len(server.history(BUSINESS, c)))
    ids = ids_of(server, long_chat)
    assert len(ids) > 300
    wanted = [(long_chat, ids[5]), (long_chat, ids[40]), (long_chat, ids[60])]
    results = await client.get_messages(BUSINESS, wanted, strategy="history")
    assert [r.message_id for r in results if isinstance(r, ChatMessage)] == [
        ids[5],
        ids[40],
        ids[60],
    ]
    # One page of (span <= 100) from the smallest wanted id reaches the largest.
    assert dict(server.stats.requests_by_operation) == {"getChatHistory": 1}


class SkippingHistory:
    """The real client, whose history leaves out one message (as a service might)."""

    def __init__(self, client: MarketChatClient, skipped: int) -> None:
        self._client = client
        self._skipped = skipped
        self.max_parallel = client.max_parallel
        self.quotas = client.quotas
        self.get_message = client.get_message
        self.quota_state = client.quota_state
        self.iter_chats = client.iter_chats

    async def iter_history(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatMessage]:
        async for message in self._client.iter_history(*args, **kwargs):
            if message.message_id != self._skipped:
                yield message


async def test_an_id_history_skips_is_fetched_alone_and_found_or_404_as_before(
    cabinet: RunningServer, client: MarketChatClient
) -> None:
    server = cabinet.server
    chat_id = next(c for c in range(1, 1001) if len(server.history(BUSINESS, c)) >= 10)
    ids = ids_of(server, chat_id)
    gap = next(m for m in range(ids[0], ids[-1]) if m not in ids)
    pairs = [(chat_id, m) for m in ids] + [(chat_id, gap)]
    skipping = SkippingHistory(client, skipped=ids[4])
    got = {
        r.message_id: r
        async for r in stream_messages(skipping, BUSINESS, pairs, strategy="history")  # type: ignore[arg-type]
    }
    assert got[ids[4]].ok
    assert got[ids[4]].message == (await client.get_message(BUSINESS, chat_id, ids[4]))
    error = got[gap].error
    assert isinstance(error, MarketApiError)
    assert error.status == 404
    assert all(got[m].ok for m in ids)
    assert (
        server.stats.requests_by_operation["getChatMessage"] == 3
    )  # the skipped, the gap, the check


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.error(404)], ids=["5xx", "404"])
async def test_a_failing_history_falls_back_to_one_message_each(
    cabinet: RunningServer, client: MarketChatClient, fault: Fault
) -> None:
    server = cabinet.server
    chat_id = next(c for c in range(1, 1001) if len(server.history(BUSINESS, c)) >= 10)
    ids = ids_of(server, chat_id)
    server.not_found.add((BUSINESS, chat_id, ids[2]))  # getChatMessage 404s for this one
    server.inject(*[fault] * (FAST_RETRY.max_retries + 1), operation="getChatHistory")
    pairs = [(chat_id, m) for m in ids]
    auto = await client.get_messages(BUSINESS, pairs, strategy="history")
    one_by_one = await client.get_messages(BUSINESS, pairs, strategy="message")
    assert all(same(a, b) for a, b in zip(auto, one_by_one, strict=True))
    assert isinstance(auto[2], MarketApiError)
    assert auto[2].status == 404
    assert sum(isinstance(r, ChatMessage) for r in auto) == len(ids) - 1


async def test_the_input_is_read_in_bounded_windows(
    cabinet: RunningServer, client: MarketChatClient
) -> None:
    server = cabinet.server
    read = 0

    def pairs() -> Any:
        nonlocal read
        for chat_id in range(1, 1001):
            for message_id in ids_of(server, chat_id):
                read += 1
                yield chat_id, message_id

    source = Source(pairs(), dedupe=False)
    planner = Planner(client, BUSINESS, source, strategy="auto", window=500)
    taken = most_ahead = 0
    while await planner.take() is not None:
        taken += 1
        most_ahead = max(most_ahead, read)
        if taken == 3:
            break
    assert read <= 501  # one window, not the input
    assert most_ahead <= 501


def test_routing_balances_both_quotas_when_both_bind() -> None:
    message = Budget(remaining=1000, frees_in=0.0, limit=1000, period=3600.0)
    history = Budget(remaining=10_000, frees_in=0.0, limit=10_000, period=3600.0)
    chats = [(1, 1)] * 30_000  # lone ids: one request either way
    chosen = route(chats, message, history, latency=0.05, cap=4)
    on_history = sum(chosen)
    on_message = len(chats) - on_history
    # Both drain by the same hour boundary rather than one queue idling.
    assert message.finish(on_message) == pytest.approx(history.finish(on_history), abs=3600)
    assert on_message >= 1000
    assert on_history >= 10_000


def test_routing_prefers_single_messages_for_lone_ids_and_history_for_many() -> None:
    fresh_m = Budget(1000, 0.0, 1000, 3600.0)
    fresh_h = Budget(10_000, 0.0, 10_000, 3600.0)
    assert route([(1, 1), (2, 1), (250, 3)], fresh_m, fresh_h, latency=0.05, cap=4) == [
        False,
        True,
        True,
    ]


async def test_a_sparse_chat_stops_paging_past_its_budget_and_fetches_the_rest_alone(
    cabinet: RunningServer, client: MarketChatClient
) -> None:
    server = cabinet.server
    long_chat = max(range(1, 1001), key=lambda c: len(server.history(BUSINESS, c)))
    ids = ids_of(server, long_chat)
    assert len(ids) > 300
    wanted = [(long_chat, ids[0]), (long_chat, ids[-1])]  # two ids, hundreds of messages apart
    results = await client.get_messages(BUSINESS, wanted, strategy="history")
    assert [r.message_id for r in results if isinstance(r, ChatMessage)] == [ids[0], ids[-1]]
    used = server.stats.requests_by_operation
    assert used["getChatHistory"] == 3  # 2 x the one page planned, and one
    assert used["getChatMessage"] == 1
