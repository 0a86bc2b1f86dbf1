"""``MarketChatClient``: every chat method of the Market API, each a thin call of the funnel."""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import urlsplit

from ._bulk import (
    BulkResult,
    PairSource,
    ProgressCallback,
    Strategy,
    get_messages,
    iter_all_messages,
    stream_messages,
)
from ._env import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL
from ._errors import MalformedResponseError
from ._files import FileInput, read_file_part
from ._funnel import MAX_REDIRECTS, Funnel, InProcessLimits, Limits
from ._limits import Quota, QuotaState
from ._models import Chat, ChatContextType, ChatMessage, ChatStatus, ChatType
from ._options import credentials, merged_quotas
from ._protocol import (
    ENDPOINTS,
    ApiRequest,
    ChatFilters,
    chat_request,
    chats_request,
    check_ok,
    create_chat_request,
    decode,
    decode_chats_page,
    decode_created_chat,
    decode_history_page,
    history_request,
    message_request,
    send_file_request,
    send_message_request,
    validate_id,
)
from ._retry import RetryPolicy
from ._transport import DEFAULT_MAX_BODY_BYTES, AiohttpTransport, HttpResponse, Transport

if TYPE_CHECKING:
    import aiohttp

__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "DEFAULT_BASE_URL", "MarketChatClient"]


T = TypeVar("T")
Page = tuple[list[T], str | None]


