"""What ``market-chat`` writes: JSON-lines files, one whole line per write, and the resume
state read back from an output file."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import AsyncIterable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .inputs import pack, parse_id
from .progress import plural
from .status import FAILED, OK, UsageError

if TYPE_CHECKING:
    from market_chat_async import ChatMessage

    from .progress import Console

__all__ = [
    "JsonLines",
    "OutputError",
    "error_record",
    "errors_path",
    "json_line",
    "load_done",
    "written_pairs",
    "message_record",
    "print_out",
    "same_file",
    "write_stream",
]


class JsonLines:
    """A JSON-lines file appended one whole line per ``write(2)``, so a kill never halves one.

    ``path=None`` writes to stdout. With ``rewrite=True`` the file lists this run's records
    only: it is emptied when opened and removed again at :meth:`close` if nothing was written
    (a regular file only: ``/dev/null`` stays). Opened by the first line unless :meth:`open`
    is called before, which is how a path that cannot be written fails early. A write that
    fails (a full disk) raises :class:`OutputError` and leaves no part of its line behind.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     out = JsonLines(Path(folder) / "a.jsonl")
    ...     out.write({"chatId": 1})
    ...     out.close()
    ...     out.path.read_text()
    '{"chatId":1}\\n'
    """

    def __init__(self, path: Path | None, *, rewrite: bool = False) -> None:
        self.path = path
        self.name = "stdout" if path is None else str(path)
        self.count = 0
        self._rewrite = rewrite
        self._fd: int | None = None

    def open(self) -> None:
        """Open (and create) the file now; :class:`OutputError` if it cannot be."""
        if self._fd is not None:
            return
        try:
            if self.path is None:
                self._fd = os.dup(sys.stdout.fileno())
            else:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
                self._fd = os.open(self.path, flags | (os.O_TRUNC if self._rewrite else 0), 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write {self.name}: {exc.strerror}") from None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as one line."""
        self.open()
        assert self._fd is not None
        view = memoryview(json_line(record).encode("utf-8"))
        size = os.fstat(self._fd).st_size
        try:
            while view:  # a regular file takes it in one call; a short write is finished off
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            with contextlib.suppress(OSError):  # a pipe or a device cannot be, nor need be
                if stat.S_ISREG(os.fstat(self._fd).st_mode):
                    os.ftruncate(self._fd, size)  # the part of the line that fit goes
            raise OutputError(f"cannot write {self.name}: {exc.strerror}") from None
        self.count += 1

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd is None:
            return
        try:
            empty_file = stat.S_ISREG(os.fstat(self._fd).st_mode) and not self.count
        finally:
            os.close(self._fd)
            self._fd = None
        if self._rewrite and empty_file and self.path is not None:
            self.path.unlink(missing_ok=True)


class OutputError(Exception):
    """A file (or stdout) that cannot be written: one line for the user, exit 1.

    >>> str(OutputError("cannot write out.jsonl: No space left on device"))
    'cannot write out.jsonl: No space left on device'
    """


def print_out(text: str) -> None:
    """Print ``text`` and a newline on stdout; :class:`OutputError` if stdout cannot take it
    (a full disk, a closed pipe), with stdout then pointed at ``/dev/null`` so the
    interpreter's own flush at exit has nothing left to fail on."""
    try:
        print(text, flush=True)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise OutputError(f"cannot write stdout: {exc.strerror}") from None


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one regular file, by any path, hard link or symlink:
    the same device and inode when both exist, the same resolved path when neither does.

    Devices and pipes (``/dev/null``) are never "the same file": writing twice to them
    destroys nothing.

    >>> same_file(Path("/no-such-dir/out/../messages.jsonl"), Path("/no-such-dir/messages.jsonl"))
    True
    """
    try:
        first, second = a.stat(), b.stat()
    except OSError:
        return not a.exists() and not b.exists() and a.resolve() == b.resolve()
    return stat.S_ISREG(first.st_mode) and (first.st_dev, first.st_ino) == (
        second.st_dev,
        second.st_ino,
    )


async def write_stream(
    records: AsyncIterable[dict[str, Any]], sink: JsonLines, console: Console, *, noun: str
) -> int:
    """Write every record to ``sink`` as it comes; the exit status. An API error ends the run
    in one line (exit 1) and keeps the lines already written.

    ``noun`` is what a record is (``"chat"``), for the summary line.
    """
    from market_chat_async import MarketApiError

    try:
        async for record in records:
            sink.write(record)
    except MarketApiError as exc:
        console.warn(
            f"error: {type(exc).__name__}: {exc} (after {plural(sink.count, noun)} written)"
        )
        return FAILED
    finally:
        sink.close()
    console.info(f"market-chat: {plural(sink.count, noun)} written to {sink.name}")
    return OK


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
    from market_chat_async import to_api_dict

    ids = {"businessId": business_id} if business_id is not None else {}
    return {**ids, "chatId": chat_id, **to_api_dict(message)}


def error_record(error: BaseException) -> dict[str, Any]:
    """``{"type", "status", "message"}`` of an error, for the errors file.

    >>> error_record(ValueError("no"))
    {'type': 'ValueError', 'status': None, 'message': 'no'}
    """
    from market_chat_async import MarketApiError

    if isinstance(error, MarketApiError):
        return {"type": type(error).__name__, "status": error.status, "message": error.message}
    return {"type": type(error).__name__, "status": None, "message": str(error)}


def written_pairs(
    file: BinaryIO, path: Path, warn: Callable[[str], None]
) -> Iterator[tuple[int, int]]:
    """``(chatId, messageId)`` of each whole line of an output file opened ``r+b``, from where
    ``file`` stands. A torn last line is cut off the file: only a crash between the bytes of one
    write (power loss, full disk) leaves one. A line that is not a message is warned of, skipped.
    """
    good_end = start = file.tell()
    for number, raw in enumerate(file, 1):
        if not raw.endswith(b"\n"):
            file.truncate(good_end)
            warn(f"{path}:{number}: cut off an incomplete last line")
            return
        good_end += len(raw)
        try:
            data = json.loads(raw)
            pair = parse_id("chatId", data["chatId"]), parse_id("messageId", data["messageId"])
        except (ValueError, KeyError, TypeError, RecursionError):
            where = f"line {number}" + (f" past byte {start}" if start else "")
            warn(f"{path}: {where} is not a message; ignored")
            continue
        yield pair


def load_done(path: Path, warn: Callable[[str], None]) -> set[int]:
    """The pairs already in an output file (packed); a torn last line is cut off the file.

    Only a regular file holds a resume state: a device or a pipe (``/dev/full``, a FIFO) is
    written to and never read.
    """
    done: set[int] = set()
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return done
        file = path.open("r+b")
    except FileNotFoundError:
        return done
    except OSError as exc:
        raise UsageError(f"cannot open {path}: {exc.strerror}") from None
    with file:
        for chat_id, message_id in written_pairs(file, path, warn):
            done.add(pack(chat_id, message_id))
    return done
