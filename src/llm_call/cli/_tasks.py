"""``llm-call tasks ...`` and ``llm-call worker``: background tasks from the command line.

Every command takes ``--tasks PATH`` (else ``settings.tasks.store`` / ``$LLM_CALL_TASKS``, else
``$XDG_DATA_HOME/llm_call/tasks.db``). Only ``worker`` runs tasks; the other commands read and
control them through the store, whichever process runs them. Exit codes: 0 success, 1 the task
failed (or is not done), 2 usage or configuration error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ..errors import LLMCallError, UsageError
from ._common import (
    EXIT_FAILED,
    describe,
    dumps,
    load,
    reporting_errors,
    state,
    tune_gc_for_many_calls,
)

if TYPE_CHECKING:
    from ..tasks import TaskManager
    from ..types import TaskEvent, TaskRecord

__all__ = ["register", "submit_background"]

T = TypeVar("T")

TasksOption = Annotated[
    str | None,
    typer.Option("--tasks", help="Task store: SQLite path or redis:// URL (default: settings.tasks.store, $LLM_CALL_TASKS, XDG data dir)"),
]


def _run(tasks: str | None, action: Callable[[TaskManager], Awaitable[T]]) -> T:
    """Load settings, open a client-only manager on the store, run ``action``."""
    load()
    from ..tasks import TaskManager

    async def main() -> T:
        manager = TaskManager(tasks, execute=False)
        await manager.start()
        try:
            return await action(manager)
        finally:
            await manager.close()

    return asyncio.run(main())


def _when(ts: float | None) -> str:
    return "-" if not ts else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _event_line(ev: TaskEvent) -> str:
    data = json.dumps(ev.data, ensure_ascii=False, default=str) if ev.data else ""
    return f"{ev.seq:>4}  {time.strftime('%H:%M:%S', time.localtime(ev.at))}  {ev.kind:<17} {data}"


def _record_summary(rec: TaskRecord) -> str:
    """Status and progress (``waiting``: a queued ``max/*`` task the Claude quota holds)."""
    prog = rec.progress or {}
    bits = [f"{rec.status.value}"]
    waiting = prog.get("waiting") if not rec.status.is_final else None
    if isinstance(waiting, dict):
        bits.append(f"waiting for the Claude quota ({waiting.get('window')}) until {_when(waiting.get('until'))}")
    if prog.get("attempt"):
        bits.append(f"attempt {prog['attempt']}")
    if prog.get("model"):
        bits.append(str(prog["model"]))
    if prog.get("chars"):
        bits.append(f"{prog['chars']} chars")
    return ", ".join(bits)


def _print_outcome(rec: TaskRecord, as_json: bool) -> None:
    """Print the answer (stdout) or the typed error (stderr, exit 1)."""
    from ..tasks import outcome_of

    if as_json:
        typer.echo(dumps(rec.to_dict()))
        if rec.status.value != "succeeded":
            raise typer.Exit(EXIT_FAILED)
        return
    try:
        response = outcome_of(rec)
    except LLMCallError as exc:
        sys.stderr.write(f"error: task {rec.id} {rec.status.value}: {describe(exc)}\n")
        raise typer.Exit(EXIT_FAILED) from None
    typer.echo(response.text)


async def _has_runner(manager: TaskManager) -> bool:
    return any(w.claims == "all" for w in await manager.workers_alive())


def submit_background(request: dict[str, Any], tasks: str | None) -> None:
    """``llm-call ask --background``: queue the call, print its id, warn if nothing will run it."""

    async def action(manager: TaskManager) -> tuple[str, bool]:
        task_id = await manager.submit(request)
        return task_id, await _has_runner(manager)

    task_id, runner = _run(tasks, action)
    typer.echo(task_id)
    if not runner:
        sys.stderr.write(
            "warning: no worker or server is running on this task store, so the task waits in the queue; "
            "start one with `llm-call worker`" + (f" --tasks {tasks}" if tasks else "") + "\n"
        )


def register(app: typer.Typer) -> None:
    tasks_app = typer.Typer(help="Background tasks: list, show, wait, follow, cancel, review.", no_args_is_help=True)

    @tasks_app.command("list")
    def list_(
        status: Annotated[str | None, typer.Option("--status", help="Only tasks in this state (queued, running, succeeded, ...)")] = None,
        limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many, newest first")] = 20,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
        tasks: TasksOption = None,
    ) -> None:
        """List tasks, newest first."""
        with reporting_errors():
            records = _run(tasks, lambda m: m.list_tasks(status, limit))
        if as_json:
            typer.echo(dumps([r.to_dict() for r in records]))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("id", "status", "model", "created", "runs", "progress")
        for r in records:
            table.add_row(r.id, r.status.value, r.route, _when(r.created_at), str(r.attempts), _record_summary(r))
        Console().print(table)

    @tasks_app.command("show")
    def show(
        task_id: Annotated[str, typer.Argument(help="Task id")],
        tasks: TasksOption = None,
    ) -> None:
        """Print a task's record as JSON (status, request, progress, result or error)."""
        with reporting_errors():
            rec = _run(tasks, lambda m: m.status(task_id))
        typer.echo(dumps(rec.to_dict()))

    @tasks_app.command("wait")
    def wait(
        task_id: Annotated[str, typer.Argument(help="Task id")],
        timeout: Annotated[float | None, typer.Option("--timeout", help="Give up waiting after this many seconds (exit 1)")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the task record as JSON at the end")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display")] = False,
        tasks: TasksOption = None,
    ) -> None:
        """Show the task's progress live, then print its answer (or its error, exit 1)."""
        from rich.console import Console

        console = Console(stderr=True, highlight=False)

        async def action(manager: TaskManager) -> TaskRecord:
            started = time.monotonic()
            with console.status(f"task {task_id}: waiting", spinner="dots") as status:

                async def follow() -> None:
                    async for ev in manager.events(task_id):
                        if not quiet:
                            console.print(_event_line(ev), markup=False)
                        status.update(f"task {task_id}: {ev.kind} ({time.monotonic() - started:.0f}s)")

                try:
                    await asyncio.wait_for(follow(), timeout)
                except TimeoutError:
                    rec = await manager.status(task_id)
                    sys.stderr.write(f"task {task_id} is still {rec.status.value} after {timeout}s\n")
                    raise typer.Exit(EXIT_FAILED) from None
            return await manager.wait(task_id)

        with reporting_errors():
            rec = _run(tasks, action)
        _print_outcome(rec, as_json)

    @tasks_app.command("result")
    def result(
        task_id: Annotated[str, typer.Argument(help="Task id")],
        as_json: Annotated[bool, typer.Option("--json", help="Print the task record as JSON")] = False,
        tasks: TasksOption = None,
    ) -> None:
        """Print a finished task's answer now (exit 1 if it failed or is not done)."""
        with reporting_errors():
            rec = _run(tasks, lambda m: m.status(task_id))
        _print_outcome(rec, as_json)

    @tasks_app.command("events")
    def events(
        task_id: Annotated[str, typer.Argument(help="Task id")],
        follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Keep following until the task ends")] = True,
        after: Annotated[int, typer.Option("--after", help="Only events after this sequence number")] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
        tasks: TasksOption = None,
    ) -> None:
        """Print a task's events (and follow new ones until it ends)."""

        async def action(manager: TaskManager) -> None:
            async for ev in manager.events(task_id, after, follow=follow):
                typer.echo(json.dumps(ev.to_dict(), default=str) if as_json else _event_line(ev))

        with reporting_errors():
            _run(tasks, action)

    @tasks_app.command("cancel")
    def cancel(
        task_id: Annotated[str, typer.Argument(help="Task id")],
        wait_s: Annotated[float, typer.Option("--wait", help="Seconds to wait for a running task to stop")] = 10.0,
        tasks: TasksOption = None,
    ) -> None:
        """Cancel a queued or running task (a running one stops within about a second)."""

        async def action(manager: TaskManager) -> TaskRecord:
            rec = await manager.cancel(task_id)
            if rec.status.value == "running":
                try:
                    rec = await manager.wait(task_id, timeout=wait_s)
                except LLMCallError:
                    rec = await manager.status(task_id)
            return rec

        with reporting_errors():
            rec = _run(tasks, action)
        if rec.status.value == "cancelled":
            typer.echo(f"{task_id} cancelled")
            return
        if rec.status.value == "running":
            sys.stderr.write(f"cancel of {task_id} requested; it is still running after {wait_s}s\n")
        else:
            sys.stderr.write(f"{task_id} is already {rec.status.value}; nothing to cancel\n")
        raise typer.Exit(EXIT_FAILED)

    @tasks_app.command("review")
    def review(
        task_id: Annotated[str, typer.Argument(help="Task id (in needs_review)")],
        approve: Annotated[bool, typer.Option("--approve", help="Accept the last answer as the result")] = False,
        reply: Annotated[str | None, typer.Option("--reply", help="Continue the conversation with this text")] = None,
        tasks: TasksOption = None,
    ) -> None:
        """Resolve a task that needs a human review: approve its answer, or reply to the model."""
        with reporting_errors():
            if approve == (reply is not None):
                raise UsageError("give exactly one of --approve and --reply TEXT")
            rec = _run(tasks, lambda m: m.review(task_id, approve=approve, reply=reply))
        typer.echo(f"{task_id} {rec.status.value}")

    app.add_typer(tasks_app, name="tasks")

    @app.command("worker")
    def worker(
        concurrency: Annotated[int | None, typer.Option("--concurrency", "-j", help="Tasks at once (default: settings.tasks.global_limit)")] = None,
        burst: Annotated[bool, typer.Option("--burst", help="Run until nothing is queued, then exit")] = False,
        grace: Annotated[float, typer.Option("--grace", help="On stop, seconds running tasks get to finish before they are re-queued")] = 10.0,
        tasks: TasksOption = None,
        routes: Annotated[str | None, typer.Option("--routes", help="Only run these routes: comma list of globs, e.g. 'max/*,openai/*'")] = None,
    ) -> None:
        """Run queued tasks from the task store until stopped (Ctrl-C / SIGTERM)."""
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        with reporting_errors():
            if concurrency is not None and concurrency < 1:
                raise UsageError("--concurrency must be >= 1")
            from .._settings import without_saved_sessions
            from ..config import set_settings
            from ..tasks.worker import run_worker

            # a worker runs the server's tasks (and other people's): like `serve`, no Claude CLI
            # conversation is kept on disk unless the config says [claude] persist_sessions
            set_settings(without_saved_sessions(load()), path=state.config_path)

            tune_gc_for_many_calls()

            def ready(manager: TaskManager) -> None:
                sys.stderr.write(
                    f"worker {manager.worker_id} running tasks from {manager.store.url} "
                    f"(concurrency {concurrency or manager.settings.tasks.global_limit}{', burst' if burst else ''})\n"
                )
                sys.stderr.flush()

            stats = asyncio.run(
                run_worker(
                    tasks, concurrency=concurrency, burst=burst, grace=grace, handle_signals=True, on_ready=ready,
                    routes=[r.strip() for r in routes.split(",") if r.strip()] if routes else None,
                )
            )
        sys.stderr.write(f"worker stopped: {json.dumps(stats)}\n")
