"""Keep-alives on a quiet Server-Sent Events stream (``server.sse_heartbeat``).

A long call can be silent for minutes: a ``max/*`` call running its own tools, a background
response or task followed while it waits for the quota or for a slot, a validation retry against
a slow model. Reverse proxies close a response that sends nothing for a while (nginx after 60 s
by default) and clients time out their reads (the anthropic SDK after 10 minutes), so the caller
lost a stream that was fine. Every SSE route therefore sends a keep-alive after ``every`` seconds
without a byte: an SSE comment line (``: keep-alive``), which every SSE parser skips, or on
``/v1/messages`` Anthropic's own ``ping`` event. The first one comes only after the stream's
first event (``message_start`` must open a Messages stream).

The body is pulled by one producer task per stream into a short buffer (at most ``_AHEAD``
events ahead of the client, so a slow client still slows the upstream), and the response waits on
that buffer with a timer; the body's own awaits are never cancelled by the timer. When the client
goes, the producer is cancelled and the body closed, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

__all__ = ["COMMENT", "with_heartbeat"]

COMMENT = b": keep-alive\n\n"
_AHEAD = 32


class _Pump:
    __slots__ = ("error", "finished", "items", "room", "waiter")

    def __init__(self) -> None:
        self.items: deque[bytes] = deque()
        self.finished = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[bool] | None = None  # the response waiting for an event
        self.room: asyncio.Future[None] | None = None  # the producer waiting for buffer room

    def wake(self, timed_out: bool = False) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(timed_out)

    async def produce(self, body: AsyncIterator[bytes]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for item in body:
                self.items.append(item)
                self.wake()
                if len(self.items) >= _AHEAD:
                    self.room = loop.create_future()
                    await self.room
                    self.room = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the body's own failure: raised to the response as before
            self.error = exc
        finally:
            self.finished = True
            self.wake()
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()


async def with_heartbeat(body: AsyncIterator[bytes], every: float, beat: bytes = COMMENT) -> AsyncIterator[bytes]:
    """``body``, with ``beat`` after every ``every`` seconds of silence (0: ``body`` unchanged)."""
    if every <= 0:
        async for item in body:
            yield item
        return
    loop = asyncio.get_running_loop()
    pump = _Pump()
    producer = loop.create_task(pump.produce(body), name="llm_call-sse-body")
    started = False
    try:
        while True:
            if pump.items:
                item = pump.items.popleft()
                room = pump.room
                if room is not None and not room.done():
                    room.set_result(None)
                started = True
                yield item
                continue
            if pump.finished:
                if pump.error is not None:
                    raise pump.error
                return
            pump.waiter = waiter = loop.create_future()
            timer = loop.call_later(every, pump.wake, True) if started else None
            try:
                timed_out = await waiter
            finally:
                pump.waiter = None
                if timer is not None:
                    timer.cancel()
            if timed_out and not pump.items and not pump.finished:
                yield beat
    finally:
        if not producer.done():
            producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
