"""What ``market-chat`` writes: JSON-lines files, one whole line per write, and the resume
state read back from an output file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .inputs import pack, parse_id
from .status import UsageError

if TYPE_CHECKING:
    from market_chat_async import ChatMessage

__all__ = [
    "JsonLines",
    "error_record",
    "errors_path",
    "json_line",
    "load_done",
    "message_record",
]


class JsonLines:
    """A JSON-lines file appended one whole line per ``write(2)``, so a kill never halves one.

    Opened by the first line unless :meth:`open` is called before, so an errors file only
    exists when there was an error.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     out = JsonLines(Path(folder) / "a.jsonl")
    ...     out.write({"chatId": 1})
    ...     out.close()
    ...     out.path.read_text()
    '{"chatId":1}\\n'
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
    from market_chat_async._bulk import to_api_dict

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
