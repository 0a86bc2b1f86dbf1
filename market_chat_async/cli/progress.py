"""How ``market-chat`` talks to the user while it works: the console, and a progress meter
whose ETA knows the quota."""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from market_chat_async import MarketChatClient, Quota, QuotaState

__all__ = ["Console", "Meter", "duration", "plural", "quota_wait"]

logger = logging.getLogger("market_chat_async.cli")


class Console:
    """Where a command talks to the user: info lines (unless quiet) and warnings, on stderr.

    >>> import io
    >>> console = Console(quiet=True, err=io.StringIO())
    >>> console.info("hidden"); console.warn("shown"); console.err.getvalue()
    'market-chat: shown\\n'
    """

    def __init__(self, *, quiet: bool = False, err: TextIO | None = None) -> None:
        self.quiet = quiet
        self.err = err or sys.stderr

    def info(self, text: str) -> None:
        """A line worth seeing unless ``-q``."""
        if not self.quiet:
            print(text, file=self.err, flush=True)

    def warn(self, text: str) -> None:
        """A line always shown."""
        print(f"market-chat: {text}", file=self.err, flush=True)


def quota_wait(todo: int, state: QuotaState, quota: Quota) -> float:
    """The least time the quota alone imposes on ``todo`` more requests, in seconds.

    What is free now goes at once; every further ``quota.limit`` requests wait for tokens
    given back a period after use (the first batch sooner if some are already out).

    >>> from market_chat_async import Quota, QuotaState
    >>> q = Quota(limit=1000, period=3600.0)
    >>> fresh = QuotaState(limit=1000, remaining=1000, in_flight=0, max_parallel=4, frees_in=0.0,
    ...                    server_remaining=None)
    >>> quota_wait(5000, fresh, q) / 3600, quota_wait(1000, fresh, q)
    (4.0, 0.0)
    """
    from market_chat_async._bulk._planner import Budget  # the planner's rule, said once

    return Budget(state.remaining, state.frees_in, quota.limit, quota.period).finish(todo)


def duration(seconds: float) -> str:
    """A rough human duration.

    >>> duration(14400), duration(5400), duration(95), duration(3)
    ('4 h', '1 h 30 min', '2 min', '3 s')
    """
    if seconds >= 3600:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{math.ceil(seconds)} s"


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, the noun plural unless the count is one.

    >>> plural(1, "bad row"), plural(2, "bad row")
    ('1 bad row', '2 bad rows')
    """
    return f"{count} {noun}{'' if count == 1 else 's'}"


class Meter:
    """Done/total, failures and an ETA that knows the quota: a tqdm bar on a terminal (with the
    ``progress`` extra), otherwise a plain line on stderr every ``every`` seconds."""

    def __init__(
        self,
        total: int,
        client: MarketChatClient,
        business_id: int,
        *,
        every: float,
        quiet: bool,
        err: TextIO,
        quota_bound: bool = True,
    ) -> None:
        self.total = total
        # Whether the ETA may take getChatMessage's quota for the bound: not when the planner
        # reads most messages from history pages, whose quota is ten times larger.
        self._quota_bound = quota_bound
        self.done = self.failed = 0
        self._client = client
        self._business_id = business_id
        self._every = every
        self._err = err
        self._started = time.monotonic()
        self._eta: float | None = None
        self._bar: Any = None
        self._quiet = quiet
        if not quiet and total and err.isatty():
            try:
                from tqdm import tqdm  # the optional extra
            except ImportError:
                pass
            else:
                self._bar = tqdm(
                    total=total,
                    unit="msg",
                    file=err,
                    dynamic_ncols=True,
                    bar_format="{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
                )

    def advance(self, ok: bool) -> None:
        """One more pair is finished."""
        self.done += 1
        self.failed += not ok
        if self._bar is not None:
            if not ok or self.done == self.total:  # the last one also takes the ETA away
                self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(1)

    def _postfix(self) -> str:
        parts = [f"{self.failed} failed"] if self.failed else []
        if self._eta is not None and self.done < self.total:
            parts.append(f"ETA ~{duration(self._eta)}")
        return ", ".join(parts)

    def line(self) -> str:
        """The plain progress line."""
        postfix = self._postfix()
        return f"market-chat: {self.done}/{self.total} done" + (f", {postfix}" if postfix else "")

    async def run(self) -> None:
        """Refresh the ETA every second and show progress, until cancelled."""
        last_line = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            todo = self.total - self.done
            elapsed = time.monotonic() - self._started
            by_rate = todo * elapsed / self.done if self.done else 0.0
            by_quota = 0.0
            try:
                if self._quota_bound:
                    state = await self._client.quota_state(self._business_id)
                    by_quota = quota_wait(todo, state, self._client.quota)
            except Exception:  # a shared limiter out of reach: no quota in the ETA this time
                logger.debug("no quota state for the ETA", exc_info=True)
            self._eta = max(by_quota, by_rate)
            if self._bar is not None:
                self._bar.set_postfix_str(self._postfix())
            elif not self._quiet and time.monotonic() - last_line >= self._every:
                last_line = time.monotonic()
                print(self.line(), file=self._err, flush=True)

    def close(self) -> None:
        """Put the bar away."""
        if self._bar is not None:
            self._bar.close()
