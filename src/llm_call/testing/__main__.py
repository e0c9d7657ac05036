"""Run the scripted LLM server from a shell.

::

    python -m llm_call.testing --port 8123 --script script.json [--default-text TEXT]

``script.json`` holds a JSON list of reply dicts (``[{"text": "hi"}, {"fault": {"kind":
"status", "status": 429}}]``) or ``{"script": [...], "default": {...}}``. Prints
``listening on http://127.0.0.1:PORT`` once it accepts connections and serves until SIGINT or
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_call.testing._script import Reply, ReplyLike
from llm_call.testing._server import ScriptedLLMServer


def load_script(path: str) -> tuple[list[ReplyLike], ReplyLike | None]:
    """Read a script file: a list of replies, or ``{"script": [...], "default": {...}}``."""
    data: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    default: ReplyLike | None = None
    if isinstance(data, dict):
        unknown = set(data) - {"script", "default"}
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: default, script")
        default = data.get("default")
        data = data.get("script", [])
    if not isinstance(data, list):
        raise ValueError(f"{path}: the script must be a JSON list of replies")
    replies: list[ReplyLike] = [Reply.from_dict(d) if isinstance(d, dict) else d for d in data]
    if isinstance(default, dict):
        default = Reply.from_dict(default)
    return replies, default


async def serve(server: ScriptedLLMServer) -> None:
    """Start ``server``, announce it on stdout, serve until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        print(f"listening on {server.url}", flush=True)
        await stop.wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llm_call.testing", description="Serve a scripted LLM (OpenAI + Anthropic)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--script", help="JSON file with a list of reply dicts")
    parser.add_argument("--default-text", help="answer this when the script has no reply")
    args = parser.parse_args(argv)
    replies: list[ReplyLike] = []
    default: ReplyLike | None = None
    if args.script:
        try:
            replies, default = load_script(args.script)
        except (OSError, ValueError, TypeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.default_text is not None:
        default = Reply(text=args.default_text, times=None)
    asyncio.run(serve(ScriptedLLMServer(replies, default=default, host=args.host, port=args.port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
