"""``market-chat fetch``: many messages into a JSON-lines file, resumable."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from market_chat_async._bulk import STRATEGIES, Strategy

from .inputs import pack, read_rows
from .options import add_business_id, add_progress_every, client_from, file_arg, file_or_dash
from .outputs import (
    JsonLines,
    OutputError,
    error_record,
    errors_path,
    load_done,
    message_record,
    same_file,
)
from .progress import Console, Meter, duration, plural, quota_wait
from .status import FAILED, OK, UsageError

if TYPE_CHECKING:
    from market_chat_async import MarketApiError, MarketChatClient

    from .options import SharedOptions, Subparsers

__all__ = ["Plan", "add_parser", "fetch", "plan", "refuse_overwrites", "run"]

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
        "file, which each run rewrites. '-' reads the pairs from stdin (INPUT) or writes the "
        "messages to stdout (OUTPUT; then there is nothing to resume from, and --errors must "
        "name the errors file).",
    )
    add_business_id(parser)
    parser.add_argument(
        "--input",
        type=file_or_dash,
        required=True,
        metavar="INPUT",
        help="CSV with the header chat_id,message_id, or JSON lines; '-' for stdin",
    )
    parser.add_argument(
        "--output",
        type=file_or_dash,
        required=True,
        metavar="OUTPUT",
        help="the JSON-lines file messages are appended to (and resumed from); '-' for "
        "stdout, with no resume",
    )
    parser.add_argument(
        "--errors",
        type=file_arg,
        metavar="FILE",
        help="failures and bad input rows, rewritten by each run (default: OUTPUT.errors.jsonl)",
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help="how the pairs are fetched: 'message' one getChatMessage each; 'history' each "
        "chat's ids from getChatHistory pages; 'auto' (default) per chat whichever ends the "
        "job sooner under both quotas. Every id history does not return is fetched alone, so "
        "the output is the same",
    )
    add_progress_every(parser)
    return parser


async def run(args: argparse.Namespace, console: Console) -> int:
    """Run ``fetch`` as the command line asks."""
    if args.errors is None and args.output is None:
        raise UsageError("with --output - (stdout), name the errors file with --errors")
    errors = args.errors or errors_path(args.output)
    refuse_overwrites(args.input, args.output, errors)  # before the client, before any file
    async with client_from(args) as client:
        return await fetch(
            client,
            args.business_id,
            args.input,
            args.output,
            errors,
            console,
            every=args.progress_every,
            strategy=args.strategy,
        )


def refuse_overwrites(source: Path | None, output: Path | None, errors: Path) -> None:
    """:class:`UsageError` if one of the files would destroy another: the errors file is
    rewritten by each run, so it must be neither the output nor the input (by any path, hard
    link or symlink); and the output must not be the input."""
    if output is not None and same_file(errors, output):
        raise UsageError(
            f"--errors {errors} is the same file as --output {output}: each run rewrites the "
            "errors file, which would erase the messages fetched; name another errors file"
        )
    if source is not None and same_file(errors, source):
        raise UsageError(
            f"--errors {errors} is the same file as --input {source}: each run rewrites the "
            "errors file, which would erase the input; name another errors file"
        )
    if source is not None and output is not None and same_file(output, source):
        raise UsageError(
            f"--output {output} is the same file as --input {source}: name another output file"
        )


class Plan(NamedTuple):
    """What a ``fetch`` run has to do."""

    pending: set[int]
    already: int
    bad: int


def plan(source: Path, out: JsonLines, failures: JsonLines, console: Console, *, name: str) -> Plan:
    """Prepare a ``fetch`` run: what is done (the output), what to do (the input, called
    ``name`` in messages).

    Opens the output (cutting off a torn last line) and starts a fresh errors file with the
    bad rows. Raises :class:`UsageError` when a file cannot be read or written.
    """
    try:
        source.open("rb").close()  # an unreadable input fails before the output is touched
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from None
    done = set() if out.path is None else load_done(out.path, console.warn)
    try:
        out.open()
        failures.open()
    except OutputError as exc:
        raise UsageError(str(exc)) from None
    pending: set[int] = set()
    bad = already = 0
    for row in read_rows(source, name=name):
        if row.pair is None:
            bad += 1
            if bad <= _SHOWN_BAD_ROWS:
                console.warn(f"{name}:{row.line}: bad row ({row.problem}): {row.text[:80]!r}")
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
        console.warn(f"... and {more}, all in {failures.name}")
    return Plan(pending, already, bad)


@contextlib.contextmanager
def _readable(source: Path | None) -> Iterator[tuple[Path, str]]:
    """The input as a file that can be read twice, and its name: stdin is copied to a
    temporary file first (the second pass keeps the input's order with flat memory)."""
    if source is not None:
        yield source, str(source)
        return
    with tempfile.TemporaryDirectory(prefix="market-chat-") as folder:
        copy = Path(folder) / "stdin"
        with copy.open("wb") as file:
            shutil.copyfileobj(sys.stdin.buffer, file)
        yield copy, "<stdin>"


async def fetch(
    client: MarketChatClient,
    business_id: int,
    source: Path | None,
    output: Path | None,
    errors: Path,
    console: Console,
    *,
    every: float = 10.0,
    strategy: Strategy = "auto",
) -> int:
    """Fetch every pair of ``source`` (``None``: stdin) not yet in ``output`` (``None``:
    stdout, with no resume), the ``strategy`` way; the exit status."""
    refuse_overwrites(source, output, errors)
    failures = JsonLines(errors, rewrite=True)
    out = JsonLines(output)
    try:
        with _readable(source) as (path, name):
            pending, already, bad = plan(path, out, failures, console, name=name)
            total = len(pending)
            state = await client.quota_state(business_id)
            wait = quota_wait(total, state, client.quota)
            one_by_one = (
                f"at {client.quota.limit} requests/{client.quota.period:g} s "
                f"this takes at least ~{duration(wait)}"
            )
            where = ""
            if strategy != "message":
                where = f" in {plural(len({packed >> 64 for packed in pending}), 'chat')}"
                one_by_one = "reading chat histories where that is sooner" + (
                    f" (one by one, {one_by_one})" if wait else ""
                )
            console.info(
                f"{plural(total, 'pair')} to fetch{where}"
                + (f" ({plural(already, 'row')} already in {out.name})" if already else "")
                + (f"; {one_by_one}" if wait or strategy != "message" else "")
                + ("; writing to stdout, so a rerun cannot resume" if output is None else "")
            )
            return await _fetch_pending(
                client,
                business_id,
                path,
                name,
                pending,
                out,
                failures,
                console,
                every,
                bad,
                strategy,
            )
    finally:
        out.close()
        failures.close()


async def _fetch_pending(
    client: MarketChatClient,
    business_id: int,
    source: Path,
    name: str,
    pending: set[int],
    out: JsonLines,
    failures: JsonLines,
    console: Console,
    every: float,
    bad: int,
    strategy: Strategy,
) -> int:
    from market_chat_async import ForbiddenError, UnauthorizedError

    def pairs() -> Iterator[tuple[int, int]]:
        # A second pass over the file keeps its order; `pending` empties as it goes.
        for row in read_rows(source, name=name):
            if row.pair is not None and pack(*row.pair) in pending:
                pending.discard(pack(*row.pair))
                yield row.pair

    meter = Meter(
        len(pending),
        client,
        business_id,
        every=every,
        quiet=console.quiet,
        err=console.err,
        quota_bound=strategy == "message",
    )
    ticker = asyncio.create_task(meter.run())
    stream = client.stream_messages(business_id, pairs(), strategy=strategy)
    refused: MarketApiError | None = None
    resume = "; run the same command again to resume" if out.path is not None else ""
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
        console.warn(f"interrupted: {_written(out)}, each line complete{resume}")
        raise
    except OutputError as exc:
        meter.close()
        console.warn(f"error: {exc}; {_written(out)}, each line complete{resume}")
        return FAILED
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
        f"{plural(out.count, 'message')} written to {out.name}"
        + (f"; {plural(failed, 'pair')} failed" if failed else "")
        + (f"; {plural(bad, 'bad row')}" if bad else "")
        + (f"; see {failures.name}" if failed or bad else "")
    )
    return FAILED if failed or bad else OK


def _written(out: JsonLines) -> str:
    return f"{plural(out.count, 'new message')} in {out.name}"


async def _aclose(stream: AsyncIterator[Any]) -> None:
    # Leaving `async for` early does not close an async generator; this cancels what is
    # in flight now rather than whenever the generator is collected.
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
