"""The seam between the client and HTTP: one exchange in, ``(status, headers, body)`` out.

:class:`Transport` is the whole contract: send one :class:`HttpRequest` (no redirects followed,
no retries, no auth logic: the funnel above decides all of that) and return an
:class:`HttpResponse`, or raise :class:`~market_chat_async.MarketConnectionError` when no answer
came (``sent=False`` when the connection was refused before anything was sent) or
:class:`~market_chat_async.MalformedResponseError` when the answer is over the size cap.
A transport for tests is a few lines:

>>> class Canned:
...     async def send(self, request: HttpRequest) -> HttpResponse:
...         return HttpResponse(404, {}, b'{"errors": [{"code": "NOT_FOUND"}]}')
...     async def close(self) -> None:
...         pass

:class:`AiohttpTransport`, the default, is the only aiohttp code of the client. It reads a body
only up to ``max_body_bytes`` *after decompression*, inflating gzip/deflate itself in bounded
steps, so a hostile answer (200 MB, or a 1 MiB gzip that inflates to 2 GB) costs at most that
much memory before it is refused.
"""

from __future__ import annotations

import urllib.request
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import attrs

from ._errors import MalformedResponseError, MarketConnectionError
from ._protocol import FilePart

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "AiohttpTransport",
    "HttpRequest",
    "HttpResponse",
    "Transport",
]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
_CHUNK = 64 * 1024


def _not_sent() -> tuple[type[BaseException], ...]:
    """Connection failures where nothing of the request left this process."""
    import aiohttp

    timeout = getattr(aiohttp, "ConnectionTimeoutError", None)  # aiohttp 3.10 and later
    return (aiohttp.ClientConnectorError, *((timeout,) if timeout is not None else ()))


@attrs.frozen(slots=False)  # one per request: attrs inits a dict-backed frozen class faster
class HttpRequest:
    """One HTTP exchange to make: an absolute ``url`` without its query, the query ``params``,
    the ``headers`` (credentials included, when the funnel decided they may go), and a body:
    ``json`` (already encoded) or a multipart ``file``. The headers never show in its repr.

    >>> request = HttpRequest("GET", "https://api.invalid/v", {}, {"Api-Key": "secret"})
    >>> "secret" in repr(request)
    False
    """

    method: str
    url: str
    params: Mapping[str, str]
    headers: Mapping[str, str] = attrs.field(repr=False)
    json: bytes | None = None
    file: FilePart | None = None


@attrs.frozen(slots=False)  # one per request: attrs inits a dict-backed frozen class faster
class HttpResponse:
    """What came back: status, headers (case-insensitive lookups, or lower-case keys) and the
    whole body, decompressed.

    >>> HttpResponse(404, {}, b'{"errors": [{"code": "NOT_FOUND"}]}').status
    404
    """

    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    """Sends one HTTP exchange; see the module docstring for the contract.

    >>> class Canned:
    ...     async def send(self, request: HttpRequest) -> HttpResponse:
    ...         return HttpResponse(200, {}, b'{"status": "OK"}')
    ...     async def close(self) -> None:
    ...         pass
    >>> transport: Transport = Canned()
    """

    async def send(self, request: HttpRequest) -> HttpResponse:
        """Make the exchange and return the answer (raising only the two errors above)."""

    async def close(self) -> None:
        """Let go of what the transport owns."""


class AiohttpTransport:
    """The default transport, on an ``aiohttp.ClientSession``.

    Without ``session`` it owns one and closes it in :meth:`close`; a passed-in session is never
    closed. ``timeout`` bounds a whole exchange and ``connect_timeout`` getting a connection, in
    seconds; ``proxy`` sends every request through that proxy. With neither ``session`` nor
    ``proxy``, ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` are honoured as aiohttp's
    ``trust_env=True`` would, read once per host rather than in a thread for every request.

    >>> transport = AiohttpTransport(timeout=10.0, connect_timeout=3.0)
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout: float = 30.0,
        connect_timeout: float | None = 10.0,
        proxy: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        import aiohttp  # here, not at import time: the package loads without the HTTP stack

        self._aiohttp = aiohttp
        self._session = session
        self._owns_session = session is None
        self.timeout = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._proxy = proxy
        self.max_body_bytes = max_body_bytes
        # Proxy from the environment per origin, for a session of our own without ``proxy``.
        self._env_proxies: dict[str, str | None] | None = (
            {} if session is None and proxy is None else None
        )

    def __repr__(self) -> str:
        proxy = " via a proxy" if self._proxy else ""
        return f"<AiohttpTransport timeout={self.timeout}{proxy}>"

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, request: HttpRequest) -> HttpResponse:
        aiohttp = self._aiohttp
        session = self._session
        if session is None:
            session = self._session = aiohttp.ClientSession()
        data: Any = None
        headers = request.headers
        if request.file is not None:
            form = aiohttp.FormData()
            form.add_field(
                "file",
                request.file.content,
                filename=request.file.filename,
                content_type=request.file.content_type,
            )
            data = form
        elif request.json is not None:
            data = request.json
            headers = {**headers, "Content-Type": "application/json"}
        try:
            # raise_for_status=False even if a passed-in session says otherwise: aiohttp's
            # ClientResponseError would carry the request headers, credentials included.
            async with session.request(
                request.method,
                request.url,
                params=request.params,
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self._timeout,
                raise_for_status=False,
                auto_decompress=False,
                proxy=self._proxy_for(request.url),
            ) as resp:
                body = await self._read(resp)
                return HttpResponse(resp.status, resp.headers, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._connection_error(exc) from None

    def _proxy_for(self, url: str) -> str | None:
        known = self._env_proxies
        if known is None:
            return self._proxy
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in known:
            proxies = urllib.request.getproxies_environment()
            bypass = urllib.request.proxy_bypass(parts.hostname or "")  # reads NO_PROXY
            known[origin] = None if bypass else proxies.get(parts.scheme)
        return known[origin]

    def _connection_error(self, exc: BaseException) -> MarketConnectionError:
        # Described, not chained: aiohttp's errors can hold request headers or proxy auth.
        not_sent = _not_sent()
        if isinstance(exc, TimeoutError) and not isinstance(exc, not_sent):
            what = f"timed out after {self.timeout} s"
        else:
            what = str(exc)
        if self._proxy and "@" in self._proxy:
            what = what.replace(self._proxy, "<proxy>")
        return MarketConnectionError(
            None, message=f"{type(exc).__name__}: {what}", sent=not isinstance(exc, not_sent)
        )

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        cap = self.max_body_bytes
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            inflate = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            inflate = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # gzip or zlib header
        else:
            raise self._malformed(resp, f"unsupported Content-Encoding {encoding!r}")
        length = resp.content_length
        if inflate is None and length is not None and length <= cap:
            return await resp.read()  # the common case: a small body of a known length
        parts: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            if inflate is not None:
                try:
                    chunk = inflate.decompress(chunk, cap + 1 - size)
                except zlib.error:
                    raise self._malformed(resp, f"body is not valid {encoding}") from None
                if inflate.unconsumed_tail:
                    size = cap + 1
            size += len(chunk)
            if size > cap:
                raise self._malformed(resp, f"body is over the {cap}-byte cap")
            parts.append(chunk)
        if inflate is not None and (tail := inflate.flush()):
            if size + len(tail) > cap:
                raise self._malformed(resp, f"body is over the {cap}-byte cap")
            parts.append(tail)
        return b"".join(parts)

    @staticmethod
    def _malformed(resp: aiohttp.ClientResponse, message: str) -> MalformedResponseError:
        return MalformedResponseError(resp.status, message=message, headers=dict(resp.headers))
