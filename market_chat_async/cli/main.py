"""``market-chat``'s entry point: parse, set up logging and signals, run the command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING

from .options import verbosity
from .parser import build_parser
from .progress import Console
from .status import INTERRUPTED, TERMINATED, USAGE, UsageError

if TYPE_CHECKING:
    import argparse

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``market-chat`` with ``argv`` (default: the process's arguments); the exit status.

    The console script calls it with no arguments; from Python, for example::

        status = main(["fetch", "--business-id", "12345", "--input", "ids.csv",
                       "--output", "messages.jsonl"])
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity(args), 2)],
        format="market-chat: %(levelname)s: %(name)s: %(message)s",
    )
    try:
        return asyncio.run(_run(args))
    except UsageError as exc:
        print(f"market-chat: error: {exc}", file=sys.stderr)
        return USAGE
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
