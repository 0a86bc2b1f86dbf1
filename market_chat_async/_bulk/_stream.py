"""Many messages of one cabinet at once: ``get_messages`` (a list) and ``stream_messages``.

Both sit on the client's public methods, so every request still goes through the cabinet's
limiter; nothing here paces or limits requests. What the pairs cost is the strategy's choice
(:mod:`._planner`): one getChatMessage each (``"message"``), or chat history pages where those
are cheaper (``"auto"``, the default; ``"history"`` for every chat). The results are the same
whatever the strategy: each distinct pair gets the message getChatMessage would give, or the
error it would raise.

The only bound kept here is on *work held in memory*: ``concurrency`` worker tasks take jobs
from the plan, which reads the input lazily (``"message"``: a pair at a time; the planner: a
window of at most 10,000 pairs at a time), and at most ``concurrency`` results wait for the
consumer, however long the input is. A million pairs are never a million tasks.

Per-pair failures are results, never exceptions: each :class:`BulkResult` holds either the
:class:`~market_chat_async.ChatMessage` or the exception for that pair (a
:class:`~market_chat_async.MarketApiError`, or ``TypeError`` / ``ValueError`` for an invalid id,
for which nothing is sent). Only a bad ``business_id``, or an exception raised by the input
iterable itself, ends the whole call; the latter is raised after the pairs already read have
been yielded.

A pair is fetched once however often it appears: the ids of every distinct pair seen are kept,
packed into one ``int`` each: about 80 bytes per distinct pair with the set's own overhead
(measured by ``benchmarks/bench_bulk.py``). That is the one cost that grows with the input; it
is the price of "fetched once".

Cancelling (or closing) a stream cancels the requests in flight and waits for them to finish,
so no task outlives the call and every limiter slot is given back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from typing import cast

from market_chat_async._models import ChatMessage
from market_chat_async._protocol import validate_id

from ._planner import MessageJob, MessagePlan, Planner, run_job
from ._source import Source, pair_key
from ._types import (
    STRATEGIES,
    BulkResult,
    MessageSource,
    PairSource,
    Progress,
    ProgressCallback,
    Strategy,
)

__all__ = ["get_messages", "stream_messages"]


async def get_messages(
    client: MessageSource,
    business_id: int,
    pairs: Iterable[tuple[int, int]],
    *,
    progress: ProgressCallback | None = None,
    concurrency: int | None = None,
    strategy: Strategy = "auto",
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
        client, business_id, items, progress=progress, concurrency=concurrency, strategy=strategy
    ):
        slots[result.index] = result.outcome
    if any(slot is None for slot in slots):
        # Repeats: copy each pair's result from its first occurrence.
        first: dict[int, int] = {}
        for index, pair in enumerate(items):
            key = pair_key(pair)
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
    strategy: Strategy = "auto",
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
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    source = Source(pairs, dedupe=dedupe)
    plan: MessagePlan | Planner = (
        MessagePlan(source)
        if strategy == "message"
        else Planner(client, business_id, source, strategy=strategy)
    )
    results: asyncio.Queue[BulkResult | None] = asyncio.Queue(maxsize=concurrency)
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        while (job := await plan.take()) is not None:
            started = loop.time()
            await run_job(job, client, business_id, results.put, plan.leftovers)
            if isinstance(job, MessageJob):  # one request (and its wait for a slot)
                plan.measured(loop.time() - started, 1)
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
