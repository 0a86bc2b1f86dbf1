"""``market-chat chats``, ``history`` and ``send`` as a user runs them: subprocesses against the
bundled server (which models getChats, getChatHistory, sendMessageToChat and sendFileToChat) on
a real port."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from market_chat_async.testing import Fault, RunningServer
from tests.test_cli import BUSINESS, Run, fetch_args, market_chat, write_csv


def ids(market: RunningServer, *more: str) -> list[str]:
    return ["--base-url", market.url, "--business-id", str(BUSINESS), *more]


def json_lines(run: Run) -> list[dict[str, Any]]:
    assert run.out == "" or run.out.endswith("\n")
    return [json.loads(line) for line in run.out.splitlines()]


def one_line_error(run: Run) -> str:
    assert "Traceback" not in run.err
    [line] = run.err.strip().splitlines()
    assert line.startswith("market-chat: ")
    return line


def message(message_id: int, text: str = "", *, created_at: str | None = None) -> dict[str, Any]:
    minute, second = divmod(message_id, 60)
    return {
        "messageId": message_id,
        "createdAt": created_at or f"2026-01-01T10:{minute:02d}:{second:02d}.002Z",
        "sender": "CUSTOMER" if message_id % 2 else "PARTNER",
        "message": text or f"message {message_id}",
    }


# -- chats ----------------------------------------------------------------------------------


@pytest.fixture
async def cabinet(market: RunningServer) -> RunningServer:
    """45 chats (three getChats pages): statuses, types and contexts in turn."""
    statuses = ["NEW", "WAITING_FOR_PARTNER", "WAITING_FOR_CUSTOMER", "FINISHED"]
    for n in range(45):
        market.server.add_chat(
            BUSINESS,
            context_type="RETURN" if n % 5 == 0 else "ORDER",
            order_id=10_000 + n if n % 5 == 0 else None,
            type="ARBITRAGE" if n % 7 == 0 else "CHAT",
            status=statuses[n % 4],
            customer={"name": f"Customer {n}", "publicId": f"c{n}"},
        )
    return market


async def test_chats_writes_every_chat_as_the_api_sent_it_across_pages(
    cabinet: RunningServer,
) -> None:
    run = await market_chat("chats", *ids(cabinet))
    assert run.status == 0, run.err
    assert json_lines(run) == cabinet.server.chats(BUSINESS)
    assert cabinet.server.stats.requests_by_operation["getChats"] == 3
    assert "45 chats written to stdout" in run.err


@pytest.mark.parametrize(
    ("options", "field", "wanted"),
    [
        (["--status", "NEW"], "status", {"NEW"}),
        (
            ["--status", "WAITING_FOR_PARTNER", "--status", "FINISHED"],
            "status",
            {"WAITING_FOR_PARTNER", "FINISHED"},
        ),
        (["--type", "ARBITRAGE"], "type", {"ARBITRAGE"}),
        (["--context-type", "RETURN"], "context", {"RETURN"}),
    ],
    ids=["status", "two statuses", "type", "context type"],
)
async def test_chats_filters_take_any_of_their_values(
    cabinet: RunningServer, options: list[str], field: str, wanted: set[str]
) -> None:
    run = await market_chat("chats", *ids(cabinet), *options)
    assert run.status == 0, run.err

    def value(chat: dict[str, Any]) -> str:
        return str(chat[field]["type"] if field == "context" else chat[field])

    expected = [c for c in cabinet.server.chats(BUSINESS) if value(c) in wanted]
    assert expected
    assert json_lines(run) == expected


async def test_chats_with_a_refused_key_is_one_line_and_exit_1(cabinet: RunningServer) -> None:
    run = await market_chat("chats", *ids(cabinet), "--api-key", "wrong-key")
    assert run.status == 1
    assert "ForbiddenError" in one_line_error(run)
    assert "wrong-key" not in run.err
    assert run.out == ""


# -- history --------------------------------------------------------------------------------


@pytest.fixture
async def long_chat(market: RunningServer) -> int:
    """A chat of 150 messages (two getChatHistory pages)."""
    return market.server.add_chat(
        BUSINESS,
        messages=[message(n, "Привет \u2014 тест" if n == 7 else "") for n in range(1, 151)],
    )


async def test_history_writes_every_message_oldest_first_in_the_fetch_shape(
    market: RunningServer, long_chat: int, tmp_path: Path
) -> None:
    run = await market_chat("history", *ids(market, "--chat-id", str(long_chat)))
    assert run.status == 0, run.err
    lines = json_lines(run)
    assert lines == [
        {"chatId": long_chat, **sent} for sent in market.server.history(BUSINESS, long_chat)
    ]
    assert [line["messageId"] for line in lines] == list(range(1, 151))
    assert market.server.stats.requests_by_operation["getChatHistory"] == 2
    assert "150 messages written to stdout" in run.err

    source = write_csv(tmp_path / "ids.csv", [(long_chat, 7)])
    fetched = await market_chat(*fetch_args(market, tmp_path, source))
    assert fetched.status == 0, fetched.err
    line_7 = run.out.splitlines()[6]
    assert (tmp_path / "messages.jsonl").read_text(encoding="utf-8") == line_7 + "\n"


async def test_history_from_a_message_id_starts_there(
    market: RunningServer, long_chat: int
) -> None:
    args = ids(market, "--chat-id", str(long_chat), "--from-message-id", "120")
    run = await market_chat("history", *args)
    assert run.status == 0, run.err
    assert [line["messageId"] for line in json_lines(run)] == list(range(120, 151))


async def test_history_of_an_unknown_chat_is_one_line_and_exit_1(market: RunningServer) -> None:
    run = await market_chat("history", *ids(market, "--chat-id", "999"))
    assert run.status == 1
    assert "error: NotFoundError" in one_line_error(run)


# -- send -----------------------------------------------------------------------------------


async def test_send_text_appends_it_to_the_chat(market: RunningServer) -> None:
    chat_id = market.server.add_chat(BUSINESS, messages=[message(1)])
    run = await market_chat("send", *ids(market, "--chat-id", str(chat_id)), "--text", "Спасибо!")
    assert run.status == 0, run.err
    assert f"sent the text to chat {chat_id}" in run.err
    last = market.server.history(BUSINESS, chat_id)[-1]
    assert (last["message"], last["sender"]) == ("Спасибо!", "PARTNER")


async def test_send_file_uploads_it_under_its_name(market: RunningServer, tmp_path: Path) -> None:
    chat_id = market.server.add_chat(BUSINESS, messages=[message(1)])
    invoice = tmp_path / "invoice.pdf"
    invoice.write_bytes(b"%PDF-1.4 not really")
    run = await market_chat("send", *ids(market, "--chat-id", str(chat_id)), "--file", str(invoice))
    assert run.status == 0, run.err
    assert f"sent invoice.pdf to chat {chat_id}" in run.err
    [attachment] = market.server.history(BUSINESS, chat_id)[-1]["payload"]
    assert attachment["name"] == "invoice.pdf"
    assert attachment["size"] == len(invoice.read_bytes())


@pytest.mark.parametrize(
    ("what", "phrase"),
    [
        (["--text", "x" * 4097], "4096"),
        (["--text", ""], "text"),
        (["--file", "no-such-file.pdf"], "cannot read no-such-file.pdf"),
    ],
    ids=["text too long", "empty text", "missing file"],
)
async def test_send_refuses_bad_input_before_sending(
    market: RunningServer, what: list[str], phrase: str
) -> None:
    chat_id = market.server.add_chat(BUSINESS)
    run = await market_chat("send", *ids(market, "--chat-id", str(chat_id)), *what)
    assert run.status == 2
    assert phrase in one_line_error(run)
    assert market.server.stats.requests == 0


async def test_send_takes_a_text_or_a_file_not_both(market: RunningServer, tmp_path: Path) -> None:
    chat_id = str(market.server.add_chat(BUSINESS))
    run = await market_chat(
        "send", *ids(market, "--chat-id", chat_id), "--text", "hi", "--file", str(tmp_path)
    )
    assert run.status == 2
    assert "not allowed with argument" in run.err
    run = await market_chat("send", *ids(market, "--chat-id", chat_id))
    assert run.status == 2
    assert "one of the arguments --text --file is required" in run.err
    assert market.server.stats.requests == 0


@pytest.mark.parametrize(
    "fault", [Fault.SERVER_ERROR.after_acting(), Fault.DROP.after_acting()], ids=["500", "drop"]
)
async def test_send_with_an_unknown_outcome_says_so_and_never_sends_twice(
    market: RunningServer, fault: Fault
) -> None:
    chat_id = market.server.add_chat(BUSINESS)
    market.server.inject(fault, operation="sendMessageToChat")
    run = await market_chat("send", *ids(market, "--chat-id", str(chat_id)), "--text", "Once")
    assert run.status == 1
    line = one_line_error(run)
    assert "may or may not have reached the chat" in line
    assert f"market-chat history --business-id {BUSINESS} --chat-id {chat_id}" in line
    assert market.server.stats.requests_by_operation["sendMessageToChat"] == 1
    assert [m["message"] for m in market.server.history(BUSINESS, chat_id)] == ["Once"]
