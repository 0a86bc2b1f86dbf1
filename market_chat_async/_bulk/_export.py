"""A whole cabinet's messages: every chat (getChats) and its history (getChatHistory).

:func:`export_messages` is the engine: one task lists the chats, a page at a time, into a short
queue; ``concurrency`` workers (twice the cap, so a free slot always has a request waiting)
each read one chat's history at a time, in pages of 100 from where the caller's copy ends, and
hand each message over as it comes, then a ``(chat, None)`` marker once the chat is read to
its end. So many chats are read at once, the cap and the history quota are both kept busy, and
memory holds a page per worker and a few chats, never the cabinet: flat in the number of
messages. Messages of one chat come oldest first; chats interleave.

A failing listing or history call ends the export with that error (after cancelling what is
in flight), as any single call would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from typing import Final

from market_chat_async._models import Chat, ChatContextType, ChatMessage, ChatStatus, ChatType
from market_chat_async._protocol import validate_id

from ._planner import MAX_PAGE
from ._types import MessageSource

__all__ = ["check_after", "check_since", "export_messages", "iter_all_messages"]

_DONE: Final = object()


def check_since(since: datetime | None) -> datetime | None:
    """``since`` as given, if it is ``None`` or an aware datetime; else ``TypeError`` /
    ``ValueError``.

    >>> check_since(datetime(2026, 1, 1))
    Traceback (most recent call last):
    ...
    ValueError: since must be an aware datetime (with tzinfo), got 2026-01-01 00:00:00
    """
    if since is None:
        return None
    if not isinstance(since, datetime):
        raise TypeError(f"since must be a datetime, not {type(since).__name__}")
    if since.tzinfo is None or since.utcoffset() is None:
        raise ValueError(f"since must be an aware datetime (with tzinfo), got {since}")
    return since


def check_after(after: Mapping[int, int] | None) -> dict[int, int]:
    """``after`` as a plain dict of valid ids (``TypeError`` / ``ValueError`` otherwise).

    >>> check_after({67: 89})
    {67: 89}
    """
    if after is None:
        return {}
    if not isinstance(after, Mapping):
        raise TypeError(f"after must map chat ids to message ids, not {type(after).__name__}")
    return {
        validate_id("chat_id", chat_id): validate_id("message_id", message_id)
        for chat_id, message_id in after.items()
    }


async def export_messages(
    client: MessageSource,
    business_id: int,
    chats: AsyncIterator[Chat],
    *,
    after: Mapping[int, int],
    wanted: Callable[[Chat], bool] = lambda chat: True,
    concurrency: int | None = None,
) -> AsyncGenerator[tuple[Chat, ChatMessage | None], None]:
    """Every message of the ``wanted`` chats of ``chats`` newer than ``after[chat_id]``, as
    ``(chat, message)``, and ``(chat, None)`` when a chat has been read to its end."""
    if concurrency is None:
        concurrency = 2 * client.max_parallel
    queue: asyncio.Queue[Chat | None] = asyncio.Queue(maxsize=concurrency)
    out: asyncio.Queue[tuple[Chat, ChatMessage | None] | BaseException | object] = asyncio.Queue(
        maxsize=concurrency
    )

    # No `finally` puts below: a cancelled task must not wait for room in a queue nobody
    # reads any more.
    async def lister() -> None:
        try:
            async for chat in chats:
                if wanted(chat):
                    await queue.put(chat)
        except Exception as exc:
            await out.put(exc)  # the consumer raises it and cancels the readers
            return
        for _ in range(concurrency):
            await queue.put(None)

    async def reader() -> None:
        try:
            while (chat := await queue.get()) is not None:
                held = after.get(chat.chat_id)
                pages = client.iter_history(
                    business_id,
                    chat.chat_id,
                    # message_id_from is inclusive: start after the last one held.
                    message_id_from=None if held is None else held + 1,
                    page_size=MAX_PAGE,
                )
                async with contextlib.aclosing(pages):  # type: ignore[type-var]
                    async for message in pages:
                        await out.put((chat, message))
                await out.put((chat, None))
        except Exception as exc:
            await out.put(exc)
            return
        await out.put(_DONE)

    tasks = [asyncio.create_task(lister())]
    tasks += [asyncio.create_task(reader()) for _ in range(concurrency)]
    running = concurrency
    try:
        while running:
            item = await out.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


def iter_all_messages(
    client: MessageSource,
    business_id: int,
    *,
    since: datetime | None = None,
    after: Mapping[int, int] | None = None,
    types: Iterable[ChatType | str] | None = None,
    statuses: Iterable[ChatStatus | str] | None = None,
    context_types: Iterable[ChatContextType | str] | None = None,
) -> AsyncGenerator[tuple[Chat, ChatMessage], None]:
    """Every message of every chat that passes the filters, as ``(chat, message)``; every
    argument is checked now, before anything is sent.

    See :meth:`MarketChatClient.iter_all_messages
    <market_chat_async.MarketChatClient.iter_all_messages>`.

    >>> async def main(client: MarketChatClient) -> None:
    ...     async for chat, message in iter_all_messages(client, 12345):
    ...         print(chat.chat_id, message.message_id)
    """
    business_id = validate_id("business_id", business_id)
    since = check_since(since)
    held = check_after(after)
    chats = client.iter_chats(
        business_id, types=types, statuses=statuses, context_types=context_types
    )

    def wanted(chat: Chat) -> bool:
        return since is None or chat.updated_at >= since

    return _messages_only(export_messages(client, business_id, chats, after=held, wanted=wanted))


async def _messages_only(
    stream: AsyncGenerator[tuple[Chat, ChatMessage | None], None],
) -> AsyncGenerator[tuple[Chat, ChatMessage], None]:
    async with contextlib.aclosing(stream):
        async for chat, message in stream:
            if message is not None:
                yield chat, message
