"""``market-chat export``: every message of the cabinet into a JSON-lines file, incremental and
resumable, with a state file beside it.

The output holds one line per message, the ``fetch`` shape (the API's message object with
``chatId``). The state file (``OUTPUT.state.json``) records, per chat, the last message id
written and, once the chat was read to its end, the ``updatedAt`` it had then; and how many
bytes of the output it accounts for. A rerun reads only chats whose ``updatedAt`` changed, and
of those only the messages after the last one held.

Exactness across a kill: each line is written whole in one ``write(2)``; the state is written
(atomically: a temporary file renamed over it) only after the output was flushed to disk, so it
never claims a line the output lacks. It may lag behind the output, so a run first reads the
output past the bytes the state accounts for (all of it when there is no state) and takes each
chat's last id from there: the output is the truth, the state a shortcut.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import stat
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import attrs

from market_chat_async._bulk._planner import Budget

from .inputs import parse_id
from .options import add_business_id, add_chat_filters, add_progress_every, client_from, file_arg
from .outputs import JsonLines, OutputError, message_record, written_pairs
from .progress import Console, duration, logger, plural
from .status import FAILED, OK, UsageError

if TYPE_CHECKING:
    from market_chat_async import Chat, MarketChatClient

    from .options import SharedOptions, Subparsers

__all__ = ["ExportState", "add_parser", "export", "recover", "run", "state_path"]

_SAVE_EVERY: Final = 2.0  # seconds between state saves (each one flushes the output first)
_STATE_VERSION: Final = 1


def add_parser(commands: Subparsers, shared: SharedOptions) -> argparse.ArgumentParser:
    """The ``export`` subcommand."""
    parser = commands.add_parser(
        "export",
        parents=shared.for_api,
        help="export every message of the cabinet into a JSON-lines file (incremental)",
        description="Write every message of every chat that passes the filters to OUTPUT, one "
        "JSON object per line as fetch writes them, reading each chat's history. A state file "
        "beside OUTPUT records per chat the last message written and the chat's updatedAt, so "
        "running the same command again reads only the chats updated since, and only their "
        "new messages; a killed run resumes where it stopped.",
    )
    add_business_id(parser)
    parser.add_argument(
        "--output",
        type=file_arg,
        required=True,
        metavar="OUTPUT",
        help="the JSON-lines file messages are appended to",
    )
    parser.add_argument(
        "--since",
        type=since_arg,
        metavar="ISO",
        help="only chats updated at or after this time (ISO 8601 with a UTC offset, "
        "e.g. 2026-01-31T00:00:00+03:00)",
    )
    add_chat_filters(parser)
    add_progress_every(parser)
    return parser


def since_arg(text: str) -> datetime:
    """An aware ISO 8601 time.

    >>> since_arg("2026-01-31T00:00:00Z").isoformat()
    '2026-01-31T00:00:00+00:00'
    """
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, got {text!r}") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset; add one, e.g. {text}+00:00")
    return when


def state_path(output: Path) -> Path:
    """Where the state of an export into ``output`` is kept.

    >>> state_path(Path("out/messages.jsonl")).as_posix()
    'out/messages.jsonl.state.json'
    """
    return output.with_name(output.name + ".state.json")


@attrs.define
class ExportState:
    """What an export holds: per chat the last message id written (``last``) and, for chats
    read to their end, their ``updatedAt`` then (``complete``); ``output_bytes`` of the output
    this accounts for.

    >>> state = ExportState(business_id=1)
    >>> state.last[67] = 89
    >>> ExportState.from_json(state.to_json()) == state
    True
    """

    business_id: int
    output_bytes: int = 0
    last: dict[int, int] = attrs.field(factory=dict)
    complete: dict[int, str] = attrs.field(factory=dict)

    def to_json(self) -> str:
        """The state file's text."""
        chats: dict[str, dict[str, Any]] = {}
        for chat_id in sorted(self.last.keys() | self.complete.keys()):
            chats[str(chat_id)] = {
                "lastMessageId": self.last.get(chat_id),
                "updatedAt": self.complete.get(chat_id),
            }
        record = {
            "version": _STATE_VERSION,
            "businessId": self.business_id,
            "outputBytes": self.output_bytes,
            "chats": chats,
        }
        return json.dumps(record, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ExportState:
        """Read a state file's text; ``ValueError`` if it is not one."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
            raise ValueError("not an export state file of this version")
        state = cls(parse_id("businessId", data["businessId"]), int(data["outputBytes"]))
        for key, chat in data["chats"].items():
            chat_id = parse_id("chatId", key)
            if chat.get("lastMessageId") is not None:
                state.last[chat_id] = parse_id("lastMessageId", chat["lastMessageId"])
            if chat.get("updatedAt") is not None:
                state.complete[chat_id] = str(chat["updatedAt"])
        return state

    def save(self, path: Path) -> None:
        """Replace the state file at once: a reader sees the old state or the new one."""
        part = path.with_name(path.name + ".part")
        with part.open("w", encoding="utf-8") as file:
            file.write(self.to_json())
            file.flush()
            os.fsync(file.fileno())
        os.replace(part, path)


def recover(output: Path, state: ExportState, warn: Any) -> None:
    """Bring ``state`` up to what ``output`` holds: a torn last line is cut off, and each chat's
    last id is read from the lines past ``state.output_bytes`` (all of them, if the output is
    shorter than the state says: it is not the file the state was written for)."""
    try:
        if not stat.S_ISREG(output.stat().st_mode):
            raise UsageError(f"--output {output} is not a regular file")
        file = output.open("r+b")
    except FileNotFoundError:
        state.output_bytes = 0
        return
    except OSError as exc:
        raise UsageError(f"cannot open {output}: {exc.strerror}") from None
    with file:
        size = file.seek(0, os.SEEK_END)
        start = state.output_bytes if state.output_bytes <= size else 0
        if start == 0:
            state.last.clear()  # every line is read again below
        file.seek(start)
        for chat_id, message_id in written_pairs(file, output, warn):
            state.last[chat_id] = max(state.last.get(chat_id, 0), message_id)
        state.output_bytes = file.seek(0, os.SEEK_END)  # after a torn line was cut off


def _load_state(path: Path, business_id: int) -> ExportState:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ExportState(business_id)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        state = ExportState.from_json(text)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(
            f"{path} is not an export state file ({exc}); move it away to export from the output"
        ) from None
    if state.business_id != business_id:
        raise UsageError(
            f"{path} belongs to an export of cabinet {state.business_id}, not {business_id}; "
            "name another --output"
        )
    return state


async def run(args: argparse.Namespace, console: Console) -> int:
    """Run ``export`` as the command line asks."""
    async with client_from(args) as client:
        return await export(
            client,
            args.business_id,
            args.output,
            console,
            since=args.since,
            statuses=args.status,
            types=args.type,
            context_types=args.context_type,
            every=args.progress_every,
        )


async def export(
    client: MarketChatClient,
    business_id: int,
    output: Path,
    console: Console,
    *,
    since: datetime | None = None,
    statuses: list[str] | None = None,
    types: list[str] | None = None,
    context_types: list[str] | None = None,
    every: float = 10.0,
) -> int:
    """Export into ``output`` what it does not hold yet; the exit status."""
    from market_chat_async import MarketApiError
    from market_chat_async._bulk import export_messages

    where = state_path(output)
    state = _load_state(where, business_id)
    recover(output, state, console.warn)
    try:
        chats = client.iter_chats(
            business_id, statuses=statuses, types=types, context_types=context_types
        )
    except ValueError as exc:  # a filter value the API does not take; nothing was sent
        raise UsageError(str(exc)) from None
    out = JsonLines(output)
    try:
        out.open()
    except OutputError as exc:
        raise UsageError(str(exc)) from None
    unchanged = 0

    def wanted(chat: Chat) -> bool:
        nonlocal unchanged
        if since is not None and chat.updated_at < since:
            return False
        if state.complete.get(chat.chat_id) == chat.updated_at.isoformat():
            unchanged += 1
            return False
        meter.listed += 1
        return True

    def save() -> None:
        # The lines first, then the state that counts them (every line is written whole by
        # the time it returns, so the size is a line boundary).
        if out.count:
            fd = os.open(output, os.O_RDONLY)
            try:
                os.fsync(fd)
                state.output_bytes = os.fstat(fd).st_size
            finally:
                os.close(fd)
        state.save(where)

    meter = ExportMeter(client, business_id, every=every, console=console)
    ticker = asyncio.create_task(meter.run())
    stream = export_messages(client, business_id, chats, after=dict(state.last), wanted=wanted)
    chats_read = 0
    saved_at = time.monotonic()
    try:
        async with contextlib.aclosing(stream):
            async for chat, message in stream:
                if message is None:
                    state.complete[chat.chat_id] = chat.updated_at.isoformat()
                    chats_read += 1
                    meter.chat_done()
                else:
                    out.write(message_record(chat.chat_id, message))
                    state.last[chat.chat_id] = message.message_id
                    meter.messages += 1
                if time.monotonic() - saved_at >= _SAVE_EVERY:
                    save()
                    saved_at = time.monotonic()
    except asyncio.CancelledError:
        meter.close()
        save()
        console.warn(
            f"interrupted: {plural(out.count, 'new message')} in {out.name}, each line "
            "complete; run the same command again to resume"
        )
        raise
    except (MarketApiError, OutputError) as exc:
        meter.close()
        save()
        console.warn(
            f"error: {type(exc).__name__}: {exc}; {plural(out.count, 'new message')} in "
            f"{out.name}, each line complete; run the same command again to resume"
        )
        return FAILED
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        meter.close()
        out.close()
    save()
    console.info(
        f"{plural(out.count, 'new message')} from {plural(chats_read, 'chat')} written to "
        f"{out.name}"
        + (f"; {plural(unchanged, 'chat')} unchanged since the last run" if unchanged else "")
    )
    return OK


class ExportMeter:
    """Chats read of those listed, messages written, and an ETA that knows the history quota
    and the cap: a tqdm bar on a terminal (with the ``progress`` extra), otherwise a plain line
    on stderr every ``every`` seconds."""

    def __init__(
        self, client: MarketChatClient, business_id: int, *, every: float, console: Console
    ) -> None:
        self.listed = self.done = self.messages = 0
        self._client = client
        self._business_id = business_id
        self._every = every
        self._quiet = console.quiet
        self._err: TextIO = console.err
        self._started = time.monotonic()
        self._eta: float | None = None
        self._bar: Any = None
        if not console.quiet and self._err.isatty():
            try:
                from tqdm import tqdm  # the optional extra
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=0, unit="chat", file=self._err, dynamic_ncols=True)

    def chat_done(self) -> None:
        """One more chat was read to its end."""
        self.done += 1
        if self._bar is not None:
            self._bar.total = self.listed
            self._bar.update(1)

    def line(self) -> str:
        """The plain progress line."""
        eta = f", ETA ~{duration(self._eta)}" if self._eta is not None else ""
        return (
            f"market-chat: {self.done} chats read of {self.listed} listed so far, "
            f"{plural(self.messages, 'message')}{eta}"
        )

    async def run(self) -> None:
        """Refresh the ETA every second and show progress, until cancelled."""
        last_line = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            todo = self.listed - self.done
            elapsed = time.monotonic() - self._started
            by_rate = todo * elapsed / self.done if self.done else 0.0
            # Chats not yet read take a page each at least (more for long ones; unknown yet).
            quota = self._client.quotas["getChatHistory"]
            try:
                state = await self._client.quota_state(self._business_id, "getChatHistory")
            except Exception:  # a shared limiter out of reach: no quota in the ETA this time
                logger.debug("no quota state for the ETA", exc_info=True)
                by_quota = 0.0
            else:
                budget = Budget(state.remaining, state.frees_in, quota.limit, quota.period)
                by_quota = budget.finish(todo)
            self._eta = max(by_quota, by_rate)
            if self._bar is not None:
                self._bar.total = self.listed
                self._bar.set_postfix_str(
                    f"{self.messages} msgs, ETA ~{duration(self._eta)}", refresh=True
                )
            elif not self._quiet and time.monotonic() - last_line >= self._every:
                last_line = time.monotonic()
                print(self.line(), file=self._err, flush=True)

    def close(self) -> None:
        """Put the bar away."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
