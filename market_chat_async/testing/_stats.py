"""What the server saw: :class:`ServerStats`."""

from __future__ import annotations

import collections

import attrs
from multidict import CIMultiDictProxy

from ._quota import OPERATIONS


def _counted_by_operation() -> dict[str, collections.defaultdict[int, list[float]]]:
    return {name: collections.defaultdict(list) for name in OPERATIONS}


@attrs.define
class ServerStats:
    """What a :class:`MarketTestServer` has seen; replace it with a fresh one to reset.

    * ``requests``: every request that reached one of the seven routes, whatever its answer;
      ``requests_by_operation`` the same per operation (``"getChats"``, ... ``"createChat"``).
    * ``by_status``: answers sent, by status (a ``DROP`` is in ``dropped`` instead);
      ``status_by_operation`` the same per operation.
    * ``quota_420`` / ``parallel_420``: the two kinds of ``420``; ``quota_420_by_operation`` /
      ``parallel_420_by_operation`` per operation.
    * ``max_in_flight``: per cabinet, the most requests in flight at once, all operations
      together and ``hold_parallel`` slots included (refused requests are never in flight);
      0 for an unseen cabinet.
    * ``counted``: per cabinet (a ``defaultdict``), the server-clock arrival time of every
      getChatMessage request that spent quota (also recorded without a quota, and including
      :meth:`MarketTestServer.spend_quota`); ``counted_by_operation[operation]`` holds the same
      for every operation (``counted`` is its ``"getChatMessage"`` entry).
    * ``request_headers``: the headers of every request, in arrival order (case-insensitive).

    >>> stats = ServerStats()
    >>> stats.counted[1] = [0.0, 10.0, 20.0, 99.0, 110.0]
    >>> stats.max_in_any_window(1, 100.0)
    4
    >>> stats.counted_by_operation["getChatMessage"] is stats.counted
    True
    """

    requests: int = 0
    by_status: collections.Counter[int] = attrs.field(factory=collections.Counter)
    quota_420: int = 0
    parallel_420: int = 0
    dropped: int = 0
    max_in_flight: collections.defaultdict[int, int] = attrs.field(
        factory=lambda: collections.defaultdict(int)
    )
    counted: collections.defaultdict[int, list[float]] = attrs.field(
        factory=lambda: collections.defaultdict(list)
    )
    request_headers: list[CIMultiDictProxy[str]] = attrs.field(factory=list)
    requests_by_operation: collections.Counter[str] = attrs.field(factory=collections.Counter)
    status_by_operation: collections.defaultdict[str, collections.Counter[int]] = attrs.field(
        factory=lambda: collections.defaultdict(collections.Counter)
    )
    quota_420_by_operation: collections.Counter[str] = attrs.field(factory=collections.Counter)
    parallel_420_by_operation: collections.Counter[str] = attrs.field(factory=collections.Counter)
    counted_by_operation: dict[str, collections.defaultdict[int, list[float]]] = attrs.field(
        factory=_counted_by_operation
    )

    def __attrs_post_init__(self) -> None:
        self.counted_by_operation["getChatMessage"] = self.counted

    def max_in_any_window(
        self, business_id: int, period: float, *, operation: str = "getChatMessage"
    ) -> int:
        """The most counted requests of a cabinet's operation in any window ``(t - period, t]``.

        This is the sliding-window check: a client that keeps it ``<= quota`` is safe whether
        the service's window is fixed or sliding.
        """
        if period <= 0:
            raise ValueError(f"period must be positive, got {period}")
        times = sorted(self.counted_by_operation[operation].get(business_id, ()))
        best = start = 0
        for end, arrival in enumerate(times):
            while times[start] <= arrival - period:
                start += 1
            best = max(best, end - start + 1)
        return best
