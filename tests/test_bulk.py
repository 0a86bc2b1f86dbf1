"""Bulk fetching: order, errors in place, each pair once, bounded work, clean cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market_chat_async import ChatMessage, MarketChatClient, NotFoundError, Sender
from market_chat_async._bulk import BulkResult, Progress, stream_messages
from market_chat_async._wire import to_api_dict
from market_chat_async.testing import Fault, MarketTestServer, RunningServer, serve

API_KEY = "test-api-key"  # the test server's
BUSINESS = 12345


class InstantClient:
    """Stands in for the client where only the bulk bookkeeping is under test: answers at once
    with a message whose text names the pair, and counts calls."""

    max_parallel = 4

    def __init__(self) -> None:
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def get_message(self, business_id: int, chat_id: int, message_id: int) -> ChatMessage:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
        finally:
            self.in_flight -= 1
        if message_id == 404:
            raise NotFoundError(404)
        return ChatMessage(
            message_id=message_id,
            created_at=datetime(2024, 1, 1, tzinfo=UTC),
            sender=Sender.CUSTOMER,
            message=f"{chat_id}:{message_id}",
        )


def bulk_tasks() -> set[asyncio.Task[Any]]:
    """Tasks the bulk code started (the test server's own handlers run in this loop too)."""
    return {
        task
        for task in asyncio.all_tasks()
        if "_messages" in getattr(task.get_coro(), "__qualname__", "")
    }


def instant() -> tuple[InstantClient, MarketChatClient]:
    fake = InstantClient()
    return fake, cast(MarketChatClient, fake)


async def test_results_are_in_input_order_with_errors_in_place(
    market: RunningServer, client: MarketChatClient
) -> None:
    market.server.not_found.add((BUSINESS, 2, 404))
    pairs: list[Any] = [(1, 5), (2, 404), (0, 1), (1, True), ("x", 1), (1, 6), (3,), (3, 7)]
    results = await client.get_messages(BUSINESS, pairs, strategy="message")
    assert len(results) == len(pairs)
    assert [r.message_id for r in results if isinstance(r, ChatMessage)] == [5, 6, 7]
    assert isinstance(results[1], NotFoundError)
    assert isinstance(results[2], ValueError)
    assert isinstance(results[3], TypeError)
    assert isinstance(results[4], TypeError)
    assert isinstance(results[6], TypeError)
    assert market.server.stats.requests == 4  # nothing sent for the invalid ones


async def test_repeated_pairs_are_fetched_once(
    market: RunningServer, client: MarketChatClient
) -> None:
    pairs = [(1, 1), (1, 2), (1, 1), (2, 1), (1, 2), (1, 1)]
    results = await client.get_messages(BUSINESS, pairs, strategy="message")
    assert market.server.stats.requests == 3
    assert results[0] is results[2] is results[5]
    assert results[1] is results[4]
    streamed = [r async for r in client.stream_messages(BUSINESS, pairs, strategy="message")]
    assert sorted((r.chat_id, r.message_id, r.index) for r in streamed) == [
        (1, 1, 0),
        (1, 2, 1),
        (2, 1, 3),
    ]


async def test_dedupe_off_fetches_every_occurrence() -> None:
    fake, client = instant()
    pairs = [(1, 1), (1, 2), (1, 1)]
    results = [
        r async for r in stream_messages(client, BUSINESS, pairs, dedupe=False, strategy="message")
    ]
    assert sorted(r.index for r in results) == [0, 1, 2]
    assert fake.calls == 3


async def test_stream_takes_sync_and_async_iterables(client: MarketChatClient) -> None:
    def sync_pairs() -> Iterator[tuple[int, int]]:
        yield from ((1, m) for m in range(1, 11))

    async def async_pairs() -> AsyncIterator[tuple[int, int]]:
        for m in range(1, 11):
            await asyncio.sleep(0)
            yield 2, m

    for source in (sync_pairs(), async_pairs()):
        results = [r async for r in client.stream_messages(BUSINESS, source)]
        assert all(r.ok for r in results)
        assert sorted(r.index for r in results) == list(range(10))
        assert all(r.message is not None and r.message.message_id == r.message_id for r in results)


async def test_progress_reports_every_result(
    market: RunningServer, client: MarketChatClient
) -> None:
    market.server.not_found.add((BUSINESS, 1, 404))
    seen: list[Progress] = []
    await client.get_messages(BUSINESS, [(1, 1), (1, 404), (1, 1), (1, 2)], progress=seen.append)
    assert [p.done for p in seen] == [1, 2, 3]
    assert seen[-1] == Progress(done=3, failed=1, skipped=1, total=4)


async def test_stream_reads_ahead_no_more_than_its_concurrency() -> None:
    fake, client = instant()
    read = 0

    async def pairs() -> AsyncIterator[tuple[int, int]]:
        nonlocal read
        for m in range(1, 2001):
            read += 1
            yield 1, m

    taken = 0
    async for _ in stream_messages(client, BUSINESS, pairs(), concurrency=3, strategy="message"):
        taken += 1
        # 3 being fetched or handed over, 3 queued, the one in hand
        assert read - taken <= 2 * 3 + 1
    assert taken == fake.calls == 2000
    assert fake.most_in_flight <= 3


async def test_a_huge_stream_never_holds_more_tasks_than_its_concurrency() -> None:
    fake, client = instant()
    before = len(asyncio.all_tasks())
    most = 0
    pairs = ((m % 7 + 1, m) for m in range(1, 200_001))
    stream = stream_messages(client, BUSINESS, pairs, concurrency=8, strategy="message")
    async for i, _ in _enumerate(stream):
        if i % 64 == 0:
            most = max(most, len(asyncio.all_tasks()) - before)
    assert fake.calls == 200_000
    assert most <= 8
    assert len(asyncio.all_tasks()) == before


async def _enumerate(stream: AsyncIterator[BulkResult]) -> AsyncIterator[tuple[int, BulkResult]]:
    i = 0
    async for item in stream:
        yield i, item
        i += 1


async def test_cancelling_cancels_what_is_in_flight_and_frees_every_slot(
    market: RunningServer, client: MarketChatClient
) -> None:
    await client.get_message(BUSINESS, 1, 1)  # the limiter's first probe, answered at once
    market.server.inject(*[Fault.slow(30.0)] * 10)
    task = asyncio.create_task(
        client.get_messages(BUSINESS, [(1, m) for m in range(2, 50)], strategy="message")
    )
    async with asyncio.timeout(5):  # until every parallel slot is taken
        while True:
            if (await client.quota_state(BUSINESS)).in_flight == client.max_parallel:
                break
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not bulk_tasks()
    state = await client.quota_state(BUSINESS)
    assert state.in_flight == 0
    assert state.max_parallel == client.max_parallel


async def test_closing_a_stream_early_cancels_what_is_in_flight() -> None:
    async with (
        serve(MarketTestServer()) as running,
        MarketChatClient(api_key=API_KEY, base_url=running.url) as client,
    ):
        pairs = [(1, m) for m in range(1, 1000)]
        async with contextlib.aclosing(stream_messages(client, BUSINESS, pairs)) as stream:
            async for _ in stream:
                break
        assert not bulk_tasks()
        assert (await client.quota_state(BUSINESS)).in_flight == 0
        assert running.server.stats.requests < 50


async def test_a_failing_input_ends_the_stream_after_what_is_in_flight() -> None:
    _, client = instant()

    def pairs() -> Iterator[tuple[int, int]]:
        yield 1, 1
        yield 1, 2
        raise OSError("disk gone")

    got: list[BulkResult] = []

    async def consume() -> None:
        async for item in stream_messages(client, BUSINESS, pairs(), strategy="message"):
            got.append(item)

    with pytest.raises(OSError, match="disk gone"):
        await consume()
    assert sorted(r.message_id for r in got) == [1, 2]


async def test_whole_call_errors_raise() -> None:
    _, client = instant()
    with pytest.raises(ValueError, match="business_id"):
        await stream_messages(client, 0, []).__anext__()
    with pytest.raises(ValueError, match="concurrency"):
        await stream_messages(client, BUSINESS, [], concurrency=0, strategy="message").__anext__()


async def test_per_item_errors_keep_the_pair(client: MarketChatClient) -> None:
    pairs: list[Any] = [(0, 5), "ab", None]
    results = [r async for r in client.stream_messages(BUSINESS, pairs)]
    # the ids as given, whatever they were (typed int for the callers that pass ints)
    given: dict[int, tuple[object, object]] = {r.index: (r.chat_id, r.message_id) for r in results}
    assert given == {0: (0, 5), 1: ("a", "b"), 2: (None, None)}
    errors = {r.index: type(r.error) for r in results}
    assert errors == {0: ValueError, 1: TypeError, 2: TypeError}


def test_api_shape_is_the_wire_shape() -> None:
    msg = ChatMessage(7, datetime(2024, 1, 1, tzinfo=UTC), Sender.MARKET, message="hi")
    assert to_api_dict(msg) == {
        "messageId": 7,
        "createdAt": "2024-01-01T00:00:00+00:00",
        "sender": "MARKET",
        "message": "hi",
    }


ids = st.one_of(st.integers(min_value=1, max_value=6), st.sampled_from([0, -1, True, "x"]))


@settings(max_examples=60, deadline=None)
@given(pairs=st.lists(st.tuples(ids, ids), max_size=40), concurrency=st.integers(1, 9))
def test_every_position_gets_its_own_pairs_result(
    pairs: list[tuple[Any, Any]], concurrency: int
) -> None:
    fake, client = instant()
    from market_chat_async._bulk import get_messages

    results = asyncio.run(
        get_messages(client, BUSINESS, pairs, concurrency=concurrency, strategy="message")
    )
    assert len(results) == len(pairs)
    valid = set()
    for (chat, message), result in zip(pairs, results, strict=True):
        good = all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (chat, message)
        )
        if good:
            valid.add((chat, message))
            assert isinstance(result, ChatMessage)
            assert result.message == f"{chat}:{message}"
        else:
            assert isinstance(result, TypeError | ValueError)
    assert fake.calls == len(valid)
