"""``market-chat fetch``: many messages into a JSON-lines file, resumable."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .inputs import pack, read_rows
from .options import client_from, id_arg
from .outputs import JsonLines, error_record, errors_path, load_done, message_record
from .progress import Console, Meter, duration, plural, quota_wait
from .status import FAILED, OK, UsageError

if TYPE_CHECKING:
    from market_chat_async import MarketApiError, MarketChatClient

    from .options import SharedOptions, Subparsers

__all__ = ["Plan", "add_parser", "fetch", "plan", "run"]

_SHOWN_BAD_ROWS = 20  # on stderr; the errors file has them all


def add_parser(commands: Subparsers, shared: SharedOptions) -> argparse.ArgumentParser:
    """The ``fetch`` subcommand."""
    parser = commands.add_parser(
        "fetch",
        parents=shared.for_api,
        help="fetch many messages into a JSON-lines file (resumable)",
        description="Fetch every (chat_id, message_id) pair of INPUT into OUTPUT, one JSON "
        "object per line: the API's message object (messageId, createdAt, sender, message, "
        "payload) with chatId added. Running the same command again resumes: pairs already "
        "in OUTPUT are skipped. Failures and bad rows (with line numbers) go to the errors "
        "file, which each run rewrites.",
    )
    parser.add_argument(
        "--business-id", type=id_arg, required=True, metavar="B", help="the cabinet"
    )
    parser.add_argument(
        "--input",
        type=Path,
        required=True,
        metavar="INPUT",
        help="CSV with the header chat_id,message_id, or JSON lines",
    )
    parser.add_argument(
        "--output",
        type=Path,
        required=True,
        metavar="OUTPUT",
        help="the JSON-lines file messages are appended to (and resumed from)",
    )
    parser.add_argument(
        "--errors",
        type=Path,
        metavar="FILE",
        help="failures and bad input rows, rewritten by each run (default: OUTPUT.errors.jsonl)",
    )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often to print a progress line when stderr is not a terminal (default: 10)",
    )
    return parser


async def run(args: argparse.Namespace, console: Console) -> int:
    """Run ``fetch`` as the command line asks."""
    async with client_from(args) as client:
        return await fetch(
            client,
            args.business_id,
            args.input,
            args.output,
            args.errors or errors_path(args.output),
            console,
            every=args.progress_every,
        )


class Plan(NamedTuple):
    """What a ``fetch`` run has to do."""

    pending: set[int]
    already: int
    bad: int


def plan(source: Path, out: JsonLines, failures: JsonLines, console: Console) -> Plan:
    """Prepare a ``fetch`` run: what is done (the output), what to do (the input).

    Opens the output (cutting off a torn last line) and starts a fresh errors file with the
    bad rows. Raises :class:`UsageError` when a file cannot be read or written.
    """
    try:
        source.open("rb").close()  # an unreadable input fails before the output is touched
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from None
    done = load_done(out.path, console.warn)
    try:
        failures.path.unlink(missing_ok=True)  # it lists the failures of this run only
        out.open()
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from None
    pending: set[int] = set()
    bad = already = 0
    for row in read_rows(source):
        if row.pair is None:
            bad += 1
            if bad <= _SHOWN_BAD_ROWS:
                console.warn(f"{source}:{row.line}: bad row ({row.problem}): {row.text[:80]!r}")
            failures.write(
                {
                    "line": row.line,
                    "input": row.text[:200],
                    "error": {"type": "BadRow", "status": None, "message": row.problem},
                }
            )
        elif pack(*row.pair) in done:
            already += 1
        else:
            pending.add(pack(*row.pair))
    if bad > _SHOWN_BAD_ROWS:
        more = plural(bad - _SHOWN_BAD_ROWS, "more bad row")
        console.warn(f"... and {more}, all in {failures.path}")
    return Plan(pending, already, bad)


async def fetch(
    client: MarketChatClient,
    business_id: int,
    source: Path,
    output: Path,
    errors: Path,
    console: Console,
    *,
    every: float = 10.0,
) -> int:
    """Fetch every pair of ``source`` not yet in ``output``; the exit status."""
    failures = JsonLines(errors)
    out = JsonLines(output)
    try:
        pending, already, bad = plan(source, out, failures, console)
        total = len(pending)
        state = await client.quota_state(business_id)
        wait = quota_wait(total, state, client.quota)
        console.info(
            f"{plural(total, 'pair')} to fetch"
            + (f" ({plural(already, 'row')} already in {output})" if already else "")
            + (
                f"; at {client.quota.limit} requests/{client.quota.period:g} s "
                f"this takes at least ~{duration(wait)}"
                if wait
                else ""
            )
        )
        return await _fetch_pending(
            client, business_id, source, pending, out, failures, console, every, bad
        )
    finally:
        out.close()
        failures.close()


async def _fetch_pending(
    client: MarketChatClient,
    business_id: int,
    source: Path,
    pending: set[int],
    out: JsonLines,
    failures: JsonLines,
    console: Console,
    every: float,
    bad: int,
) -> int:
    from market_chat_async import ForbiddenError, UnauthorizedError

    def pairs() -> Iterator[tuple[int, int]]:
        # A second pass over the file keeps its order; `pending` empties as it goes.
        for row in read_rows(source):
            if row.pair is not None and pack(*row.pair) in pending:
                pending.discard(pack(*row.pair))
                yield row.pair

    meter = Meter(
        len(pending), client, business_id, every=every, quiet=console.quiet, err=console.err
    )
    ticker = asyncio.create_task(meter.run())
    stream = client.stream_messages(business_id, pairs())
    refused: MarketApiError | None = None
    try:
        async for item in stream:
            if item.message is not None:
                out.write(message_record(item.chat_id, item.message))
            else:
                assert item.error is not None
                failures.write(
                    {
                        "chatId": item.chat_id,
                        "messageId": item.message_id,
                        "error": error_record(item.error),
                    }
                )
                if isinstance(item.error, UnauthorizedError | ForbiddenError):
                    refused = item.error  # every other pair would be refused alike
                    break
            meter.advance(item.ok)
    except asyncio.CancelledError:
        meter.close()
        console.warn(
            f"interrupted: {out.count} new messages in {out.path}, each line complete; "
            "run the same command again to resume"
        )
        raise
    finally:
        await _aclose(stream)
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        meter.close()
    if refused is not None:
        console.warn(f"error: the API refused the key ({refused}); stopped")
        return FAILED
    failed = failures.count - bad
    console.info(
        f"{out.count} messages written to {out.path}"
        + (f"; {plural(failed, 'pair')} failed" if failed else "")
        + (f"; {plural(bad, 'bad row')}" if bad else "")
        + (f"; see {failures.path}" if failed or bad else "")
    )
    return FAILED if failed or bad else OK


async def _aclose(stream: AsyncIterator[Any]) -> None:
    # Leaving `async for` early does not close an async generator; this cancels what is
    # in flight now rather than whenever the generator is collected.
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
