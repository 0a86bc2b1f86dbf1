"""``market-chat history``: a chat's messages, oldest first, one JSON line each
(getChatHistory), in the same shape as ``fetch`` writes."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .options import add_business_id, add_chat_id, client_from, id_arg
from .outputs import JsonLines, message_record, write_stream
from .status import UsageError

if TYPE_CHECKING:
    from market_chat_async import ChatMessage

    from .options import SharedOptions, Subparsers
    from .progress import Console

__all__ = ["add_parser", "run"]


def add_parser(commands: Subparsers, shared: SharedOptions) -> argparse.ArgumentParser:
    """The ``history`` subcommand."""
    parser = commands.add_parser(
        "history",
        parents=shared.for_api,
        help="write a chat's messages, oldest first, one JSON line each",
        description="Write a chat's messages to stdout, oldest first, one JSON object per "
        "line: the API's message object with chatId added, as fetch writes it.",
    )
    add_business_id(parser)
    add_chat_id(parser)
    parser.add_argument(
        "--from-message-id",
        type=id_arg,
        metavar="M",
        help="start at this message (inclusive; default: the first)",
    )
    return parser


async def run(args: argparse.Namespace, console: Console) -> int:
    """Write the history."""
    async with client_from(args) as client:
        try:
            messages = client.iter_history(
                args.business_id, args.chat_id, message_id_from=args.from_message_id
            )
        except ValueError as exc:  # nothing was sent
            raise UsageError(str(exc)) from None

        async def records(found: AsyncIterator[ChatMessage]) -> AsyncIterator[dict[str, Any]]:
            async for message in found:
                yield message_record(args.chat_id, message)

        return await write_stream(records(messages), JsonLines(None), console, noun="message")
