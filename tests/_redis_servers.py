"""Real Redis for the tests: a throwaway redis-server, a local 3-node Cluster, a TCP proxy that
a test can cut to make a Redis blip.

Everything listens on 127.0.0.1 only, on free ports, without persistence.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

NO_REDIS = shutil.which("redis-server") is None
needs_redis = pytest.mark.skipif(
    NO_REDIS, reason="redis-server is not on PATH (apt-get install redis-server; .ci/run does)"
)
needs_cluster_tools = pytest.mark.skipif(
    NO_REDIS or shutil.which("redis-cli") is None,
    reason="redis-server/redis-cli are not on PATH (apt-get install redis-server; .ci/run does)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cluster_port() -> int:
    """A free port whose cluster bus port (``+ 10000``) is free too."""
    while True:
        port = random.randrange(20000, 40000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _start(port: int, *extra: str, cwd: str | None = None) -> subprocess.Popen[bytes]:
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(["redis-server", *args, *extra], stdout=subprocess.DEVNULL, cwd=cwd)
    deadline = time.monotonic() + 10
    while not _answers_ping(port):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"redis-server on port {port} did not start")
        time.sleep(0.02)
    return proc


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free localhost port; yields its URL."""
    port = free_port()
    proc = _start(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


def _cluster_ok(port: int) -> bool:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, text=True
    ).stdout
    return "cluster_state:ok" in out


@contextlib.contextmanager
def redis_cluster() -> Iterator[str]:
    """A real 3-node Redis Cluster (no replicas) on localhost; yields a node's URL."""
    ports: list[int] = []
    while len(ports) < 3:
        if (port := _cluster_port()) not in ports:
            ports.append(port)
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        try:
            for port in ports:
                extra = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
                node_dir = Path(tmp, str(port))
                node_dir.mkdir()
                procs.append(_start(port, *extra, "--dir", str(node_dir), cwd=str(node_dir)))
            nodes = [f"127.0.0.1:{port}" for port in ports]
            create = ["--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
            subprocess.run(
                ["redis-cli", *create],
                check=True,
                capture_output=True,
            )
            deadline = time.monotonic() + 20
            while not all(_cluster_ok(port) for port in ports):
                if time.monotonic() > deadline:
                    raise RuntimeError("the local Redis Cluster did not come up")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{ports[0]}"
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a Redis; :meth:`cut` drops every connection and refuses
    new ones until :meth:`restore` (a blip as a client sees it)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.cut_off = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self.cut_off = True
        for a, b in list(self._pairs):
            a.transport.abort()
            b.transport.abort()
        self._pairs.clear()

    def restore(self) -> None:
        self.cut_off = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    if self.cut_off:
                        break
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._pairs.discard(pair)
