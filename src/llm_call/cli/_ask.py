"""``llm-call ask``: one call from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import LLMCallError, UsageError
from ._common import dumps, load, reporting_errors

__all__ = ["ask_options", "register"]


def _read_prompt(prompt: str) -> str:
    if prompt == "-":
        return sys.stdin.read()
    return prompt


def _load_json_file(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{what} file {path} is not valid JSON: {exc}") from None


def ask_options(
    *,
    validate: list[str] | None,
    max_attempts: int | None,
    escalate: list[str] | None,
    fallback: list[str] | None,
    schema: str | None,
    mcp_config: str | None,
    allowed_tools: str | None,
    cwd: str | None,
    permission_mode: str | None,
) -> dict[str, Any]:
    """Turn CLI flags into acall keyword options (only those given)."""
    opts: dict[str, Any] = {}
    specs = list(validate or [])
    if schema:
        specs.append(f"schema:@{schema}")
    if specs:
        opts["validate"] = specs
    if max_attempts is not None:
        opts["max_attempts"] = max_attempts
    if escalate:
        opts["escalate"] = list(escalate)
    if fallback:
        opts["fallbacks"] = list(fallback)
    if mcp_config:
        cfg = _load_json_file(mcp_config, "MCP config")
        if not isinstance(cfg, dict) or "mcpServers" not in cfg:
            raise UsageError(f"MCP config file {mcp_config} must be a JSON object with an 'mcpServers' key")
        opts["mcp_config"] = cfg
    if allowed_tools:
        opts["allowed_tools"] = [t.strip() for t in allowed_tools.split(",") if t.strip()]
    if cwd:
        opts["cwd"] = cwd
    if permission_mode:
        opts["permission_mode"] = permission_mode
    return opts


def register(app: typer.Typer) -> None:
    @app.command("ask")
    def ask(
        prompt: Annotated[str, typer.Argument(help="The prompt; '-' reads it from stdin")],
        model: Annotated[str | None, typer.Option("--model", "-m", help="Model or alias (default: config default_model, else local/smollm2)")] = None,
        system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt")] = None,
        temperature: Annotated[float | None, typer.Option("--temperature", "-t", help="Sampling temperature (default: the route's own)")] = None,
        max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Longest answer, in tokens")] = None,
        timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds for each provider request (a timed-out request is retried; see docs/timeouts.md)")] = None,
        stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it arrives")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the whole Response as JSON")] = False,
        validate: Annotated[list[str] | None, typer.Option("--validate", "-V", help="Validation spec, e.g. json, regex:^\\d+$, length:max=200 (repeatable)")] = None,
        max_attempts: Annotated[int | None, typer.Option("--max-attempts", help="Validation attempts in all")] = None,
        escalate: Annotated[list[str] | None, typer.Option("--escalate", help="Model to escalate to after failures (repeatable)")] = None,
        fallback: Annotated[list[str] | None, typer.Option("--fallback", help="Model to fall back to on provider failure (repeatable)")] = None,
        schema: Annotated[str | None, typer.Option("--schema", help="JSON Schema file the answer must match")] = None,
        mcp_config: Annotated[str | None, typer.Option("--mcp-config", help="MCP config JSON file (max/* route)")] = None,
        allowed_tools: Annotated[str | None, typer.Option("--allowed-tools", help="Comma list of tools the model may use")] = None,
        cwd: Annotated[str | None, typer.Option("--cwd", help="Working directory for the Claude CLI")] = None,
        permission_mode: Annotated[str | None, typer.Option("--permission-mode", help="Claude CLI permission mode")] = None,
        background: Annotated[bool, typer.Option("--background", help="Queue it as a task, print the task id (see llm-call tasks, llm-call worker)")] = False,
        tasks: Annotated[str | None, typer.Option("--tasks", help="Task store for --background (default: settings.tasks.store, $LLM_CALL_TASKS, XDG data dir)")] = None,
    ) -> None:
        """Ask a model once and print the answer."""
        with reporting_errors(_print_attempts) as report:
            report.model = model
            settings = load()
            text = _read_prompt(prompt)
            opts = ask_options(
                validate=validate,
                max_attempts=max_attempts,
                escalate=escalate,
                fallback=fallback,
                schema=schema,
                mcp_config=mcp_config,
                allowed_tools=allowed_tools,
                cwd=cwd,
                permission_mode=permission_mode,
            )
            if model is None:
                report.model = settings.default_model
            if model is None and not settings.default_model:
                from ..config import DEFAULT_MODEL

                report.model = DEFAULT_MODEL
                sys.stderr.write(f"note: no model given, using {DEFAULT_MODEL} (set default_model or -m)\n")
            if background:
                from ._tasks import submit_background

                submit_background(
                    {"model": model, "prompt": text, "system": system, "temperature": temperature,
                     "max_tokens": max_tokens, "timeout": timeout, **opts},
                    tasks,
                )
                return
            from ..client import call
            from ..client import stream as stream_call

            if stream and not as_json:
                printed = False
                # printed text cannot be taken back: a cut stream is continued, not restarted
                opts.setdefault("stream_rescue", "continue")
                try:
                    for chunk in stream_call(
                        model, text, system=system, temperature=temperature, max_tokens=max_tokens, timeout=timeout, **opts
                    ):
                        rescue = (chunk.data or {}).get("rescue") if chunk.event == "retry" else None
                        if rescue:
                            d = chunk.data or {}
                            again = "continuing" if rescue == "continue" else "starting the answer again"
                            sys.stderr.write(f"\n[stream cut ({d.get('reason')}); {again} on {d.get('model')}]\n")
                        elif chunk.event == "retry":
                            sys.stdout.write("\n")
                            sys.stderr.write(f"[attempt {chunk.attempt}: {(chunk.data or {}).get('feedback', 'retrying')}]\n")
                        elif chunk.text:
                            printed = True
                            sys.stdout.write(chunk.text)
                            sys.stdout.flush()
                finally:
                    if printed:  # end the (possibly partial) answer before any error
                        sys.stdout.write("\n")
                        sys.stdout.flush()
                return
            resp = call(
                model, text, system=system, temperature=temperature, max_tokens=max_tokens, timeout=timeout, **opts
            )
        if as_json:
            typer.echo(dumps(resp.to_dict()))
        else:
            typer.echo(resp.text)


def _print_attempts(exc: LLMCallError) -> None:
    attempts = getattr(exc, "attempts", None)
    if not attempts:
        return
    for a in attempts:
        d = a if isinstance(a, dict) else getattr(a, "to_dict", lambda: {})()
        if not d.get("ok"):
            sys.stderr.write(f"  attempt {d.get('number')} ({d.get('model')}): {d.get('feedback') or d.get('error')}\n")


