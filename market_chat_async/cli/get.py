"""``market-chat get``: one message as indented JSON on stdout."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from .options import add_business_id, add_chat_id, client_from, id_arg
from .outputs import message_record, print_out
from .status import FAILED, OK

if TYPE_CHECKING:
    from .options import SharedOptions, Subparsers
    from .progress import Console

__all__ = ["add_parser", "run"]


def add_parser(commands: Subparsers, shared: SharedOptions) -> argparse.ArgumentParser:
    """The ``get`` subcommand."""
    parser = commands.add_parser(
        "get",
        parents=shared.for_api,
        help="print one message as JSON",
        description="Print one message as indented JSON in the API's own shape, with chatId added.",
    )
    add_business_id(parser)
    add_chat_id(parser)
    parser.add_argument("--message-id", type=id_arg, required=True, metavar="M", help="the message")
    return parser


async def run(args: argparse.Namespace, console: Console) -> int:
    """Fetch the message and print it; 1 if the API refuses."""
    from market_chat_async import MarketApiError

    async with client_from(args) as client:
        try:
            message = await client.get_message(args.business_id, args.chat_id, args.message_id)
        except MarketApiError as exc:
            console.warn(f"error: {type(exc).__name__}: {exc}")
            return FAILED
    ascii_only = (sys.stdout.encoding or "").lower().replace("-", "") != "utf8"
    record = message_record(args.chat_id, message)
    print_out(json.dumps(record, ensure_ascii=ascii_only, indent=2))
    return OK
