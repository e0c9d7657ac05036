"""``llm-call doctor``: is the ``max/*`` route ready? (CLI found, its version, logged in, quota).

Without ``--live`` nothing is sent anywhere: the login is judged from the credentials the CLI
keeps (``~/.claude/.credentials.json`` or ``$CLAUDE_CONFIG_DIR``), a token in the environment, or
``ANTHROPIC_API_KEY`` when ``claude.use_api_key`` is on. ``--live`` makes one tiny call
(``max/haiku``, "Reply with OK") and reports what the CLI said. The quota line is the state the
task store holds (``llm-call quota`` shows it in full); a window used up fails the check. Exit code 0 when every check
passed, 1 when one failed, 2 on a configuration error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._common import EXIT_FAILED, dumps, load, reporting_errors

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["Check", "diagnose", "register"]

_LIVE_MODEL = "max/haiku"
_VERSION_TIMEOUT = 30.0
_LIVE_TIMEOUT = 120.0


@dataclass(slots=True)
class Check:
    """One line of the report. ``ok`` is None when the answer is not known."""

    name: str
    ok: bool | None
    detail: str


def _sdk_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("claude-agent-sdk")
    except PackageNotFoundError:
        return None


def _find_cli(settings: Settings) -> tuple[str | None, str]:
    """(path, where it came from) of the CLI the max/* route would run."""
    import shutil

    from ..errors import ConfigError
    from ..providers._claude_plan import bundled_cli_path, resolve_cli_path

    if settings.claude.cli_path:
        try:
            return resolve_cli_path(settings.claude.cli_path), "claude.cli_path / LLM_CALL_CLAUDE_CLI"
        except ConfigError as exc:
            return None, exc.message
    bundled = bundled_cli_path()
    if bundled:
        return bundled, "bundled with claude-agent-sdk"
    found = shutil.which("claude")
    return (found, "on PATH") if found else (None, "not bundled and not on PATH")


def _cli_version(path: str) -> Check:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=_VERSION_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("CLI version", False, f"`{path} --version` failed: {exc}")
    text = (out.stdout or out.stderr).strip().splitlines()
    if out.returncode != 0 or not text:
        return Check("CLI version", False, f"`{path} --version` exited {out.returncode}: {' '.join(text)[:200]}")
    return Check("CLI version", True, text[0])


def _login_offline(settings: Settings) -> Check:
    if settings.claude.use_api_key:
        if os.environ.get("ANTHROPIC_API_KEY"):
            return Check("logged in", True, "ANTHROPIC_API_KEY is set and claude.use_api_key is on")
        return Check("logged in", False, "claude.use_api_key is on but ANTHROPIC_API_KEY is not set")
    for var in ("CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN"):
        if os.environ.get(var):
            return Check("logged in", True, f"{var} is set")
    config_dir = Path(os.environ.get("CLAUDE_CONFIG_DIR") or Path.home() / ".claude")
    creds = config_dir / ".credentials.json"
    if creds.is_file():
        return Check("logged in", True, f"credentials found in {creds} (--live to verify)")
    if sys.platform == "darwin":
        return Check("logged in", None, "credentials may be in the macOS keychain; run with --live to check")
    return Check("logged in", False, f"no credentials in {config_dir}; run `claude /login` (or --live to check)")


def _login_live() -> Check:
    from ..client import call
    from ..errors import AuthError, LLMCallError

    try:
        resp = call(_LIVE_MODEL, "Reply with the single word OK.", timeout=_LIVE_TIMEOUT, max_turns=1)
    except AuthError as exc:
        return Check("logged in", False, f"{exc.message} (hint: {exc.hint})" if exc.hint else exc.message)
    except LLMCallError as exc:
        return Check("logged in", None, f"live call failed: {type(exc).__name__}: {exc}")
    return Check("logged in", True, f"live call to {_LIVE_MODEL} answered {resp.text.strip()[:40]!r}")


def diagnose(settings: Settings, *, live: bool = False) -> list[Check]:
    """The checks of ``llm-call doctor``."""
    checks: list[Check] = []
    sdk = _sdk_version()
    checks.append(
        Check("claude-agent-sdk", sdk is not None, sdk or "not installed: pip install 'llm-call[claude]'")
    )
    path, origin = _find_cli(settings)
    checks.append(Check("CLI found", path is not None, f"{path} ({origin})" if path else origin))
    if path is None:
        return checks
    checks.append(_cli_version(path))
    auth = "ANTHROPIC_API_KEY (claude.use_api_key)" if settings.claude.use_api_key else "subscription login"
    checks.append(Check("auth mode", True, auth))
    if live and sdk is not None:
        checks.append(_login_live())
    else:
        checks.append(_login_offline(settings))
    checks.append(_quota(settings))
    return checks


def _quota(settings: Settings) -> Check:
    """The subscription's quota as the task store holds it (nothing sent anywhere)."""
    from ..errors import LLMCallError
    from ..tasks import default_store_path
    from ._quota import quota_line, read_report

    where = settings.tasks.store
    if where is None or "://" not in where:
        path = Path(where.removeprefix("sqlite:///") if where else default_store_path()).expanduser()
        if not path.exists():
            return Check("quota", None, f"no task store at {path} yet, so no quota reported yet")
    try:
        ok, detail = quota_line(read_report(settings))
    except LLMCallError as exc:
        return Check("quota", None, f"cannot read it from the task store: {exc}")
    return Check("quota", ok, detail)


_MARK = {True: "ok", False: "FAIL", None: "?"}


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(
        live: Annotated[bool, typer.Option("--live", help="Make one tiny max/haiku call to check the login")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    ) -> None:
        """Check the Claude Code CLI route (max/*): CLI found, version, logged in, quota."""
        with reporting_errors():
            settings = load()
            checks = diagnose(settings, live=live)
        if as_json:
            typer.echo(dumps([asdict(c) for c in checks]))
        else:
            width = max(len(c.name) for c in checks)
            for c in checks:
                typer.echo(f"{_MARK[c.ok]:>4}  {c.name:<{width}}  {c.detail}")
        if any(c.ok is False for c in checks):
            raise typer.Exit(EXIT_FAILED)
