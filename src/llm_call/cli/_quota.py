"""``llm-call quota``: the Claude subscription's quota as the ``max/*`` route last saw it.

Reads the state every process shares through the task store (``--tasks``, else
``settings.tasks.store``): one row per usage window with its utilization as a bar, its status and
when it resets, then the overage (extra usage) status and whether ``max/*`` calls wait now.
Exit code 0; 1 when the quota blocks ``max/*`` calls now; 2 on a configuration error.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._common import EXIT_FAILED, dumps, load, reporting_errors

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["quota_line", "read_report", "register"]

_BAR = 20


def read_report(settings: Settings, tasks: str | None = None) -> list[dict[str, Any]]:
    """:func:`~llm_call.providers.claude_quota.quota_report` of the states in the task store."""
    from ..providers.claude_quota import QUOTA, quota_report
    from ..tasks import make_store

    async def main() -> list[dict[str, Any]]:
        store = make_store(tasks)
        await store.open()
        try:
            states = await QUOTA.refresh(store)  # type: ignore[arg-type]
        finally:
            await store.close()
        cfg = settings.claude
        return quota_report(states, cfg.allow_overage, cfg.slowdown_at)

    return asyncio.run(main())


def _in(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = int(seconds // 60)
    if minutes >= 24 * 60:
        return f"{minutes // (24 * 60)}d {minutes % (24 * 60) // 60}h"
    if minutes >= 60:
        return f"{minutes // 60}h {minutes % 60:02d}m"
    return f"{minutes}m {int(seconds % 60):02d}s"


def _bar(util: float | None) -> str:
    if util is None:
        return "?"
    filled = round(min(max(util, 0.0), 1.0) * _BAR)
    return f"{'█' * filled}{'░' * (_BAR - filled)} {util * 100:5.1f}%"


def quota_line(rows: list[dict[str, Any]]) -> tuple[bool | None, str]:
    """One line for ``llm-call doctor``: (ok, detail); ok None when no quota was seen yet."""
    if not rows:
        return None, "no quota reported yet (the CLI reports it in subscription mode, after a max/* call)"
    parts = []
    ok = True
    for row in rows:
        if row["blocked"]:
            b = row["blocked"]
            ok = False
            parts.append(f"{row['account']}: {b['window']} used up ({b['reason']}), resets in {_in(b['until'] - time.time())}")
            continue
        windows = ", ".join(
            f"{name} reset" if w.get("reset") else f"{name} {w['utilization'] * 100:.0f}%"
            for name, w in row["windows"].items()
            if w["utilization"] is not None or w.get("reset")
        )
        parts.append(f"{row['account']}: {windows or row['status']}" + (" (slowed down)" if row["slowed"] else ""))
    return ok, "; ".join(parts)


def register(app: typer.Typer) -> None:
    @app.command("quota")
    def quota(
        tasks: Annotated[
            str | None, typer.Option("--tasks", help="Task store: SQLite path or redis:// URL (default: settings.tasks.store)")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    ) -> None:
        """Show the Claude subscription's quota (max/*): windows, utilization, resets."""
        with reporting_errors():
            settings = load()
            rows = read_report(settings, tasks)
        if as_json:
            typer.echo(dumps(rows))
        elif not rows:
            typer.echo("no quota reported yet: the Claude Code CLI reports it in subscription mode, after a max/* call")
        else:
            from rich.console import Console
            from rich.table import Table

            console = Console()
            for row in rows:
                table = Table("window", "utilization", "status", "resets in", title=f"Claude quota: {row['account']}")
                for name, w in row["windows"].items():
                    if w.get("reset"):  # the reading is from before its reset: the next call reports anew
                        table.add_row(name, _bar(None), f"reset (was {w['status'] or '-'})", "-")
                    else:
                        table.add_row(name, _bar(w["utilization"]), w["status"] or "-", _in(w["resets_in_s"]))
                console.print(table)
                over = row["overage"]
                extra = f"overage: {over['status'] or '-'}"
                if over.get("disabled_reason"):
                    extra += f" ({over['disabled_reason']})"
                if over.get("in_use"):
                    extra += ", in use"
                console.print(extra, markup=False, highlight=False)
                if row["blocked"]:
                    b = row["blocked"]
                    which = f"max/* calls of {b['models']} models" if b.get("models") else "max/* calls"
                    console.print(
                        f"{which} wait: {b['window']} used up ({b['reason']}), resets in {_in(b['until'] - time.time())}",
                        markup=False, highlight=False,
                    )
                elif row["slowed"]:
                    console.print(f"max/* calls slowed down: utilization above claude.slowdown_at ({settings.claude.slowdown_at})")
        if any(r["blocked"] for r in rows):
            raise typer.Exit(EXIT_FAILED)
