"""A private event loop on a daemon thread, so ``call()`` and ``stream()`` work from plain
scripts and threads while reusing one HTTP session (as Starlette's TestClient / anyio's blocking
portal do). Called from inside a running event loop they raise UsageError instead of blocking it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from .errors import UsageError

__all__ = ["portal"]

T = TypeVar("T")


class _Portal:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def check_not_in_loop(self, name: str) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        raise UsageError(
            f"llm_call.{name}() was called inside a running event loop, where it would block it",
            hint=f"use `await llm_call.a{name}(...)` in async code",
        )

    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            return loop
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                ready = threading.Event()
                new_loop = asyncio.new_event_loop()

                def run() -> None:
                    asyncio.set_event_loop(new_loop)
                    new_loop.call_soon(ready.set)
                    try:
                        new_loop.run_forever()
                    finally:
                        # stopped by shutdown(): finalise async generators (they close the
                        # HTTP sessions bound to this loop), then release the loop itself
                        try:
                            new_loop.run_until_complete(new_loop.shutdown_asyncgens())
                        finally:
                            new_loop.close()

                self._thread = threading.Thread(target=run, name="llm_call-loop", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = new_loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], name: str = "call") -> T:
        try:
            self.check_not_in_loop(name)
        except UsageError:
            coro.close()
            raise
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop())
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    def iterate(self, agen: AsyncIterator[T], name: str = "stream") -> Iterator[T]:
        self.check_not_in_loop(name)
        loop = self.loop()
        try:
            while True:
                fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(agen.__anext__(), loop)  # type: ignore[arg-type]
                try:
                    item = fut.result()
                except StopAsyncIteration:
                    return
                except BaseException:
                    fut.cancel()
                    raise
                yield item
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and loop.is_running():
                try:
                    asyncio.run_coroutine_threadsafe(aclose(), loop).result(timeout=5)
                except RuntimeError:
                    # interrupted mid-step (e.g. Ctrl-C): the step's cancelled task ends the stream
                    logging.getLogger("llm_call").debug("stream still running at close", exc_info=True)

    def shutdown(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        from .providers.router import close_providers

        try:
            asyncio.run_coroutine_threadsafe(close_providers(), loop).result(timeout=5)
        except Exception:
            logging.getLogger("llm_call").debug("closing providers at exit failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


portal = _Portal()
atexit.register(portal.shutdown)
