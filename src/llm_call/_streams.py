"""Close inner streams as soon as their consumer stops.

An abandoned async generator is only finalised when the garbage collector gets to it; for the
Claude route that means a CLI process lives on after the caller stopped reading. Every layer that
iterates an inner stream does so inside :func:`closing`, so ``aclose`` runs at once, all the way
down to the provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

__all__ = ["closing"]

T = TypeVar("T")


@asynccontextmanager
async def closing(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """``async with closing(gen) as s: async for x in s: ...`` closes ``gen`` on exit."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
