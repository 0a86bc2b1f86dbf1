"""Many messages of one cabinet at once: ``get_messages`` (a list) and ``stream_messages``.

Both sit on the client's public :meth:`~market_chat_async.MarketChatClient.get_message`, so every
request still goes through the cabinet's limiter; nothing here paces or limits requests. The
only bound kept here is on *work held in memory*: ``stream_messages`` runs ``concurrency``
worker tasks that pull pairs from the input one at a time, so at most ``concurrency`` pairs are
read ahead of their completion and at most ``2 * concurrency`` results wait for the consumer,
however long the input is. A million pairs are a million loop turns, never a million tasks.

Per-pair failures are results, never exceptions: each :class:`BulkResult` holds either the
:class:`~market_chat_async.ChatMessage` or the exception for that pair (a
:class:`~market_chat_async.MarketApiError`, or ``TypeError`` / ``ValueError`` for an invalid id,
for which nothing is sent). Only a bad ``business_id``, or an exception raised by the input
iterable itself, ends the whole call; the latter is raised after the pairs already in flight
have been yielded.

A pair is fetched once however often it appears: the ids of every distinct pair seen are kept,
packed into one ``int`` each: about 80 bytes per distinct pair with the set's own overhead
(measured by ``benchmarks/bench_bulk.py``). That is the one cost that grows with the input; it
is the price of "fetched once".

Cancelling (or closing) a stream cancels the requests in flight and waits for them to finish,
so no task outlives the call and every limiter slot is given back.
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Sized,
)
from typing import Any, Final, Protocol, cast

import attrs

from ._models import ChatMessage
from ._protocol import validate_id
from ._wire import to_api_dict

__all__ = [
    "BulkResult",
    "PairSource",
    "Progress",
    "MessageSource",
    "ProgressCallback",
    "get_messages",
    "stream_messages",
    "to_api_dict",
]


class MessageSource(Protocol):
    """What bulk fetching needs of a client: one message at a time, and the parallel cap."""

    @property
    def max_parallel(self) -> int:
        """The cabinet's parallel cap: how many requests can usefully be in flight."""

    async def get_message(self, business_id: int, chat_id: int, message_id: int) -> ChatMessage:
        """Fetch one message."""


PairSource = Iterable[tuple[int, int]] | AsyncIterable[tuple[int, int]]
"""The pairs ``(chat_id, message_id)`` to fetch: any iterable, sync or async."""

# Long runs of duplicates never await anything; hand the loop back this often.
_YIELD_EVERY: Final = 1024


@attrs.frozen
class BulkResult:
    """The outcome for one distinct pair: the message, or the error for that pair.

    ``index`` is where the pair first appears in the input (0-based), so results that arrive in
    completion order can be put back in input order. ``chat_id`` and ``message_id`` are the ids
    as given; for a pair refused before sending (``TypeError`` / ``ValueError`` in ``error``)
    they are whatever the input held, and an input item that is not a pair at all appears as
    ``chat_id`` with ``message_id=None``.

    >>> from market_chat_async import NotFoundError
    >>> item = BulkResult(index=0, chat_id=67, message_id=89, error=NotFoundError(404))
    >>> item.ok, item.outcome
    (False, NotFoundError(404, [], 'no error details in the response'))
    """

    index: int
    chat_id: int
    message_id: int
    message: ChatMessage | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        """Whether the message was fetched."""
        return self.error is None

    @property
    def outcome(self) -> ChatMessage | Exception:
        """The message, or the exception for this pair."""
        if self.error is not None:
            return self.error
        assert self.message is not None
        return self.message


@attrs.frozen
class Progress:
    """Where a bulk call stands, passed to the progress callback after each result.

    ``done`` counts distinct pairs finished (fetched or failed), ``failed`` those that failed,
    ``skipped`` the repeats of a pair already seen (not fetched again), and ``total`` the number
    of input pairs when the input has a ``len()`` (``None`` otherwise). When the call ends,
    ``done + skipped == total``.

    >>> p = Progress(done=3, failed=1, skipped=1, total=10)
    >>> f"{p.done + p.skipped}/{p.total}"
    '4/10'
    """

    done: int
    failed: int
    skipped: int
    total: int | None


ProgressCallback = Callable[[Progress], object]
"""Called with a :class:`Progress` after each result, from the task consuming the results."""


async def get_messages(
    client: MessageSource,
    business_id: int,
    pairs: Iterable[tuple[int, int]],
    *,
    progress: ProgressCallback | None = None,
    concurrency: int | None = None,
) -> list[ChatMessage | BaseException]:
    """Fetch every pair; the list is in input order, each item the message or its error.

    A repeated pair is fetched once and its result appears at each of its positions.

    >>> async def main(client: MarketChatClient) -> None:
    ...     results = await get_messages(client, 12345, [(67, 89), (67, 0)])
    ...     # [ChatMessage(...), ValueError('message_id must be between 1 and ...')]
    """
    items = list(pairs)
    slots: list[ChatMessage | BaseException | None] = [None] * len(items)
    async for result in stream_messages(
        client, business_id, items, progress=progress, concurrency=concurrency
    ):
        slots[result.index] = result.outcome
    if any(slot is None for slot in slots):
        # Repeats: copy each pair's result from its first occurrence.
        first: dict[int, int] = {}
        for index, pair in enumerate(items):
            key = _key(pair)
            if key is not None:
                first.setdefault(key, index)
                if slots[index] is None:
                    slots[index] = slots[first[key]]
    assert all(slot is not None for slot in slots)  # nothing is ever dropped
    return cast(list[ChatMessage | BaseException], slots)


