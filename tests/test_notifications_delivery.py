"""Delivery at least once: retries over minutes of virtual time, stuck handlers, dead letters,
health, overload and slow clients. Real HTTP to the app, the bundled Market server behind the
client; retries and timeouts run on looptime's virtual clock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from market_chat_async import ChatMessage, MarketChatClient, Quota
from market_chat_async.notifications import (
    ChatMessageSent,
    HandlerRetry,
    HandlerTimeoutError,
    MemoryQueue,
    NotificationReceiver,
    QueueError,
    ReceiverOptions,
    create_app,
    serve,
)
from market_chat_async.testing import RunningServer

from .conftest import API_KEY
from .test_notifications import QUICK, Recorder, eventually, message_sent, post, running_app

OTHER_CABINET = 777


class FailingUntil:
    """An ``on_message`` that raises until the loop's clock passes ``until`` (then records)."""

    def __init__(self, until: float) -> None:
        self.until = until
        self.calls: list[int] = []
        self.failures = 0

    async def __call__(self, notification: ChatMessageSent, message: ChatMessage) -> None:
        if asyncio.get_running_loop().time() < self.until:
            self.failures += 1
            raise ConnectionError("the shop's database is down")
        self.calls.append(notification.message_id)


@pytest.mark.looptime
async def test_a_handler_failing_for_five_minutes_then_recovering_handles_every_message(
    client: MarketChatClient, tmp_path: Path
) -> None:
    handler = FailingUntil(asyncio.get_running_loop().time() + 300.0)
    queue = f"sqlite:///{tmp_path / 'queue.db'}"
    async with running_app(client, handler, queue=queue, retry=HandlerRetry()) as (http, receiver):
        for message_id in range(1, 21):
            assert (await post(http, message_sent(message_id=str(message_id))))[0] == 200
        await receiver.join()
        health = await receiver.health()
    assert sorted(handler.calls) == list(range(1, 21))
    assert handler.failures >= 20 * 5  # every message was tried, and failed, several times
    assert (health.backlog, health.dead_letters) == (0, 0)
    assert receiver.stats().handled == 20
    assert receiver.stats().attempt_failures == handler.failures


