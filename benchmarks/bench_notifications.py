"""Notifications accepted per second with the durable write, per queue backend; PING under load.

The receiver (``create_app`` + ``serve``) runs in a process of its own on a localhost port, with
a handler that does nothing and a message source that answers at once, so what is measured is
the path the Market waits for: read, parse, write to the queue (committed), answer 200 -- while
the receiver's workers drain the queue as they would in production. This process posts
``NOTIFICATIONS`` distinct ``CHAT_MESSAGE_SENT`` notifications from ``CONCURRENCY`` keep-alive
connections and, on one more connection, a ``PING`` every 10 ms. Reported: notifications
answered 200 per second (median of the rounds) and the PING round trips of all rounds
together (p50, p99, max).

Backends: ``memory`` (the baseline: no durability), ``sqlite`` with ``synchronous=full`` (a
commit survives a power cut; the default) and ``normal`` (survives a crash of the process),
``redis`` with ``appendfsync always`` and ``everysec`` (a redis-server started here in a
temporary directory; skipped, with a message, when none is installed). Rounds are interleaved
and the median is taken (these machines are shared). Writes
``benchmarks/results/notifications.json``. Run: ``python benchmarks/bench_notifications.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result

NOTIFICATIONS = 3_000  # per round
CONCURRENCY = 64  # connections posting at once
ROUNDS = 5
PING_EVERY = 0.01  # seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def redis_server(fsync: str) -> Iterator[str]:
    """A throwaway redis-server with an append-only file (``appendfsync`` as given)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder,
                "--appendonly", "yes", "--appendfsync", fsync]  # fmt: skip
        proc = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                        conn.sendall(b"PING\r\n")
                        if conn.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait()


# -- the receiver process -----------------------------------------------------------------------


def run_receiver(queue: str) -> None:
    """The receiver: print its URL, serve until SIGTERM."""
    from datetime import UTC, datetime

    from market_chat_async import ChatMessage, Sender
    from market_chat_async.notifications import create_app, serve

    class Instant:
        async def get_message(self, business_id: int, chat_id: int, message_id: int) -> Any:
            return ChatMessage(message_id, datetime.now(UTC), Sender.CUSTOMER, "hi")

    async def on_message(notification: Any, message: Any) -> None:
        return None

    app = create_app(Instant(), on_message, queue=queue, allow_from=None, drain_timeout=0.0)
    asyncio.run(serve(app, port=0, on_ready=lambda url: print(url, flush=True)))


@contextmanager
def receiver(queue: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", queue],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url:
            raise RuntimeError(f"the receiver for {queue} did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


# -- the load -----------------------------------------------------------------------------------


def notification(message_id: int) -> dict[str, Any]:
    return {
        "notificationType": "CHAT_MESSAGE_SENT",
        "businessId": 12345,
        "chatId": 1 + message_id % 100,
        "messageId": str(message_id),
        "sentAt": "2026-11-25T10:00:00+03:00",
    }


async def load(url: str, first_id: int) -> tuple[float, list[float]]:
    """Post NOTIFICATIONS with CONCURRENCY connections, PING all along: notifications
    accepted per second, and every PING round trip in seconds."""
    import aiohttp

    ids = iter(range(first_id, first_id + NOTIFICATIONS))
    refused = 0
    pings: list[float] = []
    done = asyncio.Event()

    async def poster(session: aiohttp.ClientSession) -> None:
        nonlocal refused
        for message_id in ids:
            async with session.post(url, json=notification(message_id)) as resp:
                await resp.read()
                refused += resp.status != 200

    async def pinger() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            while not done.is_set():
                started = time.perf_counter()
                async with session.post(url, json={"notificationType": "PING"}) as resp:
                    await resp.read()
                    assert resp.status == 200
                pings.append(time.perf_counter() - started)
                await asyncio.sleep(PING_EVERY)

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(url, json={"notificationType": "PING"}) as resp:  # warm up
            await resp.read()
        ping_task = asyncio.create_task(pinger())
        started = time.perf_counter()
        await asyncio.gather(*(poster(session) for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        done.set()
        await ping_task
    if refused:
        raise RuntimeError(f"{refused} notifications were not answered 200")
    return NOTIFICATIONS / elapsed, pings


def backends(folder: Path) -> Iterator[tuple[str, str]]:
    yield "memory", "memory"
    yield "sqlite_full", f"sqlite:///{folder / 'full.db'}"
    yield "sqlite_normal", f"sqlite:///{folder / 'normal.db'}?synchronous=normal"


def measure() -> dict[str, Any]:
    rates: dict[str, list[float]] = {}
    pings: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        queues = dict(backends(Path(tmp)))
        if shutil.which("redis-server") is None:
            print("notifications: redis skipped, redis-server is not installed")
        else:
            queues["redis_always"] = stack.enter_context(redis_server("always")) + "?name=a"
            queues["redis_everysec"] = stack.enter_context(redis_server("everysec")) + "?name=e"
        for n in range(ROUNDS):
            for name, queue in queues.items():
                with receiver(queue) as url:
                    rate, round_trips = asyncio.run(load(url, 1 + n * NOTIFICATIONS))
                rates.setdefault(name, []).append(rate)
                pings.setdefault(name, []).extend(round_trips)
                print(f"  round {n + 1} {name}: {rate:.0f}/s, PING max "
                      f"{max(round_trips) * 1e3:.1f} ms")  # fmt: skip
    result: dict[str, Any] = {
        "notifications_per_round": NOTIFICATIONS,
        "concurrency": CONCURRENCY,
        "rounds": ROUNDS,
        "backends": {},
    }
    for name, per_round in rates.items():
        samples = sorted(pings[name])
        result["backends"][name] = {
            "accepted_per_second": round(statistics.median(per_round), 1),
            "pings": len(samples),
            "ping_p50_ms": round(statistics.median(samples) * 1e3, 1),
            "ping_p99_ms": round(samples[int(len(samples) * 0.99)] * 1e3, 1),
            "ping_max_ms": round(samples[-1] * 1e3, 1),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="QUEUE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_receiver(args.serve)
        return
    result = measure()
    write_result("notifications", result)
    for name, figures in result["backends"].items():
        print(
            f"notifications: {name}: {figures['accepted_per_second']:.0f} accepted/s, PING "
            f"p50 {figures['ping_p50_ms']} ms, p99 {figures['ping_p99_ms']} ms, "
            f"max {figures['ping_max_ms']} ms"
        )


if __name__ == "__main__":
    main()
