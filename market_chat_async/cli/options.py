"""What every command shares: the option groups, the argument types, the client they make,
and the shape of a command module.

A command is a module with two functions (see :class:`Command`)::

    def add_parser(commands: Subparsers, shared: SharedOptions) -> argparse.ArgumentParser:
        parser = commands.add_parser("get", parents=shared.for_api, help="...")
        parser.add_argument("--chat-id", type=id_arg, required=True, help="...")
        return parser

    async def run(args: argparse.Namespace, console: Console) -> int:
        async with client_from(args) as client:
            ...
        return OK

and :mod:`market_chat_async.cli.parser` lists the command modules in ``COMMANDS``.
Command modules import the client (and so aiohttp) inside ``run``, so ``--help`` and
``--version`` start fast.
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from market_chat_async._env import API_KEY_ENV, BASE_URL_ENV
from market_chat_async._models import ChatContextType, ChatStatus, ChatType

from .inputs import INT64_MAX, parse_id
from .status import UsageError

if TYPE_CHECKING:
    from market_chat_async import MarketChatClient, Quota

    from .progress import Console

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "Command",
    "SharedOptions",
    "add_business_id",
    "add_chat_filters",
    "add_chat_id",
    "add_progress_every",
    "client_from",
    "file_arg",
    "file_or_dash",
    "id_arg",
    "port_arg",
    "positive_int",
    "quota_arg",
    "shared_options",
    "verbosity",
]


class Command(Protocol):
    """What :mod:`market_chat_async.cli.parser` needs of a command module."""

    def add_parser(
        self, commands: Subparsers, shared: SharedOptions
    ) -> argparse.ArgumentParser:  # pragma: no cover - a protocol
        """Add the command's subparser to ``commands`` and return it."""
        ...

    async def run(
        self, args: argparse.Namespace, console: Console
    ) -> int:  # pragma: no cover - a protocol
        """Do the command; the exit status. Raise :class:`UsageError` for what the user must fix."""
        ...


class SharedOptions(NamedTuple):
    """Parent parsers for ``commands.add_parser(..., parents=...)``."""

    for_api: list[argparse.ArgumentParser]
    """The API options and the verbosity options: for commands that call the API."""
    local: list[argparse.ArgumentParser]
    """Only the verbosity options: for commands that do not."""


def id_arg(text: str) -> int:
    """An id option's value.

    >>> id_arg("67")
    67
    """
    try:
        return parse_id("id", text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to {INT64_MAX}, got {text!r}"
        ) from None


def add_business_id(parser: argparse.ArgumentParser) -> None:
    """``--business-id B``, required: the cabinet."""
    parser.add_argument(
        "--business-id", type=id_arg, required=True, metavar="B", help="the cabinet"
    )


def add_chat_id(parser: argparse.ArgumentParser) -> None:
    """``--chat-id C``, required: the chat."""
    parser.add_argument("--chat-id", type=id_arg, required=True, metavar="C", help="the chat")


def _known(enum: type[ChatStatus | ChatType | ChatContextType]) -> str:
    return ", ".join(member.value for member in enum)


def add_chat_filters(parser: argparse.ArgumentParser) -> None:
    """``--status``, ``--type`` and ``--context-type``: the getChats filters."""
    parser.add_argument(
        "--status",
        action="append",
        metavar="STATUS",
        help=f"only chats in this status (repeatable): {_known(ChatStatus)}",
    )
    parser.add_argument(
        "--type",
        action="append",
        metavar="TYPE",
        help=f"only chats of this type (repeatable): {_known(ChatType)}",
    )
    parser.add_argument(
        "--context-type",
        action="append",
        metavar="CONTEXT",
        help=f"only chats about this (repeatable): {_known(ChatContextType)}",
    )


def add_progress_every(parser: argparse.ArgumentParser) -> None:
    """``--progress-every``: how often a plain progress line is printed."""
    parser.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often to print a progress line when stderr is not a terminal (default: 10)",
    )


def quota_arg(text: str) -> Quota:
    """``--quota LIMIT/SECONDS``.

    >>> quota = quota_arg("1000/3600")
    >>> quota.limit, quota.period
    (1000, 3600.0)
    """
    from market_chat_async import Quota

    limit, _, period = text.partition("/")
    try:
        return Quota(limit=int(limit), period=float(period))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LIMIT/SECONDS such as 1000/3600, got {text!r}"
        ) from None


