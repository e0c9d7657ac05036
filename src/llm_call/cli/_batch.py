"""``llm-call batch INPUT.jsonl -o OUT.jsonl``: many requests, progress, resume, a summary.

Exit codes: 0 every line passed; 1 some line did not pass (failed validation, error, review,
cancelled) or was not run; 2 the input has problems (nothing ran) or bad flags; 130 interrupted.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from ._common import EXIT_USAGE, load_for, reporting_errors, tune_gc_for_many_calls

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from ..batch import BatchItem, BatchReport, ItemResult, Problem

__all__ = ["PlainDisplay", "RichDisplay", "print_problems", "print_summary", "register"]

_MAX_FAILURES_LISTED = 20


def _money(value: float) -> str:
    return f"${value:.4f}"


class RichDisplay:
    """A rich progress bar: done/failed/running, elapsed, ETA, cost; one sub-bar per route.

    The counts are handed to rich at most every 0.1 s (it redraws 5 times a second) and at
    close, not at every line: two ``Progress.update`` calls per line cost ~10 µs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.ids: dict[str, TaskID] = {}
        self.counts: dict[str, list[int]] = {}  # key -> [failed, running, finished not shown yet]
        self.cost = 0.0
        self._shown_at = 0.0

    def begin(self, total: int, routes: Mapping[str, int], skipped: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if skipped:
            self.console.print(f"resuming: {skipped} line(s) already in the output file")
        self.progress = Progress(
            TextColumn("{task.description:>12}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed[/] [cyan]{task.fields[running]} running[/]"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[cost]}"),
            console=self.console,
            refresh_per_second=5,
        )
        self.ids["*"] = self.progress.add_task("all", total=total, failed=0, running=0, cost=_money(0))
        self.counts["*"] = [0, 0, 0]
        if len(routes) > 1:
            for name in sorted(routes):
                self.ids[name] = self.progress.add_task(name, total=routes[name], failed=0, running=0, cost="")
                self.counts[name] = [0, 0, 0]
        self.progress.start()

    def _keys(self, item: BatchItem) -> tuple[str, ...]:
        route = item.route or "?"
        return ("*", route) if route in self.ids else ("*",)

    def started(self, item: BatchItem) -> None:
        for key in self._keys(item):
            self.counts[key][1] += 1
        self._show()

    def finished(self, item: BatchItem, result: ItemResult) -> None:
        if result.cost_usd:
            self.cost += result.cost_usd
        for key in self._keys(item):
            counts = self.counts[key]
            counts[0] += 0 if result.passed else 1
            counts[1] = max(0, counts[1] - 1)
            counts[2] += 1
        self._show()

    def _show(self, *, now: bool = False) -> None:
        """Hand the counts to rich (at most every 0.1 s unless ``now``)."""
        assert self.progress is not None
        at = time.monotonic()
        if not now and at - self._shown_at < 0.1:
            return
        self._shown_at = at
        for key, counts in self.counts.items():
            fields: dict[str, Any] = {"failed": counts[0], "running": counts[1]}
            if key == "*":
                fields["cost"] = _money(self.cost)
            self.progress.update(self.ids[key], advance=counts[2], **fields)
            counts[2] = 0

    def close(self) -> None:
        if self.progress is not None:
            self._show(now=True)
            self.progress.stop()


class PlainDisplay:
    """One line per finished request (for logs and pipes: stderr is not a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.total = 0
        self.done = 0
        self.cost = 0.0

    def begin(self, total: int, routes: Mapping[str, int], skipped: int) -> None:
        self.total = total
        per_route = ", ".join(f"{name}: {n}" for name, n in sorted(routes.items()))
        extra = f"; {skipped} already in the output file" if skipped else ""
        self.stream.write(f"batch: {total} request(s) ({per_route}){extra}\n")
        self.stream.flush()

    def started(self, item: BatchItem) -> None:
        return None

    def finished(self, item: BatchItem, result: ItemResult) -> None:
        self.done += 1
        if result.cost_usd:
            self.cost += result.cost_usd
        width = len(str(self.total))
        latency = f"{result.latency_s:.2f}s" if result.latency_s is not None else "-"
        answers = [a for a in result.attempts if a.get("kind") == "answer"]
        tries = f", {len(answers)} attempts" if len(answers) > 1 else ""
        line = (
            f"[{self.done:>{width}}/{self.total}] {item.id} {result.status} "
            f"({item.route or '?'}, {latency}{tries}, {_money(self.cost)} so far)"
        )
        retried = [a for a in answers if not a.get("ok") and a.get("feedback")]
        if retried:
            line += f" after feedback: {str(retried[-1]['feedback']).splitlines()[0][:120]}"
        if result.error_type:
            line += f" {result.error_type}: {(result.error_message or '').splitlines()[0][:160] if result.error_message else ''}"
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        return None


def print_problems(problems: list[Problem], path: str, stream: TextIO) -> None:
    for problem in problems:
        stream.write(f"error: {path}: {problem}\n")
    stream.write(f"{len(problems)} problem(s) in {path}; nothing was run\n")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def print_summary(report: BatchReport, out: str, console: Console) -> None:
    """The summary table (passed / failed / errors by route, p50/p95, cost) and what failed."""
    from rich.table import Table

    table = Table(title="batch summary", title_justify="left")
    for name in ("route", "total", "passed", "failed", "errors", "review", "cancelled", "p50", "p95", "cost"):
        table.add_column(name, justify="left" if name == "route" else "right", no_wrap=True)
    rows = report.summary()
    for row in rows:
        style = "bold" if row.route == "total" else None
        table.add_row(
            row.route,
            str(row.total),
            str(row.passed),
            str(row.failed_validation),
            str(row.errors),
            str(row.needs_review),
            str(row.cancelled),
            _seconds(row.p50_s),
            _seconds(row.p95_s),
            _money(row.cost_usd),
            style=style,
        )
    console.print(table)
    failures = [r for r in report.results if not r.passed]
    for r in failures[:_MAX_FAILURES_LISTED]:
        why = f"{r.error_type}: {(r.error_message or '').splitlines()[0][:200]}" if r.error_type else ""
        console.print(f"  line {r.line} {r.id}: {r.status} {why}", markup=False, highlight=False, soft_wrap=True)
    if len(failures) > _MAX_FAILURES_LISTED:
        console.print(f"  ... and {len(failures) - _MAX_FAILURES_LISTED} more (see {out})", markup=False)
    resumed = f", {report.skipped} from an earlier run" if report.skipped else ""
    console.print(
        f"{len(report.results)} result(s) in {out} ({report.ran} new{resumed}) in {report.elapsed_s:.1f}s",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if report.not_run:
        why = "interrupted" if report.interrupted else "stopped by --fail-fast"
        console.print(
            f"{len(report.not_run)} line(s) not run ({why}); run again with --resume to finish them",
            markup=False,
            highlight=False,
        )
    verdict = "all passed" if report.all_passed else "NOT all passed"
    console.print(verdict, style="green" if report.all_passed else "red")


async def _run_with_sigint(coro_factory: Any) -> BatchReport:
    """Run the batch; the first Ctrl-C stops it cleanly, a second one cancels it outright."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    presses = 0

    def on_sigint() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            sys.stderr.write("\nstopping: cancelling requests in flight (Ctrl-C again to abort)\n")
            stop.set()
        elif main is not None:
            main.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        installed = True
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
        installed = False
    try:
        report: BatchReport = await coro_factory(stop)
        return report
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)


