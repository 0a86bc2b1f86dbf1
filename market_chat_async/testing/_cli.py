"""The command line: ``python -m market_chat_async.testing``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence

from ._running import serve
from ._server import DEFAULT_API_KEY, MarketTestServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m market_chat_async.testing",
        description="Run the bundled Market chat API model until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    parser.add_argument(
        "--quota", type=int, default=None, help="getChatMessage requests per period per cabinet"
    )
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