async def stream_messages(
    client: MessageSource,
    business_id: int,
    pairs: PairSource,
    *,
    progress: ProgressCallback | None = None,
    concurrency: int | None = None,
    dedupe: bool = True,
) -> AsyncGenerator[BulkResult, None]:
    """Yield a :class:`BulkResult` for each distinct pair, in completion order.

    Remembering which pairs were fetched costs about 80 bytes per distinct pair; when the input
    is known to hold no repeats, ``dedupe=False`` skips that and memory stays flat in its length.

    ``pairs`` is read lazily by ``concurrency`` workers (default: twice the client's
    ``max_parallel``, so a free limiter slot always has a request waiting for it). Close the
    stream if you stop early (``contextlib.aclosing``) so the requests in flight are cancelled
    at once rather than when the generator is collected.

    >>> import contextlib
    >>> async def main(client: MarketChatClient) -> None:
    ...     async with contextlib.aclosing(stream_messages(client, 12345, [(67, 89)])) as stream:
    ...         async for item in stream:
    ...             print(item.chat_id, item.message_id, item.message or item.error)
    """
    business_id = validate_id("business_id", business_id)
    if concurrency is None:
        concurrency = 2 * client.max_parallel
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency must be an int of at least 1, got {concurrency!r}")
    source = _Source(pairs, dedupe=dedupe)
    results: asyncio.Queue[BulkResult | None] = asyncio.Queue(maxsize=concurrency)

    async def worker() -> None:
        while (job := await source.next()) is not None:
            if isinstance(job, BulkResult):
                await results.put(job)
                continue
            index, chat_id, message_id = job
            try:
                message = await client.get_message(business_id, chat_id, message_id)
            except Exception as exc:  # any failure is that pair's result, never the batch's
                await results.put(BulkResult(index, chat_id, message_id, error=exc))
            else:
                await results.put(BulkResult(index, chat_id, message_id, message=message))
        await results.put(None)  # this worker is finished

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    running = len(workers)
    done = failed = 0
    try:
        while running:
            result = await results.get()
            if result is None:
                running -= 1
                continue
            done += 1
            failed += not result.ok
            if progress is not None:
                progress(Progress(done, failed, source.skipped, source.total))
            yield result
    finally:
        for task in workers:
            task.cancel()
        # Wait for the cancelled requests to unwind, so their limiter slots are free on return.
        await asyncio.wait(workers)
    if source.error is not None:
        raise source.error


def _key(pair: Any) -> int | None:
    """One int per valid pair (chat_id and message_id are below 2**63), ``None`` if invalid."""
    try:
        chat_id, message_id = pair
        return validate_id("chat_id", chat_id) << 64 | validate_id("message_id", message_id)
    except (TypeError, ValueError):
        return None


class _Source:
    """The input, shared by the workers: numbers pairs, refuses bad ones, drops repeats."""

    def __init__(self, pairs: PairSource, *, dedupe: bool = True) -> None:
        self.total = len(pairs) if isinstance(pairs, Sized) else None
        self._sync: Iterator[tuple[int, int]] | None = None
        self._async: AsyncIterator[tuple[int, int]] | None = None
        if isinstance(pairs, AsyncIterable):
            self._async = aiter(pairs)
        else:
            self._sync = iter(pairs)
        self._lock = asyncio.Lock()  # an async iterator must not be advanced by two tasks at once
        self._exhausted = False
        self._seen: set[int] | None = set() if dedupe else None
        self._index = -1
        self.skipped = 0
        self.error: Exception | None = None

    async def next(self) -> tuple[int, int, int] | BulkResult | None:
        """The next pair to fetch as ``(index, chat_id, message_id)``, a ready result for an
        invalid pair, or ``None`` when the input is exhausted (or failed: see ``error``)."""
        async with self._lock:
            while (box := await self._read()) is not None:
                self._index += 1
                item = box[0]
                try:
                    chat_id, message_id = item
                except (TypeError, ValueError):
                    error = TypeError(f"each pair must be (chat_id, message_id), got {item!r}")
                    return BulkResult(self._index, item, None, error=error)  # type: ignore[arg-type]
                try:
                    key = validate_id("chat_id", chat_id) << 64 | validate_id(
                        "message_id", message_id
                    )
                except (TypeError, ValueError) as exc:
                    return BulkResult(self._index, chat_id, message_id, error=exc)
                if self._seen is None:
                    return self._index, chat_id, message_id
                if key not in self._seen:
                    self._seen.add(key)
                    return self._index, chat_id, message_id
                self.skipped += 1
                if self.skipped % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            return None

    async def _read(self) -> tuple[Any] | None:
        """The next raw item, boxed; ``None`` once the input is exhausted or has failed."""
        if self._exhausted:
            return None
        try:
            if self._async is not None:
                return (await anext(self._async),)
            assert self._sync is not None
            return (next(self._sync),)
        except (StopIteration, StopAsyncIteration):
            self._exhausted = True
        except Exception as exc:
            self._exhausted = True
            self.error = exc
        return None
