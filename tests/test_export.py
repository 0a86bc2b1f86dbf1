"""``iter_all_messages``: a whole cabinet streamed, chats read side by side, for the fewest
requests the paging allows; ``since`` and ``after`` read only what changed.

Against the bundled server over real sockets, on looptime's virtual clock.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from market_chat_async import MarketChatClient, RetryPolicy, ServerError
from market_chat_async.testing import Fault, MarketTestServer, RunningServer, corpus, serve

pytestmark = pytest.mark.looptime

API_KEY = "test-api-key"
BUSINESS = 12345
CHATS = 400
LATENCY = 0.05
FAST_RETRY = RetryPolicy(max_retries=1, backoff_initial=0.01, backoff_max=0.05)


@pytest.fixture
async def cabinet() -> AsyncIterator[RunningServer]:
    server = MarketTestServer(quotas="documented", latency=LATENCY)
    server.load(BUSINESS, corpus(seed=2, chats=CHATS))
    async with serve(server) as running:
        yield running


@pytest.fixture
async def client(cabinet: RunningServer) -> AsyncIterator[MarketChatClient]:
    async with MarketChatClient(api_key=API_KEY, base_url=cabinet.url, retry=FAST_RETRY) as c:
        yield c


def history_pages(server: MarketTestServer, chats: list[int], after: dict[int, int]) -> int:
    """The fewest history requests that read these chats past ``after``: ceil(n / 100)."""
    total = 0
    for chat_id in chats:
        held = after.get(chat_id, 0)
        newer = [m for m in server.history(BUSINESS, chat_id) if m["messageId"] > held]
        total += max(1, math.ceil(len(newer) / 100))
    return total


async def test_every_message_once_in_chat_order_for_the_fewest_requests(
    cabinet: RunningServer, client: MarketChatClient
) -> None:
    server = cabinet.server
    loop = asyncio.get_running_loop()
    started = loop.time()
    got = [
        (chat.chat_id, message.message_id)
        async for chat, message in client.iter_all_messages(BUSINESS)
    ]
    elapsed = loop.time() - started
    expected = [
        (chat["chatId"], m["messageId"])
        for chat in server.chats(BUSINESS)
        for m in server.history(BUSINESS, chat["chatId"])
    ]
    assert sorted(got) == sorted(expected)
    assert len(got) == len(set(got))
    for chat_id in range(1, CHATS + 1):  # each chat's messages oldest first
        ids = [m for c, m in got if c == chat_id]
        assert ids == sorted(ids)
    used = server.stats.requests_by_operation
    least = math.ceil(CHATS / 20) + history_pages(server, list(range(1, CHATS + 1)), {})
    assert used["getChats"] + used["getChatHistory"] == least
    assert server.stats.quota_420 == server.stats.parallel_420 == 0
    assert server.stats.max_in_flight[BUSINESS] == 4  # chats read side by side
    assert elapsed <= 1.10 * least * LATENCY / 4


async def test_since_skips_chats_not_updated_since(
    cabinet: RunningServer, client: MarketChatClient
) -> None:
    server = cabinet.server
    chats = server.chats(BUSINESS)
    cut_text = sorted(chat["updatedAt"] for chat in chats)[CHATS - 30]
    since = datetime.fromisoformat(cut_text)
    got = {chat.chat_id async for chat, _ in client.iter_all_messages(BUSINESS, since=since)}
    recent = [c["chatId"] for c in chats if datetime.fromisoformat(c["updatedAt"]) >= since]
    assert got == set(recent)
    assert len(recent) == 30
    assert server.stats.requests_by_operation["getChatHistory"] == history_pages(server, recent, {})


async def test_after_reads_only_newer_messages(
    cabinet: RunningServer, client: MarketChatClient
) -> None:
    server = cabinet.server
    after = {}
    for chat_id in range(1, CHATS + 1):
        ids = [m["messageId"] for m in server.history(BUSINESS, chat_id)]
        after[chat_id] = ids[len(ids) // 2]
    got = Counter()
    async for chat, message in client.iter_all_messages(BUSINESS, after=after):
        assert message.message_id > after[chat.chat_id]
        got[chat.chat_id] += 1
    for chat_id, held in after.items():
        newer = [m for m in server.history(BUSINESS, chat_id) if m["messageId"] > held]
        assert got[chat_id] == len(newer)
    assert server.stats.requests_by_operation["getChatHistory"] == history_pages(
        server, list(after), after
    )


async def test_a_slow_consumer_holds_a_few_pages_not_the_cabinet(
    cabinet: RunningServer, client: MarketChatClient
) -> None:
    server = cabinet.server
    stream = client.iter_all_messages(BUSINESS)
    taken = 0
    consumed = set()
    async for chat, _ in stream:
        taken += 1
        consumed.add(chat.chat_id)
        if taken == 50:
            await asyncio.sleep(600)  # ten minutes: time to read the whole cabinet, if it did
            break
    await stream.aclose()  # type: ignore[attr-defined]
    # Beyond the chats handed over: the 8 queued items' chats and each of the 8 readers' page
    # in hand, not the cabinet's 400 chats.
    assert server.stats.requests_by_operation["getChatHistory"] <= len(consumed) + 8 + 8
    assert (await client.quota_state(BUSINESS)).in_flight == 0


async def test_a_history_that_keeps_failing_ends_the_export_with_its_error(
    cabinet: RunningServer, client: MarketChatClient
) -> None:
    cabinet.server.inject(*[Fault.SERVER_ERROR] * 40, operation="getChatHistory")
    before = set(asyncio.all_tasks())
    with pytest.raises(ServerError):
        async for _ in client.iter_all_messages(BUSINESS):
            pass
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() - before if "export" in t.get_coro().__qualname__]
    assert leftover == []


async def test_arguments_are_checked_before_anything_is_sent(
    cabinet: RunningServer, client: MarketChatClient
) -> None:
    with pytest.raises(ValueError, match="aware"):
        client.iter_all_messages(BUSINESS, since=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="message_id"):
        client.iter_all_messages(BUSINESS, after={1: 0})
    with pytest.raises(ValueError, match="statuses"):
        client.iter_all_messages(BUSINESS, statuses=["NOT_A_STATUS", "NOT_A_STATUS"])
    with pytest.raises(ValueError, match="business_id"):
        client.iter_all_messages(0)
    client.iter_all_messages(BUSINESS, since=datetime(2026, 1, 1, tzinfo=UTC))
    assert cabinet.server.stats.requests == 0