@pytest.mark.looptime
async def test_a_hung_handler_is_abandoned_at_its_timeout_and_the_rest_keep_flowing(
    client: MarketChatClient,
) -> None:
    hang_once = {1}
    done: list[tuple[int, float]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
        if notification.message_id in hang_once:
            hang_once.discard(notification.message_id)
            await asyncio.Event().wait()  # stuck for good
        done.append((notification.message_id, loop.time() - start))

    async with running_app(
        client, on_message, concurrency=2, handler_timeout=60.0, retry=QUICK
    ) as (http, receiver):
        for message_id in range(1, 11):
            assert (await post(http, message_sent(message_id=str(message_id))))[0] == 200
        await receiver.join()
    finished = dict(done)
    assert sorted(finished) == list(range(1, 11))
    assert all(finished[n] < 60.0 for n in range(2, 11))  # never waited for the stuck one
    assert finished[1] >= 60.0  # retried after its timeout
    assert receiver.stats().abandoned == 1


@pytest.mark.looptime
async def test_a_stuck_plain_handler_thread_is_abandoned_too(client: MarketChatClient) -> None:
    release = threading.Event()
    calls: list[int] = []
    stuck: list[int] = []

    def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
        if notification.message_id == 1 and not stuck:
            stuck.append(1)
            release.wait()  # blocks its thread until the test lets go
            return
        calls.append(notification.message_id)

    try:
        async with running_app(
            client, on_message, concurrency=1, handler_timeout=30.0, retry=QUICK
        ) as (http, receiver):
            for message_id in range(1, 4):
                assert (await post(http, message_sent(message_id=str(message_id))))[0] == 200
            await receiver.join()
    finally:
        release.set()
    assert sorted(calls) == [1, 2, 3]
    assert receiver.stats().abandoned == 1


async def test_a_plain_handler_runs_in_a_thread_and_an_async_one_on_the_loop(
    client: MarketChatClient,
) -> None:
    threads: dict[str, str] = {}

    def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
        threads["on_message"] = threading.current_thread().name

    async def on_notification(notification: Any) -> None:
        threads["on_notification"] = threading.current_thread().name

    async with running_app(client, on_message, on_notification=on_notification) as (http, rc):
        assert (await post(http, message_sent()))[0] == 200
        await rc.join()
    assert threads == {
        "on_message": "notification-handler",
        "on_notification": threading.current_thread().name,
    }


async def _agen(notification: Any, message: Any) -> AsyncIterator[None]:
    yield


def _two_args_then_more(notification: Any, message: Any, extra: Any) -> None: ...


@pytest.mark.parametrize(
    ("handler", "problem"),
    [
        (42, "on_message must be a function"),
        (_agen, "on_message is an async generator"),
        (_two_args_then_more, r"on_message must take 2 positional argument\(s\)"),
        (lambda: None, r"on_message must take 2 positional"),
    ],
)
def test_what_cannot_be_a_handler_is_refused_at_creation(handler: Any, problem: str) -> None:
    with pytest.raises(TypeError, match=problem):
        create_app(MarketChatClient(api_key="k"), handler)


def test_options_come_once_as_an_object_and_keywords_override_them() -> None:
    options = ReceiverOptions(name="shop", concurrency=8, allow_from=None)
    app = create_app(MarketChatClient(api_key="k"), Recorder(), options, version="2")
    receiver = app[next(iter(k for k in app if "receiver" in str(k)))]
    assert isinstance(receiver, NotificationReceiver)
    assert (receiver.name, receiver.version, receiver.options.concurrency) == ("shop", "2", 8)
    with pytest.raises(TypeError, match="unknown receiver option"):
        create_app(MarketChatClient(api_key="k"), Recorder(), colour="red")


@pytest.mark.looptime
async def test_giving_up_makes_a_dead_letter_with_one_structured_line_and_replay_handles_it(
    client: MarketChatClient, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    recorder = Recorder()
    recorder.failures_left[89] = 10**6  # fails for as long as anyone tries
    bounded = HandlerRetry(backoff_initial=60.0, backoff_max=600.0, give_up_after=3600.0)
    queue = f"sqlite:///{tmp_path / 'queue.db'}"
    async with running_app(client, recorder, queue=queue, retry=bounded) as (http, receiver):
        assert (await post(http, message_sent()))[0] == 200
        await receiver.join()
        [dead] = await receiver.queue.dead_letters()
        assert dead.attempts >= 5
        assert dead.last_error.startswith("on_message: RuntimeError")
        assert (await receiver.health()).dead_letters == 1
        recorder.failures_left[89] = 0
        assert await receiver.queue.replay([dead.id], receiver.now()) == 1
        await receiver.join()
    assert recorder.message_ids == [89]
    gave_up = [r for r in caplog.records if r.getMessage().startswith("gave up:")]
    [line] = gave_up
    assert line.levelno == logging.ERROR
    fields = dict(re.findall(r"(\w+)=(\S+)", line.getMessage()))
    assert fields["event"] == "dead_letter"
    assert fields["stage"] == "on_message"
    assert int(fields["attempts"]) == dead.attempts
    assert float(fields["age_s"]) <= 3600.0
    assert getattr(line, "event", None) == "dead_letter"  # the same facts as log record fields


class UnwritableQueue(MemoryQueue):
    """A queue whose disk is full: every put fails."""

    async def put(self, key: str | None, body: bytes, now: float) -> bool:
        raise QueueError("cannot write queue.db: database or disk is full")


async def test_a_notification_that_cannot_be_written_gets_500_so_the_market_retries(
    client: MarketChatClient, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_app(client, Recorder(), queue=UnwritableQueue()) as (http, receiver):
        status, answer = await post(http, message_sent())
        assert status == 500
        assert answer["error"]["type"] == "UNKNOWN"
        assert (await post(http, {"notificationType": "PING"}))[0] == 200
    assert receiver.stats().accepted == 0
    assert any("could not queue" in r.getMessage() for r in caplog.records)


@pytest.mark.looptime
async def test_health_reports_the_backlog_and_turns_503_when_the_oldest_is_too_old(
    client: MarketChatClient,
) -> None:
    handler = FailingUntil(asyncio.get_running_loop().time() + 900.0)
    async with running_app(client, handler, health_max_age=600.0, retry=HandlerRetry()) as (
        http,
        receiver,
    ):
        for message_id in ("1", "2"):
            assert (await post(http, message_sent(message_id=message_id)))[0] == 200
        async with http.get("/health") as resp:
            assert resp.status == 200
            report = await resp.json()
        assert report["backlog"] == 2
        assert report["ok"] is True
        await asyncio.sleep(601.0)
        async with http.get("/health") as resp:
            assert resp.status == 503
            report = await resp.json()
        assert report["backlog"] == 2
        assert report["oldest_pending_age"] > 600.0
        assert report["handler_failures"] >= 2
        assert "oldest pending notification" in report["problem"]
        await receiver.join()
        async with http.get("/health") as resp:
            assert resp.status == 200
            assert (await resp.json())["backlog"] == 0


async def test_after_stop_accepting_notifications_get_503_and_ping_still_200(
    client: MarketChatClient,
) -> None:
    async with running_app(client, Recorder()) as (http, receiver):
        receiver.stop_accepting()
        status, answer = await post(http, message_sent())
        assert status == 503
        assert answer["error"]["type"] == "UNKNOWN"
        assert (await post(http, {"notificationType": "PING"}))[0] == 200
        async with http.get("/health") as resp:
            assert resp.status == 503


async def test_handler_timeout_is_an_error_that_says_what_happens() -> None:
    error = HandlerTimeoutError("on_message", 60.0)
    assert isinstance(error, TimeoutError)
    assert "abandoned; will be retried" in str(error)


# -- slow clients: a real listening socket ------------------------------------------------------


@pytest.fixture
def own_signals() -> Iterator[None]:
    """serve() takes SIGINT/SIGTERM on the loop; make sure they are back to normal after."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


async def _serving(app: Any) -> tuple[asyncio.Task[int], str]:
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(app, host="127.0.0.1", port=0, on_ready=ready.set_result))
    url = await asyncio.wait_for(ready, 30)
    return task, url


async def _stop(task: asyncio.Task[int]) -> int:
    os.kill(os.getpid(), signal.SIGTERM)  # the real signal, to this process's loop
    return await asyncio.wait_for(task, 60)


async def test_ping_answers_within_a_second_while_300_connections_never_send_headers(
    client: MarketChatClient, own_signals: None
) -> None:
    app = create_app(client, Recorder(), allow_from=None, max_connections=100)
    task, url = await _serving(app)
    host, port = url.split("//")[1].split("/")[0].split(":")
    idle = [await asyncio.open_connection(host, int(port)) for _ in range(300)]
    reads: list[asyncio.Future[bytes]] = []
    try:
        for _, writer in idle[::2]:
            writer.write(b"POST /notification HTTP/1.1\r\nHost: x\r\n")  # never finished
            await writer.drain()
        async with aiohttp.ClientSession() as session:
            round_trips = []
            for _ in range(5):
                started = time.perf_counter()
                async with session.post(url, json={"notificationType": "PING"}) as resp:
                    assert resp.status == 200
                    await resp.json()
                round_trips.append(time.perf_counter() - started)
        assert max(round_trips) < 1.0, round_trips  # the Market's budget for a PING
        # The cap made room by closing the oldest idle connections: at least 200 of them.
        reads = [asyncio.ensure_future(reader.read()) for reader, _ in idle]

        async def closed() -> int:
            return sum(r.done() and r.result() == b"" for r in reads)

        await eventually(closed, lambda n: n >= 200)
    finally:
        for read in reads:
            read.cancel()
        for _, writer in idle:
            writer.close()
        assert await _stop(task) == 0


async def test_a_connection_that_is_slow_with_its_headers_is_closed(
    client: MarketChatClient, own_signals: None
) -> None:
    app = create_app(client, Recorder(), allow_from=None, header_timeout=0.2, body_timeout=0.2)
    task, url = await _serving(app)
    host, port = url.split("//")[1].split("/")[0].split(":")
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /notification HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the server
        writer.close()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /notification HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        assert status_line.startswith(b"HTTP/1.1 408")
        writer.close()
    finally:
        assert await _stop(task) == 0


async def test_serve_drains_on_the_first_signal(
    client: MarketChatClient, own_signals: None
) -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    app = create_app(client, recorder, allow_from=None, drain_timeout=60.0)
    task, url = await _serving(app)
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=message_sent()) as resp:
            assert resp.status == 200
        await recorder.entered.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        receiver = next(v for v in app.values() if isinstance(v, NotificationReceiver))
        await eventually(lambda: _state(receiver), lambda s: s == "draining")
        async with session.post(url, json=message_sent(message_id="90")) as resp:
            assert resp.status == 503
        async with session.post(url, json={"notificationType": "PING"}) as resp:
            assert resp.status == 200
    recorder.gate.set()
    assert await asyncio.wait_for(task, 60) == 0
    assert recorder.message_ids == [89]


async def _state(receiver: NotificationReceiver) -> str:
    return receiver.state


@pytest.mark.looptime
async def test_a_fetch_waiting_out_one_cabinets_quota_does_not_hold_up_another_cabinet(
    market: RunningServer,
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    handled: dict[tuple[int, int], float] = {}

    async def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
        handled[notification.business_id, notification.message_id] = loop.time() - start

    async with (
        MarketChatClient(
            api_key=API_KEY, base_url=market.url, quota=Quota(limit=1, period=3600.0)
        ) as client,
        running_app(
            client, on_message, concurrency=2, handler_timeout=60.0, retry=HandlerRetry()
        ) as (http, receiver),
    ):
        for message_id in (1, 2, 3):  # one cabinet: one fetch an hour
            assert (await post(http, message_sent(message_id=str(message_id))))[0] == 200
        other = {**message_sent(message_id="10"), "businessId": OTHER_CABINET}
        assert (await post(http, other))[0] == 200
        await receiver.join()
    assert handled[OTHER_CABINET, 10] < 3600.0  # not behind the first cabinet's hour
    assert sorted(m for b, m in handled if b != OTHER_CABINET) == [1, 2, 3]
    assert max(handled.values()) >= 2 * 3600.0  # the first cabinet's quota was kept
