"""A resource of one cabinet as the scripts see it, and what a cabinet needs of the connection.

The scripts take their keys and constants in a fixed layout (``_redis_scripts``): a resource's
keys and its constant arguments are built and encoded here once, its replies decoded here, so
the cabinet's limiter (``_cabinet``) deals in waits and grants, not in the wire format.
:class:`SharedRedis` is the little a cabinet asks of the connection (``_connection``), so that
the connection can own the cabinets' limiters without the two importing each other.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol, TypeVar

from market_chat_async._errors import LimiterUnavailableError
from market_chat_async._limits._ledger import UNKNOWN_RESET_WAIT
from market_chat_async._limits._local import CabinetLimiter
from market_chat_async._limits._quota import Quota
from market_chat_async._limits._redis_scripts import (
    CABINET_KEYS,
    GRANT_BASE,
    KEYS,
    RESOURCE_KEYS,
    Script,
)

from ._constants import TICKET_STALE, VOID_TTL, WAIT_LONGEST

__all__ = ["SharedRedis"]

T = TypeVar("T")


class SharedRedis(Protocol):
    """What a cabinet's limiter needs of the connection it shares with the other cabinets
    (:class:`~._connection.RedisLimiters`): its settings, and the calls that reach Redis or
    outlive a request."""

    @property
    def quotas(self) -> Mapping[str, Quota]: ...
    @property
    def max_parallel(self) -> int: ...
    @property
    def namespace(self) -> str: ...
    @property
    def fallback(self) -> bool: ...
    @property
    def exchange_timeout(self) -> float: ...
    @property
    def lease_ttl(self) -> float: ...
    @property
    def calls(self) -> collections.Counter[str]: ...

    def new_id(self) -> str: ...
    async def run(self, script: Script, keys: list[Any], args: list[Any]) -> Any: ...
    async def blocked_wait(self, key: str, seconds: float) -> int | None: ...
    def retry_later(self, work: Awaitable[None]) -> None: ...
    def in_background(self, work: Awaitable[T]) -> asyncio.Task[T]: ...
    def leases_granted(self) -> None: ...
    def resting(self) -> bool: ...
    def fall_back(self, business_id: int, exc: LimiterUnavailableError) -> CabinetLimiter: ...
    def local(self, business_id: int) -> CabinetLimiter: ...


def _ms(seconds: float) -> int:
    """Seconds as whole milliseconds, rounded up: a wait or a hold is never cut short."""
    return math.ceil(seconds * 1000)


def _grant_of(reply: int) -> tuple[int, int, int]:
    """ACQUIRE's reply unpacked: granted (1), wait (0) or void (-1); ms; flight.

    >>> _grant_of((250 * 2 + 1) * GRANT_BASE + 0 + 1)
    (0, 250, 1)
    >>> _grant_of(1 * GRANT_BASE + 1 + 1)
    (1, 0, 1)
    """
    rest, granted = divmod(int(reply), GRANT_BASE)
    ms, flight = divmod(rest, 2)
    return granted - 1, ms, flight


class _Resource:
    """What one resource of a cabinet needs: its quota, keys, script arguments, head lock, and
    the releases on their way."""

    __slots__ = (
        "constants",
        "head",
        "hold_ms",
        "keys",
        "pending",
        "queued",
        "quota",
        "state_keys",
        "waiting",
        "wake_key",
    )

    def __init__(self, shared: SharedRedis, base: str, name: str, quota: Quota) -> None:
        self.quota = quota
        keys = {n: f"{base}{n}" for n in CABINET_KEYS}
        keys.update({n: f"{base}{name}:{n}" for n in RESOURCE_KEYS})
        # Of ACQUIRE and RELEASE; encoded once (the client would encode them on every call).
        self.keys = [keys[n].encode() for n in KEYS]
        self.wake_key = keys["wake"]
        self.state_keys = [keys[n] for n in ("leases", "overlap", "tokens", "bound")]
        hold = quota.period + quota.effective_margin
        in_flight_hold = max(shared.lease_ttl, shared.exchange_timeout)
        interval = quota.pace_interval
        self.hold_ms = _ms(hold)
        # The first ARGV of both ACQUIRE and RELEASE.
        constants = [
            quota.limit,
            shared.max_parallel,
            self.hold_ms,
            _ms(shared.lease_ttl),
            _ms(in_flight_hold),
            _ms(hold + in_flight_hold),  # key ttl
            _ms(interval) if quota.burst is not None else 0,
            _ms(interval * (quota.burst - 1)) if quota.burst is not None else 0,
            _ms(TICKET_STALE),
            _ms(WAIT_LONGEST),
            _ms(quota.reset_margin),
            _ms(min(quota.period, UNKNOWN_RESET_WAIT)),
            _ms(VOID_TTL),
        ]
        self.constants = json.dumps(constants).encode()
        self.head = asyncio.Lock()  # FIFO: only its holder asks Redis
        self.waiting = 0  # acquire() calls of this resource under way in this process
        # A ticket queued in Redis for the next head by the last grant: (id, wait ms, flight).
        self.queued: tuple[str, int, int] | None = None
        # Releases (JSON) no script call has taken yet: the next ACQUIRE of this resource
        # carries them, or, failing that, they are sent on the loop's next turn.
        self.pending: list[str] = []

    def take(self) -> str:
        """The pending releases as the scripts take them (a JSON list); none pending after."""
        releases = f"[{','.join(self.pending)}]"
        self.pending = []
        return releases
