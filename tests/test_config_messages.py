"""A bad configuration file says what is wrong and how to fix it: the nearest valid key for a
typo, the table a misplaced key belongs to, the keys a table takes, and the bad value itself
(never a secret's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llm_call import ConfigError, config
from llm_call._config_errors import ENV_KEYS
from llm_call.config import load_settings


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "llm_call.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert str(path) in message
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nprot = 8000\n", "server.prot: unknown key; did you mean 'port'?"),
        ("[sever]\nport = 8000\n", "sever: unknown key; did you mean 'server'?"),
        ("[endpoints.vllm]\nbase_url = 'http://x'\napi_keyenv = 'K'\n", "endpoints.vllm.api_keyenv: unknown key; did you mean 'api_key_env'?"),
        ("[claude.mcp_servers.fs]\ncommand = 'x'\nargz = []\n", "claude.mcp_servers.fs.argz: unknown key; did you mean 'args'?"),
        ("[retry.routes.'max/*']\nmax_retry = 1\n", "retry.routes.max/*.max_retry: unknown key; did you mean 'max_retries'?"),
    ],
)
def test_a_typo_names_the_nearest_key(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _error(tmp_path, text)


def test_a_key_under_the_wrong_table_names_its_table(tmp_path: Path) -> None:
    assert "server.max_retries: unknown key here; it is a key of [retry]" in _error(tmp_path, "[server]\nmax_retries = 3\n")
    assert "port: unknown key here; it is a key of [server]" in _error(tmp_path, "port = 8000\n")


def test_a_top_level_key_after_a_table_header_says_to_move_it(tmp_path: Path) -> None:
    # TOML puts every key after [server] into that table, a common slip
    message = _error(tmp_path, '[server]\nport = 1\ndefault_model = "openai/x"\n')
    assert "server.default_model: unknown key here; it is a top-level key: move it above the first [table] header" in message


def test_an_unknown_key_with_no_near_match_lists_the_tables_keys(tmp_path: Path) -> None:
    message = _error(tmp_path, "[tasks]\nzzzzzz = 1\n")
    assert "tasks.zzzzzz: unknown key; [tasks] takes: store, global_limit, route_limits" in message


def test_a_wrong_value_is_shown_next_to_the_complaint(tmp_path: Path) -> None:
    assert "server.port: Input should be a valid integer, unable to parse string as an integer (got 'eight')" in _error(
        tmp_path, '[server]\nport = "eight"\n'
    )
    assert "server.stream_rescue: Input should be 'off' or 'continue' (got 'on')" in _error(
        tmp_path, '[server]\nstream_rescue = "on"\n'
    )
    message = _error(tmp_path, '[endpoints.vllm]\nbase_url = "ftp://x"\n')
    assert "endpoints.vllm.base_url: must start with http:// or https:// (got 'ftp://x')" in message
    assert "Value error" not in message


def test_a_secret_value_is_never_echoed(tmp_path: Path) -> None:
    message = _error(tmp_path, '[server]\napi_keys = "sk-very-secret"\n')
    assert "server.api_keys: Input should be a valid list" in message
    assert "sk-very-secret" not in message
    message = _error(tmp_path, '[endpoints.e]\nbase_url = "http://x"\napi_key = 5\n')
    assert "endpoints.e.api_key" in message
    assert "(got" not in message
    message = _error(tmp_path, '[endpoints.e]\nbase_url = "ftp://me:hunter2@host/v1"\n')
    assert "(got 'ftp://me:***@host/v1')" in message and "hunter2" not in message


def test_a_file_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    # it was "not valid TOML: Invalid statement (at line 1, column 1)", with nothing to see there
    path = tmp_path / "llm_call.toml"
    path.write_bytes(b"\xef\xbb\xbf[server]\nport = 8001\n")
    assert load_settings(path, env={}).server.port == 8001


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"LLM_CALL_CLAUDE_POOL_SIZE": "100"})
    message = str(info.value)
    assert message.startswith("invalid configuration in the environment: ")  # was "in defaults"
    assert "claude.pool_size (from $LLM_CALL_CLAUDE_POOL_SIZE): Input should be less than or equal to 64 (got 100)" in message
    path = tmp_path / "llm_call.toml"
    path.write_text("[server]\nport = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"LLM_CALL_CLAUDE_POOL_SIZE": "-1"})
    assert "claude.pool_size (from $LLM_CALL_CLAUDE_POOL_SIZE)" in str(info.value) and str(path) in str(info.value)


def test_every_environment_override_is_known_to_the_messages() -> None:
    source = Path(config.__file__).read_text(encoding="utf-8")
    overrides = set(re.findall(r"LLM_CALL_[A-Z_]+", source)) - {"LLM_CALL_CONFIG"}
    assert overrides == set(ENV_KEYS)


def test_a_directory_given_as_the_config_file_is_called_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a file"):  # was "does not exist"
        load_settings(tmp_path, env={})
    monkeypatch.setenv("LLM_CALL_CONFIG", str(tmp_path))
    with pytest.raises(ConfigError, match=r"\(from LLM_CALL_CONFIG\) is a directory, not a file"):
        load_settings(env={})
