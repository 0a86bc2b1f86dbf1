"""The whole chat API against the bundled Market server over real sockets: list chats, one
chat, history, send text and files, create a chat; paging, filters, validation, and writes
that never reach a customer twice."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from market_chat_async import (
    Chat,
    ChatContextType,
    ChatStatus,
    ChatType,
    MalformedResponseError,
    MarketChatClient,
    NotFoundError,
    OutcomeUnknownError,
    Quota,
    Sender,
)
from market_chat_async.testing import Fault, MarketTestServer, RunningServer, corpus, serve

from .conftest import API_KEY, FAST_RETRY

BUSINESS = 12345


def msg(message_id: int, text: str = "hi", sender: str = "CUSTOMER") -> dict[str, Any]:
    return {
        "messageId": message_id,
        "createdAt": f"2026-01-01T10:00:{message_id % 60:02d}.002Z",
        "sender": sender,
        "message": f"{text} {message_id}",
    }


@pytest.fixture
async def cabinet(market: RunningServer) -> dict[str, int]:
    """A cabinet with chats of every kind."""
    server = market.server
    return {
        "order": server.add_chat(
            BUSINESS,
            context_type="ORDER",
            context_id=501,
            campaign_id=77,
            status="WAITING_FOR_PARTNER",
            customer={"name": "Ivan P.", "publicId": "pub-1"},
            messages=[msg(i) for i in range(1, 8)],
        ),
        "return": server.add_chat(
            BUSINESS, context_type="RETURN", context_id=601, order_id=502, status="NEW"
        ),
        "direct": server.add_chat(
            BUSINESS, context_type="DIRECT", type="ARBITRAGE", status="FINISHED", messages=[msg(9)]
        ),
    }


# -- reads ---------------------------------------------------------------------------------------


async def test_get_chat_reads_every_field(
    client: MarketChatClient, cabinet: dict[str, int]
) -> None:
    chat = await client.get_chat(BUSINESS, cabinet["order"])
    assert isinstance(chat, Chat)
    assert (chat.chat_id, chat.type, chat.status) == (
        cabinet["order"],
        ChatType.CHAT,
        ChatStatus.WAITING_FOR_PARTNER,
    )
    assert chat.context.type is ChatContextType.ORDER
    assert (chat.context.order_id, chat.context.campaign_id) == (501, 77)
    assert chat.context.customer is not None
    assert (chat.context.customer.name, chat.context.customer.public_id) == ("Ivan P.", "pub-1")
    assert chat.created_at.tzinfo is not None
    returned = await client.get_chat(BUSINESS, cabinet["return"])
    assert (returned.context.return_id, returned.context.order_id) == (601, 502)
    with pytest.raises(NotFoundError):
        await client.get_chat(BUSINESS, 999_999)


async def test_iter_chats_pages_to_the_end_lazily(
    market: RunningServer, client: MarketChatClient
) -> None:
    for i in range(7):
        market.server.add_chat(BUSINESS, context_id=1000 + i)
    chats = client.iter_chats(BUSINESS, page_size=3)
    first = await anext(chats)
    assert market.server.stats.requests_by_operation["getChats"] == 1  # one page, not all
    rest = [chat async for chat in chats]
    assert [c.chat_id for c in [first, *rest]] == sorted(
        c["chatId"] for c in market.server.chats(BUSINESS)
    )
    assert market.server.stats.requests_by_operation["getChats"] == 3  # 3 + 3 + 1


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"types": [ChatType.ARBITRAGE]}, {"direct"}),
        ({"types": ["CHAT"]}, {"order", "return"}),
        ({"statuses": ["NEW", ChatStatus.FINISHED]}, {"return", "direct"}),
        ({"context_types": [ChatContextType.RETURN]}, {"return"}),
        ({"context_types": ["ORDER", "DIRECT"]}, {"order", "direct"}),
        ({"contexts": [("ORDER", 501), (ChatContextType.RETURN, 601)]}, {"order", "return"}),
        ({"statuses": ["WAITING_FOR_PARTNER"], "types": ["CHAT"]}, {"order"}),
    ],
)
async def test_iter_chats_filters(
    client: MarketChatClient,
    cabinet: dict[str, int],
    filters: dict[str, Any],
    expected: set[str],
) -> None:
    found = {chat.chat_id async for chat in client.iter_chats(BUSINESS, **filters)}
    assert found == {cabinet[name] for name in expected}


async def test_iter_history_is_oldest_first_from_an_id(
    market: RunningServer, client: MarketChatClient, cabinet: dict[str, int]
) -> None:
    chat = cabinet["order"]
    everything = [m async for m in client.iter_history(BUSINESS, chat, page_size=2)]
    assert [m.message_id for m in everything] == list(range(1, 8))
    assert everything[0].sender is Sender.CUSTOMER
    assert market.server.stats.requests_by_operation["getChatHistory"] == 4  # 2+2+2+1
    later = [m.message_id async for m in client.iter_history(BUSINESS, chat, message_id_from=5)]
    assert later == [5, 6, 7]  # inclusive
    # The same message as getChatMessage gives, field for field.
    assert everything[2] == await client.get_message(BUSINESS, chat, 3)


# -- validation before anything is sent ----------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.iter_chats(BUSINESS, page_size=21),
        lambda c: c.iter_chats(BUSINESS, page_size=0),
        lambda c: c.iter_chats(BUSINESS, statuses=["WAITING_FOR_SELLER"]),
        lambda c: c.iter_chats(BUSINESS, types=[]),
        lambda c: c.iter_chats(BUSINESS, types="CHAT"),
        lambda c: c.iter_chats(BUSINESS, contexts=[("DIRECT", 1)]),
        lambda c: c.iter_chats(BUSINESS, contexts=[("ORDER", 0)]),
        lambda c: c.iter_chats(0),
        lambda c: c.iter_history(BUSINESS, 1, page_size=101),
        lambda c: c.iter_history(BUSINESS, 1, message_id_from=0),
        lambda c: c.iter_history(BUSINESS, True),
    ],
)
async def test_bad_listing_arguments_fail_at_the_call(
    market: RunningServer, client: MarketChatClient, call: Callable[[MarketChatClient], Any]
) -> None:
    with pytest.raises((TypeError, ValueError)):
        call(client)
    assert market.server.stats.requests == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.send_message(BUSINESS, 1, ""),
        lambda c: c.send_message(BUSINESS, 1, "x" * 4097),
        lambda c: c.send_message(BUSINESS, 1, b"bytes"),
        lambda c: c.send_message(BUSINESS, 0, "hi"),
        lambda c: c.send_file(BUSINESS, 1, b"x" * (5 * 1024 * 1024 + 1)),
        lambda c: c.send_file(BUSINESS, 1, b""),
        lambda c: c.send_file(BUSINESS, 1, 42),
        lambda c: c.create_chat(BUSINESS),
        lambda c: c.create_chat(BUSINESS, order_id=1, return_id=2),
        lambda c: c.create_chat(BUSINESS, order_id=-1),
        lambda c: c.get_chat(BUSINESS, 2**63),
    ],
)
async def test_bad_write_arguments_send_nothing(
    market: RunningServer,
    client: MarketChatClient,
    call: Callable[[MarketChatClient], Awaitable[Any]],
) -> None:
    with pytest.raises((TypeError, ValueError)):
        await call(client)
    assert market.server.stats.requests == 0


async def test_a_file_over_5_mb_on_disk_is_refused_unread(
    market: RunningServer, client: MarketChatClient, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(5 * 1024 * 1024 + 1)
    with pytest.raises(ValueError, match="at most"):
        await client.send_file(BUSINESS, 1, big)
    assert market.server.stats.requests == 0


# -- writes --------------------------------------------------------------------------------------


async def test_send_message_appends_to_the_history(
    market: RunningServer, client: MarketChatClient, cabinet: dict[str, int]
) -> None:
    chat = cabinet["order"]
    await client.send_message(BUSINESS, chat, "Your order ships today.")
    last = [m async for m in client.iter_history(BUSINESS, chat)][-1]
    assert (last.sender, last.message) == (Sender.PARTNER, "Your order ships today.")
    assert (await client.get_chat(BUSINESS, chat)).status is ChatStatus.WAITING_FOR_CUSTOMER


@pytest.mark.parametrize("how", ["bytes", "path", "file object"])
async def test_send_file_takes_bytes_a_path_or_a_file(
    market: RunningServer,
    client: MarketChatClient,
    cabinet: dict[str, int],
    tmp_path: Path,
    how: str,
) -> None:
    content = b"%PDF-1.4 invoice"
    path = tmp_path / "invoice.pdf"
    path.write_bytes(content)
    chat = cabinet["return"]
    if how == "bytes":
        await client.send_file(BUSINESS, chat, content, filename="invoice.pdf")
    elif how == "path":
        await client.send_file(BUSINESS, chat, path)
    else:
        with path.open("rb") as f:
            await client.send_file(BUSINESS, chat, f)
    (sent,) = [m async for m in client.iter_history(BUSINESS, chat)]
    assert [(a.name, a.size) for a in sent.payload] == [("invoice.pdf", len(content))]


async def test_send_file_refuses_a_text_file_object(client: MarketChatClient) -> None:
    with pytest.raises(TypeError, match="binary"):
        await client.send_file(BUSINESS, 1, io.StringIO("text"))  # type: ignore[arg-type]


async def test_create_chat_is_idempotent_per_context(
    market: RunningServer, client: MarketChatClient
) -> None:
    first = await client.create_chat(BUSINESS, order_id=4242)
    again = await client.create_chat(BUSINESS, order_id=4242)
    for_return = await client.create_chat(BUSINESS, return_id=4242)
    assert first == again != for_return
    chat = await client.get_chat(BUSINESS, for_return)
    assert chat.context.type is ChatContextType.RETURN


# -- never twice ---------------------------------------------------------------------------------


WRITES: dict[str, Callable[[MarketChatClient, int], Awaitable[Any]]] = {
    "sendMessageToChat": lambda c, chat: c.send_message(BUSINESS, chat, "once"),
    "sendFileToChat": lambda c, chat: c.send_file(BUSINESS, chat, b"data", filename="a.txt"),
    "createChat": lambda c, chat: c.create_chat(BUSINESS, order_id=8080),
}


def _writes_seen(server: MarketTestServer, chat: int, operation: str) -> int:
    if operation == "createChat":
        return sum(1 for c in server.chats(BUSINESS) if c["context"].get("orderId") == 8080)
    return sum(1 for m in server.history(BUSINESS, chat) if m["sender"] == "PARTNER")


@pytest.mark.looptime
@pytest.mark.parametrize("operation", list(WRITES))
@pytest.mark.parametrize(
    "fault", [Fault.SERVER_ERROR, Fault.UNAVAILABLE, Fault.DROP, Fault.slow(120)], ids=repr
)
async def test_a_write_that_may_have_acted_is_never_sent_again(
    market: RunningServer, cabinet: dict[str, int], operation: str, fault: Fault
) -> None:
    chat = cabinet["return"]
    market.server.inject(fault.after_acting(), operation=operation)
    async with MarketChatClient(
        api_key=API_KEY, base_url=market.url, retry=FAST_RETRY, timeout=10.0
    ) as client:
        with pytest.raises(OutcomeUnknownError) as info:
            await WRITES[operation](client, chat)
    assert info.value.operation == operation
    assert "never happens twice" in str(info.value)
    assert market.server.stats.requests_by_operation[operation] == 1
    assert _writes_seen(market.server, chat, operation) == 1  # it did act, once


@pytest.mark.looptime
@pytest.mark.parametrize("operation", list(WRITES))
async def test_a_write_refused_with_a_420_is_retried_once_it_may_go(
    market: RunningServer, cabinet: dict[str, int], operation: str
) -> None:
    chat = cabinet["return"]
    market.server.inject(Fault.error(420), operation=operation)  # a 420: nothing was done
    async with MarketChatClient(api_key=API_KEY, base_url=market.url, retry=FAST_RETRY) as client:
        await WRITES[operation](client, chat)
    assert market.server.stats.requests_by_operation[operation] == 2
    assert _writes_seen(market.server, chat, operation) == 1


async def test_reads_keep_their_retries(market: RunningServer, cabinet: dict[str, int]) -> None:
    market.server.inject(Fault.SERVER_ERROR, Fault.DROP, operation="getChatHistory")
    async with MarketChatClient(api_key=API_KEY, base_url=market.url, retry=FAST_RETRY) as client:
        found = [m async for m in client.iter_history(BUSINESS, cabinet["order"])]
    assert len(found) == 7


# -- paging never loops forever ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def paging_server(pages: list[dict[str, Any]]) -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.Response:
        page = pages.pop(0) if pages else {"chats": [], "paging": {}}
        return web.json_response({"status": "OK", "result": page})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


CHAT_JSON = {
    "chatId": 1,
    "type": "CHAT",
    "status": "NEW",
    "createdAt": "2026-01-01T00:00:00Z",
    "updatedAt": "2026-01-01T00:00:00Z",
    "context": {"type": "DIRECT"},
}


@pytest.mark.parametrize(
    "pages",
    [
        [
            {"chats": [CHAT_JSON], "paging": {"nextPageToken": "a"}},
            {"chats": [CHAT_JSON], "paging": {"nextPageToken": "b"}},
            {"chats": [CHAT_JSON], "paging": {"nextPageToken": "a"}},
        ],
        [{"chats": [], "paging": {"nextPageToken": "more"}}],
    ],
    ids=["token seen twice", "empty page with a next token"],
)
async def test_paging_that_would_loop_forever_is_malformed(pages: list[dict[str, Any]]) -> None:
    async with (
        paging_server(pages) as url,
        MarketChatClient(api_key=API_KEY, base_url=url) as client,
    ):
        with pytest.raises(MalformedResponseError, match="never end"):
            async for _ in client.iter_chats(BUSINESS):
                pass


# -- every method through the limiter ------------------------------------------------------------


@pytest.mark.looptime
async def test_history_and_single_messages_at_full_speed_draw_no_420() -> None:
    server = MarketTestServer(
        quotas={"getChatHistory": 60, "getChatMessage": 40}, period=60.0, latency=0.05
    )
    data = corpus(seed=3, chats=30)
    server.load(BUSINESS, data)
    chats = [c["chatId"] for c in server.chats(BUSINESS)]
    async with (
        serve(server) as running,
        MarketChatClient(
            api_key=API_KEY,
            base_url=running.url,
            quotas={
                "getChatHistory": Quota(limit=60, period=60.0),
                "getChatMessage": Quota(limit=40, period=60.0),
            },
        ) as client,
    ):

        async def history(chat: int) -> int:
            return len([m async for m in client.iter_history(BUSINESS, chat, page_size=5)])

        async def singles(chat: int) -> None:
            for message in server.history(BUSINESS, chat)[:4]:
                await client.get_message(BUSINESS, chat, message["messageId"])

        counts = await asyncio.gather(*(history(c) for c in chats))
        await asyncio.gather(*(singles(c) for c in chats))
    assert sum(counts) == sum(len(server.history(BUSINESS, c)) for c in chats)
    stats = server.stats
    assert stats.requests_by_operation["getChatHistory"] > 60  # past one window of each
    assert stats.requests_by_operation["getChatMessage"] > 40
    assert sum(stats.quota_420_by_operation.values()) == 0
    assert sum(stats.parallel_420_by_operation.values()) == 0
    assert max(stats.max_in_flight.values()) <= 4


def test_the_history_page_matches_the_official_example_shape() -> None:
    from market_chat_async._protocol import decode_history_page

    body = {
        "status": "OK",
        "result": {
            "orderId": 1,
            "context": {"type": "ORDER", "orderId": 1, "campaignId": 2},
            "messages": [
                {
                    "messageId": 1,
                    "createdAt": "2017-11-21T00:00:00+03:00",
                    "sender": "PARTNER",
                    "message": "example",
                    "payload": [{"name": "example", "url": "http://example.com", "size": 0}],
                }
            ],
            "paging": {"nextPageToken": "eyBuZXh0SWQ6IDIzNDIgfQ=="},
        },
    }
    page = decode_history_page(200, {}, json.dumps(body).encode())
    assert page.next_page_token == "eyBuZXh0SWQ6IDIzNDIgfQ=="
    assert page.messages[0].payload[0].url == "http://example.com"
