"""``market-chat demo``: a bulk fetch against the bundled test server, no account needed."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .fetch import fetch
from .outputs import errors_path
from .progress import plural
from .status import FAILED, OK

if TYPE_CHECKING:
    from .options import SharedOptions, Subparsers
    from .progress import Console

__all__ = ["DEMO_BUSINESS", "DEMO_KEY", "DEMO_LIMIT", "DEMO_PERIOD", "add_parser", "demo", "run"]

DEMO_BUSINESS: Final = 12345
DEMO_KEY: Final = "test-api-key"
DEMO_LIMIT: Final = 20
DEMO_PERIOD: Final = 1.5


def add_parser(commands: Subparsers, shared: SharedOptions) -> argparse.ArgumentParser:
    """The ``demo`` subcommand."""
    parser = commands.add_parser(
        "demo",
        parents=shared.local,
        help="run a bulk fetch against a local test server",
        description="Start the bundled Market test server, write an input file with a "
        "repeated pair, a bad row and an unknown message on purpose, and fetch it, "
        "printing what happens. No account needed.",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="where the messages go (default: messages.jsonl in a new temporary directory)",
    )
    return parser


async def run(args: argparse.Namespace, console: Console) -> int:
    """Run the demo as the command line asks."""
    return await demo(args.output, console)


async def demo(output: Path | None, console: Console) -> int:
    """The demo itself; 0 when the fetch wrote what it should."""
    from market_chat_async import MarketChatClient, Quota
    from market_chat_async.testing import MarketTestServer
    from market_chat_async.testing import serve as serve_market

    quota = Quota(limit=DEMO_LIMIT, period=DEMO_PERIOD)
    folder = output.parent if output is not None else Path(tempfile.mkdtemp(prefix="market-chat-"))
    folder.mkdir(parents=True, exist_ok=True)
    messages = output or folder / "messages.jsonl"
    errors = errors_path(messages)
    ids = folder / "demo-ids.csv"
    rows = [f"{chat},{message}" for chat in range(1, 5) for message in range(1, 11)]
    rows[5:5] = ["1,3", "2,zero", "4,404"]  # a repeat, a bad row, an unknown message
    ids.write_text("chat_id,message_id\n" + "\n".join(rows) + "\n")
    server = MarketTestServer(quota=quota.limit, period=quota.period, max_parallel=4, latency=0.02)
    server.not_found.add((DEMO_BUSINESS, 4, 404))
    async with serve_market(server, host="127.0.0.1", port=0) as running:
        console.info(
            f"A Market test server is running at {running.url} (key {DEMO_KEY!r}, quota "
            f"{quota.limit} requests/{quota.period:g} s, 4 in flight).\n"
            f"{ids} has {len(rows)} rows: 1 repeated pair, 1 bad row and 1 unknown message, "
            "on purpose.\nRunning the equivalent of:\n"
            f"  market-chat fetch --base-url {running.url} --quota "
            f"{quota.limit}/{quota.period:g} --business-id {DEMO_BUSINESS} \\\n"
            f"      --input {ids} --output {messages}\n"
        )
        async with MarketChatClient(api_key=DEMO_KEY, base_url=running.url, quota=quota) as client:
            await fetch(client, DEMO_BUSINESS, ids, messages, errors, console, every=1.0)
    lines = messages.read_text(encoding="utf-8").splitlines()
    error_lines = errors.read_text(encoding="utf-8").splitlines() if errors.exists() else []
    console.info(f"\nFirst lines of {messages} ({plural(len(lines), 'line')}):")
    for line in lines[:2]:
        console.info(f"  {line}")
    console.info(f"{errors} ({plural(len(error_lines), 'line')}):")
    for line in error_lines:
        console.info(f"  {line}")
    console.info(
        "\nRun the same fetch against the real API with your key in YANDEX_MARKET_API_KEY:\n"
        "  market-chat fetch --business-id <id> --input ids.csv --output messages.jsonl"
    )
    expected = len({row for row in rows if "zero" not in row and row != "4,404"})
    return OK if len(lines) == expected and len(error_lines) == 2 else FAILED
