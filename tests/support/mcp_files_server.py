"""A real MCP stdio server exposing ``write_file`` and ``read_file`` in its working directory.

The Claude Code CLI starts it from an ``--mcp-config`` entry such as::

    {"mcpServers": {"files": {"command": sys.executable,
                              "args": ["-m", "tests.support.mcp_files_server"]}}}

MCP stdio servers run in the call's working directory, so each call's workspace is the only
place the tools can touch. Paths that leave the working directory are refused. ``write_file``
answers with the list of files in the directory, so a test can see what a call's workspace holds.
"""

from __future__ import annotations

import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer

server = MCPServer("files")


def _inside(path: str) -> Path:
    root = Path.cwd().resolve()
    target = (root / path).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"path {path!r} is outside the working directory")
    return target


@server.tool()
def write_file(path: str, content: str) -> str:
    """Write ``content`` to ``path`` (relative to the working directory)."""
    target = _inside(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content, encoding="utf-8")
    here = ", ".join(sorted(os.listdir(Path.cwd())))
    return f"wrote {len(content)} characters to {path}; files here: {here}"


@server.tool()
def read_file(path: str) -> str:
    """Return the text of ``path`` (relative to the working directory)."""
    return _inside(path).read_text(encoding="utf-8")


if __name__ == "__main__":
    server.run("stdio")
