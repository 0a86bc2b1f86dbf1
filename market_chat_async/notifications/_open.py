"""A queue from its URL (``memory``, ``sqlite:///file.db``, ``redis://...``): the one place that
knows every backend, so the backends themselves depend only on the queue contract."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from ._queue import DEFAULT_DEDUP_WINDOW, MemoryQueue, NotificationQueue

__all__ = ["open_queue"]


def open_queue(url: str | NotificationQueue) -> NotificationQueue:
    """The queue a URL names (a queue object is returned as it is); not opened yet.

    ``memory``; ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``;
    ``redis://[:password@]host[:port][/db]`` (``rediss://`` for TLS). Query options:
    ``dedup_window`` (seconds, every backend), ``synchronous`` (``full``, the default, or
    ``normal``: SQLite), ``visibility_timeout`` and ``name`` (Redis). Anything else is a
    :class:`ValueError` naming what was expected.

    >>> open_queue("memory")
    <MemoryQueue 0 pending, 0 dead>
    >>> open_queue("sqlite:///queue.db")
    <SqliteQueue 'queue.db'>
    >>> open_queue("ftp://x")
    Traceback (most recent call last):
    ValueError: unknown queue URL 'ftp://x': use memory, sqlite:///file.db or redis://host:port/0
    """
    if not isinstance(url, str):
        if isinstance(url, NotificationQueue):
            return url
        raise TypeError(f"queue must be a URL string or a queue object, not {type(url).__name__}")
    parts = urlsplit(url)
    options = {name: values[-1] for name, values in parse_qs(parts.query).items()}

    def number(name: str) -> dict[str, float]:
        if name not in options:
            return {}
        try:
            value = float(options.pop(name))
        except ValueError:
            raise ValueError(f"queue URL option {name} must be a number of seconds") from None
        if value <= 0:
            raise ValueError(f"queue URL option {name} must be positive")
        return {name: value}

    if parts.scheme == "memory" or (not parts.scheme and parts.path == "memory"):
        queue: NotificationQueue = MemoryQueue(
            dedup_window=number("dedup_window").get("dedup_window", DEFAULT_DEDUP_WINDOW)
        )
    elif parts.scheme == "sqlite":
        from ._sqlite import SqliteQueue  # only when asked for: it opens a file

        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ValueError(
                f"a SQLite queue URL is sqlite:///relative.db or sqlite:////absolute.db, "
                f"not {url!r}"
            )
        synchronous = options.pop("synchronous", "full")
        queue = SqliteQueue(parts.path[1:], synchronous=synchronous, **number("dedup_window"))
    elif parts.scheme in ("redis", "rediss", "unix"):
        from ._redis import RedisQueue  # the optional extra, only when asked for

        name = options.pop("name", "default")
        plain = parts._replace(query="").geturl()
        queue = RedisQueue(
            plain, name=name, **number("dedup_window"), **number("visibility_timeout")
        )
    else:
        raise ValueError(
            f"unknown queue URL {url!r}: use memory, sqlite:///file.db or redis://host:port/0"
        )
    if options:
        raise ValueError(f"unknown queue URL option(s): {', '.join(sorted(options))}")
    return queue
