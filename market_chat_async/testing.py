"""A bundled model of the Market chat-message API, for testing code that uses it.

``MarketTestServer`` is an ``aiohttp.web`` application that answers
``GET /v2/businesses/{businessId}/chats/message`` the way the Market documents it: the same
authentication rules, parameter validation, error bodies, rate-limit headers, the per-cabinet
resource quota (fixed or sliding window) and the cap of parallel requests, plus faults you can
inject. This library's own tests run the real client against it over localhost sockets; use it
the same way for your services::

    from market_chat_async import MarketChatClient
    from market_chat_async.testing import MarketTestServer, serve

    async def test_my_service() -> None:
        server = MarketTestServer(quota=1000, latency=0.05)
        async with serve(server) as running:
            async with MarketChatClient(api_key="test-api-key", base_url=running.url) as client:
                msg = await client.get_message(12345, 1, 2)
        assert server.stats.requests == 1

Or from a terminal: ``python -m market_chat_async.testing --port 8080 --quota 1000``.

What it models, in the order it checks:

1. **Auth**: no ``Api-Key`` and no ``Authorization`` header: 401; a key or ``Bearer`` token not
   in ``api_keys`` / ``oauth_tokens``: 403. Neither is counted.
2. **Validation**: ``businessId``, ``chatId`` and ``messageId`` must be decimal integers from 1
   to 2**63 - 1: else 400 naming the parameter. Counted.
3. **Quota** (``quota=N``): at most ``N`` counted requests per cabinet per ``period``, in
   ``fixed`` windows ``[k * period, (k + 1) * period)`` of the server clock (zero when the app
   starts) or a ``sliding`` window. Over it: 420 with a ``LIMIT_EXCEEDED`` error; *not* counted.
4. **Parallel cap** (``max_parallel``): a request arriving while that many of the cabinet's are
   in flight (``hold_parallel`` ones included) gets 420 ``Hit rate limit of 4 parallel requests
   for businessId 12345``. Counted: the docs say 4xx answers spend quota.
5. **Faults** queued by :meth:`MarketTestServer.inject`, one per request: see :class:`Fault`.
   Counted.
6. The message: 404 if unknown, else 200 ``{"status": "OK", "result": {...}}``. Counted.

Every answer carries ``X-RateLimit-Resource-Limit`` / ``-Remaining`` / ``-Until`` when a quota
is set, and a ``Date`` from the same (virtual-time friendly) server clock; ``Until`` is rounded
*up* to a whole second, so it is never earlier than the real reset. The server clock is the
event loop's, so under ``looptime`` hours of quota pass in milliseconds.

With ``messages="auto"`` (the default) any ids answer a deterministic synthetic message whose
shape varies with ``messageId``: text only, files only, or both; every sender; ``+03:00`` and
``Z`` dates with fractional seconds. This module builds its JSON by hand and shares no code with
the client's parser, so a parsing bug cannot hide by being on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import math
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, ClassVar, Literal

import attrs
from aiohttp import web

__all__ = ["Fault", "MarketTestServer", "RunningServer", "ServerStats", "main", "serve"]

INT64_MAX = 2**63 - 1
DEFAULT_API_KEY = "test-api-key"
DEFAULT_OAUTH_TOKEN = "test-oauth-token"
_SENDERS = ("PARTNER", "CUSTOMER", "MARKET", "SUPPORT")


@attrs.frozen
class Fault:
    """Something to go wrong with one request, queued with :meth:`MarketTestServer.inject`.

    - ``Fault.SERVER_ERROR``: 500 with the documented error body.
    - ``Fault.UNAVAILABLE``: 503 (the Market is overloaded).
    - ``Fault.DROP``: the connection is closed without an answer.
    - ``Fault.MALFORMED``: 200, ``application/json``, but the body is cut-off JSON.
    - ``Fault.WRONG_SHAPE``: 200 with valid JSON of the wrong shape.
    - ``Fault.slow(seconds)``: the answer comes ``seconds`` late (to trigger timeouts).
    - ``Fault.redirect(url)``: 307 to ``url`` (credential handling on redirects).

    >>> Fault.slow(5.0)
    Fault(kind='slow', seconds=5.0, url=None)
    """

    kind: str
    seconds: float = 0.0
    url: str | None = None

    SERVER_ERROR: ClassVar[Fault]
    UNAVAILABLE: ClassVar[Fault]
    DROP: ClassVar[Fault]
    MALFORMED: ClassVar[Fault]
    WRONG_SHAPE: ClassVar[Fault]

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer normally, but ``seconds`` late."""
        return cls("slow", seconds=seconds)

    @classmethod
    def redirect(cls, url: str) -> Fault:
        """Answer ``307 Temporary Redirect`` to ``url``."""
        return cls("redirect", url=url)


