"""The input of a bulk call, shared by its workers: numbers pairs, refuses bad ones, drops
repeats, and reads lazily (sync or async)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sized
from typing import Any, Final

from market_chat_async._protocol import validate_id

from ._types import BulkResult, PairSource

__all__ = ["Source", "pair_key"]

# Long runs of duplicates never await anything; hand the loop back this often.
_YIELD_EVERY: Final = 1024


def pair_key(pair: Any) -> int | None:
    """One int per valid pair (chat_id and message_id are below 2**63), ``None`` if invalid.

    >>> pair_key((1, 2)) == 1 << 64 | 2, pair_key((0, 2))
    (True, None)
    """
    try:
        chat_id, message_id = pair
        return validate_id("chat_id", chat_id) << 64 | validate_id("message_id", message_id)
    except (TypeError, ValueError):
        return None


class Source:
    """The pairs to fetch: :meth:`next` gives ``(index, chat_id, message_id)``, a ready
    :class:`BulkResult` for an invalid item, or ``None`` at the end.

    Remembering the distinct pairs seen (``dedupe``) is the one cost that grows with the input.
    """

    def __init__(self, pairs: PairSource, *, dedupe: bool = True) -> None:
        self.total = len(pairs) if isinstance(pairs, Sized) else None
        self._sync: Iterator[tuple[int, int]] | None = None
        self._async: AsyncIterator[tuple[int, int]] | None = None
        if isinstance(pairs, AsyncIterable):
            self._async = aiter(pairs)
        else:
            self._sync = iter(pairs)
        self._lock = asyncio.Lock()  # an async iterator must not be advanced by two tasks at once
        self.exhausted = False
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
        if self.exhausted:
            return None
        try:
            if self._async is not None:
                return (await anext(self._async),)
            assert self._sync is not None
            return (next(self._sync),)
        except (StopIteration, StopAsyncIteration):
            self.exhausted = True
        except Exception as exc:
            self.exhausted = True
            self.error = exc
        return None
