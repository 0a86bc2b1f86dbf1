"""``market-chat serve``: receive push notifications, write each new message as a JSON line.

Notifications wait in a durable queue between the Market's 200 and the JSON line: by default
the SQLite file ``market-chat-queue.db`` in the working directory (``--queue`` names another
file, a Redis server shared by several replicas, or ``memory``). A kill loses nothing accepted:
the next start handles it. The first Ctrl-C or SIGTERM stops taking notifications (503) and
drains for ``--drain-timeout`` seconds (exit 0); a second one stops at once (exit 130 or 143).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .options import client_from, file_or_dash, port_arg
from .outputs import JsonLines, OutputError, message_record
from .status import OK, UsageError

if TYPE_CHECKING:
    from market_chat_async import ChatMessage, MarketChatClient
    from market_chat_async.notifications import ChatMessageSent

    from .options import SharedOptions, Subparsers
    from .progress import Console

__all__ = ["DEFAULT_QUEUE", "add_parser", "run", "serve"]

DEFAULT_QUEUE: Final = "sqlite:///market-chat-queue.db"
"""Where ``serve`` keeps notifications unless ``--queue`` says otherwise."""


def add_parser(commands: Subparsers, shared: SharedOptions) -> argparse.ArgumentParser:
    """The ``serve`` subcommand."""
    parser = commands.add_parser(
        "serve",
        parents=shared.for_api,
        help="receive push notifications and print each new message as a JSON line",
        description="Run the notification receiver: for each CHAT_MESSAGE_SENT notification, "
        "fetch the message and write it as a JSON line with businessId and chatId. "
        "Notifications are queued durably before the Market is answered. "
        "Ctrl-C or SIGTERM drains and stops it; a second one stops at once.",
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
    parser.add_argument(
        "--queue",
        default=DEFAULT_QUEUE,
        metavar="URL",
        help="where notifications wait for their handling: sqlite:///file.db (relative), "
        "sqlite:////abs/file.db, redis://host:port/0 (shared by replicas) or memory (lost "
        f"on a crash) (default: {DEFAULT_QUEUE})",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long the first Ctrl-C or SIGTERM lets pending work go on (default: 30)",
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
                client,
                args.host,
                args.port,
                args.output,
                allow,
                args.trusted_proxy,
                console,
                queue=args.queue,
                drain_timeout=args.drain_timeout,
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
    *,
    queue: str = DEFAULT_QUEUE,
    drain_timeout: float = 30.0,
) -> int:
    """Receive notifications, write each new message as a JSON line, until a signal."""
    from market_chat_async._version import __version__
    from market_chat_async.notifications import MARKET_NETWORKS, QueueError, create_app
    from market_chat_async.notifications import serve as serve_app

    sink = JsonLines(output)  # None: stdout; one write(2) per line, so a kill halves none

    async def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
        sink.write(message_record(notification.chat_id, message, notification.business_id))

    try:
        app = create_app(
            client,
            on_message,
            queue=queue,
            name="market-chat",
            version=__version__,
            allow_from=MARKET_NETWORKS if allow_from is None else (allow_from or None),
            trusted_proxies=trusted_proxies,
            drain_timeout=drain_timeout,
        )
        sink.open()
    except (ValueError, OutputError) as exc:
        raise UsageError(str(exc)) from None

    def ready(url: str) -> None:
        console.info(f"market-chat: receiving notifications at {url} (Ctrl-C stops)")

    try:
        return await serve_app(app, host=host, port=port, on_ready=ready)
    except QueueError as exc:
        raise UsageError(f"queue {queue}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    finally:
        sink.close()
