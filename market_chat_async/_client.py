"""``MarketChatClient``: the single request funnel (limiter -> HTTP -> protocol -> retry)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncGenerator, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp
from yarl import URL

from ._errors import MarketApiError, MarketConnectionError, RateLimitError
from ._limits import Lease, Limiter, Quota, QuotaState, limiter_for
from ._models import ChatMessage
from ._protocol import (
    RetryPolicy,
    decode_message,
    error_from_response,
    message_request,
    parse_rate_limit,
    retry_delay,
    validate_id,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._bulk import BulkResult, PairSource, ProgressCallback

__all__ = ["API_KEY_ENV", "DEFAULT_BASE_URL", "MarketChatClient", "logger"]

DEFAULT_BASE_URL = "https://api.partner.market.yandex.ru"
API_KEY_ENV = "YANDEX_MARKET_API_KEY"
USER_AGENT = f"market-chat-async/{__version__} (+https://pypi.org/project/market-chat-async/)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5

logger = logging.getLogger("market_chat_async")

Response = tuple[int, dict[str, str], bytes]


class _Secret:
    """A credential header that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_header", "_value")

    def __init__(self, header: str, value: str) -> None:
        self._header = header
        self._value = value

    def headers(self) -> dict[str, str]:
        return {self._header: self._value}

    def __repr__(self) -> str:
        return f"<{self._header} ***>"


