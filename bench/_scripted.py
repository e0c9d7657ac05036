"""The scripted LLM server in its own process, for every benchmark.

Benchmarks measure the client's CPU with ``time.process_time``; the server must not share that
process. ``start_scripted_server`` runs ``python -m llm_call.testing`` on a free port and returns
the process and its base URL (``http://127.0.0.1:PORT``; the OpenAI routes are under ``/v1``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["start_scripted_server"]


def start_scripted_server(
    workdir: Path, *, text: str = "ok", latency: float = 0.0, script_file: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start the server answering every request with ``text`` after ``latency`` seconds (or
    playing ``script_file``); the caller terminates the process."""
    if script_file is None:
        script_file = workdir / "script.json"
        default = {"text": text, "latency": latency, "times": None}
        script_file.write_text(json.dumps({"script": [], "default": default}), encoding="utf-8")
    err_path = workdir / "scripted-server.err"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llm_call.testing", "--port", "0", "--script", str(script_file)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"the scripted server did not start: {line!r} {err_path.read_text()[-500:]}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its stdout drained
    return proc, line.removeprefix("listening on ").rstrip("/")