Fault.SERVER_ERROR = Fault("server_error")
Fault.UNAVAILABLE = Fault("unavailable")
Fault.DROP = Fault("drop")
Fault.MALFORMED = Fault("malformed")
Fault.WRONG_SHAPE = Fault("wrong_shape")


@attrs.define
class ServerStats:
    """What the server saw, for assertions.

    ``counted`` holds, per cabinet, the server-clock arrival time of every request that spent
    quota; :meth:`max_in_any_window` checks a quota against it.

    >>> stats = ServerStats()
    >>> stats.counted[1] = [0.0, 1.0, 1.5, 3.0]
    >>> stats.max_in_any_window(1, period=2.0)
    3
    """

    requests: int = 0
    by_status: Counter[int] = attrs.field(factory=Counter)
    quota_420: int = 0
    parallel_420: int = 0
    max_in_flight: defaultdict[int, int] = attrs.field(factory=lambda: defaultdict(int))
    counted: defaultdict[int, list[float]] = attrs.field(factory=lambda: defaultdict(list))
    request_headers: list[dict[str, str]] = attrs.field(factory=list)

    def max_in_any_window(self, business_id: int, period: float) -> int:
        """The most counted requests of one cabinet within any window ``[t, t + period)``."""
        times = self.counted.get(business_id, [])
        best = start = 0
        for end, t in enumerate(times):
            while times[start] <= t - period:
                start += 1
            best = max(best, end - start + 1)
        return best


