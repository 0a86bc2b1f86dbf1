"""The one funnel every API call goes through: limiter, credentials, transport, retries.

For each :class:`~._protocol.ApiRequest`: take a slot and a quota token of the request's
resource from the cabinet's limiter, send (following redirects, with credentials only for the
API's own origin), tell the limiter what the answer said, and let :func:`~._retry.decide` say
whether to return, raise or try again. Every error that leaves here has had the credential
scrubbed from it, even where the server echoed it back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import attrs

from ._errors import MalformedResponseError, MarketApiError, RateLimitError
from ._limits import Lease, Limiter, Quota, limiter_for
from ._protocol import ApiRequest, answer_for, error_from_response
from ._retry import RetryPolicy, decide
from ._transport import HttpRequest, HttpResponse, Transport
from ._version import __version__

__all__ = ["Funnel", "InProcessLimits", "Limits", "Secret", "logger"]

logger = logging.getLogger("market_chat_async")

USER_AGENT = f"market-chat-async/{__version__} (+https://pypi.org/project/market-chat-async/)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5


class Secret:
    """A credential header that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_header", "_token", "_value")

    def __init__(self, header: str, token: str, *, scheme: str = "") -> None:
        self._header = header
        self._token = token
        self._value = f"{scheme} {token}" if scheme else token

    def headers(self) -> dict[str, str]:
        return {self._header: self._value}

    def scrub(self, error: MarketApiError) -> MarketApiError:
        """``error`` with every trace of the token replaced by ``***`` (in place)."""
        token = self._token
        if token not in repr(error.__dict__) and token not in repr(error.args):
            return error
        error.message = error.message.replace(token, "***")
        error.errors = [
            type(item)(
                item.code.replace(token, "***"),
                None if item.message is None else item.message.replace(token, "***"),
            )
            for item in error.errors
        ]
        error.headers = {k: v.replace(token, "***") for k, v in error.headers.items()}
        error.args = (error.status, error.errors, error.message)
        return error

    def __repr__(self) -> str:
        return f"<{self._header} ***>"


class Limits(Protocol):
    """Where the funnel gets a cabinet's limiter: in process, or shared through Redis."""

    def limiter(self, business_id: int) -> Limiter:
        """The limiter of one cabinet."""

    async def close(self) -> None:
        """Let go of what it holds (connections)."""


class InProcessLimits:
    """Every cabinet's limiter from the process-wide registry."""

    def __init__(self, origin: str, quotas: Mapping[str, Quota], max_parallel: int) -> None:
        self._origin = origin
        self._quotas = dict(quotas)
        self._max_parallel = max_parallel

    def limiter(self, business_id: int) -> Limiter:
        # Asked on every call, not cached: each ask is also when cabinets that hold nothing
        # any more are let go.
        return limiter_for((self._origin, business_id), self._quotas, self._max_parallel)

    async def close(self) -> None:
        return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or ""), parts.port or default


