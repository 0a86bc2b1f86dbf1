"""``market-chat chats``: the cabinet's chats, one JSON line each (getChats)."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .options import add_business_id, add_chat_filters, client_from
from .outputs import JsonLines, write_stream
from .status import UsageError

if TYPE_CHECKING:
    from market_chat_async import Chat

    from .options import SharedOptions, Subparsers
    from .progress import Console

__all__ = ["add_parser", "run"]


def add_parser(commands: Subparsers, shared: SharedOptions) -> argparse.ArgumentParser:
    """The ``chats`` subcommand."""
    parser = commands.add_parser(
        "chats",
        parents=shared.for_api,
        help="list the cabinet's chats, one JSON line each",
        description="Write every chat of the cabinet that passes the filters to stdout, one "
        "JSON object per line in the API's own shape (chatId, type, status, createdAt, "
        "updatedAt, context). A filter given several times matches any of its values.",
    )
    add_business_id(parser)
    add_chat_filters(parser)
    return parser


async def run(args: argparse.Namespace, console: Console) -> int:
    """List the chats."""
    from market_chat_async import to_api_dict

    async with client_from(args) as client:
        try:
            chats = client.iter_chats(
                args.business_id,
                statuses=args.status,
                types=args.type,
                context_types=args.context_type,
            )
        except ValueError as exc:  # a filter value the API does not take; nothing was sent
            raise UsageError(str(exc)) from None

        async def records(found: AsyncIterator[Chat]) -> AsyncIterator[dict[str, Any]]:
            async for chat in found:
                yield to_api_dict(chat)

        return await write_stream(records(chats), JsonLines(None), console, noun="chat")
