"""The funnel end to end: pluggable transport, quotas per method with one cap, one limiter per
process whatever the thread or loop, hostile answers, and credentials that never leak."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import pickle
import threading
import traceback
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from market_chat_async import (
    DEFAULT_QUOTAS,
    ForbiddenError,
    HttpRequest,
    HttpResponse,
    MalformedResponseError,
    MarketApiError,
    MarketChatClient,
    MarketConnectionError,
    NotFoundError,
    Quota,
)
from market_chat_async._limits import _local, limiter_for
from market_chat_async._limits._quota import Answer
from market_chat_async.testing import MarketTestServer, RunningServer, serve

from .conftest import API_KEY, FAST_RETRY

BUSINESS = 12345
MESSAGE = {"messageId": 1, "createdAt": "2024-01-01T00:00:00Z", "sender": "CUSTOMER"}


@contextlib.asynccontextmanager
async def app_server(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """A bare aiohttp server on localhost answering every path with ``handler``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# -- the transport seam --------------------------------------------------------------------------


class Recorded:
    """A transport in five lines: answers from a list, records what it was asked."""

    def __init__(self, *answers: HttpResponse) -> None:
        self.answers = list(answers)
        self.sent: list[HttpRequest] = []

    async def send(self, request: HttpRequest) -> HttpResponse:
        self.sent.append(request)
        return self.answers.pop(0)

    async def close(self) -> None:
        pass


async def test_any_transport_can_be_plugged_in() -> None:
    ok = json.dumps({"status": "OK", "result": MESSAGE}).encode()
    transport = Recorded(HttpResponse(503, {}, b""), HttpResponse(200, {}, ok))
    async with MarketChatClient(
        api_key=API_KEY, base_url="https://market.invalid", transport=transport, retry=FAST_RETRY
    ) as client:
        message = await client.get_message(BUSINESS, 2, 1)
    assert message.message_id == 1
    assert [r.method for r in transport.sent] == ["GET", "GET"]  # the 503 was retried
    first = transport.sent[0]
    assert first.url == "https://market.invalid/v2/businesses/12345/chats/message"
    assert dict(first.params) == {"chatId": "2", "messageId": "1"}
    assert first.headers["Api-Key"] == API_KEY
    assert API_KEY not in repr(first)


def test_transport_and_session_are_not_both_given() -> None:
    with pytest.raises(ValueError, match="transport"):
        MarketChatClient(api_key=API_KEY, transport=Recorded(), proxy="http://proxy.invalid")


# -- quotas per method, one cap ------------------------------------------------------------------


def test_quotas_default_to_the_documented_ones_and_can_be_overridden() -> None:
    client = MarketChatClient(api_key=API_KEY)
    assert client.quotas == dict(DEFAULT_QUOTAS)
    assert client.quotas["getChats"].limit == 5000
    assert client.quotas["getChatHistory"].limit == 10000
    custom = MarketChatClient(
        api_key=API_KEY, quota=Quota(limit=7), quotas={"getChats": Quota(limit=3)}
    )
    assert custom.quota == custom.quotas["getChatMessage"] == Quota(limit=7)
    assert custom.quotas["getChats"] == Quota(limit=3)
    with pytest.raises(ValueError, match="unknown operation 'getChatz'"):
        MarketChatClient(api_key=API_KEY, quotas={"getChatz": Quota()})