class MarketChatClient:
    """Asyncio client for the Market chat-message API, with the cabinet's limits built in.

    Give it an Api-Key (or a legacy OAuth token); with neither it reads ``YANDEX_MARKET_API_KEY``.
    Every call for one cabinet, from any coroutine and any client in the process, goes through
    one limiter that keeps the quota (``quota``) and the parallel cap (``max_parallel``).
    Transient failures (5xx, dropped connections, timeouts) are retried per ``retry``; a 420 is
    waited out and retried, and reaches you as :class:`RateLimitError` only when that would take
    longer than ``max_rate_limit_wait`` seconds (``None``: wait as long as it takes).

    Pass ``session`` to reuse your own ``aiohttp.ClientSession`` (the client never closes it);
    otherwise the client owns one and closes it on exit.

    >>> async def main() -> None:
    ...     async with MarketChatClient(api_key="...") as client:
    ...         msg = await client.get_message(12345, chat_id=67, message_id=89)
    ...         print(msg.sender, msg.message)
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        oauth_token: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        quota: Quota | None = None,
        max_parallel: int = 4,
        max_rate_limit_wait: float | None = None,
        redis_url: str | None = None,
        redis_fallback: bool = False,
        seed: int | None = None,
    ) -> None:
        if api_key is not None and oauth_token is not None:
            raise ValueError("give either api_key or oauth_token, not both")
        if api_key is None and oauth_token is None:
            api_key = os.environ.get(API_KEY_ENV) or None
        if api_key is not None:
            self._secret = _Secret("Api-Key", _nonblank("api_key", api_key))
        elif oauth_token is not None:
            token = _nonblank("oauth_token", oauth_token)
            self._secret = _Secret("Authorization", f"Bearer {token}")
        else:
            raise ValueError(
                f"no credentials: pass api_key=... (or the legacy oauth_token=...), "
                f"or set the {API_KEY_ENV} environment variable"
            )
        base = URL(base_url)
        if not base.is_absolute() or base.scheme not in ("http", "https"):
            raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        if not isinstance(max_parallel, int) or max_parallel < 1:
            raise ValueError(f"max_parallel must be an int of at least 1, got {max_parallel!r}")
        if max_rate_limit_wait is not None and max_rate_limit_wait < 0:
            raise ValueError(f"max_rate_limit_wait must be >= 0 or None, got {max_rate_limit_wait}")
        self.base_url = str(base).rstrip("/")
        self._origin = base.origin()
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.quota = quota or Quota()
        self.max_parallel = max_parallel
        self.max_rate_limit_wait = max_rate_limit_wait
        self._session = session
        self._owns_session = session is None
        self._rng = random.Random(seed)
        self._limiter_of: Callable[[int], Limiter] = self._in_process_limiter
        self._shared: Any = None
        if redis_url is not None:
            from ._redis import RedisLimiters  # the optional extra; imported only when asked for

            self._shared = RedisLimiters(
                redis_url,
                quota=self.quota,
                max_parallel=max_parallel,
                fallback=redis_fallback,
                namespace_key=str(self._origin),
                # A lease must outlive the longest exchange (each redirect hop has its own
                # timeout), or a slow request's slot and token would be freed early.
                lease_ttl=max(60.0, timeout * (_MAX_REDIRECTS + 1) + 10.0),
            )
            self._limiter_of = self._shared.limiter

    def __repr__(self) -> str:
        return f"MarketChatClient(base_url={self.base_url!r}, auth={self._secret!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session the client owns (never one that was passed in)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
        if self._shared is not None:
            await self._shared.close()

    # -- the API -------------------------------------------------------------------------

    async def get_message(self, business_id: int, chat_id: int, message_id: int) -> ChatMessage:
        """Fetch one chat message (``GET /v2/businesses/{businessId}/chats/message``).

        Ids are checked first (``TypeError`` / ``ValueError``, nothing sent). Raises a
        :class:`MarketApiError` subclass for anything the service refuses.

        >>> async def main(client: MarketChatClient) -> None:
        ...     msg = await client.get_message(12345, 67, 89)
        ...     print(msg.created_at.isoformat(), [a.name for a in msg.payload])
        """
        path, params = message_request(business_id, chat_id, message_id)
        status, headers, body = await self._call(business_id, path, params)
        return decode_message(status, headers, body)

    async def get_messages(
        self,
        business_id: int,
        pairs: Iterable[tuple[int, int]],
        *,
        progress: ProgressCallback | None = None,
        concurrency: int | None = None,
    ) -> list[ChatMessage | BaseException]:
        """Fetch many messages of one cabinet; results in input order, errors in place.

        Each item is a :class:`ChatMessage`, or the exception for that pair
        (:class:`MarketApiError`, or ``TypeError`` / ``ValueError`` for a bad id). One bad
        pair never fails the batch. See :meth:`stream_messages`.

        >>> async def main(client: MarketChatClient) -> None:
        ...     results = await client.get_messages(12345, [(67, 89), (67, 90)])
        ...     failed = [r for r in results if isinstance(r, Exception)]
        """
        from ._bulk import get_messages

        return await get_messages(
            self, business_id, pairs, progress=progress, concurrency=concurrency
        )

    def stream_messages(
        self,
        business_id: int,
        pairs: PairSource,
        *,
        progress: ProgressCallback | None = None,
        concurrency: int | None = None,
        dedupe: bool = True,
    ) -> AsyncGenerator[BulkResult, None]:
        """Yield a :class:`BulkResult` per distinct pair as each completes, memory bounded.

        ``pairs`` may be a sync or async iterable; it is read lazily, so a million pairs never
        become a million tasks. Duplicated pairs are fetched once (``dedupe=False``: input known
        to have no repeats, memory flat in its length).

        >>> async def main(client: MarketChatClient) -> None:
        ...     async for item in client.stream_messages(12345, [(67, 89), (67, 90)]):
        ...         print(item.chat_id, item.message_id, item.ok)
        """
        from ._bulk import stream_messages

        return stream_messages(
            self, business_id, pairs, progress=progress, concurrency=concurrency, dedupe=dedupe
        )

    async def quota_state(self, business_id: int) -> QuotaState:
        """The cabinet's remaining quota and when more frees, as this process sees it.

        >>> async def main(client: MarketChatClient) -> None:
        ...     state = await client.quota_state(12345)
        ...     print(state.remaining, state.frees_in)
        """
        return await self._limiter_of(validate_id("business_id", business_id)).state()

    # -- the funnel ----------------------------------------------------------------------

    def _in_process_limiter(self, business_id: int) -> Limiter:
        return limiter_for((str(self._origin), business_id), self.quota, self.max_parallel)

    async def _call(self, business_id: int, path: str, params: dict[str, str]) -> Response:
        """Send one logical request through limiter, retries and 420 handling."""
        limiter = self._limiter_of(business_id)
        loop = asyncio.get_running_loop()
        wait = self.max_rate_limit_wait
        deadline = None if wait is None else loop.time() + wait
        failures = refusals = 0
        while True:
            lease = await self._acquire(limiter, business_id, deadline)
            try:
                outcome = await self._exchange(limiter, lease, path, params)
            finally:
                await lease.release()
            if not isinstance(outcome, MarketApiError):
                return outcome
            if isinstance(outcome, RateLimitError):
                if outcome.reason == "quota":
                    # The limiter has been told the window is spent; acquiring waits it out.
                    delay = 0.0
                    logger.info(
                        "quota 420 for cabinet %s; waiting about %.0f s for the window",
                        business_id,
                        outcome.retry_after or 0.0,
                    )
                else:
                    refusals += 1
                    delay = retry_delay(self.retry, outcome, refusals, self._rng) or 0.0
                    logger.debug("parallel 420, cabinet %s; retry in %.2f s", business_id, delay)
                if (
                    deadline is not None
                    and loop.time() + max(delay, outcome.retry_after or 0) > deadline
                ):
                    raise outcome
            else:
                failures += 1
                retry_in = retry_delay(self.retry, outcome, failures, self._rng)
                if retry_in is None:
                    raise outcome
                delay = retry_in
                logger.debug("attempt %d failed (%s); retry in %.2f s", failures, outcome, delay)
            await asyncio.sleep(delay)

    async def _exchange(
        self, limiter: Limiter, lease: Lease, path: str, params: dict[str, str]
    ) -> Response | MarketApiError:
        """Send once and tell the limiter what the server said; errors worth a retry come back
        as values, everything else (2xx and final client errors) as the raw response."""
        outcome = await self._send(path, params)
        if isinstance(outcome, MarketApiError):
            return outcome
        status, headers, body = outcome
        info = parse_rate_limit(headers)
        remaining = info.remaining if info else None
        error = (
            error_from_response(status, headers, body) if status >= 500 or status == 420 else None
        )
        if isinstance(error, RateLimitError) and error.reason == "quota" and remaining is None:
            remaining = 0  # spent, says the status, even without the headers
        await limiter.observe(
            lease,
            remaining,
            info.resets_in if info else None,
            parallel_refused=isinstance(error, RateLimitError) and error.reason == "parallel",
        )
        return error or outcome

    async def _acquire(self, limiter: Limiter, business_id: int, deadline: float | None) -> Lease:
        if deadline is None:
            return await limiter.acquire()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(max(deadline, loop.time())):
                return await limiter.acquire()
        except TimeoutError:
            state = await limiter.state()
            raise RateLimitError(
                None,
                retry_after=state.frees_in,
                reason="quota" if state.in_flight < state.max_parallel else "parallel",
                message=(
                    f"cabinet {business_id}: no request could start within "
                    f"max_rate_limit_wait={self.max_rate_limit_wait} s"
                ),
            ) from None

    async def _send(self, path: str, params: dict[str, str] | None) -> Response | MarketApiError:
        """One HTTP exchange; credentials go only to the base URL's origin."""
        session = self._get_session()
        url = URL(self.base_url + path)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
                if url.origin() == self._origin:
                    headers.update(self._secret.headers())
                # raise_for_status=False even if a passed-in session says otherwise: aiohttp's
                # ClientResponseError would carry the request headers, credentials included.
                async with session.get(
                    url,
                    params=params,
                    headers=headers,
                    allow_redirects=False,
                    timeout=timeout,
                    raise_for_status=False,
                ) as resp:
                    body = await resp.read()
                    location = resp.headers.get("Location")
                    if resp.status in _REDIRECTS and location:
                        url, params = resp.url.join(URL(location)), None
                        logger.debug("redirected to %s", url.with_query(None))
                        continue
                    return resp.status, {k.lower(): v for k, v in resp.headers.items()}, body
        except (aiohttp.ClientError, TimeoutError) as exc:
            what = f"timed out after {self.timeout} s" if isinstance(exc, TimeoutError) else exc
            error = MarketConnectionError(None, message=f"{type(exc).__name__}: {what}")
            error.__cause__ = exc
            return error
        return MarketApiError(None, message=f"more than {_MAX_REDIRECTS} redirects")

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session


def _nonblank(name: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return value.strip()
