"""The planner for known pairs: history pages where they are cheaper, single messages where not.

getChatMessage costs one request of its quota (1,000 an hour by default) per message;
getChatHistory returns up to 100 messages of a chat per request, from a quota of its own
(10,000 an hour). All requests of a cabinet share one cap of 4 in flight. The planner reads the
input in windows of at most ``window`` pairs (so memory stays flat however long it is), groups
each window by chat and routes each chat:

* **history**: pages from the chat's smallest wanted id, ``page_size`` = the id span up to 100
  (a span of ``s`` ids holds at most ``s`` messages, so nothing is fetched twice for a dense
  chat), stopping at the page that reaches its largest wanted id, or after twice the pages the
  plan expected (and one) when the span turns out to hold mostly other messages. A wanted id
  the history did not return — a gap, a message history skips, an id past the budget, or a
  failed history call (a 404 chat, a 5xx after retries) — is then fetched with
  getChatMessage, so every pair ends exactly as ``strategy="message"`` would end it: the same
  message, or the same error.
* **message**: one getChatMessage per wanted id.

Routing is a greedy makespan rule (:func:`route`): chats in order of what history saves them,
each to the resource whose queue then ends first, counting both quotas
(:class:`Budget`, from ``quota_state``) and the cap (requests x latency / cap); on a tie the
route with fewer requests, and then single messages (a lone wanted id costs one request either
way, and a history page that misses it costs a second). So small jobs go where requests are
fewest, and large ones fill both quotas until both drain at about the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final

import attrs

from ._source import Source
from ._types import BulkResult, MessageSource, Strategy

__all__ = [
    "Budget",
    "HistoryJob",
    "MessageJob",
    "MessagePlan",
    "Planner",
    "ReadyJob",
    "history_pages",
    "page_size_for",
    "route",
]

logger = logging.getLogger("market_chat_async.bulk")

MAX_PAGE: Final = 100  # getChatHistory's largest page
WINDOW: Final = 10_000  # pairs grouped at once: memory per window, chats split across windows
_FIRST_LATENCY: Final = 0.1  # seconds per request assumed before any was measured

Put = Callable[[BulkResult], Awaitable[None]]


def page_size_for(smallest: int, largest: int) -> int:
    """The history page that fits ids ``smallest..largest``: their span, at most 100.

    >>> page_size_for(10, 10), page_size_for(10, 14), page_size_for(1, 5000)
    (1, 5, 100)
    """
    return min(MAX_PAGE, largest - smallest + 1)


def history_pages(wanted: int, smallest: int, largest: int) -> int:
    """The pages a chat's ``wanted`` ids are expected to take: as if its messages in the span
    were the wanted ones (the planner cannot know the gaps), at least one.

    >>> history_pages(1, 7, 7), history_pages(250, 1, 250), history_pages(3, 1, 10**6)
    (1, 3, 1)
    """
    return max(1, math.ceil(wanted / page_size_for(smallest, largest)))


@attrs.frozen
class Budget:
    """What one resource can still take: ``remaining`` requests now, then ``limit`` per
    ``period`` seconds, the first more in ``frees_in`` seconds.

    >>> fresh = Budget(remaining=1000, frees_in=0.0, limit=1000, period=3600.0)
    >>> fresh.finish(1000), fresh.finish(1001), fresh.finish(2001)
    (0.0, 3600.0, 7200.0)
    """

    remaining: int
    frees_in: float
    limit: int
    period: float

    def finish(self, todo: int) -> float:
        """The least time the quota alone imposes on ``todo`` more requests, in seconds."""
        beyond = todo - max(self.remaining, 0)
        if beyond <= 0:
            return 0.0
        # With tokens left, when the next one frees is unknown: assume a whole period.
        first = self.frees_in if self.remaining <= 0 else self.period
        return first + (math.ceil(beyond / self.limit) - 1) * self.period


def route(
    chats: Sequence[tuple[int, int]],
    message: Budget,
    history: Budget,
    *,
    latency: float,
    cap: int,
) -> list[bool]:
    """For each chat ``(wanted, pages)``, whether to read it from history (else one by one).

    Greedy: chats that history saves most go first, each where the job then ends soonest.

    >>> fresh = Budget(1000, 0.0, 1000, 3600.0)
    >>> route([(1, 1), (40, 1), (2, 1)], fresh, Budget(10000, 0.0, 10000, 3600.0),
    ...       latency=0.05, cap=4)
    [False, True, True]
    >>> route([(1, 1)] * 3, Budget(0, 900.0, 1000, 3600.0), fresh, latency=0.05, cap=4)
    [True, True, True]
    """
    order = sorted(range(len(chats)), key=lambda i: chats[i][1] - chats[i][0])
    on_message = on_history = 0

    def makespan(m: int, h: int) -> float:
        return max(message.finish(m), history.finish(h), (m + h) * latency / cap)

    chosen = [False] * len(chats)
    for i in order:
        wanted, pages = chats[i]
        by_history = (makespan(on_message, on_history + pages), pages)
        by_message = (makespan(on_message + wanted, on_history), wanted)
        if by_history < by_message:
            chosen[i] = True
            on_history += pages
        else:
            on_message += wanted
    return chosen


@attrs.frozen
class ReadyJob:
    """A result known without a request (an invalid pair)."""

    result: BulkResult


@attrs.frozen
class MessageJob:
    """One getChatMessage; its result goes to every input position in ``indexes``."""

    indexes: tuple[int, ...]
    chat_id: int
    message_id: int


@attrs.define
class HistoryJob:
    """A chat's wanted ids (each with its input positions), read from its history."""

    chat_id: int
    wanted: dict[int, list[int]]

    @property
    def span(self) -> tuple[int, int]:
        """The smallest and largest wanted id."""
        return min(self.wanted), max(self.wanted)