def positive_int(text: str) -> int:
    """A count of at least 1.

    >>> positive_int("4")
    4
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def port_arg(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535.

    >>> port_arg("8080")
    8080
    """
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def file_or_dash(text: str) -> Path | None:
    """A file, or ``None`` for ``-`` (stdin or stdout); ``./-`` names a file called ``-``.

    >>> file_or_dash("-") is None, file_or_dash("ids.csv")
    (True, PosixPath('ids.csv'))
    """
    return None if text == "-" else file_arg(text)


def file_arg(text: str) -> Path:
    """A file that must be a file (``-`` is refused rather than taken as a file name).

    >>> file_arg("errors.jsonl")
    PosixPath('errors.jsonl')
    """
    if text == "-":
        raise argparse.ArgumentTypeError(
            "expected a file name; '-' is only for --input and --output"
        )
    if not text:
        raise argparse.ArgumentTypeError("expected a file name")
    return Path(text)


def add_verbosity(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``-v``/``-q``, on the top parser and again on each command's, so that both
    ``market-chat -v fetch ...`` and ``market-chat fetch -v ...`` work (and add up)."""
    # A subparser's defaults overwrite the top parser's values, so the command's own
    # options have no default and a dest of their own.
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        dest="verbose" if top else "verbose_after",
        default=0 if top else argparse.SUPPRESS,
        help="log more: -v info, -vv debug (repeatable)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="log each HTTP exchange and every decision: the same as -vv",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="no progress, only warnings and errors",
    )


def verbosity(args: argparse.Namespace) -> int:
    """How many ``-v`` were given, before and after the command (``--debug`` is two).

    >>> verbosity(argparse.Namespace(verbose=1, verbose_after=1, debug=False))
    2
    """
    given = int(args.verbose) + int(getattr(args, "verbose_after", 0))
    return max(given, 2) if args.debug else given


def shared_options() -> SharedOptions:
    """Build the parent parsers (fresh ones for each :func:`build_parser`)."""
    local = argparse.ArgumentParser(add_help=False)
    add_verbosity(local, top=False)
    api = argparse.ArgumentParser(add_help=False)
    group = api.add_argument_group("API options")
    group.add_argument(
        "--base-url",
        metavar="URL",
        help=f"the API's base URL (default: ${BASE_URL_ENV}, else the Market's)",
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"the Api-Key (default: ${API_KEY_ENV}; prefer that, a command line is visible "
        "to other users of the machine)",
    )
    group.add_argument(
        "--proxy",
        metavar="URL",
        help="an HTTP proxy for the API's requests (default: $HTTPS_PROXY/$HTTP_PROXY, "
        "less $NO_PROXY)",
    )
    group.add_argument(
        "--quota",
        type=quota_arg,
        default=None,  # the client's own
        metavar="LIMIT/SECONDS",
        help="the cabinet's resource quota (default: 1000/3600)",
    )
    group.add_argument(
        "--max-parallel",
        type=positive_int,
        default=4,
        metavar="N",
        help="requests in flight per cabinet (default: 4)",
    )
    return SharedOptions(for_api=[api, local], local=[local])


def client_from(args: argparse.Namespace) -> MarketChatClient:
    """The client the API options describe; :class:`UsageError` if they do not make one."""
    from market_chat_async import MarketChatClient

    key = args.api_key or os.environ.get(API_KEY_ENV)
    if not key or not key.strip():
        raise UsageError(f"no API key: set {API_KEY_ENV} or pass --api-key")
    make = functools.partial(
        MarketChatClient, api_key=key, quota=args.quota, max_parallel=args.max_parallel
    )
    try:
        # Only what was given is passed: the rest keeps the client's own defaults.
        base_url = args.base_url or os.environ.get(BASE_URL_ENV, "").strip()
        if base_url:
            make = functools.partial(make, base_url=base_url)
        return make(proxy=args.proxy) if args.proxy else make()
    except ValueError as exc:  # its messages never include the key
        raise UsageError(str(exc)) from None
