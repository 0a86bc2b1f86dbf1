"""Running a :class:`MarketTestServer` on a real port: :func:`serve` and :class:`RunningServer`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
from aiohttp import web

from ._server import MarketTestServer


@attrs.frozen
class RunningServer:
    """A :class:`MarketTestServer` listening on a real port (see :func:`serve`).

    ``url`` is the base URL to give a client, ``http://127.0.0.1:PORT`` with no trailing slash.

    >>> import asyncio
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
