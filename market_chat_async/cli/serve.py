"""``market-chat serve``: receive push notifications, write each new message as a JSON line."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from .options import client_from, file_or_dash, port_arg
from .outputs import JsonLines, OutputError, message_record
from .status import OK, UsageError

if TYPE_CHECKING:
    from market_chat_async import ChatMessage, MarketChatClient
    from market_chat_async.notifications import ChatMessageSent

    from .options import SharedOptions, Subparsers
    from .progress import Console

__all__ = ["add_parser", "run", "serve"]


def add_parser(commands: Subparsers, shared: SharedOptions) -> argparse.ArgumentParser:
    """The ``serve`` subcommand."""
    parser = commands.add_parser(
        "serve",
        parents=shared.for_api,
        help="receive push notifications and print each new message as a JSON line",
        description="Run the notification receiver: for each CHAT_MESSAGE_SENT notification, "
        "fetch the message and write it as a JSON line with businessId and chatId. "
        "Ctrl-C or SIGTERM stops it.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=port_arg, default=8080, help="the port to listen on (default: 8080)"
    )
    parser.add_argument(
        "--output",
        type=file_or_dash,
        metavar="FILE",
        help="the JSON-lines file messages are appended to (default: stdout)",
    )
    parser.add_argument(
        "--allow-from",
        action="append",
        metavar="CIDR",
        help="networks that may post (repeatable; default: the Market's; 'any' for everyone)",
    )
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="a reverse proxy whose X-Forwarded-For is believed (repeatable)",
    )
    return parser


async def run(args: argparse.Namespace, console: Console) -> int:
    """Serve until Ctrl-C or SIGTERM, which is how a receiver is meant to stop (exit 0)."""
    allow = args.allow_from
    if allow is not None and "any" in allow:
        allow = []
    async with client_from(args) as client:
        try:
            return await serve(
                client, args.host, args.port, args.output, allow, args.trusted_proxy, console
            )
        except asyncio.CancelledError:
            return OK


async def serve(
    client: MarketChatClient,
    host: str,
    port: int,
    output: Path | None,
    allow_from: list[str] | None,
    trusted_proxies: list[str],
    console: Console,
) -> int:
    """Receive notifications, write each new message as a JSON line, until cancelled."""
    from aiohttp import web

    from market_chat_async._version import __version__
    from market_chat_async.notifications import MARKET_NETWORKS, create_app

    sink = JsonLines(output)  # None: stdout

    async def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
        sink.write(message_record(notification.chat_id, message, notification.business_id))

    try:
        app = create_app(
            client,
            on_message,
            name="market-chat",
            version=__version__,
            allow_from=MARKET_NETWORKS if allow_from is None else (allow_from or None),
            trusted_proxies=trusted_proxies,
        )
        sink.open()
    except (ValueError, OutputError) as exc:
        raise UsageError(str(exc)) from None
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        bound = runner.addresses[0]
        url = f"http://{bound[0]}:{bound[1]}/notification"
        console.info(f"market-chat: receiving notifications at {url} (Ctrl-C stops)")
        await asyncio.Event().wait()  # until cancelled (Ctrl-C, SIGTERM)
    finally:
        await runner.cleanup()  # drains what is pending
        sink.close()
    return OK  # pragma: no cover - only cancellation ends the wait