class Funnel:
    """Sends :class:`ApiRequest` values; returns the 2xx answer or raises the library's error."""

    def __init__(
        self,
        *,
        secret: Secret,
        base_url: str,
        transport: Transport,
        limits: Limits,
        retry: RetryPolicy,
        max_rate_limit_wait: float | None,
        rng: random.Random,
    ) -> None:
        self._secret = secret
        self._base_url = base_url + "/"  # a path of the API's own origin starts with this
        self._origin = _origin(base_url)
        self.transport = transport
        self.limits = limits
        self._retry = retry
        self._max_wait = max_rate_limit_wait
        self._rng = rng
        base = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        self._headers = {**base, "Accept-Encoding": "gzip, deflate"}
        self._auth_headers = {**self._headers, **secret.headers()}

    async def call(self, request: ApiRequest) -> HttpResponse:
        """Send one logical request through limiter, retries and 420 handling."""
        endpoint = request.endpoint
        limiter = self.limits.limiter(request.business_id)
        # The API's own URL: credentials go with it (redirects elsewhere get none).
        first = HttpRequest(
            endpoint.method,
            self._base_url[:-1] + request.path,
            request.params,
            self._auth_headers,
            json=None if request.json is None else _encode(request.json),
            file=request.file,
        )
        send = self._send_logged if logger.isEnabledFor(logging.DEBUG) else self.transport.send
        loop = asyncio.get_running_loop()
        deadline = None if self._max_wait is None else loop.time() + self._max_wait
        failures = refusals = 0
        while True:
            if deadline is None:
                lease = await limiter.acquire(endpoint.operation)
            else:
                lease = await self._acquire(limiter, request, deadline)
            # One try under the lease: the 2xx answer, or the error it stands for (a value).
            outcome: MarketApiError
            try:
                response = await send(first)
                if response.status in _REDIRECTS:
                    response = await self._follow(first, response)
            except MalformedResponseError as exc:  # over the size cap: answered, but unreadable
                await lease.release(answer_for(exc.status or 0, exc.headers, None))
                raise self._secret.scrub(exc) from None
            except MarketApiError as exc:
                await lease.release(sent=getattr(exc, "sent", True))
                outcome = self._secret.scrub(exc)
            except BaseException:
                await asyncio.shield(lease.release())  # abandoned in flight: may have been sent
                raise
            else:
                status, headers = response.status, response.headers
                if 200 <= status < 300:
                    await lease.release(answer_for(status, headers, None))
                    return response
                outcome = error_from_response(status, headers, response.body)
                await lease.release(answer_for(status, headers, outcome))
                outcome = self._secret.scrub(outcome)
            if isinstance(outcome, RateLimitError) and outcome.reason == "parallel":
                refusals += 1
            elif not isinstance(outcome, RateLimitError):
                failures += 1
            decision = decide(
                outcome,
                policy=self._retry,
                failures=failures,
                refusals=refusals,
                writes=endpoint.writes,
                operation=endpoint.operation,
                now=loop.time(),
                deadline=deadline,
                rng=self._rng,
            )
            if decision.delay is None:
                assert decision.error is not None
                raise decision.error
            logger.debug(
                "%s for cabinet %s failed (%s); retry in %.2f s",
                endpoint.operation,
                request.business_id,
                outcome,
                decision.delay,
            )
            await asyncio.sleep(decision.delay)

    async def _follow(self, first: HttpRequest, response: HttpResponse) -> HttpResponse:
        """Follow redirects from ``first``'s answer; credentials go only to the API's origin."""
        method, url = first.method, first.url
        for hops in range(MAX_REDIRECTS + 1):
            location = response.headers.get("location")
            if response.status not in _REDIRECTS or not location:
                return response
            if method != "GET" and response.status not in (307, 308):
                return response  # a 301/302/303 would turn a POST into a GET: not ours to do
            if hops == MAX_REDIRECTS:
                break
            url = urljoin(url, location)
            logger.debug("redirected to %s", urlsplit(url)._replace(query="").geturl())
            ours = url.startswith(self._base_url) or _origin(url) == self._origin
            headers = self._auth_headers if ours else self._headers
            response = await self._send_logged(
                attrs.evolve(first, url=url, params={}, headers=headers)
            )
        raise MarketApiError(None, message=f"more than {MAX_REDIRECTS} redirects")

    async def _send_logged(self, request: HttpRequest) -> HttpResponse:
        """Send, and say at DEBUG level what came back how fast."""
        started = time.perf_counter()
        response = await self.transport.send(request)
        logger.debug(
            "%s %s -> %d in %.3f s, quota left %s",
            request.method,
            urlsplit(request.url).path,
            response.status,
            time.perf_counter() - started,
            response.headers.get("x-ratelimit-resource-remaining", "?"),
        )
        return response

    async def _acquire(self, limiter: Limiter, request: ApiRequest, deadline: float) -> Lease:
        """A lease by ``deadline`` (max_rate_limit_wait), or the RateLimitError saying why not."""
        resource = request.endpoint.operation
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(max(deadline, loop.time())):
                return await limiter.acquire(resource)
        except TimeoutError:
            state = await limiter.state(resource)
            raise RateLimitError(
                None,
                retry_after=state.frees_in,
                reason="quota" if state.in_flight < state.max_parallel else "parallel",
                message=(
                    f"cabinet {request.business_id}: no {resource} request could start within "
                    f"max_rate_limit_wait={self._max_wait} s"
                ),
            ) from None


_encoder: Callable[[object], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":")
).encode


def _encode(value: object) -> bytes:
    return _encoder(value).encode()
