"""Transient-failure retries (placeholder until the retry layer lands: one attempt, no retry)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .types import Chunk, Request, Response

if TYPE_CHECKING:
    from .client import CallOptions


async def complete_with_retries(request: Request, opts: CallOptions) -> Response:
    from .client import complete_once

    return await complete_once(request)


async def stream_with_retries(request: Request, opts: CallOptions) -> AsyncIterator[Chunk]:
    from .client import stream_once

    async for chunk in stream_once(request):
        yield chunk
