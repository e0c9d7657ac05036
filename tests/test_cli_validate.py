"""``llm-call ask --validate ...`` and ``llm-call validators`` against the scripted server
(in its own thread, as the CLI's sync call runs on llm_call's private loop).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_call.cli import app
from llm_call.testing import Fault, Reply, ScriptedLLMServer


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedLLMServer]:
    with ScriptedLLMServer().running() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        yield server


runner = CliRunner()


def test_prose_then_json_prints_the_json(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="Here is a colour: red."), Reply(text='{"colour": "red"}'))
    result = runner.invoke(app, ["ask", "-m", "openai/x", "--validate", "json", "--max-attempts", "3", "Name a colour as JSON"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == '{"colour": "red"}'
    assert len(srv.requests) == 2
    assert srv.requests[1].messages[1]["content"] == "Here is a colour: red."


def test_json_output_shows_two_attempts(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="Here is a colour: red."), Reply(text='{"colour": "red"}'))
    result = runner.invoke(
        app, ["ask", "-m", "openai/x", "--validate", "json", "--max-attempts", "3", "--json", "Name a colour as JSON"]
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(a["number"], a["ok"]) for a in data["attempts"]] == [(1, False), (2, True)]
    assert "not valid JSON" in data["attempts"][0]["feedback"]
    assert data["parsed"] == {"colour": "red"}
    assert data["extra"]["passed_attempt"] == 2


def test_exhausted_exits_1_with_failures_on_stderr(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="just prose", times=None))
    result = runner.invoke(app, ["ask", "-m", "openai/x", "--validate", "json", "--validate", "length:max=5", "--max-attempts", "2", "q"])
    assert result.exit_code == 1
    assert "ValidationExhausted" in result.stderr
    assert "attempt 1 (openai/x)" in result.stderr and "attempt 2 (openai/x)" in result.stderr
    assert "not valid JSON" in result.stderr and "length" in result.stderr
    assert result.stdout == ""
    assert len(srv.requests) == 2


def test_bad_spec_exits_2_listing_valid_validators(srv: ScriptedLLMServer) -> None:
    result = runner.invoke(app, ["ask", "-m", "openai/x", "--validate", "jsonn", "q"])
    assert result.exit_code == 2
    assert "unknown validator 'jsonn'" in result.stderr and "regex" in result.stderr
    assert srv.requests == []


def test_schema_flag(srv: ScriptedLLMServer, tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}))
    srv.add(Reply(text='{"n": "one"}'), Reply(text='{"n": 1}'))
    result = runner.invoke(app, ["ask", "-m", "openai/x", "--schema", str(schema), "q"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == '{"n": 1}'
    assert "$.n" in srv.requests[1].last_user_text


def test_escalate_flag(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="words", match_model="weak", times=None), Reply(text="7", match_model="strong"))
    result = runner.invoke(
        app,
        ["ask", "-m", "openai/weak", "--validate", r"regex:^\d+$", "--max-attempts", "2",
         "--escalate", "openai/strong", "--json", "digits"],
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["text"] == "7"
    assert [a["model"] for a in data["attempts"]] == ["openai/weak", "openai/strong"]
    assert "regex" in srv.requests[1].last_user_text


def test_fallback_flag(srv: ScriptedLLMServer, tmp_path: Path) -> None:
    config = tmp_path / "llm_call.toml"
    config.write_text("[retry]\nmax_retries = 0\n")
    srv.add(Reply(fault=Fault.http(503), match_model="main"), Reply(text="from backup", match_model="backup"))
    result = runner.invoke(
        app, ["--config", str(config), "ask", "-m", "openai/main", "--fallback", "openai/backup", "--json", "q"]
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["text"] == "from backup"
    assert [(a["model"], a["kind"]) for a in data["attempts"]] == [
        ("openai/main", "provider_error"), ("openai/backup", "answer")
    ]


def test_stream_with_validation_announces_the_retry(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(text="prose"), Reply(text='{"a": 1}'))
    result = runner.invoke(app, ["ask", "-m", "openai/x", "--validate", "json", "--stream", "q"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["prose", '{"a": 1}']
    assert "[attempt 2:" in result.stderr and "JSON" in result.stderr


def test_validators_command_lists_names_and_params() -> None:
    result = runner.invoke(app, ["validators", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert "regex" in rows and [p["name"] for p in rows["regex"]["params"]] == ["pattern", "flags", "mode"]
    table = runner.invoke(app, ["validators"])
    assert table.exit_code == 0
    for name in ("not_empty", "json_schema", "field_present", "agent", "length"):
        assert name in table.stdout