class MarketChatClient:
    """Asyncio client for the Market's chat API, with the cabinet's limits built in.

    Give it an Api-Key (or a legacy OAuth token); with neither it reads ``YANDEX_MARKET_API_KEY``.
    Every call for one cabinet, from any coroutine, thread and client in the process, goes
    through one limiter that keeps each method's resource quota (``quotas``, over
    :data:`DEFAULT_QUOTAS`; ``quota`` is getChatMessage's) and the cabinet's parallel cap
    (``max_parallel``). Transient failures (5xx, dropped connections, timeouts) of reads are
    retried per ``retry``; writes are never sent twice. A 420 is waited out and retried, and
    reaches you as :class:`RateLimitError` only when that would take longer than
    ``max_rate_limit_wait`` seconds (``None``: wait as long as it takes).

    HTTP goes through ``transport`` (default :class:`AiohttpTransport` on ``session``, or on a
    session of its own that honours ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``; ``proxy``,
    ``timeout``, ``connect_timeout`` and ``max_response_bytes`` configure it). With
    ``redis_url`` (or ``redis_client``, or ``redis_cluster=True`` for a Redis Cluster URL) the
    limits are shared by every process and host that uses the same Redis.

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
        transport: Transport | None = None,
        timeout: float = 30.0,
        connect_timeout: float | None = 10.0,
        proxy: str | None = None,
        max_response_bytes: int = DEFAULT_MAX_BODY_BYTES,
        retry: RetryPolicy | None = None,
        quota: Quota | None = None,
        quotas: Mapping[str, Quota] | None = None,
        max_parallel: int = 4,
        max_rate_limit_wait: float | None = None,
        redis_url: str | Any = None,
        redis_client: Any = None,
        redis_cluster: bool = False,
        redis_fallback: bool = False,
        seed: int | None = None,
    ) -> None:
        secret = credentials(api_key, oauth_token)
        base = urlsplit(base_url)
        if base.scheme not in ("http", "https") or not base.hostname:
            raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        if connect_timeout is not None and not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive or None, got {connect_timeout}")
        if not isinstance(max_parallel, int) or max_parallel < 1:
            raise ValueError(f"max_parallel must be an int of at least 1, got {max_parallel!r}")
        if max_rate_limit_wait is not None and max_rate_limit_wait < 0:
            raise ValueError(f"max_rate_limit_wait must be >= 0 or None, got {max_rate_limit_wait}")
        if not isinstance(max_response_bytes, int) or max_response_bytes < 1024:
            raise ValueError(f"max_response_bytes must be at least 1024, got {max_response_bytes}")
        if transport is not None and (session is not None or proxy is not None):
            raise ValueError("give session/proxy to the transport, not beside it")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.quotas = merged_quotas(quota, quotas)
        self.quota = self.quotas["getChatMessage"]
        self.max_parallel = max_parallel
        self.max_rate_limit_wait = max_rate_limit_wait
        origin = f"{base.scheme}://{base.netloc.rpartition('@')[2]}"
        limits: Limits
        if redis_url is not None or redis_client is not None:
            from ._limits._redis import RedisLimiters  # the optional extra, only when asked for

            limits = RedisLimiters(
                # A ready redis.asyncio client works in either argument.
                redis_client if redis_client is not None else redis_url,
                quotas=self.quotas,
                max_parallel=max_parallel,
                namespace=origin,
                fallback=redis_fallback,
                cluster=redis_cluster,
                # Each redirect hop has its own timeout.
                exchange_timeout=timeout * (MAX_REDIRECTS + 1),
            )
        else:
            limits = InProcessLimits(origin, self.quotas, max_parallel)
        self._funnel = Funnel(
            secret=secret,
            base_url=self.base_url,
            transport=transport
            or AiohttpTransport(
                session,
                timeout=timeout,
                connect_timeout=connect_timeout,
                proxy=proxy,
                max_body_bytes=max_response_bytes,
            ),
            limits=limits,
            retry=self.retry,
            max_rate_limit_wait=max_rate_limit_wait,
            rng=random.Random(seed),
        )
        self._secret = secret

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
        """Close what the client owns (its session, its Redis connections; never one passed in)."""
        await self._funnel.transport.close()
        await self._funnel.limits.close()

    # -- one chat, one message ------------------------------------------------------------

    async def get_message(self, business_id: int, chat_id: int, message_id: int) -> ChatMessage:
        """Fetch one chat message (getChatMessage).

        Ids are checked first (``TypeError`` / ``ValueError``, nothing sent). Raises a
        :class:`MarketApiError` subclass for anything the service refuses.

        >>> async def main(client: MarketChatClient) -> None:
        ...     msg = await client.get_message(12345, 67, 89)
        ...     print(msg.created_at.isoformat(), [a.name for a in msg.payload])
        """
        # Called here, not through a helper coroutine: every frame on the await chain is
        # re-entered on each I/O step of the request (about 4,000 instructions a call).
        answer = await self._funnel.call(message_request(business_id, chat_id, message_id))
        return decode(answer.status, answer.headers, answer.body, ChatMessage)

    async def get_chat(self, business_id: int, chat_id: int) -> Chat:
        """Fetch one chat (getChat): its type, status, dates and what it is about.

        >>> async def main(client: MarketChatClient) -> None:
        ...     chat = await client.get_chat(12345, 67)
        ...     print(chat.status, chat.context.order_id)
        """
        answer = await self._funnel.call(chat_request(business_id, chat_id))
        return decode(answer.status, answer.headers, answer.body, Chat)

    # -- paged listings ---------------------------------------------------------------------

    def iter_chats(
        self,
        business_id: int,
        *,
        types: Iterable[ChatType | str] | None = None,
        statuses: Iterable[ChatStatus | str] | None = None,
        context_types: Iterable[ChatContextType | str] | None = None,
        contexts: Iterable[tuple[ChatContextType | str, int]] | None = None,
        page_size: int = 20,
    ) -> AsyncIterator[Chat]:
        """Every chat of the cabinet that passes the filters (getChats), one page at a time.

        Each filter is a list of enum members or their string values (``contexts``: pairs
        ``(ORDER | RETURN, id)``), ``None`` for no filter; ``page_size`` 1..20. Everything is
        checked when you call this, before anything is sent.

        >>> async def main(client: MarketChatClient) -> None:
        ...     async for chat in client.iter_chats(12345, statuses=["WAITING_FOR_PARTNER"]):
        ...         print(chat.chat_id, chat.updated_at)
        """
        filters = ChatFilters.of(
            types=types, statuses=statuses, context_types=context_types, contexts=contexts
        )
        chats_request(business_id, filters, page_size=page_size)  # validate now, not on first use

        def page(token: str | None) -> ApiRequest:
            return chats_request(business_id, filters, page_size=page_size, page_token=token)

        def chats(response: HttpResponse) -> Page[Chat]:
            result = decode_chats_page(response.status, response.headers, response.body)
            return result.chats, result.next_page_token

        return self._paginate(page, chats)

    def iter_history(
        self,
        business_id: int,
        chat_id: int,
        *,
        message_id_from: int | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[ChatMessage]:
        """A chat's messages, oldest first (getChatHistory), from ``message_id_from``
        (inclusive) or from the beginning; ``page_size`` 1..100.

        >>> async def main(client: MarketChatClient) -> None:
        ...     async for msg in client.iter_history(12345, 67, message_id_from=89):
        ...         print(msg.message_id, msg.sender, msg.message)
        """
        options: dict[str, Any] = {"message_id_from": message_id_from, "page_size": page_size}
        history_request(business_id, chat_id, **options)  # validate now, not on first use

        def page(token: str | None) -> ApiRequest:
            return history_request(business_id, chat_id, page_token=token, **options)

        def messages(response: HttpResponse) -> Page[ChatMessage]:
            result = decode_history_page(response.status, response.headers, response.body)
            return result.messages, result.next_page_token

        return self._paginate(page, messages)

    async def _paginate(
        self,
        page: Callable[[str | None], ApiRequest],
        items: Callable[[HttpResponse], Page[T]],
    ) -> AsyncGenerator[T, None]:
        """Follow ``nextPageToken`` to the end; a token seen twice, or an empty page that
        names a next one, would loop forever and raises :class:`MalformedResponseError`."""
        seen: set[str] = set()
        token: str | None = None
        while True:
            response = await self._funnel.call(page(token))
            found, token = items(response)
            if token is not None and (not found or token in seen):
                why = "an empty page" if not found else f"page token {token!r} a second time"
                raise MalformedResponseError(
                    response.status, message=f"paging would never end: the service sent {why}"
                )
            for item in found:
                yield item
            if token is None:
                return
            seen.add(token)

    # -- writes: never sent twice -------------------------------------------------------------

    async def send_message(self, business_id: int, chat_id: int, text: str) -> None:
        """Send ``text`` (1 to 4,096 characters) to a chat (sendMessageToChat).

        Sent at most once: after a 5xx, a timeout or a dropped connection the outcome is
        unknown and :class:`OutcomeUnknownError` is raised instead of sending again.

        >>> async def main(client: MarketChatClient) -> None:
        ...     await client.send_message(12345, 67, "Your order ships today.")
        """
        response = await self._funnel.call(send_message_request(business_id, chat_id, text))
        check_ok(response.status, response.headers, response.body)

    async def send_file(
        self, business_id: int, chat_id: int, file: FileInput, *, filename: str | None = None
    ) -> None:
        """Send a file (at most 5 MB) to a chat (sendFileToChat), as multipart field ``file``.

        ``file`` is the bytes, a path, or a binary file object; ``filename`` defaults to the
        path's or the file object's name. Sent at most once, as :meth:`send_message`.

        >>> async def main(client: MarketChatClient) -> None:
        ...     await client.send_file(12345, 67, "invoice.pdf")
        """
        validate_id("business_id", business_id)
        validate_id("chat_id", chat_id)
        part = await read_file_part(file, filename)
        response = await self._funnel.call(send_file_request(business_id, chat_id, part))
        check_ok(response.status, response.headers, response.body)

    async def create_chat(
        self, business_id: int, *, order_id: int | None = None, return_id: int | None = None
    ) -> int:
        """Open a chat about an order or a return (createChat) and return its id; exactly one
        of ``order_id`` and ``return_id``. If the chat exists already, its id comes back.

        >>> async def main(client: MarketChatClient) -> None:
        ...     chat_id = await client.create_chat(12345, order_id=4242)
        """
        request = create_chat_request(business_id, order_id=order_id, return_id=return_id)
        response = await self._funnel.call(request)
        return decode_created_chat(response.status, response.headers, response.body)

    # -- many messages --------------------------------------------------------------------------

    async def get_messages(
        self,
        business_id: int,
        pairs: Iterable[tuple[int, int]],
        *,
        progress: ProgressCallback | None = None,
        concurrency: int | None = None,
        strategy: Strategy = "auto",
    ) -> list[ChatMessage | BaseException]:
        """Fetch many messages of one cabinet; results in input order, errors in place.

        Each item is a :class:`ChatMessage`, or the exception for that pair
        (:class:`MarketApiError`, or ``TypeError`` / ``ValueError`` for a bad id). One bad
        pair never fails the batch. See :meth:`stream_messages`, also for ``strategy``.

        >>> async def main(client: MarketChatClient) -> None:
        ...     results = await client.get_messages(12345, [(67, 89), (67, 90)])
        ...     failed = [r for r in results if isinstance(r, Exception)]
        """
        return await get_messages(
            self, business_id, pairs, progress=progress, concurrency=concurrency, strategy=strategy
        )

    def stream_messages(
        self,
        business_id: int,
        pairs: PairSource,
        *,
        progress: ProgressCallback | None = None,
        concurrency: int | None = None,
        dedupe: bool = True,
        strategy: Strategy = "auto",
    ) -> AsyncGenerator[BulkResult, None]:
        """Yield a :class:`BulkResult` per distinct pair as each completes, memory bounded.

        ``pairs`` may be a sync or async iterable; it is read lazily, so a million pairs never
        become a million tasks. Duplicated pairs are fetched once (``dedupe=False``: input known
        to have no repeats, memory flat in its length).

        ``strategy``: ``"message"`` fetches each pair with getChatMessage; ``"history"`` reads
        each chat's wanted ids from getChatHistory pages; ``"auto"`` (default) picks per chat
        whichever ends the job soonest under both quotas and the cap. Every id the history did
        not return is fetched alone, so the results are the same for all three.

        >>> async def main(client: MarketChatClient) -> None:
        ...     async for item in client.stream_messages(12345, [(67, 89), (67, 90)]):
        ...         print(item.chat_id, item.message_id, item.ok)
        """
        return stream_messages(
            self,
            business_id,
            pairs,
            progress=progress,
            concurrency=concurrency,
            dedupe=dedupe,
            strategy=strategy,
        )

    def iter_all_messages(
        self,
        business_id: int,
        *,
        since: datetime | None = None,
        after: Mapping[int, int] | None = None,
        types: Iterable[ChatType | str] | None = None,
        statuses: Iterable[ChatStatus | str] | None = None,
        context_types: Iterable[ChatContextType | str] | None = None,
    ) -> AsyncIterator[tuple[Chat, ChatMessage]]:
        """Every message of the cabinet's chats that pass the filters, as ``(chat, message)``:
        getChats, then each chat's history, many chats at once; a chat's messages oldest first.

        ``since`` (an aware datetime) skips chats not updated since; ``after`` maps a chat id
        to the last message id you hold of it, and only newer messages of that chat are read.
        Streamed: memory does not grow with the number of messages.

        >>> async def main(client: MarketChatClient) -> None:
        ...     async for chat, message in client.iter_all_messages(12345, after={67: 89}):
        ...         print(chat.chat_id, message.message_id, message.message)
        """
        return iter_all_messages(
            self,
            business_id,
            since=since,
            after=after,
            types=types,
            statuses=statuses,
            context_types=context_types,
        )

    async def quota_state(self, business_id: int, operation: str = "getChatMessage") -> QuotaState:
        """One method's remaining quota in the cabinet and when more frees, as this process
        sees it (``in_flight`` / ``max_parallel`` are the cabinet's, shared by all methods).

        >>> async def main(client: MarketChatClient) -> None:
        ...     state = await client.quota_state(12345, "getChatHistory")
        ...     print(state.remaining, state.frees_in)
        """
        if operation not in ENDPOINTS:
            raise ValueError(f"unknown operation {operation!r}; known: {', '.join(ENDPOINTS)}")
        limiter = self._funnel.limits.limiter(validate_id("business_id", business_id))
        return await limiter.state(operation)
