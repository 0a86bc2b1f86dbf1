"""``market-chat completion bash|zsh|fish``: a shell completion script, from the parser.

Completion uses argcomplete (the ``completion`` extra): the shell's script runs
``market-chat`` itself with the line typed so far, and :func:`complete` answers from the very
parser that parses the arguments, so completion cannot drift from the options. It is the one
well-kept library that covers bash, zsh and fish; it costs nothing when no shell asks, since
it is imported only then.
"""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING, Any, Final

from .outputs import print_out
from .status import OK, UsageError

if TYPE_CHECKING:
    from .options import SharedOptions, Subparsers
    from .progress import Console

__all__ = ["SHELLS", "add_parser", "complete", "run"]

SHELLS: Final = ("bash", "zsh", "fish")
_PROGRAM: Final = "market-chat"
_INSTALL: Final = 'pip install "market-chat-async[completion]"'


def add_parser(commands: Subparsers, shared: SharedOptions) -> argparse.ArgumentParser:
    """The ``completion`` subcommand."""
    parser = commands.add_parser(
        "completion",
        parents=shared.local,
        help="print a shell completion script",
        description="Print the completion script for SHELL. Load it, for example, with "
        '`eval "$(market-chat completion bash)"` in ~/.bashrc, `eval "$(market-chat '
        'completion zsh)"` in ~/.zshrc, or `market-chat completion fish | source` in '
        f"~/.config/fish/config.fish. Needs the completion extra: {_INSTALL}.",
    )
    parser.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")
    return parser


async def run(args: argparse.Namespace, console: Console) -> int:
    """Print the script."""
    try:
        integration = _argcomplete("argcomplete.shell_integration")
    except ImportError:
        raise UsageError(f"shell completion needs the completion extra: {_INSTALL}") from None
    print_out(integration.shellcode([_PROGRAM], shell=args.shell))
    return OK


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request and exit, if argcomplete is installed."""
    try:
        argcomplete = _argcomplete("argcomplete")
    except ImportError:  # the script came from an install that had it; say nothing
        return
    argcomplete.autocomplete(parser)


def _argcomplete(module: str) -> Any:
    # By name: the extra may be absent where the type checker runs, too.
    return importlib.import_module(module)
