"""``market-chat``'s entry point: parse, set up logging and signals, run the command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from .completion import complete
from .options import verbosity
from .outputs import OutputError
from .parser import build_parser
from .progress import Console
from .status import FAILED, INTERRUPTED, TERMINATED, USAGE, UsageError

if TYPE_CHECKING:
    import argparse

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``market-chat`` with ``argv`` (default: the process's arguments); the exit status.

    The console script calls it with no arguments; from Python, for example::

        status = main(["fetch", "--business-id", "12345", "--input", "ids.csv",
                       "--output", "messages.jsonl"])
    """
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # a shell asks for completions (see `completion`)
        complete(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(format="market-chat: %(levelname)s: %(name)s: %(message)s")
    if verbosity(args):
        # The library's own log only: -vv is one line per HTTP exchange, not aiohttp's chatter.
        level = logging.INFO if verbosity(args) == 1 else logging.DEBUG
        logging.getLogger("market_chat_async").setLevel(level)
    try:
        return asyncio.run(_run(args))
    except UsageError as exc:
        print(f"market-chat: error: {exc}", file=sys.stderr)
        return USAGE
    except OutputError as exc:
        print(f"market-chat: error: {exc}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return INTERRUPTED
    except asyncio.CancelledError:
        return TERMINATED


async def _run(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    status: int = await args.run(args, Console(quiet=args.quiet))
    return status
