"""``llm-call`` as users run it (a subprocess of the installed console script) against the
scripted server: ``ask`` (plain, ``--json``, ``--stream``, stdin), ``models``, ``config show``,
``--version``, and the exit codes 0 / 1 (the call failed) / 2 (usage or configuration).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_call.testing import Fault, Reply, ScriptedLLMServer

LLM_CALL = str(Path(sys.executable).parent / "llm-call")
NO_RETRY = "[retry]\nmax_retries = 0\n"


@pytest.fixture
def srv() -> Iterator[ScriptedLLMServer]:
    with ScriptedLLMServer(default=Reply(text="hello from the server", times=None)).running() as server:
        yield server


def run(
    *args: str,
    srv: ScriptedLLMServer | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    if srv is not None:
        full_env.update(OPENAI_BASE_URL=srv.openai_base_url, OPENAI_API_KEY="sk-cli")
    full_env.update(env or {})
    return subprocess.run(
        [LLM_CALL, *args], env=full_env, input=stdin, capture_output=True, text=True, timeout=60
    )


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cli.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- success ---------------------------------------------------------------------------------


def test_ask_prints_the_answer(srv: ScriptedLLMServer) -> None:
    proc = run("ask", "-m", "openai/x", "hi", srv=srv)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from the server\n"
    assert proc.stderr == ""
    rec = srv.requests[0]
    assert rec.model == "x"
    assert rec.last_user_text == "hi"
    assert rec.headers["authorization"] == "Bearer sk-cli"


def test_ask_passes_system_temperature_and_max_tokens(srv: ScriptedLLMServer) -> None:
    proc = run("ask", "-m", "openai/x", "-s", "Be brief.", "--temperature", "0.3", "--max-tokens", "12", "hi", srv=srv)
    assert proc.returncode == 0, proc.stderr
    body = srv.requests[0].body
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 12


def test_ask_json_prints_the_whole_response(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="json answer", prompt_tokens=4, completion_tokens=2))
    proc = run("ask", "-m", "openai/x", "--json", "hi", srv=srv)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["text"] == "json answer"
    assert data["model"] == "openai/x"
    assert data["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert data["finish_reason"] == "stop"
    assert data["raw"]["choices"][0]["message"]["content"] == "json answer"
    assert {"latency_s", "cost_usd", "attempts"} <= set(data)


def test_ask_dash_reads_the_prompt_from_stdin(srv: ScriptedLLMServer) -> None:
    proc = run("ask", "-m", "openai/x", "-", srv=srv, stdin="a question\nover two lines\n")
    assert proc.returncode == 0, proc.stderr
    assert srv.requests[0].last_user_text == "a question\nover two lines\n"


def test_ask_stream_prints_as_it_arrives(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(chunks=["one ", "two ", "three"]))
    proc = run("ask", "-m", "openai/x", "--stream", "count", srv=srv)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "one two three\n"
    assert srv.requests[0].stream


def test_ask_with_alias_from_config_file(srv: ScriptedLLMServer, tmp_path: Path) -> None:
    cfg = config(tmp_path, '[aliases.fast]\nmodel = "openai/small"\nsystem = "From the alias."\n')
    proc = run("--config", cfg, "ask", "-m", "fast", "hi", srv=srv)
    assert proc.returncode == 0, proc.stderr
    assert srv.requests[0].model == "small"
    assert srv.requests[0].system == "From the alias."


def test_ask_uses_default_model_from_config(srv: ScriptedLLMServer, tmp_path: Path) -> None:
    cfg = config(tmp_path, 'default_model = "openai/dflt"\n')
    proc = run("ask", "hi", srv=srv, env={"LLM_CALL_CONFIG": cfg})
    assert proc.returncode == 0, proc.stderr
    assert srv.requests[0].model == "dflt"


def test_ask_endpoint_from_config(srv: ScriptedLLMServer, tmp_path: Path) -> None:
    cfg = config(tmp_path, f'[endpoints.mine]\nbase_url = "{srv.openai_base_url}"\n')
    proc = run("--config", cfg, "ask", "-m", "mine/tiny", "hi", env={})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from the server\n"
    assert srv.requests[0].model == "tiny"


# -- the call failed: exit 1 -----------------------------------------------------------------


def test_missing_api_key_exits_1_naming_the_variable(srv: ScriptedLLMServer) -> None:
    proc = run("ask", "-m", "openai/x", "hi", srv=srv, env={"OPENAI_API_KEY": ""})
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "AuthError" in proc.stderr
    assert "OPENAI_API_KEY" in proc.stderr
    assert "openai/x" in proc.stderr
    assert "hint:" in proc.stderr
    assert srv.requests == []


def test_401_exits_1_with_type_model_and_hint(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(401)))
    proc = run("ask", "-m", "openai/x", "hi", srv=srv)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("error: AuthError:")
    assert "401" in lines[0]
    assert "openai/x" in lines[0]
    assert lines[1].startswith("hint:") and "OPENAI_API_KEY" in lines[1]
    assert len(srv.requests) == 1


def test_404_exits_1_with_model_not_found(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(404)))
    proc = run("ask", "-m", "openai/nope", "hi", srv=srv)
    assert proc.returncode == 1
    assert "ModelNotFound" in proc.stderr
    assert "openai/nope" in proc.stderr


def test_connection_refused_exits_1(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config(tmp_path, NO_RETRY)
    proc = run(
        "--config", cfg, "ask", "-m", "openai/x", "hi",
        env={"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": "k"},
    )
    assert proc.returncode == 1
    assert "ProviderConnectionError" in proc.stderr
    assert "OPENAI_BASE_URL" in proc.stderr  # the setting to check, not the address (errors may reach HTTP clients)


def test_html_answer_exits_1_with_malformed_response(srv: ScriptedLLMServer, tmp_path: Path) -> None:
    srv.add(Reply(fault=Fault.html()))
    proc = run("--config", config(tmp_path, NO_RETRY), "ask", "-m", "openai/x", "hi", srv=srv)
    assert proc.returncode == 1
    assert "MalformedResponse" in proc.stderr


def test_cut_stream_exits_1_after_the_partial_text(srv: ScriptedLLMServer, tmp_path: Path) -> None:
    srv.add(Reply(chunks=["par", "tial", " never"], fault=Fault.cut_stream(after_chunks=2)))
    proc = run("--config", config(tmp_path, NO_RETRY), "ask", "-m", "openai/x", "--stream", "hi", srv=srv)
    assert proc.returncode == 1
    assert proc.stdout == "partial\n"
    assert "StreamInterrupted" in proc.stderr


# -- usage or configuration: exit 2 ----------------------------------------------------------


def test_empty_prompt_exits_2(srv: ScriptedLLMServer) -> None:
    proc = run("ask", "-m", "openai/x", "", srv=srv)
    assert proc.returncode == 2
    assert "UsageError" in proc.stderr and "empty" in proc.stderr
    assert proc.stdout == ""
    assert srv.requests == []


def test_empty_stdin_exits_2(srv: ScriptedLLMServer) -> None:
    proc = run("ask", "-m", "openai/x", "-", srv=srv, stdin="")
    assert proc.returncode == 2
    assert "UsageError" in proc.stderr


def test_unknown_model_exits_2_with_hint(srv: ScriptedLLMServer) -> None:
    proc = run("ask", "-m", "foo", "hi", srv=srv)
    assert proc.returncode == 2
    assert "ConfigError" in proc.stderr
    assert "unknown model 'foo'" in proc.stderr
    assert "hint:" in proc.stderr


def test_invalid_config_exits_2_naming_file_and_key(srv: ScriptedLLMServer, tmp_path: Path) -> None:
    cfg = config(tmp_path, '[aliases.fast]\nmodle = "openai/x"\n')
    proc = run("--config", cfg, "ask", "-m", "openai/x", "hi", srv=srv)
    assert proc.returncode == 2
    assert "ConfigError" in proc.stderr
    assert cfg in proc.stderr
    assert "aliases.fast.modle: unknown key" in proc.stderr
    assert srv.requests == []


def test_bad_toml_in_working_directory_exits_2(srv: ScriptedLLMServer, tmp_path: Path) -> None:
    (tmp_path / "llm_call.toml").write_text("[broken\n", encoding="utf-8")
    proc = run("ask", "-m", "openai/x", "hi", srv=srv)
    assert proc.returncode == 2
    assert "llm_call.toml" in proc.stderr and "TOML" in proc.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    proc = run("--config", str(tmp_path / "missing.toml"), "ask", "-m", "openai/x", "hi")
    assert proc.returncode == 2
    assert "missing.toml does not exist" in proc.stderr


def test_unknown_option_exits_2() -> None:
    proc = run("ask", "--no-such-flag", "hi")
    assert proc.returncode == 2


# -- other commands --------------------------------------------------------------------------


def test_version() -> None:
    import llm_call

    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"llm-call {llm_call.__version__}"


def test_models_lists_routes_aliases_and_endpoints(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        '[aliases.fast]\nmodel = "openai/gpt-4o-mini"\ndescription = "the cheap one"\n'
        '[endpoints.vllm]\nbase_url = "http://127.0.0.1:8001/v1"\n',
    )
    proc = run("--config", cfg, "models", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["id"]: row for row in json.loads(proc.stdout)}
    assert rows["fast"]["kind"] == "alias" and rows["fast"]["route"] == "openai/gpt-4o-mini"
    assert rows["vllm/*"]["kind"] == "endpoint"
    assert {"openai/*", "max/sonnet", "local/smollm2", "<provider>/<model>"} <= set(rows)
    table = run("--config", cfg, "models")
    assert table.returncode == 0, table.stderr
    assert "fast" in table.stdout and "vllm/*" in table.stdout and "openai/*" in table.stdout


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        '[endpoints.ep]\nbase_url = "http://127.0.0.1:1/v1"\napi_key = "sk-top-secret"\n'
        'headers = { Authorization = "Bearer also-secret" }\n'
        '[server]\napi_keys = ["srv-secret"]\n',
    )
    proc = run("--config", cfg, "config", "show", env={"LLM_CALL_API_KEYS": "env-secret"})
    assert proc.returncode == 0, proc.stderr
    for secret in ("sk-top-secret", "also-secret", "srv-secret", "env-secret"):
        assert secret not in proc.stdout
    data = json.loads(proc.stdout)
    assert data["endpoints"]["ep"]["api_key"] == "***"
    assert data["server"]["api_keys"] == ["***"]
    assert data["source"] == cfg


def test_config_show_with_invalid_config_exits_2(tmp_path: Path) -> None:
    cfg = config(tmp_path, "[openai]\nread_timeout = 0\n")
    proc = run("--config", cfg, "config", "show")
    assert proc.returncode == 2
    assert "openai.read_timeout" in proc.stderr and cfg in proc.stderr
