"""``market-chat export`` as a user runs it: a subprocess against the bundled server on a real
port, killed with SIGKILL mid-run and run again; and ``fetch --strategy``, the other command
the planner serves."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from market_chat_async import MarketChatClient
from market_chat_async.cli.export import ExportState, recover, state_path
from market_chat_async.testing import MarketTestServer, RunningServer, corpus, serve

API_KEY = "test-api-key"  # the test server's
BUSINESS = 12345
CHATS = 60


def environment() -> dict[str, str]:
    return dict(os.environ, YANDEX_MARKET_API_KEY=API_KEY, COLUMNS="120")


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "market_chat_async.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment(),
    )


async def export(market: RunningServer, output: Path, *more: str) -> tuple[int, str]:
    proc = await start(*export_args(market, output, *more))
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def export_args(market: RunningServer, output: Path, *more: str) -> list[str]:
    return [
        "export",
        "--base-url",
        market.url,
        "--business-id",
        str(BUSINESS),
        "--output",
        str(output),
        *more,
    ]


def pairs_in(path: Path) -> list[tuple[int, int]]:
    lines = path.read_bytes().splitlines()
    return [(data["chatId"], data["messageId"]) for data in map(json.loads, lines)]


def everything(server: MarketTestServer) -> set[tuple[int, int]]:
    return {
        (chat["chatId"], message["messageId"])
        for chat in server.chats(BUSINESS)
        for message in server.history(BUSINESS, chat["chatId"])
    }


@pytest.fixture
async def cabinet() -> AsyncIterator[RunningServer]:
    """A cabinet of 60 chats (heavy-tailed message counts), 20 ms per request."""
    server = MarketTestServer(latency=0.02)
    server.load(BUSINESS, corpus(seed=4, chats=CHATS))
    async with serve(server) as running:
        yield running


@pytest.fixture
async def slow_cabinet() -> AsyncIterator[RunningServer]:
    """The same cabinet at 200 ms a request: an export takes seconds, time to kill it."""
    server = MarketTestServer(latency=0.2)
    server.load(BUSINESS, corpus(seed=4, chats=CHATS))
    async with serve(server) as running:
        yield running


async def test_export_writes_every_message_once_and_a_rerun_reads_only_the_listing(
    cabinet: RunningServer, tmp_path: Path
) -> None:
    output = tmp_path / "messages.jsonl"
    status, err = await export(cabinet, output)
    assert status == 0, err
    written = pairs_in(output)
    assert len(written) == len(set(written))
    assert set(written) == everything(cabinet.server)
    first = json.loads(output.read_bytes().splitlines()[0])
    assert list(first)[:2] == ["chatId", "messageId"]  # the fetch shape
    state = ExportState.from_json(state_path(output).read_text())
    assert len(state.complete) == CHATS
    assert state.output_bytes == output.stat().st_size

    cabinet.server.stats.requests_by_operation.clear()
    status, err = await export(cabinet, output)
    assert status == 0, err
    assert "0 new messages" in err
    assert f"{CHATS} chats unchanged" in err
    assert dict(cabinet.server.stats.requests_by_operation) == {"getChats": 3}  # 60 / 20
    assert len(pairs_in(output)) == len(written)


async def test_a_rerun_reads_only_the_new_messages_of_the_chats_updated(
    cabinet: RunningServer, tmp_path: Path
) -> None:
    output = tmp_path / "messages.jsonl"
    assert (await export(cabinet, output))[0] == 0
    async with MarketChatClient(api_key=API_KEY, base_url=cabinet.url) as client:
        for chat_id in (5, 17, 42):
            await client.send_message(BUSINESS, chat_id, f"news for {chat_id}")
    cabinet.server.stats.requests_by_operation.clear()
    status, err = await export(cabinet, output)
    assert status == 0, err
    assert "3 new messages from 3 chats" in err
    assert dict(cabinet.server.stats.requests_by_operation) == {
        "getChats": 3,
        "getChatHistory": 3,
    }
    written = pairs_in(output)
    assert len(written) == len(set(written))
    assert set(written) == everything(cabinet.server)


async def test_since_and_filters_limit_the_chats(cabinet: RunningServer, tmp_path: Path) -> None:
    chats = cabinet.server.chats(BUSINESS)
    cut = sorted(chat["updatedAt"] for chat in chats)[CHATS // 2]
    output = tmp_path / "messages.jsonl"
    status, err = await export(cabinet, output, "--since", cut, "--status", "FINISHED")
    assert status == 0, err
    expected = {
        chat["chatId"]
        for chat in chats
        if chat["updatedAt"] >= cut and chat["status"] == "FINISHED"
    }
    assert {chat_id for chat_id, _ in pairs_in(output)} == expected


async def test_a_naive_since_is_a_usage_error(cabinet: RunningServer, tmp_path: Path) -> None:
    status, err = await export(cabinet, tmp_path / "m.jsonl", "--since", "2026-01-01T00:00:00")
    assert status == 2
    assert "no UTC offset" in err
    assert cabinet.server.stats.requests == 0


@pytest.mark.parametrize("lose_state", [False, True], ids=["state-kept", "state-lost"])
async def test_a_killed_export_resumes_with_every_message_exactly_once(
    slow_cabinet: RunningServer, tmp_path: Path, lose_state: bool
) -> None:
    cabinet = slow_cabinet
    output = tmp_path / "messages.jsonl"
    proc = await start(*export_args(cabinet, output))
    async with asyncio.timeout(30):  # until part of the cabinet is written
        while True:
            # With the state kept, kill once a state was saved (every 2 s): the output has
            # lines past what it counts by then.
            saved = lose_state or state_path(output).exists()
            if saved and output.exists() and output.read_bytes().count(b"\n") >= 150:
                break
            await asyncio.sleep(0.01)
    proc.kill()
    await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    before = pairs_in(output)
    assert len(before) < len(everything(cabinet.server))
    if not lose_state:
        counted = ExportState.from_json(state_path(output).read_text()).output_bytes
        assert 0 < counted <= output.stat().st_size
    if lose_state:
        state_path(output).unlink(missing_ok=True)
    with output.open("ab") as file:  # as if the machine died in the middle of a write
        file.write(b'{"chatId":1,"messageId":')

    status, err = await export(cabinet, output)
    assert status == 0, err
    assert "cut off an incomplete last line" in err
    written = pairs_in(output)
    assert written[: len(before)] == before
    duplicates = [pair for pair, n in Counter(written).items() if n > 1]
    assert duplicates == []
    assert set(written) == everything(cabinet.server)


def test_recovery_trusts_the_output_past_what_the_state_counts(tmp_path: Path) -> None:
    output = tmp_path / "messages.jsonl"
    counted = b'{"chatId":1,"messageId":5}\n'
    output.write_bytes(counted + b'{"chatId":1,"messageId":9}\n{"chatId":2,"messageId":3}\n')
    state = ExportState(BUSINESS, output_bytes=len(counted), last={1: 5})
    recover(output, state, lambda text: None)
    assert state.last == {1: 9, 2: 3}
    assert state.output_bytes == output.stat().st_size

    stale = ExportState(BUSINESS, output_bytes=10**6, last={1: 77})  # not this output's state
    recover(output, stale, lambda text: None)
    assert stale.last == {1: 9, 2: 3}


async def test_the_eta_counts_the_history_quota_and_a_stop_leaves_a_resumable_state(
    tmp_path: Path,
) -> None:
    server = MarketTestServer(quotas={"getChatHistory": 10}, latency=0.01)
    server.load(BUSINESS, corpus(seed=4, chats=CHATS))
    output = tmp_path / "messages.jsonl"
    async with serve(server) as running:
        proc = await start(*export_args(running, output, "--progress-every", "0.5"))
        assert proc.stderr is not None
        seen = ""
        async with asyncio.timeout(30):  # the quota is spent at once; the ETA says an hour
            while "ETA ~60 min" not in seen and "ETA ~1 h" not in seen:
                line = await proc.stderr.readline()
                assert line, seen
                seen += line.decode()
        assert re.search(r"\d+ chats read of \d+ listed so far, \d+ messages", seen)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 143
        assert "run the same command again to resume" in err.decode()
    state = ExportState.from_json(state_path(output).read_text())
    assert state.output_bytes == output.stat().st_size
    assert len(state.complete) <= 10
    assert {chat_id for chat_id, _ in pairs_in(output)} <= set(state.last)


async def test_fetch_writes_the_same_lines_whatever_the_strategy(
    cabinet: RunningServer, tmp_path: Path
) -> None:
    server = cabinet.server
    source = tmp_path / "ids.csv"
    rows = [
        f"{c},{m['messageId']}" for c in range(1, CHATS + 1) for m in server.history(BUSINESS, c)
    ]
    rows += ["1,999999", "7,0", "2,1"]  # not a message of chat 1, a bad row, another chat's id
    source.write_text("chat_id,message_id\n" + "\n".join(rows[::-1]) + "\n")
    outputs = {}
    for strategy in ("message", "auto"):
        output = tmp_path / f"{strategy}.jsonl"
        proc = await start(
            "fetch",
            "--base-url",
            cabinet.url,
            "--business-id",
            str(BUSINESS),
            "--input",
            str(source),
            "--output",
            str(output),
            "--strategy",
            strategy,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1, err.decode()  # the bad row and the unknown ids
        lines = sorted(output.read_bytes().splitlines())
        errors = sorted(
            (e.get("chatId", 0), e.get("messageId", 0), e.get("line", 0), e["error"]["type"])
            for e in map(
                json.loads, (tmp_path / f"{strategy}.jsonl.errors.jsonl").read_bytes().splitlines()
            )
        )
        outputs[strategy] = (lines, errors)
    assert outputs["auto"] == outputs["message"]
    assert len(outputs["auto"][0]) == len(rows) - 3