class MarketTestServer:
    """In-memory model of the Market chat-message API; see the module docstring.

    >>> server = MarketTestServer(quota=1000, window="sliding", latency=0.05)
    >>> server.add_message(12345, 1, {"messageId": 2, "createdAt": "2024-05-01T10:00:00Z",
    ...                                "sender": "CUSTOMER", "message": "Hello"})
    >>> app = server.make_app()
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
        if window not in ("fixed", "sliding"):
            raise ValueError(f"window must be 'fixed' or 'sliding', got {window!r}")
        self.api_keys = set(api_keys)
        self.oauth_tokens = set(oauth_tokens)
        self.quota = quota
        self.period = period
        self.window = window
        self.max_parallel = max_parallel
        self.latency = latency
        self.messages = messages
        self.epoch = float(math.floor(time.time() if epoch is None else epoch))
        self.not_found: set[tuple[int, int, int]] = set()
        self.stats = ServerStats()
        self._stored: dict[tuple[int, int, int], Mapping[str, Any]] = {}
        self._faults: deque[Fault] = deque()
        self._in_flight: Counter[int] = Counter()
        self._t0: float | None = None

    # -- set-up for tests -------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The ``aiohttp.web`` application serving the endpoint."""
        app = web.Application()
        app.router.add_get("/v2/businesses/{businessId}/chats/message", self._handle)
        return app

    def add_message(self, business_id: int, chat_id: int, message: Mapping[str, Any]) -> None:
        """Serve ``message`` (the API's ``result`` object, camelCase) verbatim for its ids."""
        self._stored[(business_id, chat_id, int(message["messageId"]))] = dict(message)

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each of the next requests that pass the checks takes one."""
        self._faults.extend(faults)

    def spend_quota(self, business_id: int, n: int) -> None:
        """Count ``n`` requests now, as if another process (or an earlier life) had sent them."""
        self.stats.counted[business_id].extend([self.now()] * n)

    @contextlib.contextmanager
    def hold_parallel(self, business_id: int, n: int) -> Iterator[None]:
        """Keep ``n`` of the cabinet's parallel slots busy, as another process would."""
        self._enter(business_id, n)
        try:
            yield
        finally:
            self._in_flight[business_id] -= n

    def quota_remaining(self, business_id: int) -> int | None:
        """The cabinet's quota left right now (``None`` without a quota)."""
        if self.quota is None:
            return None
        return max(0, self.quota - self._used(business_id, self.now()))

    def now(self) -> float:
        """The server clock: seconds since the app started, on the event loop's clock."""
        loop_time = asyncio.get_running_loop().time()
        if self._t0 is None:
            self._t0 = loop_time
        return loop_time - self._t0

    # -- the endpoint ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        now = self.now()
        self.stats.requests += 1
        self.stats.request_headers.append(dict(request.headers))
        response = await self._answer(request, now)
        self.stats.by_status[response.status] += 1
        return response

    async def _answer(self, request: web.Request, now: float) -> web.StreamResponse:
        refused = self._check_auth(request)
        if refused is not None:
            return self._reply(refused[0], _error_body(*refused[1:]), None, now)
        ids, bad = _parse_ids(request)
        business_id = ids.get("businessId")
        if bad is not None:
            self._count(business_id, now)
            return self._reply(400, _error_body("BAD_REQUEST", bad), business_id, now)
        assert business_id is not None
        if self.quota is not None and self._used(business_id, now) >= self.quota:
            self.stats.quota_420 += 1
            message = (
                f"Resource limit exceeded for businessId {business_id}: "
                f"{self.quota} requests per {self.period:g} seconds"
            )
            return self._reply(420, _error_body("LIMIT_EXCEEDED", message), business_id, now)
        self._count(business_id, now)
        if self.max_parallel is not None and self._in_flight[business_id] >= self.max_parallel:
            self.stats.parallel_420 += 1
            message = (
                f"Hit rate limit of {self.max_parallel} parallel requests "
                f"for businessId {business_id}"
            )
            return self._reply(420, _error_body("LIMIT_EXCEEDED", message), business_id, now)
        self._enter(business_id, 1)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            fault = self._faults.popleft() if self._faults else None
            if fault is not None:
                faulty = await self._fault(fault, request, business_id, now)
                if faulty is not None:
                    return faulty
            key = (business_id, ids["chatId"], ids["messageId"])
            result = self._message(*key)
            if result is None:
                body = _error_body("NOT_FOUND", f"Message {key[2]} not found in chat {key[1]}")
                return self._reply(404, body, business_id, now)
            return self._reply(200, {"status": "OK", "result": result}, business_id, now)
        finally:
            self._in_flight[business_id] -= 1

    async def _fault(
        self, fault: Fault, request: web.Request, business_id: int, now: float
    ) -> web.StreamResponse | None:
        if fault.kind == "slow":
            await asyncio.sleep(fault.seconds)
            return None
        if fault.kind == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # aiohttp drops the connection, writes nothing
        if fault.kind == "redirect":
            assert fault.url is not None
            response = self._reply(307, {"status": "OK"}, business_id, now)
            response.headers["Location"] = fault.url
            return response
        if fault.kind in ("server_error", "unavailable"):
            status = 500 if fault.kind == "server_error" else 503
            body = _error_body("INTERNAL_ERROR", "Injected server failure")
            return self._reply(status, body, business_id, now)
        if fault.kind == "malformed":
            response = self._reply(200, None, business_id, now)
            response.text = '{"status": "OK", "result": {'
            return response
        if fault.kind == "wrong_shape":
            body = {"status": "OK", "result": {"messageId": "x", "sender": 7}}
            return self._reply(200, body, business_id, now)
        raise ValueError(f"unknown fault {fault!r}")

    # -- the model ------------------------------------------------------------------------

    def _check_auth(self, request: web.Request) -> tuple[int, str, str] | None:
        key = request.headers.get("Api-Key")
        auth = request.headers.get("Authorization")
        if key is None and auth is None:
            return 401, "UNAUTHORIZED", "No credentials: send Api-Key or Authorization"
        if key is not None and key in self.api_keys:
            return None
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() in ("bearer", "oauth") and token.strip() in self.oauth_tokens:
                return None
        return 403, "FORBIDDEN", "Wrong or expired token, or no access to this cabinet"

    def _used(self, business_id: int, now: float) -> int:
        times = self.stats.counted.get(business_id, [])
        if self.window == "fixed":
            return len(times) - bisect.bisect_left(times, self._window_start(now))
        return len(times) - bisect.bisect_right(times, now - self.period)

    def _window_start(self, now: float) -> float:
        return math.floor(now / self.period) * self.period

    def _until(self, business_id: int, now: float) -> float:
        if self.window == "fixed":
            return self._window_start(now) + self.period
        times = self.stats.counted.get(business_id, [])
        inside = times[bisect.bisect_right(times, now - self.period) :]
        return (inside[0] if inside else now) + self.period

    def _count(self, business_id: int | None, now: float) -> None:
        if business_id is not None:
            self.stats.counted[business_id].append(now)

    def _enter(self, business_id: int, n: int) -> None:
        self._in_flight[business_id] += n
        peak = self.stats.max_in_flight
        peak[business_id] = max(peak[business_id], self._in_flight[business_id])

    def _message(self, business_id: int, chat_id: int, message_id: int) -> Any:
        key = (business_id, chat_id, message_id)
        if key in self.not_found:
            return None
        if key in self._stored:
            return self._stored[key]
        if self.messages != "auto":
            return None
        return _synthetic(chat_id, message_id)

    def _reply(self, status: int, body: Any, business_id: int | None, now: float) -> web.Response:
        headers = {"Date": _http_date(self.epoch + now)}
        if self.quota is not None and business_id is not None:
            remaining = max(0, self.quota - self._used(business_id, now))
            headers["X-RateLimit-Resource-Limit"] = str(self.quota)
            headers["X-RateLimit-Resource-Remaining"] = str(remaining)
            until = math.ceil(self.epoch + self._until(business_id, now))
            headers["X-RateLimit-Resource-Until"] = _http_date(until)
        if body is None:
            return web.Response(status=status, headers=headers, content_type="application/json")
        return web.json_response(body, status=status, headers=headers)


