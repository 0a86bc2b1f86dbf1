"""The resource-quota model: which operations exist, their documented quotas, and the window.

Each operation of the chat family is its own *resource* with its own quota per cabinet. A
:class:`QuotaWindow` counts the requests of one resource of one cabinet over server-clock
seconds (plain floats, no I/O), in one of two windows, since the documentation does not say
which one the Market uses:

* ``fixed``: at most ``limit`` counted requests in each ``[k * period, (k + 1) * period)``;
  the window resets at its end (``until``).
* ``sliding``: at most ``limit`` in every ``(t - period, t]``; a slot frees when the oldest
  counted request leaves, at its arrival time plus ``period`` (``until``; ``now + period``
  while the window is empty).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from typing import Final, Literal

import attrs

WindowKind = Literal["fixed", "sliding"]

OPERATIONS: Final = (
    "getChats",
    "getChat",
    "getChatHistory",
    "getChatMessage",
    "sendMessageToChat",
    "sendFileToChat",
    "createChat",
)

DOCUMENTED_QUOTAS: Final[Mapping[str, int]] = {
    "getChats": 5000,
    "getChat": 1000,
    "getChatHistory": 10_000,
    "getChatMessage": 1000,
    "sendMessageToChat": 1000,
    "sendFileToChat": 1000,
    "createChat": 1000,
}


def period_text(period: float) -> str:
    """How a quota's period reads in a ``420`` message.

    >>> period_text(3600.0), period_text(90.0)
    ('hour', '90 seconds')
    """
    names = {3600.0: "hour", 60.0: "minute", 86_400.0: "day", 1.0: "second"}
    return names.get(period, f"{period:g} seconds")


@attrs.define
class QuotaWindow:
    """Counted requests of one resource of one cabinet, in a fixed or sliding window.

    Times are server-clock seconds; every method first forgets what left the window at ``now``
    (``now`` must not go backwards).

    >>> window = QuotaWindow(limit=2, period=100.0, kind="sliding")
    >>> window.count(0.0), window.count(50.0)
    (1, 1)
    >>> window.remaining(60.0), window.until(60.0)
    (0, 100.0)
    >>> window.remaining(100.0), window.until(100.0)
    (1, 150.0)
    >>> fixed = QuotaWindow(limit=2, period=100.0)
    >>> fixed.count(99.0), fixed.count(99.5), fixed.count(99.6)
    (1, 1, 0)
    >>> fixed.remaining(99.9), fixed.until(99.9), fixed.remaining(100.0), fixed.until(100.0)
    (0, 100.0, 2, 200.0)
    """

    limit: int = attrs.field(validator=attrs.validators.ge(1))
    period: float = attrs.field(converter=float)
    kind: WindowKind = attrs.field(
        default="fixed", validator=attrs.validators.in_(("fixed", "sliding"))
    )
    _index: int = 0  # fixed: the k of [k*period, (k+1)*period) that ``_used`` counts
    _used: int = 0
    _arrivals: collections.deque[float] = attrs.field(factory=collections.deque)  # sliding

    @period.validator
    def _positive(self, _: attrs.Attribute[float], value: float) -> None:
        if not value > 0:
            raise ValueError(f"period must be a positive number of seconds, got {value}")

    def _expire(self, now: float) -> None:
        if self.kind == "fixed":
            index = math.floor(now / self.period)
            if index != self._index:
                self._index, self._used = index, 0
        else:
            arrivals = self._arrivals
            while arrivals and arrivals[0] <= now - self.period:
                arrivals.popleft()

    def used(self, now: float) -> int:
        """Requests counted in the window at ``now``."""
        self._expire(now)
        return self._used if self.kind == "fixed" else len(self._arrivals)

    def remaining(self, now: float) -> int:
        """Requests that may still be counted at ``now``."""
        return max(0, self.limit - self.used(now))

    def count(self, now: float, n: int = 1) -> int:
        """Count up to ``n`` requests at ``now``; returns how many fitted (the rest are refused)."""
        fitted = min(n, self.remaining(now))
        if self.kind == "fixed":
            self._used += fitted
        else:
            self._arrivals.extend([now] * fitted)
        return fitted

    def until(self, now: float) -> float:
        """When the window next frees a slot: ``X-RateLimit-Resource-Until`` on the server clock."""
        self._expire(now)
        if self.kind == "fixed":
            return (self._index + 1) * self.period
        return self._arrivals[0] + self.period if self._arrivals else now + self.period


def resolve_quotas(
    quotas: Mapping[str, int | None] | Literal["documented"] | None, quota: int | None
) -> dict[str, int | None]:
    """Each operation's quota from the server's ``quotas`` and (for getChatMessage) ``quota``.

    >>> resolve_quotas(None, 5)["getChatMessage"], resolve_quotas(None, 5)["getChats"]
    (5, None)
    >>> resolve_quotas("documented", None)["getChatHistory"]
    10000
    >>> resolve_quotas({"getChat": 7}, None)["getChat"]
    7
    """
    if quotas is None:
        chosen: dict[str, int | None] = {}
    elif quotas == "documented":
        chosen = dict(DOCUMENTED_QUOTAS)
    elif isinstance(quotas, Mapping):
        unknown = set(quotas) - set(OPERATIONS)
        if unknown:
            raise ValueError(
                f"quotas names unknown operations {sorted(unknown)}; use {', '.join(OPERATIONS)}"
            )
        if quota is not None and quotas.get("getChatMessage") is not None:
            raise ValueError("give getChatMessage's quota once: quota= or quotas=, not both")
        chosen = dict(quotas)
    else:
        raise ValueError(f"quotas must be a mapping, 'documented' or None, got {quotas!r}")
    if quota is not None:
        chosen["getChatMessage"] = quota
    for name, limit in chosen.items():
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"quota must be at least 1, or None for no quota; {name}: {limit}")
    return {name: chosen.get(name) for name in OPERATIONS}
