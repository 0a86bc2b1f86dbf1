"""The input of ``fetch``: (chat_id, message_id) pairs from CSV or JSON lines, row by row.

A bad row is not an error of the file: it is yielded with its line number and what is wrong,
so the run goes on with the good ones.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from market_chat_async._protocol import INT64_MAX

from .status import UsageError

__all__ = ["INT64_MAX", "Row", "input_format", "pack", "parse_id", "read_rows"]


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
    """One int per pair, for sets of pairs that stay small.

    >>> pack(1, 2) == 1 << 64 | 2
    True
    """
    return chat_id << 64 | message_id


class Row(NamedTuple):
    """One data row of the input: the pair, or what is wrong with it.

    >>> Row(2, "67,89", (67, 89)).problem is None
    True
    """

    line: int
    text: str
    pair: tuple[int, int] | None
    problem: str | None = None


def input_format(path: Path) -> str:
    """``"csv"`` or ``"jsonl"``: by the extension, else by the first non-blank line.

    >>> input_format(Path("ids.csv")), input_format(Path("messages.jsonl"))
    ('csv', 'jsonl')
    """
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


def read_rows(path: Path, *, name: str | None = None) -> Iterator[Row]:
    """The rows of an input file, blank lines skipped; raises :class:`UsageError` when the
    file cannot be read at all (bad rows are yielded with their ``problem``). ``name`` is how
    messages call the file (default: its path)."""
    shown = str(path) if name is None else name
    try:
        kind = input_format(path)
        with path.open(encoding="utf-8-sig", newline="") as file:
            yield from (_csv_rows(shown, file) if kind == "csv" else _jsonl_rows(file))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read {shown}: {exc}") from None


def _csv_rows(shown: str, file: TextIO) -> Iterator[Row]:
    reader = csv.reader(file)
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    if header is None:
        return
    names = [cell.strip().lower() for cell in header]
    if "chat_id" not in names or "message_id" not in names:
        raise UsageError(
            f"{shown}:{reader.line_num}: the first line must be the header chat_id,message_id "
            f"(got {','.join(header)[:80]!r})"
        )
    chat_col, message_col = names.index("chat_id"), names.index("message_id")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a field over csv.field_size_limit(): this row only
            yield Row(reader.line_num, "", None, str(exc))
            continue
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
        except RecursionError:
            yield Row(number, text, None, "nested too deep")
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
