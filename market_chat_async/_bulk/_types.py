"""The values bulk fetching hands out and what it needs of a client."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

import attrs

from market_chat_async._models import Chat, ChatMessage

if TYPE_CHECKING:
    from market_chat_async._limits import Quota, QuotaState

__all__ = [
    "STRATEGIES",
    "BulkResult",
    "MessageSource",
    "PairSource",
    "Progress",
    "ProgressCallback",
    "Strategy",
]


class MessageSource(Protocol):
    """What bulk fetching needs of a client: single messages, chat histories and listings,
    each method's quota, and the cabinet's parallel cap."""

    @property
    def max_parallel(self) -> int:
        """The cabinet's parallel cap: how many requests can usefully be in flight."""

    @property
    def quotas(self) -> Mapping[str, Quota]:
        """Each operation's resource quota."""

    async def get_message(self, business_id: int, chat_id: int, message_id: int) -> ChatMessage:
        """Fetch one message (getChatMessage)."""

    def iter_history(
        self,
        business_id: int,
        chat_id: int,
        *,
        message_id_from: int | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[ChatMessage]:
        """A chat's messages oldest first from ``message_id_from`` (inclusive)."""

    def iter_chats(
        self,
        business_id: int,
        *,
        types: Iterable[Any] | None = None,
        statuses: Iterable[Any] | None = None,
        context_types: Iterable[Any] | None = None,
    ) -> AsyncIterator[Chat]:
        """The cabinet's chats that pass the filters."""

    async def quota_state(self, business_id: int, operation: str) -> QuotaState:
        """One operation's remaining quota in the cabinet."""


PairSource = Iterable[tuple[int, int]] | AsyncIterable[tuple[int, int]]
"""The pairs ``(chat_id, message_id)`` to fetch: any iterable, sync or async."""

Strategy = Literal["auto", "message", "history"]
"""How known pairs are fetched: ``"message"`` one getChatMessage each; ``"history"`` every
chat's wanted ids from getChatHistory pages (what the history did not return, one by one);
``"auto"`` each chat the way that ends the whole job soonest under both quotas and the cap."""

STRATEGIES: tuple[Strategy, ...] = ("auto", "message", "history")


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
