"""Execute one call below the task manager: the validation loop, or the transient-retry layer
alone, under the caller's deadline.

``execute`` / ``execute_stream`` are what ``client`` runs in direct mode and what a task runs
(``tasks``); mode handling (direct / background / auto) sits above, in ``tasks.auto``. The
caller's ``deadline_s`` caps the request's timeout and stops retry waits that would pass it; a
timeout at the deadline becomes :class:`~llm_call.errors.BudgetExceeded` through
``_retry.deadline_stop``, the one context manager the validation loop uses too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from ._request import CallOptions
from ._retry import complete_with_retries, deadline_stop, stream_with_retries
from ._streams import closing
from .errors import BudgetExceeded, ProviderTimeout
from .retry import clock_of
from .types import Chunk, Request, Response

__all__ = ["execute", "execute_stream"]


def _budget_error(opts: CallOptions) -> Callable[[ProviderTimeout], BudgetExceeded]:
    def error(exc: ProviderTimeout) -> BudgetExceeded:
        return BudgetExceeded(
            f"deadline_s={opts.deadline_s} passed before an answer ({exc.message})",
            hint="raise deadline_s, or run the call as a background task",
            attempts=[],
        )

    return error


def _with_deadline(request: Request, deadline_s: float) -> Request:
    """The request with its timeout capped at ``deadline_s``."""
    if request.timeout is None or request.timeout > deadline_s:
        return request.replace(timeout=deadline_s)
    return request


async def execute(request: Request, opts: CallOptions) -> Response:
    """Run the layers below the task manager: validation loop, then transient retries."""
    if opts.validating:
        from .validation.loop import run_validated

        return await run_validated(request, opts)
    if opts.deadline_s is None:
        return await complete_with_retries(request, opts)
    clock = clock_of(opts.retry)
    deadline_at = clock() + opts.deadline_s
    request = _with_deadline(request, opts.deadline_s)
    with deadline_stop(clock, deadline_at, _budget_error(opts)):
        return await complete_with_retries(request, opts, deadline_at=deadline_at)


async def execute_stream(request: Request, opts: CallOptions) -> AsyncIterator[Chunk]:
    """The streaming twin of :func:`execute`."""
    if opts.validating:
        from .validation.loop import stream_validated

        async with closing(stream_validated(request, opts)) as chunks:
            async for chunk in chunks:
                yield chunk
        return
    if opts.deadline_s is None:
        async with closing(stream_with_retries(request, opts)) as chunks:
            async for chunk in chunks:
                yield chunk
        return
    clock = clock_of(opts.retry)
    deadline_at = clock() + opts.deadline_s
    request = _with_deadline(request, opts.deadline_s)
    with deadline_stop(clock, deadline_at, _budget_error(opts)):
        async with closing(stream_with_retries(request, opts, deadline_at=deadline_at)) as chunks:
            async for chunk in chunks:
                yield chunk
