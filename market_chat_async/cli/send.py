"""``market-chat send``: a text or a file to a chat, sent at most once."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .options import add_business_id, add_chat_id, client_from, file_arg
from .status import FAILED, OK, UsageError

if TYPE_CHECKING:
    from .options import SharedOptions, Subparsers
    from .progress import Console

__all__ = ["add_parser", "run"]


def add_parser(commands: Subparsers, shared: SharedOptions) -> argparse.ArgumentParser:
    """The ``send`` subcommand."""
    parser = commands.add_parser(
        "send",
        parents=shared.for_api,
        help="send a text or a file to a chat",
        description="Send a text or a file to a chat. It is sent at most once: if the "
        "service fails in a way that leaves open whether it arrived (a 5xx, a timeout, a "
        "dropped connection), market-chat says so and exits 1 without sending again; check "
        "the chat's history before you retry.",
    )
    add_business_id(parser)
    add_chat_id(parser)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", metavar="T", help="the text, 1 to 4,096 characters")
    what.add_argument("--file", type=file_arg, metavar="P", help="the file to send")
    return parser


async def run(args: argparse.Namespace, console: Console) -> int:
    """Send it; 1 if the service refused or the outcome is unknown."""
    from market_chat_async import MarketApiError, OutcomeUnknownError

    file: Path | None = args.file
    async with client_from(args) as client:
        try:
            if file is not None:
                await client.send_file(args.business_id, args.chat_id, file)
            else:
                await client.send_message(args.business_id, args.chat_id, args.text)
        except ValueError as exc:  # refused before anything was sent
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror}") from None
        except OutcomeUnknownError as exc:
            console.warn(
                f"error: {exc}. It may or may not have reached the chat: check "
                f"`market-chat history --business-id {args.business_id} --chat-id "
                f"{args.chat_id}` before sending again"
            )
            return FAILED
        except MarketApiError as exc:
            console.warn(f"error: {type(exc).__name__}: {exc}; nothing was sent")
            return FAILED
    sent = f"{file.name}" if file is not None else "the text"
    console.info(f"market-chat: sent {sent} to chat {args.chat_id}")
    return OK
