"""Fixtures: the bundled Market test server on a real localhost port, and a client for it."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest

from market_chat_async import (
    BadRequestError,
    ForbiddenError,
    MarketApiError,
    MarketChatClient,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    UnauthorizedError,
)
from market_chat_async._limits import forget_all
from market_chat_async.testing import MarketTestServer, RunningServer, serve

from ._redis_servers import redis_server

API_KEY = "test-api-key"
# Test modules that start asyncio subprocesses (see collect_subprocess_transports).
SUBPROCESS_MODULES = ("test_cli", "test_redis", "test_testing_server", "test_docs")
FAST_RETRY = RetryPolicy(max_retries=3, backoff_initial=0.01, backoff_max=0.05)

# Statuses the service documents and the class each raises: client errors (never retried) ...
CLIENT_ERRORS: list[tuple[int, type[MarketApiError]]] = [
    (400, BadRequestError),
    (401, UnauthorizedError),
    (403, ForbiddenError),
    (404, NotFoundError),
    (405, MarketApiError),
    (415, MarketApiError),
    (423, MarketApiError),
]
# ... and the rest.
ALL_ERRORS = [*CLIENT_ERRORS, (420, RateLimitError), (500, ServerError), (503, ServerError)]


@pytest.fixture(autouse=True)
def fresh_limiters() -> None:
    """Each test's event loop has a clock of its own (looptime): no cabinet state carries over."""
    forget_all()


@pytest.fixture(autouse=True)
async def collect_subprocess_transports(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Collect what a test that ran subprocesses left in reference cycles while its event loop
    still runs: an asyncio subprocess transport collected after its loop closed raises in
    ``__del__``, failing whichever test happens to be running then."""
    yield
    if request.module.__name__.rpartition(".")[2].startswith(SUBPROCESS_MODULES):
        gc.collect()


@pytest.fixture
async def market() -> AsyncIterator[RunningServer]:
    """The bundled Market API model, unlimited quota, on 127.0.0.1."""
    async with serve(MarketTestServer()) as running:
        yield running


@pytest.fixture
async def client(market: RunningServer) -> AsyncIterator[MarketChatClient]:
    """A client pointed at ``market`` with quick retries."""
    async with MarketChatClient(api_key=API_KEY, base_url=market.url, retry=FAST_RETRY) as c:
        yield c


@pytest.fixture(scope="module")
def redis_server_url() -> Iterator[str]:
    """A redis-server of the test module's own, on a free localhost port."""
    with redis_server() as url:
        yield url


@pytest.fixture
async def redis_url(redis_server_url: str) -> str:
    """The module's redis-server, emptied for each test."""
    import redis.asyncio as aioredis  # the redis extra, only where a test asks for Redis

    redis = aioredis.Redis.from_url(redis_server_url)
    await redis.flushdb()
    await redis.aclose()
    return redis_server_url
