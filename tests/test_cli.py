"""``market-chat`` as a user runs it: a subprocess against the bundled server on a real port.

The server runs in the test's event loop, so the command is started with asyncio's subprocess
API and the loop keeps answering while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

from market_chat_async import MarketChatClient, Quota, QuotaState
from market_chat_async.cli.progress import Meter, duration, quota_wait
from market_chat_async.testing import MarketTestServer, RunningServer, serve

API_KEY = "test-api-key"  # the test server's
BUSINESS = 12345


@attrs.frozen
class Run:
    status: int
    out: str
    err: str


def environment(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ, YANDEX_MARKET_API_KEY=API_KEY, COLUMNS="120")
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


async def start(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "market_chat_async.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or environment(),
        cwd=cwd,
    )


async def market_chat(*args: str, env: dict[str, str] | None = None) -> Run:
    proc = await start(*args, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def read_until(stream: asyncio.StreamReader | None, text: str) -> str:
    """Lines of ``stream`` up to the first that contains ``text``."""
    assert stream is not None
    seen = ""
    async with asyncio.timeout(15):
        while text not in seen:
            line = await stream.readline()
            assert line, f"ended before {text!r}: {seen}"
            seen += line.decode()
    return seen


def fetch_args(market: RunningServer, tmp_path: Path, source: Path, *more: str) -> list[str]:
    output = tmp_path / "messages.jsonl"
    return [
        "fetch",
        "--base-url",
        market.url,
        "--business-id",
        str(BUSINESS),
        "--input",
        str(source),
        "--output",
        str(output),
        # These tests are about the files, resume and the getChatMessage path; the planner
        # has tests of its own (test_planner.py, test_cli_export.py).
        "--strategy",
        "message",
        *more,
    ]


def write_csv(path: Path, pairs: list[tuple[int, int]], *, extra: str = "") -> Path:
    path.write_text("chat_id,message_id\n" + "".join(f"{c},{m}\n" for c, m in pairs) + extra)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def pairs_in(path: Path) -> list[tuple[int, int]]:
    return [(line["chatId"], line["messageId"]) for line in read_jsonl(path)]


@pytest.fixture
async def slow_market() -> AsyncIterator[RunningServer]:
    """The test server answering each request after 50 ms."""
    async with serve(MarketTestServer(latency=0.05)) as running:
        yield running


async def test_fetch_writes_each_pair_once_in_the_api_shape(
    market: RunningServer, tmp_path: Path
) -> None:
    pairs = [(c, m) for c in (1, 2, 3) for m in range(1, 11)]
    source = write_csv(tmp_path / "ids.csv", [*pairs, (1, 1), (2, 2)])
    run = await market_chat(*fetch_args(market, tmp_path, source))
    assert run.status == 0, run.err
    lines = read_jsonl(tmp_path / "messages.jsonl")
    assert sorted(pairs_in(tmp_path / "messages.jsonl")) == pairs
    assert {"chatId", "messageId", "createdAt", "sender"} <= set(lines[0])
    assert market.server.stats.requests == len(pairs)
    assert not (tmp_path / "messages.jsonl.errors.jsonl").exists()
    assert "30 pairs to fetch" in run.err

    again = await market_chat(*fetch_args(market, tmp_path, source))
    assert again.status == 0, again.err
    assert market.server.stats.requests == len(pairs)  # nothing fetched twice
    assert sorted(pairs_in(tmp_path / "messages.jsonl")) == pairs
    assert "0 pairs to fetch (32 rows already in" in again.err


@pytest.mark.parametrize("name", ["ids.jsonl", "ids.txt"])
async def test_json_lines_input_by_extension_or_by_content(
    market: RunningServer, tmp_path: Path, name: str
) -> None:
    source = tmp_path / name
    source.write_text('{"chat_id": 1, "message_id": 2}\n\n{"chatId": 3, "messageId": "4"}\n')
    run = await market_chat(*fetch_args(market, tmp_path, source))
    assert run.status == 0, run.err
    assert sorted(pairs_in(tmp_path / "messages.jsonl")) == [(1, 2), (3, 4)]


async def test_bad_rows_are_reported_by_line_and_the_rest_fetched(
    market: RunningServer, tmp_path: Path
) -> None:
    source = tmp_path / "ids.csv"
    source.write_text("chat_id,message_id\n1,1\nx,2\n\n1,0\n1,2\n3\n")
    run = await market_chat(*fetch_args(market, tmp_path, source))
    assert run.status == 1
    assert f"{source}:3: bad row" in run.err
    assert f"{source}:5: bad row" in run.err
    assert f"{source}:7: bad row" in run.err
    assert sorted(pairs_in(tmp_path / "messages.jsonl")) == [(1, 1), (1, 2)]
    errors = read_jsonl(tmp_path / "messages.jsonl.errors.jsonl")
    assert [e["line"] for e in errors] == [3, 5, 7]
    assert errors[0]["input"] == "x,2"
    assert errors[0]["error"]["type"] == "BadRow"


async def test_failures_go_to_the_errors_file(market: RunningServer, tmp_path: Path) -> None:
    market.server.not_found.add((BUSINESS, 1, 2))
    source = write_csv(tmp_path / "ids.csv", [(1, 1), (1, 2), (1, 3)])
    errors = tmp_path / "failed.jsonl"
    run = await market_chat(*fetch_args(market, tmp_path, source, "--errors", str(errors)))
    assert run.status == 1
    assert sorted(pairs_in(tmp_path / "messages.jsonl")) == [(1, 1), (1, 3)]
    [failure] = read_jsonl(errors)
    assert (failure["chatId"], failure["messageId"]) == (1, 2)
    assert failure["error"]["type"] == "NotFoundError"
    assert failure["error"]["status"] == 404
    assert failure["error"]["message"]
    assert "1 pair failed" in run.err

    market.server.not_found.clear()
    retry = await market_chat(*fetch_args(market, tmp_path, source, "--errors", str(errors)))
    assert retry.status == 0, retry.err
    assert sorted(pairs_in(tmp_path / "messages.jsonl")) == [(1, 1), (1, 2), (1, 3)]
    assert not errors.exists()  # the errors file lists what is still missing


async def test_a_killed_fetch_resumes_with_every_pair_exactly_once(
    slow_market: RunningServer, tmp_path: Path
) -> None:
    pairs = [(c, m) for c in range(1, 4) for m in range(1, 51)]
    source = write_csv(tmp_path / "ids.csv", pairs)
    output = tmp_path / "messages.jsonl"
    proc = await start(*fetch_args(slow_market, tmp_path, source))
    async with asyncio.timeout(15):  # until some lines are written
        while True:
            if output.exists() and output.read_bytes().count(b"\n") >= 10:
                break
            await asyncio.sleep(0.02)
    proc.kill()
    await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done_before = len(pairs_in(output))
    assert done_before < len(pairs)
    with output.open("ab") as file:  # as if the machine died in the middle of a write
        file.write(b'{"chatId":1,"messageId":')

    run = await market_chat(*fetch_args(slow_market, tmp_path, source))
    assert run.status == 0, run.err
    assert "cut off an incomplete last line" in run.err
    written = pairs_in(output)
    assert len(written) == len(set(written)) == len(pairs)
    assert set(written) == set(pairs)


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_the_quota_is_announced_and_a_stop_leaves_a_resumable_file(
    market: RunningServer, tmp_path: Path, stop: signal.Signals, status: int
) -> None:
    source = write_csv(tmp_path / "ids.csv", [(1, m) for m in range(1, 26)])
    args = fetch_args(market, tmp_path, source, "--quota", "10/3600", "--progress-every", "0.5")
    proc = await start(*args)
    first = await read_until(proc.stderr, "pairs to fetch")
    assert "25 pairs to fetch; at 10 requests/3600 s this takes at least ~2 h" in first
    progress = await read_until(proc.stderr, "10/25 done")
    assert "ETA ~2 h" in progress or "ETA ~1 h" in progress
    proc.send_signal(stop)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == status
    assert "run the same command again to resume" in err.decode()
    assert len(pairs_in(tmp_path / "messages.jsonl")) == 10


async def test_a_refused_key_stops_at_once_and_is_never_printed(
    market: RunningServer, tmp_path: Path
) -> None:
    secret = "s3cr3t-but-wrong"
    source = write_csv(tmp_path / "ids.csv", [(1, m) for m in range(1, 40)])
    args = fetch_args(market, tmp_path, source, "--api-key", secret, "-vv")
    run = await market_chat(*args)
    assert run.status == 1
    assert "the API refused the key" in run.err
    assert market.server.stats.requests < 10
    assert secret not in run.out + run.err
    assert secret not in (tmp_path / "messages.jsonl.errors.jsonl").read_text()


async def test_missing_key_and_unreadable_input_are_one_line_errors(
    market: RunningServer, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "ids.csv", [(1, 1)])
    run = await market_chat(
        *fetch_args(market, tmp_path, source), env=environment(YANDEX_MARKET_API_KEY=None)
    )
    assert run.status == 2
    assert run.err.strip() == (
        "market-chat: error: no API key: set YANDEX_MARKET_API_KEY or pass --api-key"
    )
    run = await market_chat(*fetch_args(market, tmp_path, tmp_path / "missing.csv"))
    assert run.status == 2
    assert run.err.strip().startswith("market-chat: error: cannot read")
    assert len(run.err.strip().splitlines()) == 1
    assert not (tmp_path / "messages.jsonl").exists()
    (tmp_path / "headless.csv").write_text("1,2\n")
    run = await market_chat(*fetch_args(market, tmp_path, tmp_path / "headless.csv"))
    assert run.status == 2
    assert "header chat_id,message_id" in run.err
    assert market.server.stats.requests == 0


async def test_get_prints_the_message_as_json(market: RunningServer) -> None:
    common = ["--base-url", market.url, "--business-id", str(BUSINESS), "--chat-id", "7"]
    run = await market_chat("get", *common, "--message-id", "8")
    assert run.status == 0, run.err
    message = json.loads(run.out)
    assert (message["chatId"], message["messageId"]) == (7, 8)
    assert {"createdAt", "sender"} <= set(message)

    market.server.not_found.add((BUSINESS, 7, 9))
    run = await market_chat("get", *common, "--message-id", "9")
    assert run.status == 1
    assert run.out == ""
    assert run.err.startswith("market-chat: error: NotFoundError: HTTP 404")

    run = await market_chat("get", *common, "--message-id", "0")
    assert run.status == 2
    assert "--message-id" in run.err


async def test_python_dash_m_runs_the_same_command() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "market_chat_async", "--help", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    for command in ("get", "fetch", "serve", "demo"):
        assert command in out.decode()


async def test_demo_runs_a_bulk_fetch_with_no_account(tmp_path: Path) -> None:
    output = tmp_path / "demo" / "messages.jsonl"
    run = await market_chat(
        "demo", "--output", str(output), env=environment(YANDEX_MARKET_API_KEY=None)
    )
    assert run.status == 0, run.err
    assert str(output) in run.err
    assert len(read_jsonl(output)) == 40
    assert len(read_jsonl(output.with_name("messages.jsonl.errors.jsonl"))) == 2


async def test_serve_prints_each_notified_message(market: RunningServer, tmp_path: Path) -> None:
    # In a directory of its own: the default queue is a file in the working directory.
    proc = await start(
        "serve", "--base-url", market.url, "--port", "0", "--allow-from", "any", cwd=tmp_path
    )
    try:
        banner = await read_until(proc.stderr, "receiving notifications at")
        url = banner.split(" at ")[-1].split()[0]
        notification = {
            "notificationType": "CHAT_MESSAGE_SENT",
            "businessId": BUSINESS,
            "chatId": 67,
            "messageId": "89",
            "sentAt": "2024-05-01T12:00:00+03:00",
        }
        async with aiohttp.ClientSession() as session, session.post(url, json=notification) as r:
            assert r.status == 200
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        record = json.loads(line)
        assert (record["businessId"], record["chatId"], record["messageId"]) == (BUSINESS, 67, 89)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0


# -- the progress meter, in-process ------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_on_a_terminal_the_meter_is_a_bar_with_failures(client: MarketChatClient) -> None:
    screen = Terminal()
    meter = Meter(3, client, BUSINESS, every=10.0, quiet=False, err=screen)
    meter.advance(True)
    meter.advance(False)
    meter.close()
    assert "2/3" in screen.getvalue()
    assert "1 failed" in screen.getvalue()


@pytest.mark.looptime
async def test_a_finished_bar_shows_no_eta(client: MarketChatClient) -> None:
    screen = Terminal()
    meter = Meter(2, client, BUSINESS, every=10.0, quiet=False, err=screen)
    ticker = asyncio.create_task(meter.run())
    meter.advance(True)
    await asyncio.sleep(1.5)  # one refresh of the ETA, on the virtual clock
    assert "ETA ~" in screen.getvalue()
    meter.advance(True)
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    meter.close()
    last = screen.getvalue().rsplit("\r", 1)[-1]
    assert "2/2" in last
    assert "ETA" not in last


async def test_every_field_is_written_as_the_api_sent_it(
    market: RunningServer, tmp_path: Path
) -> None:
    sent = {
        "messageId": 5,
        "createdAt": "2024-05-01T10:00:01.002Z",
        "sender": "CUSTOMER",
        "message": 'Добрый день \u2014 "quoted"',
        "payload": [{"name": "a.pdf", "url": "https://example.invalid/a", "size": 10}],
        "futureField": {"nested": [1, 2.5, None, True]},
    }
    market.server.add_message(BUSINESS, 1, sent)
    source = write_csv(tmp_path / "ids.csv", [(1, 5)])
    run = await market_chat(*fetch_args(market, tmp_path, source))
    assert run.status == 0, run.err
    [line] = read_jsonl(tmp_path / "messages.jsonl")
    assert line == {"chatId": 1, **sent}
    assert '"createdAt":"2024-05-01T10:00:01.002Z"' in (tmp_path / "messages.jsonl").read_text()


def test_the_quota_wait_is_a_lower_bound_in_whole_periods() -> None:
    quota = Quota(limit=1000, period=3600.0)
    fresh = QuotaState(1000, 1000, 0, 4, 0.0, None)
    spent = QuotaState(1000, 0, 0, 4, 600.0, 0)
    assert quota_wait(1000, fresh, quota) == 0.0
    assert quota_wait(5000, fresh, quota) == 4 * 3600
    assert quota_wait(1, spent, quota) == 600.0
    assert quota_wait(2500, spent, quota) == 600.0 + 2 * 3600
    assert duration(4 * 3600) == "4 h"
