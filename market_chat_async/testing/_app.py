"""The aiohttp side: the funnel every request of the seven routes goes through.

The funnel (:func:`_handle`) applies the order of checks the package docstring lists; each
operation (``_operations``) is a pair of functions: *read* turns the request into its
arguments (or raises :class:`BadRequest`), *act* performs it on the cabinet data and returns
the ``200`` body (or raises :class:`NotFound`). A fault is applied between the two, or after
*act* for a fault made with :meth:`Fault.after_acting`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Final

import attrs
from aiohttp import web
from yarl import URL

from . import _requests as req
from ._faults import Fault
from ._operations import ROUTES, Act, NotFound, Read, error_body
from ._quota import period_text
from ._requests import BadRequest

if TYPE_CHECKING:
    from ._server import MarketTestServer

_BASE: Final = "/v2/businesses/{businessId}"
_PAUSES: Final[web.AppKey[set[asyncio.Future[bool]]]] = web.AppKey("market_test_pauses")


def http_date(seconds: float) -> str:
    """RFC 822 date of a whole second since the Unix epoch.

    >>> http_date(1_700_000_000)
    'Tue, 14 Nov 2023 22:13:20 GMT'
    """
    return format_datetime(datetime.fromtimestamp(seconds, UTC), usegmt=True)


def _wake(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


@attrs.frozen
class _Exchange:
    """One request being answered: what every reply needs to know."""

    server: MarketTestServer
    request: web.Request
    operation: str
    business_id: int | None

    def reply(
        self, status: int, body: str | None, *, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        """A response with ``Date`` and, for a cabinet, the operation's rate-limit headers."""
        server = self.server
        now = server.now()
        all_headers = {"Date": http_date(math.floor(server.epoch + now))}
        if self.business_id is not None:
            window = server._quota_window(self.business_id, self.operation)
            if window is not None:
                all_headers["X-RateLimit-Resource-Limit"] = str(window.limit)
                all_headers["X-RateLimit-Resource-Remaining"] = str(window.remaining(now))
                until = math.ceil(server.epoch + window.until(now))
                all_headers["X-RateLimit-Resource-Until"] = http_date(until)
        all_headers.update(headers or {})
        server.stats.by_status[status] += 1
        server.stats.status_by_operation[self.operation][status] += 1
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

    def error(self, status: int, code: str, message: str) -> web.Response:
        return self.reply(status, error_body(code, message))

    def redirect(self, location: str) -> web.Response:
        return self.reply(307, None, headers={"Location": location})

    def drop(self) -> web.Response:
        """Close the connection without answering."""
        self.server.stats.dropped += 1
        if self.request.transport is not None:
            self.request.transport.close()
        # Never sent: aiohttp finds the transport closing and treats it as a disconnect.
        return web.Response(status=444, reason="No Response")

    def fault(self, fault: Fault) -> web.Response:
        if fault.kind == "drop":
            return self.drop()
        if fault.kind == "malformed":
            return self.reply(200, '{"status": "OK", "result": {')
        if fault.kind == "wrong_shape":
            return self.reply(200, json.dumps({"status": "OK", "result": {"messageId": "x"}}))
        if fault.kind == "redirect":
            assert fault.url is not None
            return self.redirect(fault.url)
        return self.error(fault.status, fault.code, f"Injected fault: HTTP {fault.status}")

    async def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` of loop time; ``False`` if the app shut down meanwhile."""
        if seconds <= 0:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        handle = loop.call_later(seconds, _wake, waiter, True)
        pauses = self.request.app[_PAUSES]
        pauses.add(waiter)
        try:
            return await waiter
        finally:
            handle.cancel()
            pauses.discard(waiter)


# -- the funnel -----------------------------------------------------------------------------------


def _auth_problem(server: MarketTestServer, request: web.Request) -> tuple[int, str, str] | None:
    api_key = request.headers.get("Api-Key")
    authorization = request.headers.get("Authorization")
    if api_key is None and authorization is None:
        return (
            401,
            "UNAUTHORIZED",
            "No credentials: send the Api-Key header (or Authorization: Bearer <token>)",
        )
    if api_key is not None and api_key not in server.api_keys:
        return 403, "FORBIDDEN", "The Api-Key is not valid or has no access to this cabinet"
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in server.oauth_tokens:
            return 403, "FORBIDDEN", "The OAuth token is not valid or has no access to this cabinet"
    return None


def _redirects(server: MarketTestServer, request: web.Request) -> bool:
    if server.redirect_to is None:
        return False
    target = URL(server.redirect_to)
    here = request.url
    same_origin = not target.is_absolute() or (
        target.host == here.host and target.port == here.port
    )
    return not (same_origin and target.path_qs == request.rel_url.path_qs)


async def _handle(
    server: MarketTestServer, operation: str, read: Read, act: Act, request: web.Request
) -> web.StreamResponse:
    stats = server.stats
    stats.requests += 1
    stats.requests_by_operation[operation] += 1
    stats.request_headers.append(request.headers)
    raw_business = request.match_info["businessId"]
    business_id = req.parse_id(raw_business)
    exchange = _Exchange(server, request, operation, business_id)
    if _redirects(server, request):
        assert server.redirect_to is not None
        return attrs.evolve(exchange, business_id=None).redirect(server.redirect_to)
    problem = _auth_problem(server, request)
    if problem is not None:
        return exchange.error(*problem)
    if business_id is None:
        message = req.bad_param("businessId", raw_business)
        return exchange.error(400, "BAD_REQUEST", message)

    limits = server._cabinet(business_id)
    now = server.now()
    window = server._quota_window(business_id, operation)
    if window is not None and window.remaining(now) == 0:
        stats.quota_420 += 1
        stats.quota_420_by_operation[operation] += 1
        message = (
            f"Resource limit exceeded for businessId {business_id}: "
            f"{window.limit} requests per {period_text(window.period)}"
        )
        return exchange.error(420, "LIMIT_EXCEEDED", message)
    if window is not None:
        window.count(now)
    stats.counted_by_operation[operation][business_id].append(now)
    cap = server.max_parallel
    if cap is not None and limits.in_flight + limits.held >= cap:
        stats.parallel_420 += 1
        stats.parallel_420_by_operation[operation] += 1
        message = f"Hit rate limit of {cap} parallel requests for businessId {business_id}"
        return exchange.error(420, "LIMIT_EXCEEDED", message)

    limits.in_flight += 1
    server._observe(business_id, limits)
    try:
        response = await _admitted(exchange, business_id, read, act)
        if request.transport is None or request.transport.is_closing():
            return response  # dropped: aiohttp finds the transport closing, nothing is sent
        with contextlib.suppress(ConnectionError):  # the client has gone: aiohttp sees it too
            await response.prepare(request)
            await response.write_eof()
        return response
    finally:
        limits.in_flight -= 1


async def _admitted(
    exchange: _Exchange, business_id: int, read: Read, act: Act
) -> web.StreamResponse:
    """A request past the limits: in flight until its answer is on the socket."""
    server = exchange.server
    try:
        args, bad = await read(exchange.request), None
    except BadRequest as problem:
        args, bad = None, str(problem)
    fault = server._faults.take(exchange.operation) if bad is None else None
    before = fault if fault is not None and not fault.after else None
    delay = server.latency + (before.seconds if before is not None else 0.0)
    if not await exchange.pause(delay):
        return exchange.drop()  # the server is shutting down
    if bad is not None:
        return exchange.error(400, "BAD_REQUEST", bad)
    if before is not None and before.kind != "slow":
        return exchange.fault(before)
    try:
        status, body = 200, act(server, business_id, args)
    except NotFound as missing:
        status, body = 404, error_body("NOT_FOUND", str(missing))
    if fault is not None and fault.after:
        if not await exchange.pause(fault.seconds):
            return exchange.drop()
        if fault.kind != "slow":
            return exchange.fault(fault)
    return exchange.reply(status, body)


async def _on_shutdown(app: web.Application) -> None:
    pauses = app[_PAUSES]
    for waiter in list(pauses):
        _wake(waiter, False)


def build_app(server: MarketTestServer) -> web.Application:
    """The aiohttp application of ``server``: the seven routes, all through :func:`_handle`."""
    app = web.Application()
    app[_PAUSES] = set()
    for method, path, operation, read, act in ROUTES:

        async def handler(
            request: web.Request, operation: str = operation, read: Read = read, act: Act = act
        ) -> web.StreamResponse:
            return await _handle(server, operation, read, act, request)

        app.router.add_route(method, _BASE + path, handler)
    app.on_shutdown.append(_on_shutdown)
    return app
