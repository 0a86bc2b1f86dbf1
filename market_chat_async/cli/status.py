"""How ``market-chat`` ends: its exit statuses and the error that means "exit 2"."""

from __future__ import annotations

from typing import Final

__all__ = ["FAILED", "INTERRUPTED", "OK", "TERMINATED", "USAGE", "UsageError"]

OK: Final = 0
"""Everything asked for was done."""
FAILED: Final = 1
"""A runtime failure: some item failed or an input row was bad (the rest are still done)."""
USAGE: Final = 2
"""A usage error: something the user must fix before anything can run."""
INTERRUPTED: Final = 130
"""Ctrl-C."""
TERMINATED: Final = 143
"""SIGTERM."""


class UsageError(Exception):
    """Something the user must fix before anything can run; reported in one line, exit 2.

    >>> str(UsageError("no API key"))
    'no API key'
    """
