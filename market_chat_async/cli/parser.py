"""The ``market-chat`` argument parser, and the one list of its commands.

To add a command, write a module beside this one with ``add_parser(commands, shared)`` and
``async run(args, console) -> int`` (see :mod:`market_chat_async.cli.options`), import it
here (``import market_chat_async.cli.NAME as NAME``) and put it in ``COMMANDS``; the order
of ``COMMANDS`` is the order of ``--help``.
"""

from __future__ import annotations

import argparse
from typing import Final

# By full name, not `from . import ...`: the command modules, not this package's __init__
# (which imports this module), are what the parser depends on.
import market_chat_async.cli.chats as chats
import market_chat_async.cli.completion as completion
import market_chat_async.cli.demo as demo
import market_chat_async.cli.export as export
import market_chat_async.cli.fetch as fetch
import market_chat_async.cli.get as get
import market_chat_async.cli.history as history
import market_chat_async.cli.queue as queue
import market_chat_async.cli.send as send
import market_chat_async.cli.serve as serve
from market_chat_async._version import __version__

from .options import Command, add_verbosity, shared_options

__all__ = ["COMMANDS", "build_parser"]

COMMANDS: Final[tuple[Command, ...]] = (
    get,
    fetch,
    export,
    chats,
    history,
    send,
    serve,
    queue,
    demo,
    completion,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``market-chat`` argument parser; each command's ``run`` is its ``args.run``.

    >>> args = build_parser().parse_args(["demo", "-q"])
    >>> args.run is demo.run, args.quiet
    (True, True)
    """
    parser = argparse.ArgumentParser(
        prog="market-chat",
        description="Yandex Market chats from a terminal: read and fetch messages in bulk, "
        "list chats, reply, receive notifications, all within the cabinet's limits.",
        epilog="Exit status: 0 all done; 1 something failed (see the errors file); 2 usage "
        "error; 130 or 143 interrupted. New here? `market-chat demo` runs a bulk fetch "
        "against a local test server, no account needed.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    add_verbosity(parser, top=True)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of:"
    )
    shared = shared_options()
    for command in COMMANDS:
        command.add_parser(commands, shared).set_defaults(run=command.run)
    return parser