def _http_date(seconds: float) -> str:
    return format_datetime(datetime.fromtimestamp(math.floor(seconds), UTC), usegmt=True)


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"status": "ERROR", "errors": [{"code": code, "message": message}]}


def _parse_ids(request: web.Request) -> tuple[dict[str, int], str | None]:
    raw = {
        "businessId": request.match_info.get("businessId"),
        "chatId": request.query.get("chatId"),
        "messageId": request.query.get("messageId"),
    }
    ids: dict[str, int] = {}
    for name, text in raw.items():
        if text is None:
            return ids, f"Missing required parameter {name}"
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= INT64_MAX:
            return ids, f"Parameter {name} must be an integer from 1 to {INT64_MAX}: {text!r}"
        ids[name] = int(text)
    return ids, None


def _synthetic(chat_id: int, message_id: int) -> dict[str, Any]:
    created = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=message_id % 10**8)
    if message_id % 2:
        stamp = created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{message_id % 1000:03d}Z"
    else:
        local = created.astimezone(_MSK)
        stamp = local.isoformat(timespec="seconds")
    result: dict[str, Any] = {
        "messageId": message_id,
        "createdAt": stamp,
        "sender": _SENDERS[message_id % 4],
    }
    shape = message_id % 3
    if shape != 1:
        result["message"] = f"Message {message_id} in chat {chat_id}"
    if shape != 0:
        result["payload"] = [
            {
                "name": f"file-{n}.jpg",
                "url": f"https://market-files.invalid/{chat_id}/{message_id}/{n}",
                "size": 1024 * (n + 1) + message_id % 997,
            }
            for n in range(1 + message_id % 2)
        ]
    return result


_MSK = timezone(timedelta(hours=3))


@attrs.frozen
class RunningServer:
    """A started :class:`MarketTestServer`: its base URL (no trailing slash) and the model."""

    url: str
    server: MarketTestServer


@contextlib.asynccontextmanager
async def serve(
    server: MarketTestServer | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningServer]:
    """Run ``server`` on ``host:port`` (0: a free port) for the duration of the block.

    >>> async def main() -> None:
    ...     async with serve(MarketTestServer(quota=1000)) as running:
    ...         print(running.url)  # http://127.0.0.1:<port>
    """
    server = server or MarketTestServer()
    runner = web.AppRunner(server.make_app(), shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        server.now()  # the server clock starts with the server
        bound = runner.addresses[0]
        yield RunningServer(f"http://{host}:{bound[1]}", server)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """``python -m market_chat_async.testing``: run the model until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m market_chat_async.testing",
        description="Run the bundled model of the Market chat-message API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--quota", type=int, default=None, help="requests per period")
    parser.add_argument("--period", type=float, default=3600.0)
    parser.add_argument("--window", choices=["fixed", "sliding"], default="fixed")
    parser.add_argument("--max-parallel", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args(argv)
    server = MarketTestServer(
        quota=args.quota,
        period=args.period,
        window=args.window,
        max_parallel=args.max_parallel,
        latency=args.latency,
    )

    async def run() -> None:
        async with serve(server, host=args.host, port=args.port) as running:
            print(f"Market test server on {running.url} (Api-Key: {DEFAULT_API_KEY})", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