def register(app: typer.Typer) -> None:
    @app.command("batch")
    def batch(
        input_file: Annotated[str, typer.Argument(metavar="INPUT.jsonl", help="One request per line (JSON)")],
        output: Annotated[str | None, typer.Option("--output", "-o", metavar="OUT.jsonl", help="Results, one line per request")] = None,
        concurrency: Annotated[int, typer.Option("--concurrency", "-n", min=1, help="Requests in flight at once (route limits apply too)")] = 8,
        resume: Annotated[bool, typer.Option("--resume", help="Skip ids already in OUT and append the rest")] = False,
        fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first request that does not pass")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Check every line (routes, validation specs) and run nothing")] = False,
        progress: Annotated[str, typer.Option("--progress", help="auto (a bar on a terminal, else lines), rich, plain or none")] = "auto",
        config: Annotated[str | None, typer.Option("--config", "-c", help="TOML config file")] = None,
        tasks: Annotated[str | None, typer.Option("--tasks", help="Task store: SQLite path or redis:// URL (default: [tasks] store)")] = None,
    ) -> None:
        """Run every request of a JSONL file through the task manager; write results as JSONL.

        A line is {"id", "model", "prompt" or "messages", "system", "validation", "max_attempts",
        "escalate", "fallbacks", "mcp_config", "allowed_tools", "timeout", ...} or the original
        project's llm_config form. Every line is checked before anything runs. Ctrl-C stops
        cleanly (finished results are in OUT); --resume skips the ids already there.
        """
        from rich.console import Console

        if progress not in ("auto", "rich", "plain", "none"):
            typer.echo("error: --progress must be auto, rich, plain or none", err=True)
            raise typer.Exit(EXIT_USAGE)
        if not dry_run and output is None:
            typer.echo("error: give the output file with -o OUT.jsonl (or use --dry-run)", err=True)
            raise typer.Exit(EXIT_USAGE)
        settings = load_for(config, tasks)
        with reporting_errors():
            from ..batch import check_items, read_items

            items, problems = read_items(input_file)
            problems = sorted(problems + check_items(items, settings), key=lambda p: p.line)
        if problems:
            print_problems(problems, input_file, sys.stderr)
            raise typer.Exit(EXIT_USAGE)
        if dry_run:
            routes: dict[str, int] = {}
            for item in items:
                routes[item.route] = routes.get(item.route, 0) + 1
            per_route = ", ".join(f"{k}: {v}" for k, v in sorted(routes.items()))
            typer.echo(f"{input_file}: {len(items)} request(s) OK ({per_route})")
            return
        assert output is not None
        if Path(output).resolve() == Path(input_file).resolve():
            typer.echo("error: the output file is the input file", err=True)
            raise typer.Exit(EXIT_USAGE)
        err_console = Console(stderr=True)
        mode = progress
        if mode == "auto":
            mode = "rich" if err_console.is_terminal else "plain"
        display: RichDisplay | PlainDisplay | None = None
        if mode == "rich":
            display = RichDisplay(Console(stderr=True, force_terminal=True) if not err_console.is_terminal else err_console)
        elif mode == "plain":
            display = PlainDisplay(sys.stderr)
        from ..batch import run_batch

        async def go(stop: asyncio.Event) -> BatchReport:
            return await run_batch(
                items,
                output,
                concurrency=concurrency,
                fail_fast=fail_fast,
                resume=resume,
                observer=display,
                stop=stop,
                settings=settings,
            )

        tune_gc_for_many_calls()  # every line is a live call and a task, as in a worker
        try:
            with reporting_errors():
                report = asyncio.run(_run_with_sigint(go))
        except asyncio.CancelledError:  # a second Ctrl-C
            if display is not None:
                display.close()
            sys.stderr.write(f"aborted; the results that finished are in {output} (--resume runs the rest)\n")
            raise typer.Exit(130) from None
        finally:
            if display is not None:
                display.close()
        out_console = Console(highlight=False)
        if not out_console.is_terminal:
            out_console = Console(highlight=False, width=120)
        print_summary(report, output, out_console)
        raise typer.Exit(report.exit_code)
