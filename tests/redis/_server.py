"""A real redis-server process on a free loopback port, for the stream tests (no conftest needed).

Usage::

    with start_redis(tmp_path) as server:
        client = server.client()
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.client import Redis
from redis.connection import Connection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

HOST = "127.0.0.1"


@dataclass
class RedisServer:
    host: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **kwargs: Any) -> Redis:
        return Redis(host=self.host, port=self.port, socket_timeout=10, **kwargs)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def redis_server_binary() -> str:
    """The redis-server binary; skips (with the way to get it) when the machine has none."""
    found = shutil.which("redis-server")
    if found is None:
        pytest.skip("redis-server not found: apt-get install -y redis-server redis-tools")
    return found


@contextlib.contextmanager
def start_redis(workdir: Path, *extra: str, timeout: float = 10.0) -> Iterator[RedisServer]:
    """Start redis-server without persistence in ``workdir``; stop it when the block ends."""
    binary = redis_server_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for _attempt in range(3):  # a free port can be taken between the probe and the bind
        port = free_port()
        log = (workdir / f"redis-{port}.log").open("wb")
        proc = subprocess.Popen(
            [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--protected-mode", "yes", *extra],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
        )
        log.close()
        server = RedisServer(HOST, port, workdir, proc)
        deadline = time.monotonic() + timeout
        probe = server.client(socket_connect_timeout=0.5)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                probe.ping()
                break
            except RedisConnectionError as exc:
                last_error = exc
                time.sleep(0.05)
        else:
            proc.kill()
            proc.wait(timeout=5)
            continue
        probe.close()
        try:
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        return
    raise RuntimeError(f"redis-server did not start in {workdir}: {last_error}")


def server_fixtures(name: str) -> tuple[Any, Any]:
    """The fixtures ``server`` (one redis-server per module, in a directory named ``name``) and ``r`` (a
    client of it on an empty server, decoding replies): ``server, r = server_fixtures("redis-x")``."""

    @pytest.fixture(scope="module")
    def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
        with start_redis(Path(tmp_path_factory.mktemp(name))) as s:
            yield s

    @pytest.fixture
    def r(server: RedisServer) -> Iterator[Redis]:
        client = server.client(decode_responses=True)
        client.flushall()
        yield client
        client.close()

    return server, r


class RoundTrips:
    """Counts the writes of commands to the socket: one per command, one per pipeline execute."""

    def __init__(self) -> None:
        self.count = 0


class _CountingConnection(Connection):
    def __init__(self, *args: Any, round_trips: RoundTrips, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._round_trips = round_trips

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._round_trips.count += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def counting_client(server: RedisServer) -> tuple[Redis, RoundTrips]:
    """A client whose round trips to the server are counted (connect handshakes included)."""
    trips = RoundTrips()
    pool = ConnectionPool(
        connection_class=_CountingConnection, host=server.host, port=server.port,
        socket_timeout=10, round_trips=trips,
    )
    return Redis(connection_pool=pool), trips
