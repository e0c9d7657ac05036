"""A stand-in for the Claude Code CLI that misbehaves on purpose (``FAKE_CLAUDE_MODE``).

It speaks just enough of the stream-json protocol for ``claude_agent_sdk.query``: it answers
the ``initialize`` control request, reads the user message, then plays a mode:

- ``garbage``: non-JSON lines on stdout, exit 0 (no result);
- ``corrupt``: a line that starts like JSON but is not, exit 0;
- ``no_result``: an ``init`` message, then exit 0;
- ``exit_after_result``: a success result, then exit 3;
- ``hang_after_result``: start a child that sleeps, print a success result, then hang (the
  child too), so only a process-tree kill ends both;
- ``hang_with_child``: start a child that sleeps, then hang before any result;
- ``env``: a success result whose text is JSON of what the CLI got: some environment
  variables, its working directory and its arguments;
- ``error_result``: a result with ``subtype`` ``$FAKE_CLAUDE_SUBTYPE`` and ``is_error``, exit 1;
- ``stderr_secret``: the value of ``$FAKE_CLAUDE_LEAK_NAME`` (a credential's variable) on
  stderr, as a CLI reporting a refused key might, then exit 1 without a result;
- ``ok``: a success result, exit 0.

Tests run it through ``cli_path`` (``LLM_CALL_CLAUDE_CLI``) with a small wrapper script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def _out(data: object) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _result(text: str) -> dict[str, object]:
    return {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "duration_ms": 1,
        "duration_api_ms": 1,
        "num_turns": 1,
        "session_id": "fake-session",
        "result": text,
        "total_cost_usd": 0.0,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }


def _sleeping_child() -> None:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def main() -> None:
    mode = os.environ.get("FAKE_CLAUDE_MODE", "ok")
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("type") == "control_request":
            _out(
                {
                    "type": "control_response",
                    "response": {"subtype": "success", "request_id": msg["request_id"], "response": {}},
                }
            )
        elif msg.get("type") == "user":
            break
    init = {"type": "system", "subtype": "init", "session_id": "fake-session", "cwd": os.getcwd(), "model": "fake",
            "claude_code_version": "2.1.331"}
    if mode == "garbage":
        print("Welcome to the fake CLI!")
        print("this is not JSON")
        sys.exit(0)
    if mode == "corrupt":
        print('{"type": "result", "subtype": "success", oops')
        sys.exit(0)
    if mode == "stderr_secret":
        sys.stderr.write(f"API error: key {os.environ.get(os.environ['FAKE_CLAUDE_LEAK_NAME'])} was refused\n")
        sys.stderr.flush()
        sys.exit(1)
    if mode == "no_result":
        _out(init)
        sys.exit(0)
    if mode == "exit_after_result":
        _out(init)
        _out(_result("an answer that must not be returned"))
        sys.exit(3)
    if mode == "hang_after_result":
        _sleeping_child()
        _out(init)
        _out(_result("answered, then hung"))
        time.sleep(600)
    if mode == "hang_with_child":
        _sleeping_child()
        _out(init)
        time.sleep(600)
    _out(init)
    if mode == "error_result":
        failed = _result("")
        failed.update(subtype=os.environ["FAKE_CLAUDE_SUBTYPE"], is_error=True, errors=["it went wrong"])
        del failed["result"]
        _out(failed)
        sys.exit(1)
    if mode == "env":
        names = ("CLAUDECODE", "ANTHROPIC_API_KEY", "CLAUDE_CODE_MAX_OUTPUT_TOKENS")
        seen = {"env": {n: os.environ.get(n) for n in names}, "cwd": os.getcwd(), "argv": sys.argv[1:]}
        _out(_result(json.dumps(seen)))
        return
    _out(_result("fake answer"))


if __name__ == "__main__":
    main()
