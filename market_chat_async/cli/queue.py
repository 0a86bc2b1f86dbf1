"""``market-chat queue``: the dead letters of a notification queue -- list, retry, drop.

A notification whose handling kept failing for ``give_up_after`` (24 hours by default) is kept
as a dead letter. ``list`` prints them as JSON lines (id, when it arrived and was given up, how
many tries, the last error, the notification); ``retry`` puts them back in the queue with a
fresh try count (the receiver picks them up); ``drop`` deletes them for good. ``retry`` and
``drop`` take ``--id`` (repeatable) or ``--all``. The queue may be in use by a running
``market-chat serve`` meanwhile.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from .serve import DEFAULT_QUEUE
from .status import FAILED, OK, UsageError

if TYPE_CHECKING:
    from market_chat_async.notifications import QueueEntry

    from .options import SharedOptions, Subparsers
    from .progress import Console

__all__ = ["add_parser", "dead_letter_record", "run"]


def add_parser(commands: Subparsers, shared: SharedOptions) -> argparse.ArgumentParser:
    """The ``queue`` subcommand."""
    parser = commands.add_parser(
        "queue",
        parents=shared.local,
        help="list, retry or drop the dead letters of a notification queue",
        description="Show the notifications `serve` gave up on, queue them again, or delete them.",
    )
    parser.add_argument("action", choices=("list", "retry", "drop"), help="what to do")
    parser.add_argument(
        "--queue",
        default=DEFAULT_QUEUE,
        metavar="URL",
        help=f"the queue `serve --queue` uses (default: {DEFAULT_QUEUE})",
    )
    parser.add_argument(
        "--id", action="append", default=[], metavar="ID", help="a dead letter (repeatable)"
    )
    parser.add_argument("--all", action="store_true", help="every dead letter")
    return parser


def dead_letter_record(entry: QueueEntry) -> dict[str, Any]:
    """One line of ``queue list``.

    >>> from market_chat_async.notifications import QueueEntry
    >>> record = dead_letter_record(QueueEntry("7", None, b'{"notificationType":"X"}', 0.0,
    ...     attempts=3, last_error="on_notification: RuntimeError: x", dead_at=60.0))
    >>> record["id"], record["attempts"], record["notification"]
    ('7', 3, {'notificationType': 'X'})
    """
    try:
        notification: Any = json.loads(entry.body)
    except ValueError:
        notification = entry.body.decode(errors="replace")
    return {
        "id": entry.id,
        "receivedAt": _iso(entry.received_at),
        "deadAt": _iso(entry.dead_at),
        "attempts": entry.attempts,
        "lastError": entry.last_error,
        "notification": notification,
    }


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


async def run(args: argparse.Namespace, console: Console) -> int:
    """Do ``list``, ``retry`` or ``drop`` on the queue ``--queue`` names."""
    from market_chat_async.notifications import QueueError, open_queue

    if args.action == "list" and (args.id or args.all):
        raise UsageError("queue list takes neither --id nor --all")
    if args.action != "list" and bool(args.id) == args.all:
        raise UsageError(f"queue {args.action} needs --id ID (repeatable) or --all")
    try:
        queue = open_queue(args.queue)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    try:
        await queue.open(consume=False)
    except QueueError as exc:
        raise UsageError(str(exc)) from None
    try:
        if args.action == "list":
            for entry in await queue.dead_letters(limit=10**9):
                sys.stdout.write(json.dumps(dead_letter_record(entry), ensure_ascii=False) + "\n")
            sys.stdout.flush()
            return OK
        ids = None if args.all else args.id
        if args.action == "retry":
            count = await queue.replay(ids, time.time())
            console.info(f"market-chat: queued {count} dead letter(s) again")
        else:
            count = await queue.drop(ids)
            console.info(f"market-chat: dropped {count} dead letter(s)")
        if ids is not None and count < len(set(ids)):
            console.warn(f"market-chat: {len(set(ids)) - count} id(s) are not dead letters")
            return FAILED
        return OK
    except QueueError as exc:
        console.warn(f"market-chat: error: {exc}")
        return FAILED
    finally:
        await queue.close()
