"""A real ``redis-server`` for tests and benchmarks: 127.0.0.1, a free port, no persistence.

:class:`RedisServer` starts the binary, waits until it answers ``PING`` and stops it by its PID.
It never skips: when ``redis-server`` is missing or does not come up, :class:`RedisUnavailable`
says why (install it with ``apt-get install -y redis-server``, or ``make system-deps``).

Example::

    with RedisServer() as redis:
        print(redis.url)            # redis://127.0.0.1:PORT/0

In pytest, the ``redis_server`` fixture (import it into a test module) gives one server per module
and fails every test of the module with the reason when it cannot start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

__all__ = ["RedisServer", "RedisUnavailable", "free_port", "redis_server"]

START_TIMEOUT_S = 10.0


class RedisUnavailable(RuntimeError):
    """redis-server could not be started (missing binary, or it did not answer)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 (see the module docstring)."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.port = port or free_port()
        self.binary = binary or shutil.which("redis-server") or ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        if not self.binary:
            raise RedisUnavailable(
                "redis-server is not installed: the Redis backend tests need a real Redis "
                "(apt-get install -y redis-server, or make system-deps)"
            )
        self._dir = tempfile.TemporaryDirectory(prefix="llm_call-redis-")
        log = Path(self._dir.name) / "redis.log"
        self.proc = subprocess.Popen(
            [
                self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", self._dir.name, "--logfile", str(log),
                "--maxclients", "10000", "--protected-mode", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace")
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.stop()
                raise RedisUnavailable(
                    f"redis-server exited with code {self.proc.returncode} on port {self.port}: "
                    f"{err.strip()} {tail.strip()}"
                )
            if _ping(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RedisUnavailable(f"redis-server did not answer PING on 127.0.0.1:{self.port} within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, 9)
                proc.wait(timeout=5)
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server for the module; the tests FAIL (never skip) if it cannot be started."""
    server = RedisServer()
    try:
        server.start()
    except RedisUnavailable as exc:
        pytest.fail(f"Redis backend tests need a real redis-server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
