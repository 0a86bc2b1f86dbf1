"""How a handler is called: async on the loop, plain on a thread of its own, never awaited
past its timeout. Checked once, when the receiver is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Callable
from typing import Any


def handler_kind(label: str, hook: object, arity: int) -> bool:
    """Whether ``hook`` is async; a clear :class:`TypeError` when it cannot be a handler."""
    if not callable(hook):
        raise TypeError(f"{label} must be a function (async or plain), not {type(hook).__name__}")
    call = getattr(hook, "__call__", None)  # noqa: B004 - objects with an async __call__
    target: Any = hook if inspect.isfunction(hook) or inspect.ismethod(hook) else call
    if inspect.isasyncgenfunction(hook) or inspect.isasyncgenfunction(target):
        raise TypeError(f"{label} is an async generator; give an async or plain function")
    if inspect.isgeneratorfunction(hook) or inspect.isgeneratorfunction(target):
        raise TypeError(f"{label} is a generator; give an async or plain function")
    try:
        inspect.signature(hook).bind(*([None] * arity))
    except TypeError:
        raise TypeError(
            f"{label} must take {arity} positional argument(s): "
            + ("(notification, message)" if arity == 2 else "(notification)")
        ) from None
    except ValueError:  # no signature to inspect (some builtins): trust it
        pass
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(target)


def in_thread(call: Callable[[], object]) -> asyncio.Future[object]:
    """Run a plain handler on a thread of its own; abandoning it never blocks a pool."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[object] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def run() -> None:
        try:
            result = (True, call())
        except BaseException as exc:  # handed to the loop, never lost in the thread
            result = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, *result)

    threading.Thread(target=run, name="notification-handler", daemon=True).start()
    return future


async def wait_for_event(event: asyncio.Event, seconds: float) -> None:
    """Wait for ``event`` at most ``seconds``; a cancellation always propagates (unlike
    ``asyncio.timeout`` on Python 3.11 when both fire at once)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()


async def awaited(hook: Callable[..., object], *args: object) -> object:
    return await hook(*args)  # type: ignore[misc]
