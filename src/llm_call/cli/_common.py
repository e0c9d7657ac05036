"""Shared CLI helpers: settings loading, error reporting with the documented exit codes."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from ..errors import ConfigError, LLMCallError, ProviderError, UsageError

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "Report", "describe", "fail", "load", "reporting_errors", "state", "tune_gc_for_many_calls"]

EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass
class _State:
    config_path: str | None = None


state = _State()


def tune_gc_for_many_calls() -> None:
    """Freeze the start-up heap and collect the young generation less often.

    For a command that holds thousands of live calls (``worker``, ``batch``): full collections
    then stop rescanning the imported modules, and fewer collections run while calls are in
    flight. This process is the command's own to tune; a library call never changes the GC of
    its host.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def load() -> Settings:
    """Load settings from the --config file (or the default places) and install them."""
    from ..config import load_settings, set_settings

    settings = load_settings(state.config_path)
    set_settings(settings, path=state.config_path)
    return settings


def load_for(config: str | None, tasks: str | None = None) -> Settings:
    """A command's settings: its --config file (when given), errors reported as the CLI does,
    then its --tasks store over the configured one."""
    if config is not None:
        state.config_path = config
    with reporting_errors():
        settings = load()
    if tasks is not None:
        settings.tasks.store = tasks
    return settings


def describe(exc: BaseException, model: str | None = None) -> str:
    """One line naming the error type, the model and a hint.

    ``model`` is the model the user asked for (``-m``); the error's own model (what the provider
    was asked for, e.g. ``gpt-4o`` for ``openai/gpt-4o``) is shown when it says more.
    """
    name = type(exc).__name__
    text = f"{name}: {exc}" if not isinstance(exc, LLMCallError) else f"{name}: {exc.message}"
    shown = model or (exc.model if isinstance(exc, ProviderError) else None)
    if shown and f"model {shown}" not in text and f"model {shown!r}" not in text:
        text += f" [model {shown}]"
    hint = getattr(exc, "hint", None)
    if hint:
        text += f"\nhint: {hint}"
    return text


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


@dataclass
class Report:
    """What ``reporting_errors`` knows about the command; set ``model`` once it is known."""

    model: str | None = None


@contextmanager
def reporting_errors(extra: Callable[[LLMCallError], None] | None = None) -> Iterator[Report]:
    """Print llm_call errors on stderr and exit 2 (usage/config) or 1 (the call failed)."""
    report = Report()
    try:
        yield report
    except (ConfigError, UsageError) as exc:
        sys.stderr.write(f"error: {describe(exc, report.model)}\n")
        raise typer.Exit(EXIT_USAGE) from None
    except LLMCallError as exc:
        sys.stderr.write(f"error: {describe(exc, report.model)}\n")
        if extra is not None:
            extra(exc)
        raise typer.Exit(EXIT_FAILED) from None


def dumps(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, ensure_ascii=False, default=str)