@pytest.mark.looptime
async def test_each_method_spends_its_own_quota_and_all_share_the_cap() -> None:
    server = MarketTestServer(quotas={"getChat": 2, "getChatMessage": 50}, period=60.0)
    chat = server.add_chat(BUSINESS, messages=[])
    async with (
        serve(server) as running,
        MarketChatClient(
            api_key=API_KEY,
            base_url=running.url,
            quotas={"getChat": Quota(limit=2, period=60.0), "getChatMessage": Quota(50, 60.0)},
        ) as client,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        chats = [asyncio.ensure_future(client.get_chat(BUSINESS, chat)) for _ in range(4)]
        messages = await asyncio.gather(*(client.get_message(BUSINESS, 9, i) for i in range(1, 41)))
        # getChat's spent quota held none of the 40 messages back ...
        assert len(messages) == 40
        assert loop.time() - started < 60
        assert not all(c.done() for c in chats)
        await asyncio.gather(*chats)
        # ... and the two over it waited for the window instead of drawing 420s.
        assert loop.time() - started >= 60
        state = await client.quota_state(BUSINESS, "getChat")
        assert state.limit == 2
    stats = server.stats
    assert sum(stats.quota_420_by_operation.values()) == 0
    assert sum(stats.parallel_420_by_operation.values()) == 0
    assert max(stats.max_in_flight.values()) <= 4


async def test_quota_state_names_a_known_operation() -> None:
    async with MarketChatClient(api_key=API_KEY) as client:
        with pytest.raises(ValueError, match="unknown operation"):
            await client.quota_state(BUSINESS, "getChatz")


# -- one limiter per cabinet for the whole process -----------------------------------------------


@contextlib.contextmanager
def server_in_thread(server: MarketTestServer) -> Iterator[RunningServer]:
    """The test server on an event loop of its own thread, for clients on other loops."""
    loop = asyncio.new_event_loop()
    stop = threading.Event()
    running: list[RunningServer] = []
    started = threading.Event()

    async def main() -> None:
        async with serve(server) as live:
            running.append(live)
            started.set()
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(30), "the test server did not start"
    try:
        yield running[0]
    finally:
        stop.set()
        thread.join(30)
        loop.close()


def test_threads_each_with_their_own_loop_share_one_quota_and_cap() -> None:
    server = MarketTestServer(quota=10, period=1.0, window="sliding", latency=0.01)
    with server_in_thread(server) as running:

        def worker(first: int) -> None:
            async def main() -> None:
                async with MarketChatClient(
                    api_key=API_KEY, base_url=running.url, quota=Quota(limit=10, period=1.0)
                ) as client:
                    await asyncio.gather(
                        *(client.get_message(BUSINESS, 1, first + i) for i in range(1, 6))
                    )

            asyncio.run(main())

        threads = [threading.Thread(target=worker, args=(100 * n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
    # 20 messages, 10 a second between four loops: exactly 20 requests, no 420 of any kind.
    assert server.stats.requests == 20
    assert sum(server.stats.quota_420_by_operation.values()) == 0
    assert sum(server.stats.parallel_420_by_operation.values()) == 0
    assert max(server.stats.max_in_flight.values()) <= 4


def test_the_budget_does_not_restart_with_a_new_loop() -> None:
    server = MarketTestServer(quota=5, period=3600.0)
    with server_in_thread(server) as running:

        async def spend(n: int) -> int:
            async with MarketChatClient(
                api_key=API_KEY, base_url=running.url, quota=Quota(limit=5), max_rate_limit_wait=0
            ) as client:
                for i in range(n):
                    await client.get_message(BUSINESS, 1, i + 1)
                return (await client.quota_state(BUSINESS)).remaining

        assert asyncio.run(spend(5)) == 0
        # A second asyncio.run in the same process: the cabinet's quota is still spent.
        with pytest.raises(MarketApiError, match="max_rate_limit_wait"):
            asyncio.run(spend(1))
    assert server.stats.requests == 5
    assert sum(server.stats.quota_420_by_operation.values()) == 0


@pytest.mark.looptime
async def test_cabinets_that_hold_nothing_are_let_go() -> None:
    quotas = {"getChatMessage": Quota(limit=10, period=60.0)}
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for business in range(1, 10_001):
        limiter = limiter_for(("https://api", business), quotas, 4)
        lease = await limiter.acquire("getChatMessage")
        await lease.release(Answer(None, None))
    del limiter, lease
    await asyncio.sleep(61)  # every token is back
    limiter_for(("https://api", 0), quotas, 4)  # any use of the registry lets the rest go
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(_local._registry) <= 1
    assert len(_local._held) <= 1
    assert after - before < 1_000_000  # 28 MB when they were kept


@pytest.mark.looptime
async def test_a_client_that_stays_on_one_cabinet_still_lets_the_others_go() -> None:
    quota = Quota(limit=10, period=60.0)
    async with (
        serve(MarketTestServer(quota=10, period=60.0)) as running,
        MarketChatClient(api_key=API_KEY, base_url=running.url, quota=quota) as client,
    ):
        for business in range(1, 21):
            await client.get_message(business, 1, 1)
        await asyncio.sleep(61)  # every token is back
        await client.get_message(20, 1, 2)  # the cabinet of the call before
        assert {business for _, business in _local._held} == {20}


@pytest.mark.looptime
async def test_a_cabinet_with_tokens_out_is_kept() -> None:
    quotas = {"getChatMessage": Quota(limit=1, period=60.0)}
    limiter = limiter_for(("https://api", 1), quotas, 4)
    lease = await limiter.acquire("getChatMessage")
    await lease.release(Answer(None, None))
    del limiter, lease
    gc.collect()
    await asyncio.sleep(30)
    again = limiter_for(("https://api", 1), quotas, 4)
    assert (await again.state("getChatMessage")).remaining == 0  # the token is still out


# -- hostile answers -----------------------------------------------------------------------------


async def test_a_body_over_the_cap_is_refused_without_reading_it_all() -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b" " * (1 << 20)
        with contextlib.suppress(ConnectionError):
            for _ in range(200):  # 200 MB, if anyone read it
                await response.write(chunk)
        return response

    async with app_server(huge) as url:
        async with MarketChatClient(
            api_key=API_KEY, base_url=url, max_response_bytes=2 << 20
        ) as client:
            tracemalloc.start()
            with pytest.raises(MalformedResponseError, match="cap") as info:
                await client.get_message(BUSINESS, 1, 2)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    assert info.value.status == 200
    assert peak < 16 << 20


def _gzip_bomb(inflated_gib: int = 2) -> bytes:
    """About 2 MB of gzip that inflates to ``inflated_gib`` GiB of zeros."""
    pack = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * (1 << 20)
    head = pack.compress(zeros) + pack.flush(zlib.Z_FULL_FLUSH)
    block = pack.compress(zeros) + pack.flush(zlib.Z_FULL_FLUSH)  # the same bytes every time
    return head + block * (1024 * inflated_gib - 1)


async def test_a_gzip_bomb_is_not_inflated() -> None:
    bomb = _gzip_bomb()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    async with (
        app_server(handler) as url,
        MarketChatClient(api_key=API_KEY, base_url=url, max_response_bytes=4 << 20) as client,
    ):
        tracemalloc.start()
        with pytest.raises(MalformedResponseError, match="cap"):
            await client.get_message(BUSINESS, 1, 2)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 32 << 20  # 2 GiB if it had been inflated


async def test_a_gzipped_answer_is_read() -> None:
    body = json.dumps({"status": "OK", "result": MESSAGE}).encode()

    async def handler(request: web.Request) -> web.Response:
        assert "gzip" in request.headers["Accept-Encoding"]
        return web.Response(
            body=zlib.compress(body, wbits=31),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async with (
        app_server(handler) as url,
        MarketChatClient(api_key=API_KEY, base_url=url) as client,
    ):
        assert (await client.get_message(BUSINESS, 1, 1)).message_id == 1


@pytest.mark.parametrize("status", [200, 404])
async def test_deeply_nested_json_is_a_malformed_response(status: int) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 100_000 + b"]" * 100_000, status=status)

    async with (
        app_server(handler) as url,
        MarketChatClient(api_key=API_KEY, base_url=url) as client,
    ):
        expected = MalformedResponseError if status == 200 else NotFoundError
        with pytest.raises(expected):
            await client.get_message(BUSINESS, 1, 1)


# -- the key never leaks -------------------------------------------------------------------------


def _everything_said(error: BaseException) -> str:
    return "\n".join(
        [
            repr(error),
            str(error),
            "".join(traceback.format_exception(error)),
            repr(getattr(error, "__dict__", {})),
            repr(pickle.loads(pickle.dumps(error)).__dict__),
        ]
    )


async def test_a_key_the_server_echoes_back_is_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    async def echo(request: web.Request) -> web.Response:
        key = request.headers.get("Api-Key", "")
        body = {"status": "ERROR", "errors": [{"code": "FORBIDDEN", "message": f"bad key {key}"}]}
        return web.json_response(body, status=403, headers={"X-Echo": key})

    caplog.set_level(logging.DEBUG, logger="market_chat_async")
    async with (
        app_server(echo) as url,
        MarketChatClient(api_key=API_KEY, base_url=url) as client,
    ):
        with pytest.raises(ForbiddenError) as info:
            await client.get_message(BUSINESS, 1, 1)
    said = _everything_said(info.value)
    assert API_KEY not in said
    assert "bad key ***" in said
    assert API_KEY not in caplog.text


@pytest.mark.looptime
@pytest.mark.parametrize("how", ["refused", "dropped", "timeout"])
async def test_network_errors_carry_no_key_anywhere(how: str, market: RunningServer) -> None:
    from market_chat_async.testing import Fault

    url = market.url
    if how == "refused":
        url = "http://127.0.0.1:9"  # discard port: nothing listens
    elif how == "dropped":
        market.server.inject(*[Fault.DROP] * 20)
    else:
        market.server.inject(*[Fault.slow(60)] * 20)
    async with MarketChatClient(
        api_key=API_KEY, base_url=url, retry=FAST_RETRY, timeout=0.5
    ) as client:
        with pytest.raises(MarketConnectionError) as info:
            await client.get_message(BUSINESS, 1, 1)
    assert info.value.sent is (how != "refused")
    assert API_KEY not in _everything_said(info.value)


async def test_debug_log_has_one_line_per_exchange_and_no_key(
    market: RunningServer, client: MarketChatClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="market_chat_async")
    await client.get_message(BUSINESS, 1, 2)
    lines = [r.getMessage() for r in caplog.records if "->" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("GET /v2/businesses/12345/chats/message -> 200 in ")
    assert API_KEY not in caplog.text


# -- proxies and timeouts ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def forward_proxy(seen: list[str]) -> Any:
    """An HTTP proxy on localhost that answers every request itself, noting its target."""

    async def handler(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        return web.json_response({"status": "OK", "result": MESSAGE})

    async with app_server(handler) as url:
        yield url


async def test_the_environments_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    async with forward_proxy(seen) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with MarketChatClient(api_key=API_KEY, base_url="http://api.market.invalid") as c:
            assert (await c.get_message(BUSINESS, 1, 1)).message_id == 1
    assert seen == [
        "http://api.market.invalid/v2/businesses/12345/chats/message?chatId=1&messageId=1"
    ]


async def test_no_proxy_goes_direct(market: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    async with forward_proxy(seen) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with MarketChatClient(api_key=API_KEY, base_url=market.url) as client:
            await client.get_message(BUSINESS, 1, 2)
    assert seen == []
    assert market.server.stats.requests == 1


async def test_an_explicit_proxy_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    async with forward_proxy(seen) as proxy:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
        async with MarketChatClient(
            api_key=API_KEY, base_url="http://api.market.invalid", proxy=proxy
        ) as client:
            await client.get_message(BUSINESS, 1, 1)
    assert len(seen) == 1


def test_connect_and_total_timeouts_are_separate() -> None:
    client = MarketChatClient(api_key=API_KEY, timeout=20.0, connect_timeout=2.5)
    timeout = client._funnel.transport._timeout  # type: ignore[attr-defined]
    assert (timeout.total, timeout.connect) == (20.0, 2.5)
    with pytest.raises(ValueError, match="connect_timeout"):
        MarketChatClient(api_key=API_KEY, connect_timeout=0)
