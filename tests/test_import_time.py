"""``import llm_call`` stays light: heavy dependencies load on first use, never at import.

This checks which modules are imported (in a fresh interpreter), not how long it takes: timing
goals live in ``bench/overhead.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("aiohttp", "pydantic", "litellm", "claude_agent_sdk", "llama_cpp", "openai", "anthropic", "typer", "rich")
SDKS = ("litellm", "claude_agent_sdk", "llama_cpp", "openai", "anthropic")


def imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_import_llm_call_imports_no_heavy_module() -> None:
    loaded = imported_after("import llm_call")
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_public_names_resolve_lazily() -> None:
    loaded = imported_after("import llm_call\nllm_call.acall, llm_call.call, llm_call.Response, llm_call.AuthError")
    assert loaded.isdisjoint(SDKS), sorted(loaded & set(SDKS))


def test_public_subpackages_are_reachable_after_a_bare_import() -> None:
    """The docs write ``llm_call.tasks.status(...)`` and ``llm_call.validation.agent(...)`` after
    ``import llm_call`` alone; without an explicit ``import llm_call.tasks`` that was an AttributeError."""
    loaded = imported_after(
        "import llm_call\n"
        "assert callable(llm_call.tasks.status) and callable(llm_call.validation.agent)\n"
        "assert llm_call.testing.ScriptedLLMServer and llm_call.config.load_settings\n"
        "try:\n    llm_call.nonsense\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit('no error')"
    )
    assert loaded.isdisjoint(SDKS), sorted(loaded & set(SDKS))


def test_cli_imports_no_provider_sdk() -> None:
    loaded = imported_after("import llm_call.cli")
    assert loaded.isdisjoint(SDKS), sorted(loaded & set(SDKS))


def test_top_level_exports_what_callers_handle_without_loading_it_at_import() -> None:
    """Task handles, the retry policy and its strategies, and the task errors come from
    ``llm_call`` itself; the modules behind them load on first access, not at import."""
    code = (
        "import sys, llm_call\n"
        "assert 'llm_call.retry' not in sys.modules and 'llm_call.tasks' not in sys.modules\n"
        "names = ['TaskHandle', 'TaskManager', 'RetryPolicy', 'ManualClock', 'stop_after_attempt',\n"
        "         'wait_full_jitter', 'retry_if_transient', 'QueueFull', 'TaskStoreError', 'QuotaExhausted']\n"
        "assert set(names) <= set(llm_call.__all__)\n"
        "policy = llm_call.RetryPolicy(stop=llm_call.stop_after_attempt(2) | llm_call.stop_after_delay(5))\n"
        "assert issubclass(llm_call.QueueFull, llm_call.LLMCallError)\n"
        "from llm_call.tasks import TaskHandle\n"
        "assert llm_call.TaskHandle is TaskHandle\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
