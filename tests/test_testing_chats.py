"""The test server's chat family (all methods but getChatMessage) over real sockets.

As in test_testing_server.py the yardstick is measured on its own: plain aiohttp requests,
shapes and rules taken from the official OpenAPI files.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple

import aiohttp
import pytest

from market_chat_async.testing import DEFAULT_API_KEY, Fault, MarketTestServer, RunningServer, serve

BUSINESS = 12345
KEY = {"Api-Key": DEFAULT_API_KEY}
EPOCH = 1_700_000_000.0


class Answer(NamedTuple):
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def result(self) -> Any:
        assert self.status == 200, self.body
        body = self.json()
        assert body["status"] == "OK"
        return body["result"]

    def error(self) -> str:
        body = self.json()
        assert body["status"] == "ERROR"
        [error] = body["errors"]
        message: str = error["message"]
        return message


async def request(
    session: aiohttp.ClientSession,
    running: RunningServer,
    method: str,
    path: str,
    *,
    params: Mapping[str, str | int] | None = None,
    business_id: int = BUSINESS,
    **options: Any,
) -> Answer:
    url = f"{running.url}/v2/businesses/{business_id}{path}"
    query = {k: str(v) for k, v in (params or {}).items()}
    async with session.request(method, url, params=query, headers=KEY, **options) as response:
        return Answer(response.status, await response.read())


async def get_chats(
    session: aiohttp.ClientSession, running: RunningServer, body: Any = None, **params: Any
) -> Answer:
    return await request(session, running, "POST", "/chats", params=params, json=body or {})


async def history(
    session: aiohttp.ClientSession,
    running: RunningServer,
    chat_id: int,
    body: Any = None,
    **params: Any,
) -> Answer:
    params["chatId"] = chat_id
    return await request(session, running, "POST", "/chats/history", params=params, json=body or {})


async def send(
    session: aiohttp.ClientSession, running: RunningServer, chat_id: int, text: str
) -> Answer:
    params = {"chatId": chat_id}
    return await request(
        session, running, "POST", "/chats/message", params=params, json={"message": text}
    )


def message(
    message_id: int, sender: str = "CUSTOMER", text: str = "Где мой заказ?"
) -> dict[str, Any]:
    return {
        "messageId": message_id,
        "createdAt": "2026-01-01T10:00:00+03:00",
        "sender": sender,
        "message": f"{text} {message_id}",
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def running() -> AsyncIterator[RunningServer]:
    async with serve(MarketTestServer(epoch=EPOCH)) as started:
        yield started


def add_varied_chats(server: MarketTestServer) -> None:
    """Six chats, one per interesting combination of context, type and status."""
    server.add_chat(BUSINESS, chat_id=1, context_type="ORDER", context_id=101, status="NEW")
    server.add_chat(
        BUSINESS, chat_id=2, context_type="ORDER", context_id=102, status="WAITING_FOR_PARTNER"
    )
    server.add_chat(
        BUSINESS, chat_id=3, context_type="RETURN", context_id=201, order_id=103, status="NEW"
    )
    server.add_chat(BUSINESS, chat_id=4, context_type="DIRECT", status="FINISHED")
    server.add_chat(
        BUSINESS,
        chat_id=5,
        context_type="ORDER",
        context_id=105,
        type="ARBITRAGE",
        status="WAITING_FOR_ARBITER",
    )
    server.add_chat(BUSINESS, chat_id=6, context_type="RETURN", context_id=202, type="ARBITRAGE")


# -- getChats -------------------------------------------------------------------------------------


async def test_get_chats_lists_every_chat_with_the_documented_shape(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    running.server.add_chat(
        BUSINESS,
        chat_id=7,
        context_type="RETURN",
        context_id=55,
        order_id=54,
        campaign_id=900,
        status="WAITING_FOR_PARTNER",
        customer={"name": "Анна", "publicId": "abc"},
        created_at="2026-01-01T10:00:00+03:00",
        updated_at="2026-01-02T10:00:00+03:00",
    )
    result = (await get_chats(session, running)).result()
    assert result == {
        "chats": [
            {
                "chatId": 7,
                "orderId": 54,
                "context": {
                    "type": "RETURN",
                    "customer": {"name": "Анна", "publicId": "abc"},
                    "campaignId": 900,
                    "orderId": 54,
                    "returnId": 55,
                },
                "type": "CHAT",
                "status": "WAITING_FOR_PARTNER",
                "createdAt": "2026-01-01T10:00:00+03:00",
                "updatedAt": "2026-01-02T10:00:00+03:00",
            }
        ],
        "paging": {},
    }


async def test_get_chats_pages_to_the_end_with_opaque_tokens(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    for chat_id in range(1, 26):
        running.server.add_chat(BUSINESS, chat_id=chat_id)
    seen, sizes, token, pages = [], [], None, 0
    while True:
        # the alias pageToken on odd pages, page_token on even ones
        name = "pageToken" if pages % 2 else "page_token"
        params: dict[str, str] = {} if token is None else {name: token}
        result = (await get_chats(session, running, limit=10, **params)).result()
        pages += 1
        sizes.append(len(result["chats"]))
        seen += [chat["chatId"] for chat in result["chats"]]
        token = result["paging"].get("nextPageToken")
        if token is None:
            break
        assert not token.isdigit()
    assert sizes == [10, 10, 5]
    assert seen == list(range(1, 26))


async def test_get_chats_default_page_is_ten_and_exact_fit_has_no_next_token(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    for chat_id in range(1, 21):
        running.server.add_chat(BUSINESS, chat_id=chat_id)
    first = (await get_chats(session, running)).result()
    assert len(first["chats"]) == 10
    full = (await get_chats(session, running, limit=20)).result()
    assert len(full["chats"]) == 20
    assert full["paging"] == {}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"contexts": [{"type": "ORDER", "id": 102}, {"type": "RETURN", "id": 202}]}, [2, 6]),
        ({"contextTypes": ["RETURN", "DIRECT"]}, [3, 4, 6]),
        ({"types": ["ARBITRAGE"]}, [5, 6]),
        ({"statuses": ["NEW"]}, [1, 3, 6]),
        ({"orderIds": [101, 103]}, [1, 3]),
        ({"types": ["ARBITRAGE"], "statuses": ["NEW"]}, [6]),  # filters combine with AND
        ({"contexts": None, "statuses": None}, [1, 2, 3, 4, 5, 6]),  # null: no filter
    ],
)
async def test_get_chats_filters(
    session: aiohttp.ClientSession, running: RunningServer, body: Any, expected: list[int]
) -> None:
    add_varied_chats(running.server)
    result = (await get_chats(session, running, body)).result()
    assert [chat["chatId"] for chat in result["chats"]] == expected


async def test_a_filtered_page_holds_no_next_token_when_nothing_more_matches(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    add_varied_chats(running.server)
    body = {"statuses": ["NEW"]}
    first = (await get_chats(session, running, body, limit=2)).result()
    assert [c["chatId"] for c in first["chats"]] == [1, 3]
    token = first["paging"]["nextPageToken"]
    last = (await get_chats(session, running, body, limit=2, page_token=token)).result()
    assert ([c["chatId"] for c in last["chats"]], last["paging"]) == ([6], {})


@pytest.mark.parametrize(
    ("body", "params", "text"),
    [
        ({}, {"limit": "0"}, "limit"),
        ({}, {"limit": "21"}, "limit"),
        ({}, {"limit": "ten"}, "limit"),
        ({}, {"page_token": "bm9wZQ"}, "page_token"),
        ({}, {"page_token": "a", "pageToken": "b"}, "disagree"),
        ({"statuses": []}, {}, "non-empty"),
        ({"statuses": ["NEW", "NEW"]}, {}, "repeat"),
        ({"statuses": ["OPEN"]}, {}, "OPEN"),
        ({"types": "CHAT"}, {}, "types"),
        ({"contextTypes": ["SUPPORT"]}, {}, "contextTypes"),
        ({"contexts": [{"type": "DIRECT", "id": 1}]}, {}, "contexts[0].type"),
        ({"contexts": [{"type": "ORDER", "id": 0}]}, {}, "contexts[0].id"),
        ({"orderIds": ["1"]}, {}, "orderIds"),
        ([], {}, "JSON object"),
    ],
)
async def test_get_chats_validation_is_400(
    session: aiohttp.ClientSession,
    running: RunningServer,
    body: Any,
    params: dict[str, str],
    text: str,
) -> None:
    answer = await request(session, running, "POST", "/chats", params=params, json=body)
    assert answer.status == 400
    assert text in answer.error()


async def test_get_chats_needs_a_json_body(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    answer = await request(session, running, "POST", "/chats", data=b"not json")
    assert answer.status == 400
    empty = await request(session, running, "POST", "/chats")
    assert empty.status == 400


# -- getChat --------------------------------------------------------------------------------------


async def test_get_chat_answers_one_chat_404_for_unknown_and_400_for_bad_ids(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    add_varied_chats(running.server)
    one = await request(session, running, "GET", "/chat", params={"chatId": 4})
    assert one.result() == running.server.chats(BUSINESS)[3]
    assert one.result()["context"] == {"type": "DIRECT"}
    missing = await request(session, running, "GET", "/chat", params={"chatId": 99})
    assert (missing.status, missing.error()) == (404, "Chat 99 not found")
    for bad in ({"chatId": "0"}, {"chatId": "x"}, {}):
        assert (await request(session, running, "GET", "/chat", params=bad)).status == 400


# -- getChatHistory -------------------------------------------------------------------------------


async def test_history_is_oldest_first_and_pages_to_the_end(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    ids = [3, 1, 7, 5, 9, 2, 8]
    chat_id = running.server.add_chat(BUSINESS, context_id=500, messages=[message(m) for m in ids])
    seen, token = [], None
    while True:
        params = {"limit": 3} if token is None else {"limit": 3, "page_token": token}
        result = (await history(session, running, chat_id, **params)).result()
        assert result["context"]["orderId"] == 500
        assert result["orderId"] == 500
        seen += [m["messageId"] for m in result["messages"]]
        token = result["paging"].get("nextPageToken")
        if token is None:
            break
    assert seen == sorted(ids)
    everything = (await history(session, running, chat_id)).result()  # default limit 50
    assert [m["messageId"] for m in everything["messages"]] == sorted(ids)
    assert everything["paging"] == {}


@pytest.mark.parametrize(
    ("message_id_from", "expected"),
    [(1, [2, 4, 6]), (4, [4, 6]), (5, [6]), (7, []), (None, [2, 4, 6])],
)
async def test_history_from_message_id_is_inclusive(
    session: aiohttp.ClientSession,
    running: RunningServer,
    message_id_from: int | None,
    expected: list[int],
) -> None:
    chat_id = running.server.add_chat(BUSINESS, messages=[message(m) for m in (2, 4, 6)])
    body = {"messageIdFrom": message_id_from}
    result = (await history(session, running, chat_id, body)).result()
    assert [m["messageId"] for m in result["messages"]] == expected


async def test_history_of_a_direct_chat_has_no_order_id(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    chat_id = running.server.add_chat(BUSINESS, context_type="DIRECT")
    result = (await history(session, running, chat_id)).result()
    assert result == {"context": {"type": "DIRECT"}, "messages": [], "paging": {}}


async def test_history_and_get_message_answer_the_same_json(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    odd = {**message(4, "SUPPORT"), "payload": [{"name": "a.pdf", "url": "u", "size": 1}]}
    odd["someFutureField"] = {"x": [1, None]}
    chat_id = running.server.add_chat(BUSINESS, messages=[message(1), odd])
    listed = await history(session, running, chat_id)
    for message_id in (1, 4):
        params = {"chatId": chat_id, "messageId": message_id}
        one = await request(session, running, "GET", "/chats/message", params=params)
        text = json.dumps(one.result(), ensure_ascii=False).encode()
        assert text in listed.body  # the same JSON text, not only the same values
    assert listed.result()["messages"][1] == odd
    params = {"chatId": chat_id, "messageId": 2}  # a registered chat has no "auto" messages
    assert (await request(session, running, "GET", "/chats/message", params=params)).status == 404


@pytest.mark.parametrize(
    ("params", "body"),
    [
        ({"limit": "101"}, {}),
        ({"limit": "0"}, {}),
        ({}, {"messageIdFrom": 0}),
        ({}, {"messageIdFrom": "3"}),
        ({"page_token": "garbage"}, {}),
    ],
)
async def test_history_validation_is_400(
    session: aiohttp.ClientSession, running: RunningServer, params: dict[str, str], body: Any
) -> None:
    chat_id = running.server.add_chat(BUSINESS)
    assert (await history(session, running, chat_id, body, **params)).status == 400


async def test_history_token_of_another_chat_is_400_and_unknown_chat_404(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    server = running.server
    first = server.add_chat(BUSINESS, messages=[message(m) for m in (1, 2, 3)])
    other = server.add_chat(BUSINESS, messages=[message(m) for m in (4, 5, 6)])
    token = (await history(session, running, first, limit=1)).result()["paging"]["nextPageToken"]
    assert (await history(session, running, other, page_token=token)).status == 400
    assert (await history(session, running, 999)).status == 404


# -- sendMessageToChat ----------------------------------------------------------------------------


@pytest.mark.looptime
async def test_send_appends_a_partner_message_and_updates_the_chat(
    session: aiohttp.ClientSession,
) -> None:
    server = MarketTestServer(epoch=EPOCH)
    async with serve(server) as running:
        chat_id = server.add_chat(BUSINESS, status="WAITING_FOR_PARTNER", messages=[message(5)])
        server.add_chat(BUSINESS, messages=[message(40)])  # ids grow through the cabinet
        await asyncio.sleep(60)
        answer = await send(session, running, chat_id, "Добрый день!")
        assert answer.json() == {"status": "OK"}
    [sent] = server.history(BUSINESS, chat_id)[1:]
    assert sent == {
        "messageId": 41,
        "createdAt": "2023-11-15T01:14:20+03:00",  # EPOCH + 60 s, Moscow time
        "sender": "PARTNER",
        "message": "Добрый день!",
    }
    chat = server.chats(BUSINESS)[0]
    assert (chat["status"], chat["updatedAt"]) == ("WAITING_FOR_CUSTOMER", sent["createdAt"])


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("NEW", "WAITING_FOR_CUSTOMER"),
        ("WAITING_FOR_PARTNER", "WAITING_FOR_CUSTOMER"),
        ("FINISHED", "WAITING_FOR_CUSTOMER"),
        ("WAITING_FOR_ARBITER", "WAITING_FOR_ARBITER"),
        ("WAITING_FOR_MARKET", "WAITING_FOR_MARKET"),
    ],
)
async def test_send_moves_the_status_to_the_customer_unless_an_arbiter_or_market_is_due(
    session: aiohttp.ClientSession, running: RunningServer, before: str, after: str
) -> None:
    chat_id = running.server.add_chat(BUSINESS, status=before)
    assert (await send(session, running, chat_id, "ok")).status == 200
    assert running.server.chats(BUSINESS)[0]["status"] == after


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"message": "я" * 4096}, 200),
        ({"message": "я" * 4097}, 400),
        ({"message": ""}, 400),
        ({"message": 5}, 400),
        ({}, 400),
    ],
)
async def test_send_takes_1_to_4096_characters_and_appends_nothing_otherwise(
    session: aiohttp.ClientSession, running: RunningServer, body: Any, status: int
) -> None:
    chat_id = running.server.add_chat(BUSINESS)
    params = {"chatId": chat_id}
    answer = await request(session, running, "POST", "/chats/message", params=params, json=body)
    assert answer.status == status
    assert len(running.server.history(BUSINESS, chat_id)) == (status == 200)


async def test_send_to_an_unknown_chat_is_404(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    assert (await send(session, running, 31337, "hello")).status == 404


# -- sendFileToChat -------------------------------------------------------------------------------


def file_form(content: bytes, filename: str = "photo.jpg", field: str = "file") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field(field, content, filename=filename, content_type="image/jpeg")
    return form


async def test_send_file_appends_a_payload_message(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    chat_id = running.server.add_chat(BUSINESS, messages=[message(1)])
    params = {"chatId": chat_id}
    answer = await request(
        session, running, "POST", "/chats/file/send", params=params, data=file_form(b"x" * 1000)
    )
    assert answer.json() == {"status": "OK"}
    sent = running.server.history(BUSINESS, chat_id)[-1]
    assert sent["sender"] == "PARTNER"
    assert "message" not in sent
    assert sent["payload"] == [
        {
            "name": "photo.jpg",
            "url": f"https://market-files.invalid/{chat_id}/{sent['messageId']}/1",
            "size": 1000,
        }
    ]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (lambda: file_form(b"x" * (5 * 1024 * 1024)), 200),
        (lambda: file_form(b"x" * (5 * 1024 * 1024 + 1)), 400),
        (lambda: file_form(b"x", field="attachment"), 400),
        (lambda: b"raw bytes", 400),
    ],
)
async def test_send_file_takes_at_most_5_mb_in_field_file(
    session: aiohttp.ClientSession, running: RunningServer, data: Any, status: int
) -> None:
    chat_id = running.server.add_chat(BUSINESS)
    params = {"chatId": chat_id}
    answer = await request(session, running, "POST", "/chats/file/send", params=params, data=data())
    assert answer.status == status
    assert len(running.server.history(BUSINESS, chat_id)) == (status == 200)


# -- createChat -----------------------------------------------------------------------------------


async def test_create_chat_is_idempotent_per_context(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    server = running.server
    existing = server.add_chat(BUSINESS, chat_id=10, context_type="ORDER", context_id=777)

    async def create(body: Any) -> int:
        chat_id: int = (await request(session, running, "POST", "/chats/new", json=body)).result()[
            "chatId"
        ]
        return chat_id

    assert await create({"context": {"type": "ORDER", "id": 777}}) == existing
    assert await create({"orderId": 777}) == existing  # the deprecated form
    new = await create({"context": {"type": "RETURN", "id": 777}})
    assert new == 11
    assert await create({"context": {"type": "RETURN", "id": 777}}) == new
    assert await create({"context": {"type": "ORDER", "id": 778}}) == 12
    chats = {chat["chatId"]: chat for chat in server.chats(BUSINESS)}
    assert set(chats) == {10, 11, 12}
    assert chats[11]["context"]["returnId"] == 777
    assert (chats[11]["status"], chats[11]["type"]) == ("NEW", "CHAT")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"context": {"type": "DIRECT", "id": 1}},
        {"context": {"type": "ORDER"}},
        {"context": {"type": "ORDER", "id": -5}},
        {"orderId": "12"},
    ],
)
async def test_create_chat_validation_is_400_and_creates_nothing(
    session: aiohttp.ClientSession, running: RunningServer, body: Any
) -> None:
    answer = await request(session, running, "POST", "/chats/new", json=body)
    assert answer.status == 400
    assert running.server.chats(BUSINESS) == []


# -- faults on the write path ---------------------------------------------------------------------


async def test_a_fault_for_one_operation_waits_for_it(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    server = running.server
    chat_id = server.add_chat(BUSINESS)
    server.inject(Fault.SERVER_ERROR, operation="sendMessageToChat")
    assert (
        await request(session, running, "GET", "/chat", params={"chatId": chat_id})
    ).status == 200
    assert (await get_chats(session, running)).status == 200
    assert server.pending_faults("sendMessageToChat") == 1
    assert (await send(session, running, chat_id, "hi")).status == 500
    assert server.history(BUSINESS, chat_id) == []  # failed before acting: nothing sent
    assert (await send(session, running, chat_id, "hi")).status == 200
    assert server.stats.status_by_operation["sendMessageToChat"] == {500: 1, 200: 1}


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.UNAVAILABLE])
async def test_an_error_after_acting_leaves_the_message_sent(
    session: aiohttp.ClientSession, running: RunningServer, fault: Fault
) -> None:
    chat_id = running.server.add_chat(BUSINESS)
    running.server.inject(fault.after_acting(), operation="sendMessageToChat")
    assert (await send(session, running, chat_id, "once")).status == fault.status
    assert [m["message"] for m in running.server.history(BUSINESS, chat_id)] == ["once"]


async def test_a_drop_after_acting_leaves_the_message_sent(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    chat_id = running.server.add_chat(BUSINESS)
    running.server.inject(Fault.DROP.after_acting(), operation="sendMessageToChat")
    with pytest.raises(aiohttp.ClientConnectionError):  # aiohttp does not resend a POST
        await send(session, running, chat_id, "once")
    assert [m["message"] for m in running.server.history(BUSINESS, chat_id)] == ["once"]
    assert running.server.stats.dropped == 1


@pytest.mark.looptime
async def test_a_timeout_after_acting_leaves_the_chat_created(
    session: aiohttp.ClientSession,
) -> None:
    server = MarketTestServer()
    async with serve(server) as running:
        server.inject(Fault.slow(60.0).after_acting(), operation="createChat")
        body = {"context": {"type": "ORDER", "id": 5}}
        with pytest.raises(asyncio.TimeoutError):
            await request(
                session,
                running,
                "POST",
                "/chats/new",
                json=body,
                timeout=aiohttp.ClientTimeout(total=5.0),
            )
        assert [chat["context"]["orderId"] for chat in server.chats(BUSINESS)] == [5]
        again = await request(session, running, "POST", "/chats/new", json=body)
    assert again.result() == {"chatId": 1}


async def test_a_drop_before_acting_sends_nothing(
    session: aiohttp.ClientSession, running: RunningServer
) -> None:
    chat_id = running.server.add_chat(BUSINESS)
    running.server.inject(Fault.DROP, operation="sendFileToChat")
    params = {"chatId": chat_id}
    with pytest.raises(aiohttp.ClientConnectionError):
        await request(
            session, running, "POST", "/chats/file/send", params=params, data=file_form(b"x")
        )
    assert running.server.history(BUSINESS, chat_id) == []


def test_inject_refuses_an_unknown_operation() -> None:
    with pytest.raises(ValueError, match="getChatz"):
        MarketTestServer().inject(Fault.DROP, operation="getChatz")


# -- the data API ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"context_type": "CHAT"}, "context_type"),
        ({"type": "DISPUTE"}, "type"),
        ({"status": "OPEN"}, "status"),
        ({"context_type": "DIRECT", "context_id": 5}, "DIRECT"),
        ({"chat_id": 0}, "chat_id"),
        ({"messages": [{"sender": "PARTNER"}]}, "messageId"),
    ],
)
def test_add_chat_refuses_what_the_spec_does_not_allow(options: dict[str, Any], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        MarketTestServer().add_chat(BUSINESS, **options)


def test_add_chat_refuses_a_second_chat_for_a_context_or_an_id() -> None:
    server = MarketTestServer()
    server.add_chat(BUSINESS, chat_id=1, context_id=50)
    with pytest.raises(ValueError, match="already has chat 1"):
        server.add_chat(BUSINESS, chat_id=2, context_id=50)
    with pytest.raises(ValueError, match="already exists"):
        server.add_chat(BUSINESS, chat_id=1, context_id=51)
    with pytest.raises(KeyError):
        server.history(BUSINESS, 2)


def test_add_message_to_a_registered_chat_joins_its_history_in_order() -> None:
    server = MarketTestServer()
    chat_id = server.add_chat(BUSINESS, messages=[message(1), message(9)])
    server.add_message(BUSINESS, chat_id, message(5))
    server.remove_message(BUSINESS, chat_id, 1)
    assert [m["messageId"] for m in server.history(BUSINESS, chat_id)] == [5, 9]
