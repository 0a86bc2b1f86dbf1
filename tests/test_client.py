"""The client against the bundled Market server over real localhost sockets."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from market_chat_async import (
    Attachment,
    ForbiddenError,
    MalformedResponseError,
    MarketApiError,
    MarketChatClient,
    MarketConnectionError,
    NotFoundError,
    RetryPolicy,
    Sender,
    ServerError,
    __version__,
)
from market_chat_async.testing import Fault, RunningServer

from .conftest import API_KEY, CLIENT_ERRORS, FAST_RETRY

FIXTURES = Path(__file__).parent / "fixtures"
BUSINESS = 12345


@pytest.fixture
async def capture() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """Another host: records the headers of every request it gets."""
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        body = json.loads((FIXTURES / "message_text.json").read_text())
        return web.json_response(body)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


@pytest.fixture
async def status_server() -> AsyncIterator[tuple[str, list[int]]]:
    """A server that answers each request with the next status from a list, with an error body."""
    plan: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        status = plan.pop(0) if plan else 200
        body = {"status": "ERROR", "errors": [{"code": f"E{status}", "message": "planned"}]}
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", plan
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "fixture", ["message_text.json", "message_payload.json", "message_both.json"]
)
async def test_get_message_maps_every_field_variant(
    market: RunningServer, client: MarketChatClient, fixture: str
) -> None:
    result = json.loads((FIXTURES / fixture).read_text())["result"]
    market.server.add_message(BUSINESS, 7, result)
    msg = await client.get_message(BUSINESS, 7, result["messageId"])
    assert msg.message_id == result["messageId"]
    assert msg.created_at.isoformat().startswith(result["createdAt"][:19])
    assert msg.created_at.tzinfo is not None
    assert msg.sender == Sender(result["sender"])
    assert msg.message == result.get("message")
    assert msg.payload == tuple(Attachment(**a) for a in result.get("payload", []))


async def test_auto_messages_cover_all_variants(client: MarketChatClient) -> None:
    messages = [await client.get_message(BUSINESS, 1, m) for m in range(1, 13)]
    assert {m.message is None for m in messages} == {True, False}
    assert {bool(m.payload) for m in messages} == {True, False}
    assert {m.sender for m in messages} == set(Sender)


async def test_api_key_user_agent_and_no_attachment_requests(
    market: RunningServer, client: MarketChatClient
) -> None:
    await client.get_message(BUSINESS, 1, 2)
    headers = market.server.stats.request_headers[-1]
    assert headers["Api-Key"] == API_KEY
    assert "Authorization" not in headers
    assert f"market-chat-async/{__version__}" in headers["User-Agent"]
    assert market.server.stats.requests == 1  # attachment URLs are never fetched


async def test_oauth_token(market: RunningServer) -> None:
    async with MarketChatClient(oauth_token="test-oauth-token", base_url=market.url) as client:
        await client.get_message(BUSINESS, 1, 2)
    headers = market.server.stats.request_headers[-1]
    assert headers["Authorization"] == "Bearer test-oauth-token"
    assert "Api-Key" not in headers


async def test_key_from_environment(market: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YANDEX_MARKET_API_KEY", API_KEY)
    async with MarketChatClient(base_url=market.url) as client:
        await client.get_message(BUSINESS, 1, 2)
    assert market.server.stats.request_headers[-1]["Api-Key"] == API_KEY


def test_no_credentials_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YANDEX_MARKET_API_KEY", raising=False)
    with pytest.raises(ValueError, match="YANDEX_MARKET_API_KEY"):
        MarketChatClient()
    with pytest.raises(ValueError, match="either"):
        MarketChatClient(api_key="a", oauth_token="b")
    with pytest.raises(ValueError, match="api_key"):
        MarketChatClient(api_key="  ")


@pytest.mark.parametrize(
    "kwargs",
    [{"base_url": "api.example"}, {"timeout": 0}, {"max_parallel": 0}, {"max_rate_limit_wait": -1}],
)
def test_bad_options_fail_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MarketChatClient(api_key="k", **kwargs)  # type: ignore[arg-type]


async def test_wrong_key_is_forbidden_and_not_retried(market: RunningServer) -> None:
    async with MarketChatClient(api_key="wrong", base_url=market.url, retry=FAST_RETRY) as c:
        with pytest.raises(ForbiddenError) as info:
            await c.get_message(BUSINESS, 1, 2)
    assert info.value.status == 403
    assert market.server.stats.requests == 1


async def test_not_found_is_not_retried(market: RunningServer, client: MarketChatClient) -> None:
    market.server.not_found.add((BUSINESS, 1, 404))
    with pytest.raises(NotFoundError) as info:
        await client.get_message(BUSINESS, 1, 404)
    assert info.value.errors
    assert market.server.stats.requests == 1


@pytest.mark.parametrize(("status", "cls"), CLIENT_ERRORS)
async def test_client_errors_raise_their_class_at_once(
    status_server: tuple[str, list[int]], status: int, cls: type[MarketApiError]
) -> None:
    url, plan = status_server
    plan.extend([status, 200])
    async with MarketChatClient(api_key=API_KEY, base_url=url, retry=FAST_RETRY) as client:
        with pytest.raises(cls) as info:
            await client.get_message(BUSINESS, 1, 2)
    assert type(info.value) is cls
    assert info.value.status == status
    assert [e.code for e in info.value.errors] == [f"E{status}"]
    assert plan == [200]  # not retried


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retried_then_raised(
    status_server: tuple[str, list[int]], status: int
) -> None:
    url, plan = status_server
    plan.extend([status] * 10)
    policy = RetryPolicy(max_retries=2, backoff_initial=0.01, backoff_max=0.02)
    async with MarketChatClient(api_key=API_KEY, base_url=url, retry=policy) as client:
        with pytest.raises(ServerError) as info:
            await client.get_message(BUSINESS, 1, 2)
    assert info.value.status == status
    assert len(plan) == 10 - 3  # one try and two retries


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.UNAVAILABLE, Fault.DROP])
async def test_transient_failures_are_retried(
    market: RunningServer, client: MarketChatClient, fault: Fault
) -> None:
    market.server.inject(fault, fault)
    msg = await client.get_message(BUSINESS, 1, 2)
    assert msg.message_id == 2
    assert market.server.stats.requests == 3


async def test_dropped_connections_surface_as_connection_error(
    market: RunningServer, client: MarketChatClient
) -> None:
    market.server.inject(*[Fault.DROP] * 50)
    with pytest.raises(MarketConnectionError) as info:
        await client.get_message(BUSINESS, 1, 2)
    assert info.value.status is None
    assert "ServerDisconnectedError" in str(info.value)
    # Described, never chained: aiohttp's errors can carry the request's headers.
    assert info.value.__cause__ is None
    # One try and three retries (aiohttp itself may retry a dropped reused connection once).
    assert 4 <= market.server.stats.requests <= 8


@pytest.mark.looptime
async def test_timeouts_are_retried_then_surface(market: RunningServer) -> None:
    market.server.inject(*[Fault.slow(60.0)] * 2)
    policy = RetryPolicy(max_retries=1, backoff_initial=0.01)
    async with MarketChatClient(
        api_key=API_KEY, base_url=market.url, timeout=5.0, retry=policy
    ) as client:
        with pytest.raises(MarketConnectionError, match=r"timed out after 5\.0 s") as info:
            await client.get_message(BUSINESS, 1, 2)
    assert info.value.__cause__ is None


@pytest.mark.parametrize("fault", [Fault.MALFORMED, Fault.WRONG_SHAPE])
async def test_malformed_200_raises_library_error(
    market: RunningServer, client: MarketChatClient, fault: Fault
) -> None:
    market.server.inject(fault)
    with pytest.raises(MalformedResponseError) as info:
        await client.get_message(BUSINESS, 1, 2)
    assert info.value.status == 200
    assert market.server.stats.requests == 1  # a broken answer is not retried


@pytest.mark.parametrize(
    ("ids", "exc"),
    [
        ((0, 1, 1), ValueError),
        ((1, -5, 1), ValueError),
        ((1, 1, 2**63), ValueError),
        ((True, 1, 1), TypeError),
        ((1, "1", 1), TypeError),
        ((1, 1, 1.0), TypeError),
        ((1, None, 1), TypeError),
    ],
)
async def test_invalid_ids_fail_before_any_request(
    market: RunningServer, client: MarketChatClient, ids: tuple[object, ...], exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        await client.get_message(*ids)  # type: ignore[arg-type]
    assert market.server.stats.requests == 0


async def test_cross_host_redirect_drops_credentials(
    market: RunningServer, capture: tuple[str, list[dict[str, str]]]
) -> None:
    other, seen = capture
    market.server.inject(Fault.redirect(other + "/elsewhere"))
    async with MarketChatClient(api_key=API_KEY, base_url=market.url) as client:
        await client.get_message(BUSINESS, 1, 1)
    assert len(seen) == 1
    assert "Api-Key" not in seen[0]
    assert "Authorization" not in seen[0]
    assert API_KEY not in json.dumps(seen)


async def test_same_origin_redirect_keeps_credentials(market: RunningServer) -> None:
    market.server.inject(
        Fault.redirect(market.url + "/v2/businesses/12345/chats/message?chatId=1&messageId=3")
    )
    async with MarketChatClient(api_key=API_KEY, base_url=market.url) as client:
        msg = await client.get_message(BUSINESS, 1, 1)
    assert msg.message_id == 3
    assert market.server.stats.request_headers[-1]["Api-Key"] == API_KEY


async def test_secrets_stay_out_of_reprs_logs_and_errors(
    market: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-key-value"
    market.server.api_keys.add(secret)
    caplog.set_level(logging.DEBUG)
    client = MarketChatClient(api_key=secret, base_url=market.url, retry=FAST_RETRY)
    assert secret not in repr(client)
    assert secret not in repr(client.__dict__)
    errors: list[BaseException] = []
    async with client:
        market.server.inject(Fault.SERVER_ERROR, *[Fault.DROP] * 4)
        for _ in range(2):
            try:
                await client.get_message(BUSINESS, 1, 2)
            except MarketApiError as exc:
                errors.append(exc)
        market.server.not_found.add((BUSINESS, 1, 3))
        with pytest.raises(NotFoundError) as info:
            await client.get_message(BUSINESS, 1, 3)
        errors.append(info.value)
    assert errors
    for exc in errors:
        assert secret not in str(exc)
        assert secret not in repr(exc)
        assert secret not in repr(vars(exc))
        assert secret not in str(pickle.dumps(exc))
    assert secret not in caplog.text
    assert any(r.name.startswith("market_chat_async") for r in caplog.records)


async def test_owned_session_is_closed_and_a_passed_one_is_not(market: RunningServer) -> None:
    client = MarketChatClient(api_key=API_KEY, base_url=market.url)
    async with client:
        await client.get_message(BUSINESS, 1, 2)
        owned = client._funnel.transport._session  # type: ignore[attr-defined]
    assert owned is not None
    assert owned.closed
    async with aiohttp.ClientSession(raise_for_status=True) as session:
        async with MarketChatClient(api_key=API_KEY, base_url=market.url, session=session) as c:
            await c.get_message(BUSINESS, 1, 2)
            market.server.not_found.add((BUSINESS, 1, 3))
            with pytest.raises(NotFoundError):  # ours, not aiohttp's (which holds the key)
                await c.get_message(BUSINESS, 1, 3)
        assert not session.closed
        assert "Api-Key" not in session.headers
