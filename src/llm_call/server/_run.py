"""Running the app: :func:`serve` (the foreground server of ``llm-call serve``) and
:class:`ServerThread` (the same server on a thread, for tests and notebooks).

uvicorn runs with uvloop and httptools when they are installed (each is worth ~30% of the
per-request cost here) and falls back to asyncio and h11. On SIGTERM or SIGINT uvicorn stops
accepting connections, lets requests in flight finish for ``server.grace_period`` seconds, then
runs the lifespan shutdown: the task manager stops and leaves unfinished background tasks in the
store for the next start; providers close; the process exits with status 0.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import uvicorn

from ._app import create_app
from ._auth import check_public_bind
from ._http_limits import default_max_connections, http_limits_protocol, raise_file_limit

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["ServerThread", "configure_logging", "serve", "uvicorn_config"]


def _fast(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _http_protocol(settings: Settings | None) -> Any:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with the connection-level
    limits of ``_http_limits``: ``server.header_timeout``, ``server.max_connections``."""
    from ..config import ServerConfig

    server = settings.server if settings is not None else ServerConfig()
    cap = server.max_connections if server.max_connections is not None else default_max_connections()
    return http_limits_protocol("httptools" if _fast("httptools") else "h11", server.header_timeout, cap)


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration ``llm-call serve`` uses for ``app``."""
    options: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "loop": "uvloop" if _fast("uvloop") else "asyncio",
        "http": _http_protocol(settings),
        "lifespan": "on",
        "access_log": False,  # the gateway middleware writes one structured line per request
        "server_header": False,
        "proxy_headers": False,  # client addresses are not used; saves a middleware per request
        "timeout_graceful_shutdown": settings.server.grace_period,
        "timeout_keep_alive": 30,
        "log_level": "debug" if settings.server.debug else "info",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def configure_logging(debug: bool = False) -> None:
    """Request lines as JSON on stderr; other llm_call messages with time, level and logger."""
    access = logging.getLogger("llm_call.server.access")
    if not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.propagate = False
    access.setLevel(logging.DEBUG if debug else logging.INFO)
    root = logging.getLogger("llm_call")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


class _Server(uvicorn.Server):
    """uvicorn's server, except that after a graceful shutdown on SIGTERM/SIGINT the process
    exits normally (status 0) instead of re-raising the signal once the server has stopped."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> bool:
    """Serve until SIGTERM/SIGINT. Returns False when the server could not start (port in use...)."""
    configure_logging(settings.server.debug)
    raise_file_limit()  # before the connection cap is derived from it
    app = create_app(settings)
    if host is not None:
        check_public_bind(host, app.state.llm_call.auth)
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    server = _Server(uvicorn_config(app, settings, **overrides))
    server.run()
    return bool(server.started)


class ServerThread:
    """Run an app on ``127.0.0.1`` (a free port by default) on a daemon thread.

    Example::

        with ServerThread(create_app(settings)) as srv:
            client = openai.OpenAI(base_url=srv.base_url, api_key="k")
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._start_timeout = start_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``.../v1``)."""
        return self.url + "/v1"

    def start(self) -> ServerThread:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="on",
            access_log=False,
            log_level="warning",
            loop="asyncio",
            http=_http_protocol(getattr(getattr(getattr(self.app, "state", None), "llm_call", None), "settings", None)),
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        self._server = server

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # reported by start() / stop()
                self._error = exc
                raise

        self._thread = threading.Thread(target=run, name=f"llm_call-server-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start: {self._error!r}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=15)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout=5)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
