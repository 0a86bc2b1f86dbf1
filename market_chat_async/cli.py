"""``market-chat``: Market chat messages from a terminal.

::

    market-chat get   --business-id 12345 --chat-id 67 --message-id 89
    market-chat fetch --business-id 12345 --input ids.csv --output messages.jsonl
    market-chat serve --port 8080 --output messages.jsonl
    market-chat demo

Every message is written as one JSON object in the API's own shape (``messageId``,
``createdAt``, ``sender``, ``message``, ``payload``, and any field the service adds later;
``createdAt`` in ISO 8601 with the offset the API gave) with ``chatId`` put first, since the
API's message object does not say which chat it belongs to; ``serve``, which can receive for
several cabinets, adds ``businessId`` too.

``fetch`` reads CSV with the header ``chat_id,message_id`` or JSON lines
(``{"chat_id": 67, "message_id": 89}``; ``chatId`` / ``messageId`` too, so an output file is a
valid input), chosen by the extension (``.csv``; ``.jsonl``, ``.ndjson``, ``.json``) or else by
the first line. Messages are appended to the output in the order they arrive, one whole line
per write, so a killed run leaves a valid file; running the same command again fetches only the
pairs not in the output yet. Failures (and bad input rows, with their line numbers) go to the
errors file, rewritten by each run: it lists what is still missing after the last one.

Exit status: 0 when everything was fetched, 1 when some pair failed or an input row was bad
(the rest are still done), 2 for a usage error (no key, unreadable input, ...), 130 on Ctrl-C
and 143 on SIGTERM. The API key is read from ``YANDEX_MARKET_API_KEY`` unless ``--api-key`` is
given, and is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple, TextIO

from . import (
    ChatMessage,
    ForbiddenError,
    MarketApiError,
    MarketChatClient,
    Quota,
    QuotaState,
    UnauthorizedError,
    __version__,
)
from ._bulk import to_api_dict

__all__ = ["main"]

API_KEY_ENV: Final = "YANDEX_MARKET_API_KEY"
OK, FAILED, USAGE, INTERRUPTED, TERMINATED = 0, 1, 2, 130, 143
INT64_MAX: Final = 2**63 - 1
_SHOWN_BAD_ROWS = 20  # on stderr; the errors file has them all

logger = logging.getLogger("market_chat_async.cli")


class UsageError(Exception):
    """Something the user must fix before anything can run; reported in one line, exit 2."""


# -- ids and input files -------------------------------------------------------------------


def parse_id(name: str, value: object) -> int:
    """An id from a CSV cell or a JSON value: digits (or a JSON integer), 1 to 2**63 - 1.

    >>> parse_id("chat_id", " 67 "), parse_id("chat_id", 67)
    (67, 67)
    >>> parse_id("chat_id", "6_7")
    Traceback (most recent call last):
    ValueError: chat_id must be a whole number from 1 to 9223372036854775807, got '6_7'
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        number = 0
    if not 1 <= number <= INT64_MAX:
        raise ValueError(f"{name} must be a whole number from 1 to {INT64_MAX}, got {value!r}")
    return number


def pack(chat_id: int, message_id: int) -> int:
    """One int per pair, for sets of pairs that stay small."""
    return chat_id << 64 | message_id


class Row(NamedTuple):
    """One data row of the input: the pair, or what is wrong with it."""

    line: int
    text: str
    pair: tuple[int, int] | None
    problem: str | None = None