Job = ReadyJob | MessageJob | HistoryJob


async def run_job(
    job: Job,
    client: MessageSource,
    business_id: int,
    put: Put,
    leftovers: Callable[[list[MessageJob]], Awaitable[None]],
) -> None:
    """Do one job, handing each result to ``put``; a history job gives what it did not find
    to ``leftovers``, to be fetched one by one."""
    if isinstance(job, ReadyJob):
        await put(job.result)
    elif isinstance(job, MessageJob):
        try:
            message = await client.get_message(business_id, job.chat_id, job.message_id)
        except Exception as exc:  # any failure is that pair's result, never the batch's
            for index in job.indexes:
                await put(BulkResult(index, job.chat_id, job.message_id, error=exc))
        else:
            for index in job.indexes:
                await put(BulkResult(index, job.chat_id, job.message_id, message=message))
    else:
        await leftovers(await read_history(job, client, business_id, put))


async def read_history(
    job: HistoryJob, client: MessageSource, business_id: int, put: Put
) -> list[MessageJob]:
    """Put every wanted message the chat's history returns; the rest, as message jobs."""
    smallest, largest = job.span
    wanted = job.wanted
    size = page_size_for(smallest, largest)
    # The plan counted on the span being mostly wanted ids; a chat where it is mostly other
    # messages stops after twice the pages expected (and one), the rest one by one.
    most = size * (2 * history_pages(len(wanted), smallest, largest) + 1)
    pages = client.iter_history(business_id, job.chat_id, message_id_from=smallest, page_size=size)
    seen = 0
    try:
        async with contextlib.aclosing(pages):  # type: ignore[type-var]
            async for message in pages:
                seen += 1
                indexes = wanted.pop(message.message_id, None)
                for index in indexes or ():
                    await put(BulkResult(index, job.chat_id, message.message_id, message=message))
                if message.message_id >= largest or not wanted or seen >= most:
                    break  # past the last wanted id, or over budget: no further page
    except Exception:  # each id left is fetched alone, and fails (or not) as it would alone
        logger.debug(
            "history of chat %s failed; fetching its ids one by one", job.chat_id, exc_info=True
        )
    return [MessageJob(tuple(ix), job.chat_id, mid) for mid, ix in sorted(wanted.items())]


class MessagePlan:
    """``strategy="message"``: each pair as it is read, one getChatMessage each."""

    def __init__(self, source: Source) -> None:
        self.source = source

    async def take(self) -> Job | None:
        """The next job, ``None`` when there is none left."""
        item = await self.source.next()
        if item is None:
            return None
        if isinstance(item, BulkResult):
            return ReadyJob(item)
        index, chat_id, message_id = item
        return MessageJob((index,), chat_id, message_id)

    async def leftovers(self, jobs: list[MessageJob]) -> None:  # pragma: no cover - never given
        """Never called: this plan makes no history jobs."""
        raise AssertionError(jobs)

    def measured(self, seconds: float, requests: int) -> None:
        """Nothing to learn."""


