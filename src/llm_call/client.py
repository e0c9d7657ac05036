"""The public call: ``acall`` / ``astream`` and their sync twins ``call`` / ``stream``.

Layers, outermost first (each lives in its own module; this one only wires them):

1. request building: arguments -> Request + CallOptions -> ``_request``
2. mode (direct / background / auto) -> ``tasks.auto`` (task manager)
3. one call under the caller's deadline -> ``_pipeline``
4. validation loop: validators, feedback retries, escalation -> ``validation``
5. transient-failure retries, fallbacks, circuit breakers -> ``retry``
6. one provider call -> ``providers.router``

``aembed`` (texts to vectors) takes layers 1, 5 and 6 only: ``_embed`` checks its arguments and
runs the retry walk over ``router.embed_once``.

Example::

    import llm_call

    resp = await llm_call.acall("openai/gpt-4o-mini", "Name a colour.")
    print(resp.text, resp.usage.total_tokens)

    for chunk in llm_call.stream("local/smollm2", "Count to five."):
        print(chunk.text, end="")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from ._embed import build_embedding_request, embed_with_retries
from ._pipeline import execute, execute_stream
from ._portal import portal
from ._progress import listening
from ._request import build_request
from ._streams import closing
from .errors import UsageError
from .types import Chunk, Embeddings, Message, Response

if TYPE_CHECKING:
    from .tasks import TaskHandle

__all__ = ["acall", "aembed", "astream", "call", "stream"]


@overload
async def acall(
    model: str | None = None,
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    mode: Literal["direct"] | None = None,
    **options: Any,
) -> Response: ...


@overload
async def acall(
    model: str | None = None,
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    mode: Literal["background"],
    **options: Any,
) -> TaskHandle: ...


@overload
async def acall(
    model: str | None = None,
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    mode: Literal["auto"],
    **options: Any,
) -> Response | TaskHandle: ...


async def acall(
    model: str | None = None,
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    mode: str | None = None,
    **options: Any,
) -> Response | TaskHandle:
    """Ask ``model`` and return its :class:`Response`; failures raise typed errors.

    ``options`` are llm_call's own (``validate``, ``max_attempts``, ``escalate``, ``fallbacks``,
    ``progress`` ...; see the docs) or go to the provider (``stop``, ``seed``,
    ``mcp_config``, ``allowed_tools`` ...).

    ``mode``: ``"direct"`` (default) runs the call here; ``"background"`` stores it as a task and
    returns a :class:`~llm_call.tasks.TaskHandle` (``await`` it for the Response); ``"auto"``
    goes to the background for long-running calls (``max/*``, agent validators, MCP,
    ``long_running=True``) and otherwise runs directly, handing the running call over as a task
    with :class:`~llm_call.errors.TaskPending` if it outlives ``timeout`` (see docs/tasks.md).

    Example::

        resp = await llm_call.acall("openai/gpt-4o-mini", "2+2?", validate=["regex:4"])
        handle = await llm_call.acall("max/sonnet", "Write a story.", mode="background")
    """
    request, opts = build_request(
        model,
        prompt,
        messages=messages,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout=timeout,
        mode=mode,
        **options,
    )
    if opts.mode != "direct":
        from .tasks.auto import run_with_mode

        return await run_with_mode(request, opts)
    with listening(opts.progress):
        return await execute(request, opts)


async def astream(
    model: str | None = None,
    prompt: str | None = None,
    *,
    messages: Sequence[Message] | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    **options: Any,
) -> AsyncIterator[Chunk]:
    """Stream the answer as :class:`Chunk` deltas; the last chunk has ``finish_reason``.

    A stream cut short raises :class:`~llm_call.errors.StreamInterrupted`; it never just stops.
    A cut after the first chunk is rescued by a retry or fallback when the policy allows: with
    ``stream_rescue="restart"`` (the default) a ``Chunk(event="retry")`` whose ``data["rescue"]``
    is ``"restart"`` says "drop what you have": the answer (tool calls included) streams again from
    its start. ``stream_rescue="continue"`` asks the next call for the rest of the text instead
    (``data["rescue"] == "continue"``: keep what you have; never repeated); ``"off"`` raises.

    Example::

        async for chunk in llm_call.astream("openai/gpt-4o-mini", "Tell a joke."):
            print(chunk.text, end="", flush=True)
    """
    request, opts = build_request(
        model,
        prompt,
        messages=messages,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout=timeout,
        **options,
    )
    if opts.mode != "direct":
        raise UsageError("astream() runs directly; use mode='direct' or submit a task and follow its events")
    with listening(opts.progress):
        async with closing(execute_stream(request, opts)) as chunks:
            async for chunk in chunks:
                yield chunk


async def aembed(
    model: str,
    input: str | Sequence[str],
    *,
    dimensions: int | None = None,
    encoding_format: str | None = None,
    timeout: float | None = None,
    **options: Any,
) -> Embeddings:
    """Embed ``input`` (a text or a list of texts) with ``model``: one vector per text, in order.

    Routes: OpenAI-compatible ones (``openai/*``, configured endpoints: ``POST {base}/embeddings``),
    LiteLLM providers (``litellm.aembedding``) and ``local/*`` (a separate llama-cpp instance
    loaded with ``embedding=True``). ``max/*`` raises :class:`~llm_call.errors.UsageError`: the
    Claude CLI has no embeddings. Transient
    failures are retried, breakers and ``fallbacks=[models]`` apply as for :func:`acall`
    (``retry=`` too). ``dimensions`` is sent to the provider; ``encoding_format="base64"`` asks it
    for the compact form, decoded here: ``vectors`` are always floats.

    Example::

        emb = await llm_call.aembed("openai/text-embedding-3-small", ["red", "blue"], dimensions=256)
        print(len(emb.vectors), len(emb.vectors[0]), emb.usage.prompt_tokens)
    """
    request, opts = build_embedding_request(
        model, input, dimensions=dimensions, encoding_format=encoding_format, timeout=timeout, **options
    )
    return await embed_with_retries(request, opts)


def call(model: str | None = None, prompt: str | None = None, **kwargs: Any) -> Response:
    """Synchronous :func:`acall` for scripts and threads (not for async code: use ``acall``)."""
    response: Response = portal.run(acall(model, prompt, **kwargs), "call")  # a TaskHandle with mode="background"
    return response


def stream(model: str | None = None, prompt: str | None = None, **kwargs: Any) -> Iterator[Chunk]:
    """Synchronous :func:`astream`: an iterator of chunks."""
    portal.check_not_in_loop("stream")
    return portal.iterate(astream(model, prompt, **kwargs), "stream")
