"""The model's public face: :class:`MarketTestServer`'s options, data, faults and limits."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
from aiohttp import web

from ._data import CabinetData, Chat, encode, iso_time, new_chat
from ._faults import Fault, FaultQueues
from ._quota import OPERATIONS, QuotaWindow, WindowKind, resolve_quotas
from ._stats import ServerStats

if TYPE_CHECKING:
    from ._corpus import Corpus

DEFAULT_API_KEY: Final = "test-api-key"

DEFAULT_OAUTH_TOKEN: Final = "test-oauth-token"


@attrs.define
class _Limits:
    """Limit state of one cabinet (``businessId``): a window per resource, the shared cap."""

    windows: dict[str, QuotaWindow] = attrs.field(factory=dict)
    in_flight: int = 0
    held: int = 0


class MarketTestServer:
    """In-memory model of the Market chat API (see the package docstring for the rules).

    Options:

    * ``api_keys`` / ``oauth_tokens``: the accepted ``Api-Key`` values and
      ``Authorization: Bearer`` tokens (the ``api_keys`` and ``oauth_tokens`` sets may be changed
      later).
    * ``quota`` / ``period`` / ``window``: getChatMessage's counted requests allowed per cabinet
      per ``period`` seconds, in a ``"fixed"`` or ``"sliding"`` window; ``quota=None`` means
      unlimited.
    * ``quotas``: the quota of each operation, by ``operationId`` (``{"getChats": 5000, ...}``;
      missing or ``None``: unlimited), or ``"documented"`` for the documented quotas of all
      seven (getChats 5,000, getChatHistory 10,000, the others 1,000 per hour, with
      ``period=3600``). ``quota``, when given, still sets getChatMessage's. Every operation uses
      the same ``period`` and ``window``, each with its own count.
    * ``max_parallel``: requests of one cabinet allowed in flight at once, all operations
      together; ``None``: no cap.
    * ``latency``: seconds every admitted request takes (loop time, so ``looptime`` makes it
      free).
    * ``messages``: ``"auto"`` answers getChatMessage for every valid id pair of a chat that
      :meth:`add_chat` did not register with :func:`auto_message`; ``None`` knows only stored
      messages.
    * ``epoch``: the Unix time the server clock's 0 stands for in ``Date``,
      ``X-RateLimit-Resource-Until`` and the dates of chats and sent messages; default now,
      rounded down to a whole second.

    The server clock starts at the event loop's time when the server is created inside a running
    loop (else at its first use in one); use one server with one event loop.

    Example, in-process with aiohttp's test client (or use :func:`serve` for a real port)::

        server = MarketTestServer(quotas="documented", window="sliding")
        chat_id = server.add_chat(12345, context_type="ORDER", context_id=777)
        server.add_message(12345, chat_id, {"messageId": 3, "sender": "PARTNER",
                                            "createdAt": "2017-11-21T00:00:00+03:00"})
        app = server.make_app()
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = (DEFAULT_API_KEY,),
        oauth_tokens: Iterable[str] = (DEFAULT_OAUTH_TOKEN,),
        quota: int | None = None,
        period: float = 3600.0,
        window: WindowKind = "fixed",
        quotas: Mapping[str, int | None] | Literal["documented"] | None = None,
        max_parallel: int | None = 4,
        latency: float = 0.0,
        messages: Literal["auto"] | None = "auto",
        epoch: float | None = None,
    ) -> None:
        limits = resolve_quotas(quotas, quota)
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
        self._limits = limits
        self._period = float(period)
        self._window: WindowKind = window
        self.max_parallel: int | None = max_parallel
        """In-flight cap per cabinet (all operations together), ``None`` for none."""
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
        self._stored: dict[tuple[int, int, int], str] = {}  # add_message's JSON, encoded
        self._faults = FaultQueues()
        self._cabinets: dict[int, _Limits] = {}
        self._data: dict[int, CabinetData] = {}
        try:
            self._origin: float | None = asyncio.get_running_loop().time()
        except RuntimeError:
            self._origin = None

    # -- configuration, read-only ------------------------------------------------------------

    @property
    def quota(self) -> int | None:
        """getChatMessage's counted requests allowed per cabinet per ``period``; ``None``: none."""
        return self._limits["getChatMessage"]

    @property
    def quotas(self) -> dict[str, int | None]:
        """Every operation's quota per ``period`` (a copy), ``None`` where unlimited.

        >>> MarketTestServer(quotas="documented").quotas["getChats"]
        5000
        """
        return dict(self._limits)

    @property
    def period(self) -> float:
        """Length of the quota window in seconds."""
        return self._period

    @property
    def window(self) -> WindowKind:
        """``"fixed"`` (``[k*period, (k+1)*period)``) or ``"sliding"`` (``(t-period, t]``)."""
        return self._window

    # -- the app ---------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application with the seven routes of the chat family.

        On shutdown it cuts the latency short of requests still in flight (their connections
        are closed), so a runner stops at once.

        >>> app = MarketTestServer().make_app()
        >>> for route in sorted(app.router.routes(), key=lambda r: r.resource.canonical)[:3]:
        ...     print(route.method, route.resource.canonical)
        GET /v2/businesses/{businessId}/chat
        POST /v2/businesses/{businessId}/chats
        POST /v2/businesses/{businessId}/chats/file/send
        """
        from ._app import build_app

        return build_app(self)

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
        triple off ``not_found``; in a chat :meth:`add_chat` registered it also joins the
        chat's history, in id order.

        >>> server = MarketTestServer(messages=None)
        >>> server.add_message(1, 2, {"messageId": 3, "createdAt": "2017-11-21T00:00:00+03:00",
        ...                           "sender": "PARTNER", "message": "example"})
        """
        key_id = message["messageId"] if message_id is None else message_id
        if not isinstance(key_id, int) or isinstance(key_id, bool):
            raise TypeError(f"the message id must be an int, got {key_id!r}")
        stored = copy.deepcopy(dict(message))
        key = (business_id, chat_id, key_id)
        self._stored[key] = encode(stored)  # fails now, not in the handler, if it cannot be sent
        self.not_found.discard(key)
        chat = self._chat(business_id, chat_id)
        if chat is not None:
            chat.put(key_id, stored)
            data = self._data[business_id]
            data.top_message_id = max(data.top_message_id, key_id)

    def remove_message(self, business_id: int, chat_id: int, message_id: int) -> None:
        """Make ``(business_id, chat_id, message_id)`` answer ``404`` from now on.

        A registered chat's history loses the message too.

        >>> server = MarketTestServer()
        >>> server.remove_message(1, 2, 3)
        >>> (1, 2, 3) in server.not_found
        True
        """
        key = (business_id, chat_id, message_id)
        self._stored.pop(key, None)
        self.not_found.add(key)
        chat = self._chat(business_id, chat_id)
        if chat is not None:
            chat.drop(message_id)

    def add_chat(
        self,
        business_id: int,
        *,
        chat_id: int | None = None,
        context_type: Literal["ORDER", "RETURN", "DIRECT"] = "ORDER",
        context_id: int | None = None,
        order_id: int | None = None,
        campaign_id: int | None = None,
        type: Literal["CHAT", "ARBITRAGE"] = "CHAT",
        status: str = "NEW",
        customer: Mapping[str, str] | None = None,
        created_at: str | None = None,
        updated_at: str | None = None,
        messages: Sequence[Mapping[str, Any]] = (),
    ) -> int:
        """Register a chat of the cabinet and its messages; returns its ``chatId``.

        ``chat_id`` defaults to one above the cabinet's highest. ``context_id`` is the order id
        of an ``ORDER`` chat and the return id of a ``RETURN`` chat (default: the chat id);
        ``order_id`` is the order of a ``RETURN``; a ``DIRECT`` chat has neither. ``customer``
        is ``ChatCustomerDTO`` JSON (``{"name": ..., "publicId": ...}``), ``None`` for none.
        ``messages`` are raw ``ChatMessageDTO`` JSON, each with its ``messageId``, answered
        verbatim by getChatHistory and getChatMessage. Dates default to the server clock;
        ``updated_at`` to ``created_at``. A second chat for the same context is refused.

        Only registered chats exist for getChats, getChat, getChatHistory and the writes; in
        a registered chat getChatMessage knows only its messages (no ``"auto"`` ones).

        >>> server = MarketTestServer()
        >>> server.add_chat(12345, context_type="RETURN", context_id=55, order_id=54,
        ...                 status="WAITING_FOR_PARTNER",
        ...                 messages=[{"messageId": 1, "createdAt": "2026-01-01T10:00:00+03:00",
        ...                            "sender": "CUSTOMER", "message": "Hello"}])
        1
        >>> server.chats(12345)[0]["context"]
        {'type': 'RETURN', 'orderId': 54, 'returnId': 55}
        """
        data = self._data.setdefault(business_id, CabinetData())
        created = created_at if created_at is not None else iso_time(self.epoch + self.now())
        chat = new_chat(
            data.next_chat_id() if chat_id is None else chat_id,
            context_type=context_type,
            context_id=context_id,
            order_id=order_id,
            campaign_id=campaign_id,
            type=type,
            status=status,
            customer=customer,
            created_at=created,
            updated_at=updated_at,
            messages=messages,
        )
        data.add(chat)
        return chat.chat_id

    def load(self, business_id: int, corpus: Corpus) -> None:
        """Register every chat of ``corpus`` (see :func:`corpus`) in the cabinet.

        >>> from market_chat_async.testing import corpus
        >>> server = MarketTestServer()
        >>> server.load(12345, corpus(seed=1, chats=3))
        >>> len(server.chats(12345))
        3
        """
        for seed in corpus.chats:
            self.add_chat(business_id, **seed.arguments())

    def chats(self, business_id: int) -> list[dict[str, Any]]:
        """The cabinet's chats as getChat answers them (``GetChatInfoDTO`` JSON), by ``chatId``.

        >>> MarketTestServer().chats(12345)
        []
        """
        data = self._data.get(business_id)
        if data is None:
            return []
        return [data.chats[chat_id].info() for chat_id in sorted(data.chats)]

    def history(self, business_id: int, chat_id: int) -> list[dict[str, Any]]:
        """A registered chat's messages, oldest first, as getChatHistory answers them.

        Raises ``KeyError`` for a chat :meth:`add_chat` did not register.

        >>> server = MarketTestServer()
        >>> chat_id = server.add_chat(12345)
        >>> server.history(12345, chat_id)
        []
        """
        chat = self._chat(business_id, chat_id)
        if chat is None:
            raise KeyError(f"no chat {chat_id} in cabinet {business_id}")
        return [json.loads(text) for text in chat.encoded]

    def _chat(self, business_id: int, chat_id: int) -> Chat | None:
        data = self._data.get(business_id)
        return None if data is None else data.chats.get(chat_id)

    # -- faults ------------------------------------------------------------------------------

    def inject(self, *faults: Fault, operation: str | None = None) -> None:
        """Queue faults: each of the next requests that reach the backend takes one, in order.

        With ``operation`` (an ``operationId`` such as ``"sendMessageToChat"``) only requests
        of that operation take them, before any fault queued for all operations.

        >>> server = MarketTestServer()
        >>> server.inject(Fault.SERVER_ERROR, Fault.DROP, Fault.slow(60.0))
        >>> server.inject(Fault.DROP.after_acting(), operation="sendMessageToChat")
        >>> server.pending_faults(), server.pending_faults("sendMessageToChat")
        (4, 1)
        """
        self._faults.put(list(faults), operation)

    def pending_faults(self, operation: str | None = None) -> int:
        """How many injected faults no request has taken yet (of ``operation``'s own queue)."""
        return self._faults.pending(operation)

    # -- limits ------------------------------------------------------------------------------

    def spend_quota(self, business_id: int, n: int, *, operation: str = "getChatMessage") -> None:
        """Count ``n`` requests of the cabinet now, as if another process had made them.

        Capped at what is left of the quota: the rest would have been refused and not counted.
        They are recorded in ``stats.counted`` (``counted_by_operation``) but not in
        ``stats.requests``.

        >>> server = MarketTestServer(quota=1000)
        >>> server.spend_quota(12345, 900)  # a previous process already used 900 this hour
        >>> server.quota_remaining(12345)
        100
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        self._check_operation(operation)
        now = self.now()
        window = self._quota_window(business_id, operation)
        if window is not None:
            n = window.count(now, n)
        self.stats.counted_by_operation[operation][business_id].extend([now] * n)

    def quota_remaining(self, business_id: int, *, operation: str = "getChatMessage") -> int | None:
        """Requests the cabinet may still make in the current window; ``None`` without a quota.

        >>> MarketTestServer(quota=10).quota_remaining(1), MarketTestServer().quota_remaining(1)
        (10, None)
        """
        self._check_operation(operation)
        window = self._quota_window(business_id, operation)
        return None if window is None else window.remaining(self.now())

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
        limits = self._cabinet(business_id)
        limits.held += n
        self._observe(business_id, limits)
        try:
            yield
        finally:
            limits.held -= n

    def in_flight(self, business_id: int) -> int:
        """Requests of the cabinet in flight now (all operations), ``hold_parallel`` included."""
        limits = self._cabinets.get(business_id)
        return 0 if limits is None else limits.in_flight + limits.held

    # -- internals used by the app -----------------------------------------------------------

    @staticmethod
    def _check_operation(operation: str) -> None:
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {', '.join(OPERATIONS)}")

    def _cabinet(self, business_id: int) -> _Limits:
        limits = self._cabinets.get(business_id)
        if limits is None:
            limits = self._cabinets[business_id] = _Limits()
        return limits

    def _quota_window(self, business_id: int, operation: str) -> QuotaWindow | None:
        limit = self._limits[operation]
        if limit is None:
            return None
        windows = self._cabinet(business_id).windows
        window = windows.get(operation)
        if window is None:
            window = windows[operation] = QuotaWindow(limit, self._period, self._window)
        return window

    def _observe(self, business_id: int, limits: _Limits) -> None:
        peak = self.stats.max_in_flight
        peak[business_id] = max(peak[business_id], limits.in_flight + limits.held)