def input_format(path: Path) -> str:
    """``"csv"`` or ``"jsonl"``: by the extension, else by the first non-blank line."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    with path.open(encoding="utf-8-sig") as file:
        for line in file:
            if line.strip():
                return "jsonl" if line.lstrip().startswith("{") else "csv"
    return "csv"


def read_rows(path: Path) -> Iterator[Row]:
    """The rows of an input file, blank lines skipped; raises :class:`UsageError` when the
    file cannot be read at all (bad rows are yielded with their ``problem``)."""
    try:
        kind = input_format(path)
        with path.open(encoding="utf-8-sig", newline="") as file:
            yield from (_csv_rows(path, file) if kind == "csv" else _jsonl_rows(file))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def _csv_rows(path: Path, file: TextIO) -> Iterator[Row]:
    reader = csv.reader(file)
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    if header is None:
        return
    names = [cell.strip().lower() for cell in header]
    if "chat_id" not in names or "message_id" not in names:
        raise UsageError(
            f"{path}:{reader.line_num}: the first line must be the header chat_id,message_id "
            f"(got {','.join(header)[:80]!r})"
        )
    chat_col, message_col = names.index("chat_id"), names.index("message_id")
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        text = ",".join(row)
        try:
            pair = (parse_id("chat_id", row[chat_col]), parse_id("message_id", row[message_col]))
        except IndexError:
            yield Row(reader.line_num, text, None, f"expected {len(names)} columns")
        except ValueError as exc:
            yield Row(reader.line_num, text, None, str(exc))
        else:
            yield Row(reader.line_num, text, pair)


def _jsonl_rows(file: TextIO) -> Iterator[Row]:
    for number, raw in enumerate(file, 1):
        text = raw.strip()
        if not text:
            continue
        try:
            data = json.loads(text)
        except ValueError:
            yield Row(number, text, None, "not a JSON object")
            continue
        if not isinstance(data, dict):
            yield Row(number, text, None, "not a JSON object")
            continue
        try:
            ids = [_json_id(data, "chat_id", "chatId"), _json_id(data, "message_id", "messageId")]
        except ValueError as exc:
            yield Row(number, text, None, str(exc))
        else:
            yield Row(number, text, (ids[0], ids[1]))


def _json_id(data: dict[str, Any], name: str, camel: str) -> int:
    value = data.get(name, data.get(camel))
    if value is None:
        raise ValueError(f"{name} is missing")
    return parse_id(name, value)


# -- output files --------------------------------------------------------------------------


class JsonLines:
    """A JSON-lines file appended one whole line per ``write(2)``, so a kill never halves one.

    Opened by the first line unless :meth:`open` is called before, so an errors file only
    exists when there was an error.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._fd: int | None = None

    def open(self) -> None:
        """Create the file now (so that a path that cannot be written fails early)."""
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
            self._fd = os.open(self.path, flags, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as one line."""
        self.open()
        assert self._fd is not None
        view = memoryview(json_line(record).encode("utf-8"))
        while view:  # a regular file takes it in one call; a short write is only finished off
            view = view[os.write(self._fd, view) :]
        self.count += 1

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def errors_path(output: Path) -> Path:
    """Where failures go by default: ``<output>.errors.jsonl`` next to the output.

    >>> errors_path(Path("out/messages.jsonl")).as_posix()
    'out/messages.jsonl.errors.jsonl'
    """
    return output.with_name(output.name + ".errors.jsonl")


def json_line(record: dict[str, Any]) -> str:
    """One compact JSON line, non-ASCII kept readable unless it cannot be encoded.

    >>> json_line({"chatId": 1, "message": "привет"})
    '{"chatId":1,"message":"привет"}\\n'
    """
    try:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        text.encode("utf-8")  # a lone surrogate from the wire cannot be; escape everything then
    except UnicodeEncodeError:
        text = json.dumps(record, separators=(",", ":"))
    return text + "\n"


def message_record(
    chat_id: int, message: ChatMessage, business_id: int | None = None
) -> dict[str, Any]:
    """The line written for a message: ``chatId`` (and ``businessId``), then the API's shape."""
    ids = {"businessId": business_id} if business_id is not None else {}
    return {**ids, "chatId": chat_id, **to_api_dict(message)}


def error_record(error: BaseException) -> dict[str, Any]:
    """``{"type", "status", "message"}`` of an error, for the errors file."""
    if isinstance(error, MarketApiError):
        return {"type": type(error).__name__, "status": error.status, "message": error.message}
    return {"type": type(error).__name__, "status": None, "message": str(error)}


def load_done(path: Path, warn: Callable[[str], None]) -> set[int]:
    """The pairs already in an output file (packed); a torn last line is cut off the file."""
    done: set[int] = set()
    try:
        file = path.open("r+b")
    except FileNotFoundError:
        return done
    except OSError as exc:
        raise UsageError(f"cannot open {path}: {exc.strerror}") from None
    with file:
        good_end = 0
        for number, raw in enumerate(file, 1):
            if not raw.endswith(b"\n"):
                # Only a crash between the bytes of one write (power loss, full disk) does this.
                file.truncate(good_end)
                warn(f"{path}:{number}: cut off an incomplete last line")
                break
            good_end += len(raw)
            try:
                data = json.loads(raw)
                done.add(
                    pack(parse_id("chatId", data["chatId"]), parse_id("id", data["messageId"]))
                )
            except (ValueError, KeyError, TypeError):
                warn(f"{path}:{number}: not a message line; ignored")
    return done


# -- progress ------------------------------------------------------------------------------


def quota_wait(todo: int, state: QuotaState, quota: Quota) -> float:
    """The least time the quota alone imposes on ``todo`` more requests, in seconds.

    What is free now goes at once; every further ``quota.limit`` requests wait for tokens
    given back a period after use (the first batch sooner if some are already out).

    >>> q = Quota(limit=1000, period=3600.0)
    >>> fresh = QuotaState(limit=1000, remaining=1000, in_flight=0, max_parallel=4, frees_in=0.0,
    ...                    server_remaining=None)
    >>> quota_wait(5000, fresh, q) / 3600, quota_wait(1000, fresh, q)
    (4.0, 0.0)
    """
    beyond = todo - state.remaining
    if beyond <= 0:
        return 0.0
    periods = math.ceil(beyond / quota.limit)
    first = quota.period if state.remaining >= quota.limit else state.frees_in
    return first + (periods - 1) * quota.period


def duration(seconds: float) -> str:
    """A rough human duration.

    >>> duration(14400), duration(5400), duration(95), duration(3)
    ('4 h', '1 h 30 min', '2 min', '3 s')
    """
    if seconds >= 3600:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{math.ceil(seconds)} s"


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, the noun plural unless the count is one.

    >>> plural(1, "bad row"), plural(2, "bad row")
    ('1 bad row', '2 bad rows')
    """
    return f"{count} {noun}{'' if count == 1 else 's'}"


class Meter:
    """Done/total, failures and an ETA that knows the quota: a tqdm bar on a terminal (with the
    ``progress`` extra), otherwise a plain line on stderr every ``every`` seconds."""

    def __init__(
        self,
        total: int,
        client: MarketChatClient,
        business_id: int,
        *,
        every: float,
        quiet: bool,
        err: TextIO,
    ) -> None:
        self.total = total
        self.done = self.failed = 0
        self._client = client
        self._business_id = business_id
        self._every = every
        self._err = err
        self._started = time.monotonic()
        self._eta: float | None = None
        self._bar: Any = None
        self._quiet = quiet
        if not quiet and total and err.isatty():
            try:
                from tqdm import tqdm  # the optional extra
            except ImportError:
                pass
            else:
                self._bar = tqdm(
                    total=total,
                    unit="msg",
                    file=err,
                    dynamic_ncols=True,
                    bar_format="{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
                )

    def advance(self, ok: bool) -> None:
        """One more pair is finished."""
        self.done += 1
        self.failed += not ok
        if self._bar is not None:
            self._bar.update(1)
            if not ok:
                self._bar.set_postfix_str(self._postfix(), refresh=False)

    def _postfix(self) -> str:
        parts = [f"{self.failed} failed"] if self.failed else []
        if self._eta is not None and self.done < self.total:
            parts.append(f"ETA ~{duration(self._eta)}")
        return ", ".join(parts)

    def line(self) -> str:
        """The plain progress line."""
        postfix = self._postfix()
        return f"market-chat: {self.done}/{self.total} done" + (f", {postfix}" if postfix else "")

    async def run(self) -> None:
        """Refresh the ETA every second and show progress, until cancelled."""
        last_line = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            todo = self.total - self.done
            elapsed = time.monotonic() - self._started
            by_rate = todo * elapsed / self.done if self.done else 0.0
            try:
                state = await self._client.quota_state(self._business_id)
            except Exception:  # a shared limiter out of reach: no quota in the ETA this time
                logger.debug("no quota state for the ETA", exc_info=True)
                by_quota = 0.0
            else:
                by_quota = quota_wait(todo, state, self._client.quota)
            self._eta = max(by_quota, by_rate)
            if self._bar is not None:
                self._bar.set_postfix_str(self._postfix())
            elif not self._quiet and time.monotonic() - last_line >= self._every:
                last_line = time.monotonic()
                print(self.line(), file=self._err, flush=True)

    def close(self) -> None:
        """Put the bar away."""
        if self._bar is not None:
            self._bar.close()


# -- the commands --------------------------------------------------------------------------


class Console:
    """Where a command talks to the user: info lines (unless quiet) and warnings, on stderr."""

    def __init__(self, *, quiet: bool = False, err: TextIO | None = None) -> None:
        self.quiet = quiet
        self.err = err or sys.stderr

    def info(self, text: str) -> None:
        """A line worth seeing unless ``-q``."""
        if not self.quiet:
            print(text, file=self.err, flush=True)

    def warn(self, text: str) -> None:
        """A line always shown."""
        print(f"market-chat: {text}", file=self.err, flush=True)


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
    """Fetch every pair of ``source`` not yet in ``output``; the ``fetch`` command."""
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


async def get(client: MarketChatClient, business_id: int, chat_id: int, message_id: int) -> int:
    """The ``get`` command: one message as indented JSON on stdout."""
    try:
        message = await client.get_message(business_id, chat_id, message_id)
    except MarketApiError as exc:
        Console().warn(f"error: {type(exc).__name__}: {exc}")
        return FAILED
    ascii_only = (sys.stdout.encoding or "").lower().replace("-", "") != "utf8"
    record = message_record(chat_id, message)
    print(json.dumps(record, ensure_ascii=ascii_only, indent=2), flush=True)
    return OK


async def serve(
    client: MarketChatClient,
    host: str,
    port: int,
    output: Path | None,
    allow_from: list[str] | None,
    trusted_proxies: list[str],
    console: Console,
) -> int:
    """The ``serve`` command: receive notifications, print each new message as a JSON line."""
    from aiohttp import web

    from .notifications import MARKET_NETWORKS, ChatMessageSent, create_app

    sink = JsonLines(output) if output is not None else None

    async def on_message(notification: ChatMessageSent, message: ChatMessage) -> None:
        record = message_record(notification.chat_id, message, notification.business_id)
        if sink is not None:
            sink.write(record)
        else:
            sys.stdout.write(json_line(record))
            sys.stdout.flush()

    try:
        app = create_app(
            client,
            on_message,
            name="market-chat",
            version=__version__,
            allow_from=MARKET_NETWORKS if allow_from is None else (allow_from or None),
            trusted_proxies=trusted_proxies,
        )
        if sink is not None:
            sink.open()
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        bound = runner.addresses[0]
        url = f"http://{bound[0]}:{bound[1]}/notification"
        console.info(f"market-chat: receiving notifications at {url} (Ctrl-C stops)")
        await asyncio.Event().wait()  # until cancelled (Ctrl-C, SIGTERM)
    finally:
        await runner.cleanup()  # drains what is pending
        if sink is not None:
            sink.close()
    return OK  # pragma: no cover - only cancellation ends the wait


DEMO_BUSINESS = 12345
DEMO_KEY = "test-api-key"
DEMO_QUOTA = Quota(limit=20, period=1.5)


async def demo(output: Path | None, console: Console) -> int:
    """The ``demo`` command: a bulk fetch against the bundled test server, no account needed."""
    from .testing import MarketTestServer
    from .testing import serve as serve_market

    folder = output.parent if output is not None else Path(tempfile.mkdtemp(prefix="market-chat-"))
    folder.mkdir(parents=True, exist_ok=True)
    messages = output or folder / "messages.jsonl"
    errors = errors_path(messages)
    ids = folder / "demo-ids.csv"
    rows = [f"{chat},{message}" for chat in range(1, 5) for message in range(1, 11)]
    rows[5:5] = ["1,3", "2,zero", "4,404"]  # a repeat, a bad row, an unknown message
    ids.write_text("chat_id,message_id\n" + "\n".join(rows) + "\n")
    server = MarketTestServer(
        quota=DEMO_QUOTA.limit, period=DEMO_QUOTA.period, max_parallel=4, latency=0.02
    )
    server.not_found.add((DEMO_BUSINESS, 4, 404))
    async with serve_market(server, host="127.0.0.1", port=0) as running:
        console.info(
            f"A Market test server is running at {running.url} (key {DEMO_KEY!r}, quota "
            f"{DEMO_QUOTA.limit} requests/{DEMO_QUOTA.period:g} s, 4 in flight).\n"
            f"{ids} has {len(rows)} rows: 1 repeated pair, 1 bad row and 1 unknown message, "
            "on purpose.\nRunning the equivalent of:\n"
            f"  market-chat fetch --base-url {running.url} --quota "
            f"{DEMO_QUOTA.limit}/{DEMO_QUOTA.period:g} --business-id {DEMO_BUSINESS} \\\n"
            f"      --input {ids} --output {messages}\n"
        )
        async with MarketChatClient(
            api_key=DEMO_KEY, base_url=running.url, quota=DEMO_QUOTA
        ) as client:
            await fetch(client, DEMO_BUSINESS, ids, messages, errors, console, every=1.0)
    lines = messages.read_text(encoding="utf-8").splitlines()
    error_lines = errors.read_text(encoding="utf-8").splitlines() if errors.exists() else []
    console.info(f"\nFirst lines of {messages} ({len(lines)} lines):")
    for line in lines[:2]:
        console.info(f"  {line}")
    console.info(f"{errors} ({len(error_lines)} lines):")
    for line in error_lines:
        console.info(f"  {line}")
    console.info(
        "\nRun the same fetch against the real API with your key in YANDEX_MARKET_API_KEY:\n"
        "  market-chat fetch --business-id <id> --input ids.csv --output messages.jsonl"
    )
    expected = len({row for row in rows if "zero" not in row and row != "4,404"})
    return OK if len(lines) == expected and len(error_lines) == 2 else FAILED


# -- the command line ----------------------------------------------------------------------


def _id_arg(text: str) -> int:
    try:
        return parse_id("id", text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to {INT64_MAX}, got {text!r}"
        ) from None


def _quota_arg(text: str) -> Quota:
    limit, _, period = text.partition("/")
    try:
        return Quota(limit=int(limit), period=float(period))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LIMIT/SECONDS such as 1000/3600, got {text!r}"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``market-chat`` argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    api = common.add_argument_group("API options")
    api.add_argument("--base-url", metavar="URL", help="the API's base URL (default: the Market's)")
    api.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"the Api-Key (default: ${API_KEY_ENV}; prefer that, a command line is visible "
        "to other users of the machine)",
    )
    api.add_argument(
        "--quota",
        type=_quota_arg,
        default=Quota(),
        metavar="LIMIT/SECONDS",
        help="the cabinet's resource quota (default: 1000/3600)",
    )
    api.add_argument(
        "--max-parallel",
        type=_positive_int,
        default=4,
        metavar="N",
        help="requests in flight per cabinet (default: 4)",
    )
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)"
    )
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="no progress, only warnings and errors"
    )

    parser = argparse.ArgumentParser(
        prog="market-chat",
        description="Fetch Yandex Market chat messages, keeping the cabinet's limits.",
        epilog="Exit status: 0 all done; 1 something failed (see the errors file); 2 usage "
        "error; 130 or 143 interrupted. New here? `market-chat demo` runs a bulk fetch "
        "against a local test server, no account needed.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    get_cmd = commands.add_parser(
        "get", parents=[common, verbosity], help="print one message as JSON"
    )
    get_cmd.add_argument("--business-id", type=_id_arg, required=True, metavar="B")
    get_cmd.add_argument("--chat-id", type=_id_arg, required=True, metavar="C")
    get_cmd.add_argument("--message-id", type=_id_arg, required=True, metavar="M")

    fetch_cmd = commands.add_parser(
        "fetch",
        parents=[common, verbosity],
        help="fetch many messages into a JSON-lines file (resumable)",
        description="Fetch every (chat_id, message_id) pair of INPUT into OUTPUT, one JSON "
        "object per line: the API's message object (messageId, createdAt, sender, message, "
        "payload) with chatId added. Running the same command again resumes: pairs already "
        "in OUTPUT are skipped. Failures and bad rows (with line numbers) go to the errors "
        "file, which each run rewrites.",
    )
    fetch_cmd.add_argument("--business-id", type=_id_arg, required=True, metavar="B")
    fetch_cmd.add_argument(
        "--input",
        type=Path,
        required=True,
        metavar="INPUT",
        help="CSV with the header chat_id,message_id, or JSON lines",
    )
    fetch_cmd.add_argument("--output", type=Path, required=True, metavar="OUTPUT")
    fetch_cmd.add_argument(
        "--errors", type=Path, metavar="FILE", help="default: OUTPUT.errors.jsonl"
    )
    fetch_cmd.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often to print a progress line when stderr is not a terminal (default: 10)",
    )

    serve_cmd = commands.add_parser(
        "serve",
        parents=[common, verbosity],
        help="receive push notifications and print each new message as a JSON line",
    )
    serve_cmd.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8080, help="default: 8080")
    serve_cmd.add_argument("--output", type=Path, metavar="FILE", help="default: stdout")
    serve_cmd.add_argument(
        "--allow-from",
        action="append",
        metavar="CIDR",
        help="networks that may post (repeatable; default: the Market's; 'any' for everyone)",
    )
    serve_cmd.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="a reverse proxy whose X-Forwarded-For is believed (repeatable)",
    )

    demo_cmd = commands.add_parser(
        "demo", parents=[verbosity], help="run a bulk fetch against a local test server"
    )
    demo_cmd.add_argument(
        "--output", type=Path, metavar="FILE", help="default: messages.jsonl in a new temp dir"
    )
    return parser


def _client(args: argparse.Namespace) -> MarketChatClient:
    key = args.api_key or os.environ.get(API_KEY_ENV)
    if not key or not key.strip():
        raise UsageError(f"no API key: set {API_KEY_ENV} or pass --api-key")
    options: dict[str, Any] = {}
    if args.base_url:
        options["base_url"] = args.base_url
    try:
        return MarketChatClient(
            api_key=key, quota=args.quota, max_parallel=args.max_parallel, **options
        )
    except ValueError as exc:  # its messages never include the key
        raise UsageError(str(exc)) from None


async def _run(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    console = Console(quiet=args.quiet)
    if args.command == "demo":
        return await demo(args.output, console)
    async with _client(args) as client:
        if args.command == "get":
            return await get(client, args.business_id, args.chat_id, args.message_id)
        if args.command == "fetch":
            errors = args.errors or errors_path(args.output)
            return await fetch(
                client,
                args.business_id,
                args.input,
                args.output,
                errors,
                console,
                every=args.progress_every,
            )
        allow = args.allow_from
        if allow is not None and "any" in allow:
            allow = []
        try:
            return await serve(
                client, args.host, args.port, args.output, allow, args.trusted_proxy, console
            )
        except asyncio.CancelledError:
            return OK  # Ctrl-C or SIGTERM is how a receiver is meant to stop


def main(argv: list[str] | None = None) -> int:
    """Run ``market-chat`` with ``argv`` (default: the process's arguments); the exit status.

    The console script calls it with no arguments; from Python, for example::

        status = main(["fetch", "--business-id", "12345", "--input", "ids.csv",
                       "--output", "messages.jsonl"])
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
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


if __name__ == "__main__":
    sys.exit(main())