class Planner:
    """``"auto"`` and ``"history"``: windows of the input, grouped by chat and routed.

    Workers :meth:`take` jobs; a history job's leftovers come back first in line
    (:meth:`leftovers`); the next window is read when the jobs run out.
    """

    def __init__(
        self,
        client: MessageSource,
        business_id: int,
        source: Source,
        *,
        strategy: Strategy,
        window: int = WINDOW,
    ) -> None:
        self._client = client
        self._business_id = business_id
        self._source = source
        self._strategy = strategy
        self._window = window
        self._jobs: deque[Job] = deque()
        self._reading = 0  # history jobs taken and not yet finished: they may leave leftovers
        self._cond = asyncio.Condition()
        self._latency = _FIRST_LATENCY

    async def take(self) -> Job | None:
        """The next job, ``None`` when the input and every job are done."""
        async with self._cond:
            while True:
                if self._jobs:
                    job = self._jobs.popleft()
                    self._reading += isinstance(job, HistoryJob)
                    return job
                if not self._source.exhausted:
                    self._jobs.extend(await self._next_window())
                    continue
                if not self._reading:
                    self._cond.notify_all()
                    return None
                await self._cond.wait()

    async def leftovers(self, jobs: list[MessageJob]) -> None:
        """A history job finished; ``jobs`` are its ids to fetch one by one, next in line."""
        async with self._cond:
            self._jobs.extendleft(reversed(jobs))
            self._reading -= 1
            self._cond.notify_all()

    def measured(self, seconds: float, requests: int) -> None:
        """A job took ``seconds`` for ``requests``: the latency the cap term assumes."""
        if requests:
            self._latency += 0.2 * (seconds / requests - self._latency)

    async def _next_window(self) -> list[Job]:
        """Read up to ``window`` pairs and plan them."""
        ready: list[Job] = []
        chats: dict[int, dict[int, list[int]]] = {}
        taken = 0
        while taken < self._window and (item := await self._source.next()) is not None:
            if isinstance(item, BulkResult):
                ready.append(ReadyJob(item))
                continue
            index, chat_id, message_id = item
            chats.setdefault(chat_id, {}).setdefault(message_id, []).append(index)
            taken += 1
        history, single = await self._route(chats)
        return [*ready, *_interleave(history, single)]

    async def _route(
        self, chats: dict[int, dict[int, list[int]]]
    ) -> tuple[list[HistoryJob], list[MessageJob]]:
        jobs = [HistoryJob(chat_id, wanted) for chat_id, wanted in chats.items()]
        if self._strategy == "history":
            by_history = [True] * len(jobs)
        else:
            sizes = [(len(j.wanted), history_pages(len(j.wanted), *j.span)) for j in jobs]
            message, history = await self._budgets()
            cap = max(1, self._client.max_parallel)
            by_history = route(sizes, message, history, latency=self._latency, cap=cap)
        history_jobs = [job for job, h in zip(jobs, by_history, strict=True) if h]
        history_jobs.sort(key=lambda j: -len(j.wanted))  # the longest reads start first
        single = [
            MessageJob(tuple(indexes), job.chat_id, message_id)
            for job, h in zip(jobs, by_history, strict=True)
            if not h
            for message_id, indexes in job.wanted.items()
        ]
        return history_jobs, single

    async def _budgets(self) -> tuple[Budget, Budget]:
        budgets = []
        for operation in ("getChatMessage", "getChatHistory"):
            quota = self._client.quotas[operation]
            try:
                state = await self._client.quota_state(self._business_id, operation)
            except Exception:  # a shared limiter out of reach: plan as if the quota were fresh
                logger.debug("no quota state for %s", operation, exc_info=True)
                remaining, frees_in = quota.limit, 0.0
            else:
                remaining, frees_in = state.remaining, state.frees_in
            budgets.append(Budget(remaining, frees_in, quota.limit, quota.period))
        return budgets[0], budgets[1]


def _interleave(history: list[HistoryJob], single: list[MessageJob]) -> Iterable[Job]:
    """Both kinds in proportion to their requests, so both resources start at once."""
    weights = [history_pages(len(j.wanted), *j.span) for j in history]
    total_h, total_m = sum(weights), len(single)
    done_h = done_m = 0
    h = m = 0
    while h < len(history) or m < len(single):
        if m >= len(single) or (h < len(history) and done_h * total_m <= done_m * total_h):
            yield history[h]
            done_h += weights[h]
            h += 1
        else:
            yield single[m]
            done_m += 1
            m += 1
