"""Pushed notices of the Redis task store: cancel requests and new task events over pub/sub.

The store's scripts ``PUBLISH`` a task's new event count on ``{prefix}:ev:{id}`` and a cancel
request on ``{prefix}:cancel:{worker}``. :class:`RedisNotices` keeps one pub/sub connection per
store, subscribed to the channels someone watches, and calls their callbacks as messages arrive,
so a worker cancels at once and a follower wakes at once. A dropped connection is re-made (and
every channel subscribed again) in the background; polling stays as the fallback for a notice
lost while the connection was down (``tasks.fallback_poll_s``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["RedisNotices"]

_log = logging.getLogger("llm_call.tasks")
_RECONNECT_FIRST_S = 0.1  # after a dropped pub/sub connection, doubling up to the max
_RECONNECT_MAX_S = 5.0


class RedisNotices:
    """Callbacks on pub/sub channels; ``watch`` returns the coroutine function that stops it."""

    def __init__(self, client: Any, url: str) -> None:
        self._client = client  # redis.asyncio.Redis with decode_responses=True
        self._url = url
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._callbacks: dict[str, list[Callable[[str], None]]] = {}

    async def watch(self, channel: str, callback: Callable[[str], None]) -> Callable[[], Awaitable[None]]:
        callbacks = self._callbacks.setdefault(channel, [])
        callbacks.append(callback)
        if len(callbacks) == 1:
            if self._pubsub is None:
                self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await self._pubsub.subscribe(**{channel: self._dispatch})
            except BaseException:  # not watched: the next watch of this channel subscribes again
                callbacks.remove(callback)
                if not callbacks:
                    self._callbacks.pop(channel, None)
                raise
            if self._reader is None or self._reader.done():
                self._reader = asyncio.ensure_future(self._read())

        async def stop() -> None:
            left = self._callbacks.get(channel, [])
            if callback in left:
                left.remove(callback)
            if not left and self._callbacks.pop(channel, None) is not None and self._pubsub is not None:
                try:
                    await self._pubsub.unsubscribe(channel)
                except (OSError, ConnectionError, RuntimeError) as exc:  # closing: nothing to undo
                    _log.debug("task store %s: unsubscribe %s failed: %s", self._url, channel, exc)

        return stop

    def _dispatch(self, message: dict[str, Any]) -> None:
        for callback in list(self._callbacks.get(str(message.get("channel")), ())):
            try:
                callback(str(message.get("data")))
            except Exception:  # a faulty callback must not stop the notices of the others
                _log.exception("task store %s: a notice callback failed", self._url)

    async def _read(self) -> None:
        """Dispatch messages; when the connection drops, reconnect (redis-py re-subscribes every
        channel on connect) with a growing pause, and wake every watcher once it is back, since
        notices published meanwhile are lost. Polling (``tasks.fallback_poll_s``) covers the gap."""
        delay = _RECONNECT_FIRST_S
        lost = False
        while True:
            try:
                await self._pubsub.connect()
                if lost:
                    lost = False
                    delay = _RECONNECT_FIRST_S
                    _log.info("task store %s: pushed notices back", self._url)
                    self._wake_all()
                await self._pubsub.run(poll_timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # polling (tasks.fallback_poll_s) finds what is missed meanwhile
                if not lost:
                    _log.warning(
                        "task store %s: pushed notices interrupted (%s); reconnecting, polling meanwhile", self._url, exc
                    )
                lost = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)

    def _wake_all(self) -> None:
        """Call every callback with ``""`` (no task, no count): something may have been missed."""
        for channel in list(self._callbacks):
            self._dispatch({"channel": channel, "data": ""})

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()
            except (OSError, ConnectionError, RuntimeError) as exc:
                _log.debug("task store %s: closing pub/sub failed: %s", self._url, exc)
        self._pubsub = self._reader = None
        self._callbacks.clear()
