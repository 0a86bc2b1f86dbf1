"""A bundled fake of the Market chat-message API, for tests: the library's and yours.

:class:`MarketTestServer` is an in-memory, aiohttp.web model of
``GET /v2/businesses/{businessId}/chats/message`` as the official documentation describes it:
credentials, parameter validation, the per-cabinet resource quota and parallel-request cap with
their ``420`` answers and ``X-RateLimit-Resource-*`` headers, ``404`` for unknown messages and
``200 {"status": "OK", "result": {...}}`` otherwise. It writes its JSON by hand and imports
nothing from the library's private modules, so a parsing bug in the client cannot hide by being
on both sides of the wire.

Usage, on a real localhost port::

    from market_chat_async import MarketChatClient
    from market_chat_async.testing import Fault, MarketTestServer, serve

    async def test_my_service() -> None:
        server = MarketTestServer(quota=1000, period=3600.0)
        async with serve(server) as running:
            async with MarketChatClient(api_key="test-api-key", base_url=running.url) as client:
                server.inject(Fault.SERVER_ERROR)  # the next request gets a 500
                message = await client.get_message(12345, 1, 2)
        assert server.stats.requests == 2  # the 500, then the retry

or from a shell: ``python -m market_chat_async.testing --port 8080 --quota 1000``.

Every id pair that looks valid has a message (``messages="auto"``): a deterministic synthetic one
(see :func:`auto_message`), unless :meth:`~MarketTestServer.add_message` stored one for it or
``not_found`` lists it.

Order of checks for each request
    1. ``redirect_to`` set → ``307`` to it (not counted; a request for the target itself is
       answered normally, so a same-origin redirect does not loop).
    2. Credentials: neither ``Api-Key`` nor ``Authorization`` → ``401``; any credential sent
       that is not accepted (or an ``Authorization`` that is not ``Bearer <token>``) → ``403``.
       Not counted.
    3. ``businessId`` not an integer in ``[1, 2**63 - 1]`` written in plain decimal → ``400``.
       Not counted: there is no cabinet to count it against.
    4. Quota (``quota`` set) used up → ``420`` ``Resource limit exceeded for businessId ...``.
       Not counted. Otherwise the request is counted now, at its arrival time.
    5. Parallel cap (``max_parallel`` set): as many requests of the cabinet in flight as the cap
       (:meth:`~MarketTestServer.hold_parallel` slots included) → ``420``
       ``Hit rate limit of 4 parallel requests for businessId 12345``. This one **is** counted.
    6. The request is now *in flight* until its response has been handed to the socket; it
       waits ``latency`` seconds. ``chatId``/``messageId`` invalid → ``400`` (counted).
    7. The next injected :class:`Fault`, if any, decides the answer (counted).
    8. ``404`` if the message does not exist, else ``200``. Both counted.

So a request spends quota once it passed the credentials, named a valid cabinet and found quota
left; only the quota's own ``420`` (and ``401``/``403``/``307``) is free. The ``fixed`` window
allows ``quota`` counted requests in each ``[k*period, (k+1)*period)`` of the server clock; the
``sliding`` window allows ``quota`` in every ``(t - period, t]``. The docs do not say which one
the service uses, so test a client against both.

Headers
    Every response carries a ``Date`` read from the server clock (``epoch`` + loop time since
    the server started, whole seconds, rounded down), so it agrees with ``looptime``'s virtual
    time. When a quota is configured and the path names a valid cabinet, responses also carry
    ``X-RateLimit-Resource-Limit``, ``-Remaining`` (after counting this request) and ``-Until``:
    the end of the fixed window, or for the sliding window the moment its oldest counted request
    leaves it (now + period when it is empty), rounded *up* to a whole second. ``Until - Date``
    is therefore never shorter than the real wait.

Faults (:meth:`~MarketTestServer.inject`, first in first out, one per request)
    ``SERVER_ERROR`` ``500`` with an error body; ``UNAVAILABLE`` ``503``; ``Fault.error(status)``
    any status with an error body; ``DROP`` closes the connection without an answer;
    ``MALFORMED`` ``200`` ``application/json`` whose body is not JSON; ``WRONG_SHAPE`` ``200``
    valid JSON of the wrong shape; ``Fault.slow(seconds)`` answers normally after an extra delay;
    ``Fault.redirect(url)`` answers ``307`` to ``url`` (for a standing redirect of every request,
    set ``redirect_to`` instead). aiohttp's ``ClientSession`` resends a GET whose connection was
    dropped once by itself, so it takes two ``DROP`` in a row to make one ``session.get`` fail.

Only ``GET`` on the route above is modelled: other methods and paths get aiohttp's own plain
``405``/``404`` and do not appear in :class:`ServerStats`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import copy
import json
import math
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, ClassVar, Final, Literal

import attrs
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_OAUTH_TOKEN",
    "Fault",
    "MarketTestServer",
    "RunningServer",
    "ServerStats",
    "auto_message",
    "main",
    "serve",
]

DEFAULT_API_KEY: Final = "test-api-key"
"""The ``Api-Key`` a :class:`MarketTestServer` accepts unless told otherwise."""

DEFAULT_OAUTH_TOKEN: Final = "test-oauth-token"
"""The ``Authorization: Bearer`` token a :class:`MarketTestServer` accepts unless told otherwise."""

ROUTE: Final = "/v2/businesses/{businessId}/chats/message"
INT64_MAX: Final = 2**63 - 1
SENDERS: Final = ("PARTNER", "CUSTOMER", "MARKET", "SUPPORT")

_DECIMAL = re.compile(r"[0-9]{1,40}")
_MSK = timezone(timedelta(hours=3))
_CREATED_BASE = datetime(2024, 1, 1, tzinfo=UTC)
_CREATED_SPAN = 2 * 365 * 86_400  # synthetic messages are spread over two years


FaultKind = Literal["error", "drop", "malformed", "wrong_shape", "slow", "redirect"]


@attrs.frozen
class Fault:
    """One injected misbehaviour, used by exactly one request (see :meth:`MarketTestServer.inject`).

    A fault is taken by the next request that passes credentials, validation and the limits,
    so it is counted in the quota like any answer the "backend" gives. The constants:

    * ``Fault.SERVER_ERROR``: ``500`` with ``{"status": "ERROR", "errors": [...]}``.
    * ``Fault.UNAVAILABLE``: ``503`` with an error body.
    * ``Fault.DROP``: the connection is closed without a byte of answer. Note that aiohttp's
      ``ClientSession`` silently resends an idempotent request once when that happens, so a plain
      ``session.get`` needs two ``DROP`` in a row before it raises ``ServerDisconnectedError``.
    * ``Fault.MALFORMED``: ``200``, ``Content-Type: application/json``, body not JSON.
    * ``Fault.WRONG_SHAPE``: ``200`` with ``{"status": "OK", "result": {"messageId": "x"}}``.

    and the factories ``Fault.slow(seconds)`` (answer normally, ``seconds`` later: for client
    timeouts), ``Fault.error(status)`` (any status with an error body) and ``Fault.redirect(url)``
    (``307 Temporary Redirect`` to ``url``: for a client's redirect and credential handling).

    >>> Fault.slow(30.0).seconds
    30.0
    >>> Fault.error(423).status
    423
    >>> Fault.DROP.kind
    'drop'
    """

    kind: FaultKind
    status: int = 200
    seconds: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    code: str = ""
    url: str | None = None

    SERVER_ERROR: ClassVar[Fault]
    UNAVAILABLE: ClassVar[Fault]
    DROP: ClassVar[Fault]
    MALFORMED: ClassVar[Fault]
    WRONG_SHAPE: ClassVar[Fault]

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer normally, but only after ``seconds`` more (on top of the server's latency).

        >>> Fault.slow(5)
        Fault(kind='slow', status=200, seconds=5, code='', url=None)
        """
        return cls("slow", seconds=seconds)

    @classmethod
    def error(cls, status: int, code: str | None = None) -> Fault:
        """Answer ``status`` with a documented error body whose code is ``code``.

        >>> Fault.error(423, "LOCKED").code
        'LOCKED'
        """
        if not 400 <= status <= 599:
            raise ValueError(f"an error fault needs a 4xx or 5xx status, got {status}")
        return cls("error", status=status, code=code or f"HTTP_{status}")

    @classmethod
    def redirect(cls, url: str) -> Fault:
        """Answer ``307 Temporary Redirect`` with ``Location: url`` (once: it is one fault).

        >>> Fault.redirect("http://127.0.0.1:9/elsewhere").status
        307
        """
        return cls("redirect", status=307, url=url)


Fault.SERVER_ERROR = Fault.error(500, "INTERNAL_ERROR")
Fault.UNAVAILABLE = Fault.error(503, "SERVICE_UNAVAILABLE")
Fault.DROP = Fault("drop")
Fault.MALFORMED = Fault("malformed")
Fault.WRONG_SHAPE = Fault("wrong_shape")


@attrs.define
class ServerStats:
    """What a :class:`MarketTestServer` has seen; replace it with a fresh one to reset.

    * ``requests``: every request that reached the endpoint, whatever its answer.
    * ``by_status``: answers sent, by status (a ``DROP`` is in ``dropped`` instead).
    * ``quota_420`` / ``parallel_420``: the two kinds of ``420``.
    * ``max_in_flight``: per cabinet, the most requests in flight at once, ``hold_parallel``
      slots included (refused requests are never in flight); 0 for an unseen cabinet.
    * ``counted``: per cabinet (a ``defaultdict``), the server-clock arrival time of every
      request that spent quota (also recorded without a quota, and including
      :meth:`MarketTestServer.spend_quota`).
    * ``request_headers``: the headers of every request, in arrival order (case-insensitive).

    >>> stats = ServerStats()
    >>> stats.counted[1] = [0.0, 10.0, 20.0, 99.0, 110.0]
    >>> stats.max_in_any_window(1, 100.0)
    4
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

    def max_in_any_window(self, business_id: int, period: float) -> int:
        """The most counted requests of a cabinet in any window ``(t - period, t]``.

        This is the sliding-window check: a client that keeps it ``<= quota`` is safe whether
        the service's window is fixed or sliding.
        """
        if period <= 0:
            raise ValueError(f"period must be positive, got {period}")
        times = sorted(self.counted.get(business_id, ()))
        best = start = 0
        for end, arrival in enumerate(times):
            while times[start] <= arrival - period:
                start += 1
            best = max(best, end - start + 1)
        return best


@attrs.define
class _Cabinet:
    """Limit state of one cabinet (``businessId``)."""

    window: int = 0  # fixed window: index k of [k*period, (k+1)*period) that ``used`` is for
    used: int = 0
    arrivals: collections.deque[float] = attrs.field(factory=collections.deque)  # sliding
    in_flight: int = 0
    held: int = 0


def auto_message(chat_id: int, message_id: int) -> dict[str, Any]:
    """The synthetic message ``messages="auto"`` answers for ``(chat_id, message_id)``.

    Deterministic, and varied so that every field variant occurs within twelve ids:
    ``message_id % 3`` picks text only (1), attachments only (2) or both (0); the sender cycles
    through PARTNER, CUSTOMER, MARKET, SUPPORT; ``createdAt`` alternates between a ``+03:00``
    offset and ``Z`` with milliseconds.

    >>> auto_message(7, 1)["message"], auto_message(7, 1)["sender"]
    ('Сообщение 1 в чате 7', 'PARTNER')
    >>> (attachment,) = auto_message(7, 2)["payload"]
    >>> attachment["name"], attachment["url"], attachment["size"]
    ('file-2-1.pdf', 'https://market-files.invalid/7/2/1', 16863)
    >>> auto_message(7, 2)["createdAt"], auto_message(7, 3)["createdAt"]
    ('2024-01-01T15:25:55.002Z', '2024-01-01T18:26:56+03:00')
    """
    offset = (chat_id * 7919 + message_id * 61) % _CREATED_SPAN
    created = _CREATED_BASE + timedelta(seconds=offset)
    if message_id % 2:
        created_at = created.astimezone(_MSK).isoformat(timespec="seconds")
    else:
        created_at = f"{created:%Y-%m-%dT%H:%M:%S}.{message_id % 1000:03d}Z"
    result: dict[str, Any] = {
        "messageId": message_id,
        "createdAt": created_at,
        "sender": SENDERS[(message_id - 1) % len(SENDERS)],
    }
    if message_id % 3 != 2:
        result["message"] = f"Сообщение {message_id} в чате {chat_id}"
    if message_id % 3 != 1:
        result["payload"] = [
            {
                "name": f"file-{message_id}-{n}.pdf",
                "url": f"https://market-files.invalid/{chat_id}/{message_id}/{n}",
                "size": 1024 + (message_id * 7919 + n) % 1_000_000,
            }
            for n in range(1, 2 + (message_id // 3) % 2)
        ]
    return result


def _parse_id(raw: str | None) -> int | None:
    """An id as the schema wants it (int64, minimum 1, plain decimal), or ``None``."""
    if raw is None or not _DECIMAL.fullmatch(raw):
        return None
    value = int(raw)
    return value if 1 <= value <= INT64_MAX else None


def _bad_param(name: str, raw: str) -> str:
    return f"Parameter {name} must be an integer from 1 to {INT64_MAX}, got {raw!r}"


def _http_date(seconds: float) -> str:
    """RFC 822 date of a whole second since the Unix epoch."""
    return format_datetime(datetime.fromtimestamp(seconds, UTC), usegmt=True)


def _period_text(period: float) -> str:
    names = {3600.0: "hour", 60.0: "minute", 86_400.0: "day", 1.0: "second"}
    return names.get(period, f"{period:g} seconds")


def _error_body(code: str, message: str) -> str:
    return json.dumps({"status": "ERROR", "errors": [{"code": code, "message": message}]})


def _wake(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


_PAUSES: Final[web.AppKey[set[asyncio.Future[bool]]]] = web.AppKey("market_test_pauses")


class MarketTestServer:
    """In-memory model of the Market chat-message API (see the module docstring for the rules).

    Options:

    * ``api_keys`` / ``oauth_tokens``: the accepted ``Api-Key`` values and
      ``Authorization: Bearer`` tokens (the ``api_keys`` and ``oauth_tokens`` sets may be changed
      later).
    * ``quota`` / ``period`` / ``window``: counted requests allowed per cabinet per ``period``
      seconds, in a ``"fixed"`` or ``"sliding"`` window; ``quota=None`` means unlimited.
    * ``max_parallel``: requests of one cabinet allowed in flight at once; ``None``: no cap.
    * ``latency``: seconds every admitted request takes (loop time, so ``looptime`` makes it
      free).
    * ``messages``: ``"auto"`` answers every valid id pair with :func:`auto_message`; ``None``
      knows only the messages added with :meth:`add_message`.
    * ``epoch``: the Unix time the server clock's 0 stands for in ``Date`` and
      ``X-RateLimit-Resource-Until``; default now, rounded down to a whole second.

    The server clock starts at the event loop's time when the server is created inside a running
    loop (else at its first use in one); use one server with one event loop.

    Example, in-process with aiohttp's test client (or use :func:`serve` for a real port)::

        server = MarketTestServer(quota=2, period=60.0, window="sliding")
        server.add_message(1, 2, {"messageId": 3, "createdAt": "2017-11-21T00:00:00+03:00",
                                  "sender": "PARTNER", "message": "example"})
        app = server.make_app()
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = (DEFAULT_API_KEY,),
        oauth_tokens: Iterable[str] = (DEFAULT_OAUTH_TOKEN,),
        quota: int | None = None,
        period: float = 3600.0,
        window: Literal["fixed", "sliding"] = "fixed",
        max_parallel: int | None = 4,
        latency: float = 0.0,
        messages: Literal["auto"] | None = "auto",
        epoch: float | None = None,
    ) -> None:
        if quota is not None and quota < 1:
            raise ValueError(f"quota must be at least 1, or None for no quota; got {quota}")
        if not period > 0:
            raise ValueError(f"period must be a positive number of seconds, got {period}")
        if window not in ("fixed", "sliding"):
            raise ValueError(f"window must be 'fixed' or 'sliding', got {window!r}")
        if max_parallel is not None and max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, or None for no cap: {max_parallel}")
        if latency < 0:
            raise ValueError(f"latency must not be negative, got {latency}")
        if messages not in ("auto", None):
            raise ValueError(f"messages must be 'auto' or None, got {messages!r}")
        self.api_keys: set[str] = set(api_keys)
        """Accepted ``Api-Key`` header values."""
        self.oauth_tokens: set[str] = set(oauth_tokens)
        """Accepted ``Authorization: Bearer <token>`` tokens."""
        self._quota = quota
        self._period = float(period)
        self._window: Literal["fixed", "sliding"] = window
        self.max_parallel: int | None = max_parallel
        """In-flight cap per cabinet, ``None`` for none."""
        self.latency: float = latency
        """Seconds each admitted request takes server-side."""
        self.messages: Literal["auto"] | None = messages
        """``"auto"``: synthetic messages for every valid id pair; ``None``: only stored ones."""
        self.epoch: float = float(math.floor(time.time())) if epoch is None else epoch
        """Unix time of server clock 0."""
        self.not_found: set[tuple[int, int, int]] = set()
        """``(business_id, chat_id, message_id)`` triples answered ``404``, whatever is stored."""
        self.redirect_to: str | None = None
        """When set, every request (except one for this very URL) is answered ``307`` to it."""
        self.stats: ServerStats = ServerStats()
        """What the server has seen so far."""
        self._stored: dict[tuple[int, int, int], dict[str, Any]] = {}
        self._faults: collections.deque[Fault] = collections.deque()
        self._cabinets: dict[int, _Cabinet] = {}
        try:
            self._origin: float | None = asyncio.get_running_loop().time()
        except RuntimeError:
            self._origin = None

    # -- configuration, read-only ------------------------------------------------------------

    @property
    def quota(self) -> int | None:
        """Counted requests allowed per cabinet per ``period``; ``None`` is unlimited."""
        return self._quota

    @property
    def period(self) -> float:
        """Length of the quota window in seconds."""
        return self._period

    @property
    def window(self) -> Literal["fixed", "sliding"]:
        """``"fixed"`` (``[k*period, (k+1)*period)``) or ``"sliding"`` (``(t-period, t]``)."""
        return self._window

    # -- the app ---------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application: ``GET /v2/businesses/{businessId}/chats/message``.

        On shutdown it cuts the latency short of requests still in flight (their connections
        are closed), so a runner stops at once.

        >>> app = MarketTestServer().make_app()
        >>> (route,) = app.router.routes()
        >>> route.method, route.resource.canonical
        ('GET', '/v2/businesses/{businessId}/chats/message')
        """
        app = web.Application()
        app[_PAUSES] = set()
        app.router.add_get(ROUTE, self._handle, allow_head=False)
        app.on_shutdown.append(self._on_shutdown)
        return app

    def now(self) -> float:
        """Seconds on the server clock (loop time since the server started).

        Outside a running loop, before the clock started, this is ``0.0``.
        """
        try:
            loop_time = asyncio.get_running_loop().time()
        except RuntimeError:
            if self._origin is None:
                return 0.0
            raise
        if self._origin is None:
            self._origin = loop_time
        return loop_time - self._origin

    # -- data --------------------------------------------------------------------------------

    def add_message(
        self,
        business_id: int,
        chat_id: int,
        message: Mapping[str, Any],
        *,
        message_id: int | None = None,
    ) -> None:
        """Store ``message``, the raw camelCase JSON of ``result``, to be answered verbatim.

        It is filed under ``message["messageId"]`` unless ``message_id`` is given (to store a
        message whose own id is broken). A stored message wins over ``"auto"`` and takes the
        triple off ``not_found``.

        >>> server = MarketTestServer(messages=None)
        >>> server.add_message(1, 2, {"messageId": 3, "createdAt": "2017-11-21T00:00:00+03:00",
        ...                           "sender": "PARTNER", "message": "example"})
        """
        key_id = message["messageId"] if message_id is None else message_id
        if not isinstance(key_id, int) or isinstance(key_id, bool):
            raise TypeError(f"the message id must be an int, got {key_id!r}")
        stored = copy.deepcopy(dict(message))
        json.dumps(stored)  # fail now, not in the handler, if it cannot be sent
        key = (business_id, chat_id, key_id)
        self._stored[key] = stored
        self.not_found.discard(key)

    def remove_message(self, business_id: int, chat_id: int, message_id: int) -> None:
        """Make ``(business_id, chat_id, message_id)`` answer ``404`` from now on.

        >>> server = MarketTestServer()
        >>> server.remove_message(1, 2, 3)
        >>> (1, 2, 3) in server.not_found
        True
        """
        key = (business_id, chat_id, message_id)
        self._stored.pop(key, None)
        self.not_found.add(key)

    # -- faults ------------------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults: each of the next requests that reach the backend takes one, in order.

        >>> server = MarketTestServer()
        >>> server.inject(Fault.SERVER_ERROR, Fault.DROP, Fault.slow(60.0))
        >>> server.pending_faults()
        3
        """
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"inject() takes Fault values, got {fault!r}")
        self._faults.extend(faults)

    def pending_faults(self) -> int:
        """How many injected faults no request has taken yet."""
        return len(self._faults)

    # -- limits ------------------------------------------------------------------------------

    def spend_quota(self, business_id: int, n: int) -> None:
        """Count ``n`` requests of the cabinet now, as if another process had made them.

        Capped at what is left of the quota: the rest would have been refused and not counted.
        They are recorded in ``stats.counted`` but not in ``stats.requests``.

        >>> server = MarketTestServer(quota=1000)
        >>> server.spend_quota(12345, 900)  # a previous process already used 900 this hour
        >>> server.quota_remaining(12345)
        100
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        now = self.now()
        cabinet = self._cabinet(business_id)
        if self._quota is not None:
            self._expire(cabinet, now)
            n = min(n, self._quota - self._used(cabinet))
        for _ in range(n):
            self._count(business_id, cabinet, now)

    def quota_remaining(self, business_id: int) -> int | None:
        """Requests the cabinet may still make in the current window; ``None`` without a quota.

        >>> MarketTestServer(quota=10).quota_remaining(1), MarketTestServer().quota_remaining(1)
        (10, None)
        """
        if self._quota is None:
            return None
        cabinet = self._cabinet(business_id)
        self._expire(cabinet, self.now())
        return max(0, self._quota - self._used(cabinet))

    @contextlib.contextmanager
    def hold_parallel(self, business_id: int, n: int) -> Iterator[None]:
        """Occupy ``n`` of the cabinet's parallel slots, as foreign in-flight requests would.

        >>> server = MarketTestServer(max_parallel=4)
        >>> with server.hold_parallel(12345, 3):  # another process keeps 3 slots busy
        ...     server.in_flight(12345)
        3
        >>> server.in_flight(12345)
        0
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        cabinet = self._cabinet(business_id)
        cabinet.held += n
        self._observe(business_id, cabinet)
        try:
            yield
        finally:
            cabinet.held -= n

    def in_flight(self, business_id: int) -> int:
        """Requests of the cabinet in flight now, ``hold_parallel`` slots included."""
        cabinet = self._cabinets.get(business_id)
        return 0 if cabinet is None else cabinet.in_flight + cabinet.held

    # -- internals ---------------------------------------------------------------------------

    def _cabinet(self, business_id: int) -> _Cabinet:
        cabinet = self._cabinets.get(business_id)
        if cabinet is None:
            cabinet = self._cabinets[business_id] = _Cabinet()
        return cabinet

    def _expire(self, cabinet: _Cabinet, now: float) -> None:
        """Forget counted requests that left the window at ``now``."""
        if self._window == "fixed":
            index = math.floor(now / self._period)
            if index != cabinet.window:
                cabinet.window, cabinet.used = index, 0
        else:
            arrivals = cabinet.arrivals
            while arrivals and arrivals[0] <= now - self._period:
                arrivals.popleft()

    def _used(self, cabinet: _Cabinet) -> int:
        return cabinet.used if self._window == "fixed" else len(cabinet.arrivals)

    def _count(self, business_id: int, cabinet: _Cabinet, now: float) -> None:
        if self._quota is not None:
            if self._window == "fixed":
                cabinet.used += 1
            else:
                cabinet.arrivals.append(now)
        self.stats.counted[business_id].append(now)

    def _observe(self, business_id: int, cabinet: _Cabinet) -> None:
        busy = cabinet.in_flight + cabinet.held
        peak = self.stats.max_in_flight
        peak[business_id] = max(peak[business_id], busy)

    def _limit_headers(self, business_id: int, now: float) -> dict[str, str]:
        if self._quota is None:
            return {}
        cabinet = self._cabinet(business_id)
        self._expire(cabinet, now)
        if self._window == "fixed":
            until = (cabinet.window + 1) * self._period
        elif cabinet.arrivals:
            until = cabinet.arrivals[0] + self._period
        else:
            until = now + self._period
        return {
            "X-RateLimit-Resource-Limit": str(self._quota),
            "X-RateLimit-Resource-Remaining": str(max(0, self._quota - self._used(cabinet))),
            "X-RateLimit-Resource-Until": _http_date(math.ceil(self.epoch + until)),
        }

    def _reply(
        self,
        status: int,
        body: str | None,
        business_id: int | None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """A response with ``Date`` and, for a cabinet, the rate-limit headers; ``body`` is JSON."""
        now = self.now()
        all_headers = {"Date": _http_date(math.floor(self.epoch + now))}
        if business_id is not None:
            all_headers.update(self._limit_headers(business_id, now))
        all_headers.update(headers or {})
        self.stats.by_status[status] += 1
        reason = "Enhance Your Calm" if status == 420 else None
        if body is None:
            return web.Response(status=status, reason=reason, headers=all_headers)
        return web.Response(
            status=status,
            reason=reason,
            text=body,
            content_type="application/json",
            headers=all_headers,
        )

    def _redirect(self, location: str, business_id: int | None) -> web.Response:
        return self._reply(307, None, business_id, headers={"Location": location})

    def _error(self, status: int, code: str, message: str, business_id: int | None) -> web.Response:
        return self._reply(status, _error_body(code, message), business_id)

    def _auth_problem(self, request: web.Request) -> tuple[int, str, str] | None:
        api_key = request.headers.get("Api-Key")
        authorization = request.headers.get("Authorization")
        if api_key is None and authorization is None:
            return (
                401,
                "UNAUTHORIZED",
                "No credentials: send the Api-Key header (or Authorization: Bearer <token>)",
            )
        if api_key is not None and api_key not in self.api_keys:
            return 403, "FORBIDDEN", "The Api-Key is not valid or has no access to this cabinet"
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or token.strip() not in self.oauth_tokens:
                return (
                    403,
                    "FORBIDDEN",
                    "The OAuth token is not valid or has no access to this cabinet",
                )
        return None

    def _redirects(self, request: web.Request) -> bool:
        if self.redirect_to is None:
            return False
        target = URL(self.redirect_to)
        here = request.url
        same_origin = not target.is_absolute() or (
            target.host == here.host and target.port == here.port
        )
        return not (same_origin and target.path_qs == request.rel_url.path_qs)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.request_headers.append(request.headers)
        if self._redirects(request):
            assert self.redirect_to is not None
            return self._redirect(self.redirect_to, None)
        raw_business = request.match_info["businessId"]
        business_id = _parse_id(raw_business)
        problem = self._auth_problem(request)
        if problem is not None:
            return self._error(*problem, business_id)
        if business_id is None:
            return self._error(400, "BAD_REQUEST", _bad_param("businessId", raw_business), None)

        cabinet = self._cabinet(business_id)
        now = self.now()
        if self._quota is not None:
            self._expire(cabinet, now)
            if self._used(cabinet) >= self._quota:
                stats.quota_420 += 1
                message = (
                    f"Resource limit exceeded for businessId {business_id}: "
                    f"{self._quota} requests per {_period_text(self._period)}"
                )
                return self._error(420, "LIMIT_EXCEEDED", message, business_id)
        self._count(business_id, cabinet, now)
        cap = self.max_parallel
        if cap is not None and cabinet.in_flight + cabinet.held >= cap:
            stats.parallel_420 += 1
            message = f"Hit rate limit of {cap} parallel requests for businessId {business_id}"
            return self._error(420, "LIMIT_EXCEEDED", message, business_id)

        cabinet.in_flight += 1
        self._observe(business_id, cabinet)
        try:
            return await self._admitted(request, business_id)
        finally:
            cabinet.in_flight -= 1

    async def _admitted(self, request: web.Request, business_id: int) -> web.StreamResponse:
        """A request past the limits: in flight until its answer is on the socket."""
        ids: list[int] = []
        bad: str | None = None
        for name in ("chatId", "messageId"):
            values = request.query.getall(name, [])
            value = _parse_id(values[0]) if len(values) == 1 else None
            if value is None:
                bad = (
                    f"Required parameter {name} is missing"
                    if not values
                    else f"Parameter {name} must be given once"
                    if len(values) > 1
                    else _bad_param(name, values[0])
                )
                break
            ids.append(value)
        fault = self._faults.popleft() if bad is None and self._faults else None
        delay = self.latency + (fault.seconds if fault is not None else 0.0)
        if delay > 0 and not await self._pause(request, delay):
            return self._drop(request)  # the server is shutting down

        if bad is not None:
            response = self._error(400, "BAD_REQUEST", bad, business_id)
        elif fault is not None and fault.kind != "slow":
            if fault.kind == "drop":
                return self._drop(request)
            response = self._fault_response(fault, business_id)
        else:
            response = self._message_response(business_id, ids[0], ids[1])
        with contextlib.suppress(ConnectionError):  # the client has gone: aiohttp sees it too
            await response.prepare(request)
            await response.write_eof()
        return response

    def _fault_response(self, fault: Fault, business_id: int) -> web.Response:
        if fault.kind == "malformed":
            return self._reply(200, '{"status": "OK", "result": {', business_id)
        if fault.kind == "wrong_shape":
            body = json.dumps({"status": "OK", "result": {"messageId": "x"}})
            return self._reply(200, body, business_id)
        if fault.kind == "redirect":
            assert fault.url is not None
            return self._redirect(fault.url, business_id)
        message = f"Injected fault: HTTP {fault.status}"
        return self._error(fault.status, fault.code, message, business_id)

    def _message_response(self, business_id: int, chat_id: int, message_id: int) -> web.Response:
        key = (business_id, chat_id, message_id)
        result = None if key in self.not_found else self._stored.get(key)
        if result is None and self.messages == "auto" and key not in self.not_found:
            result = auto_message(chat_id, message_id)
        if result is None:
            message = f"Message {message_id} not found in chat {chat_id}"
            return self._error(404, "NOT_FOUND", message, business_id)
        body = json.dumps({"status": "OK", "result": result}, ensure_ascii=False)
        return self._reply(200, body, business_id)

    def _drop(self, request: web.Request) -> web.Response:
        """Close the connection without answering."""
        self.stats.dropped += 1
        if request.transport is not None:
            request.transport.close()
        # Never sent: aiohttp finds the transport closing and treats it as a disconnect.
        return web.Response(status=444, reason="No Response")

    async def _pause(self, request: web.Request, seconds: float) -> bool:
        """Wait ``seconds`` of loop time; ``False`` if the app shut down meanwhile."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        handle = loop.call_later(seconds, _wake, waiter, True)
        pauses = request.app[_PAUSES]
        pauses.add(waiter)
        try:
            return await waiter
        finally:
            handle.cancel()
            pauses.discard(waiter)

    async def _on_shutdown(self, app: web.Application) -> None:
        pauses = app[_PAUSES]
        for waiter in list(pauses):
            _wake(waiter, False)


@attrs.frozen
class RunningServer:
    """A :class:`MarketTestServer` listening on a real port (see :func:`serve`).

    ``url`` is the base URL to give a client, ``http://127.0.0.1:PORT`` with no trailing slash.

    >>> async def main() -> None:
    ...     async with serve() as running:
    ...         print(running.url.startswith("http://127.0.0.1:"), running.port > 0)
    >>> asyncio.run(main())
    True True
    """

    url: str
    server: MarketTestServer
    port: int


@contextlib.asynccontextmanager
async def serve(
    server: MarketTestServer | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    access_log: bool = False,
) -> AsyncIterator[RunningServer]:
    """Run ``server`` (default: a fresh one) on ``host:port`` for the ``async with`` block.

    ``port=0`` picks a free port. On exit the server stops at once, cutting short requests still
    in flight (their connections are closed). ``access_log`` turns on aiohttp's access log.

    Example::

        async with serve(MarketTestServer(quota=1000)) as running:
            async with MarketChatClient(api_key="test-api-key", base_url=running.url) as client:
                message = await client.get_message(12345, 1, 2)
    """
    server = MarketTestServer() if server is None else server
    options: dict[str, Any] = {} if access_log else {"access_log": None}
    runner = web.AppRunner(server.make_app(), handle_signals=False, **options)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        server.now()  # the server clock runs from here at the latest
        address, bound_port = runner.addresses[0][:2]
        if address in ("0.0.0.0", "::"):  # every interface: reach it through the loopback one
            address = "127.0.0.1" if address == "0.0.0.0" else "::1"
        netloc = f"[{address}]" if ":" in address else address
        yield RunningServer(url=f"http://{netloc}:{bound_port}", server=server, port=bound_port)
    finally:
        await runner.cleanup()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m market_chat_async.testing",
        description="Run the bundled Market chat-message API model until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    parser.add_argument("--quota", type=int, default=None, help="requests per period per cabinet")
    parser.add_argument("--period", type=float, default=3600.0, help="quota window, seconds")
    parser.add_argument("--window", choices=("fixed", "sliding"), default="fixed")
    parser.add_argument(
        "--max-parallel", type=int, default=4, help="in-flight cap per cabinet (0: none)"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument(
        "--api-key", action="append", help=f"accepted Api-Key (repeatable; {DEFAULT_API_KEY!r})"
    )
    return parser


async def _run(args: argparse.Namespace) -> None:
    keys = args.api_key or [DEFAULT_API_KEY]
    server = MarketTestServer(
        api_keys=keys,
        quota=args.quota,
        period=args.period,
        window=args.window,
        max_parallel=args.max_parallel or None,
        latency=args.latency,
    )
    async with serve(server, host=args.host, port=args.port, access_log=True) as running:
        limits = (
            f"quota {args.quota} requests per {args.period:g} s ({args.window} window)"
            if args.quota
            else "no quota"
        )
        print(f"Market test server at {running.url}", flush=True)
        print(f"Api-Key: {keys[0]}  ({limits}; Ctrl-C stops)", flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m market_chat_async.testing``: serve the model until Ctrl-C.

    It prints the base URL and the accepted test key first::

        $ python -m market_chat_async.testing --port 8080 --quota 1000
        Market test server at http://127.0.0.1:8080
        Api-Key: test-api-key  (quota 1000 requests per 3600 s (fixed window); Ctrl-C stops)
    """
    args = _parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args))


if __name__ == "__main__":
    main()
