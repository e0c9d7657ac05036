"""Strict configuration: where the file comes from, what a bad file says, environment
overrides, masking of secrets. Every error names the file and the key path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_call import ConfigError
from llm_call._config_reference import settings_reference
from llm_call.config import (
    Settings,
    find_config_file,
    get_settings,
    load_settings,
    set_settings,
)

GOOD = """
default_model = "fast"

[aliases.fast]
model = "openai/gpt-4o-mini"
system = "Answer briefly."
options = { seed = 1 }

[aliases]
smart = "openai/gpt-4o"

[endpoints.vllm]
base_url = "http://127.0.0.1:8001/v1/"
api_key_env = "VLLM_KEY"

[openai]
connect_timeout = 3.5
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_means_defaults(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.source is None
    assert settings.default_model is None
    assert settings.aliases == {}
    assert settings.openai.api_key_env == "OPENAI_API_KEY"


def test_good_file_is_read(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path / "c.toml", GOOD))
    assert settings.source == str(tmp_path / "c.toml")
    assert settings.default_model == "fast"
    assert settings.aliases["fast"].model == "openai/gpt-4o-mini"
    assert settings.aliases["fast"].system == "Answer briefly."
    assert settings.aliases["fast"].options == {"seed": 1}
    assert settings.aliases["smart"].model == "openai/gpt-4o"  # string shorthand
    assert settings.endpoints["vllm"].base_url == "http://127.0.0.1:8001/v1"  # trailing / dropped
    assert settings.endpoints["vllm"].api_key_env == "VLLM_KEY"
    assert settings.openai.connect_timeout == 3.5


def test_llm_call_toml_in_working_directory_is_found(tmp_path: Path) -> None:
    write(tmp_path / "llm_call.toml", 'default_model = "openai/x"\n')
    settings = load_settings()
    assert settings.default_model == "openai/x"
    assert settings.source == "llm_call.toml"


def test_llm_call_config_env_wins_over_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "llm_call.toml", 'default_model = "openai/cwd"\n')
    other = write(tmp_path / "other.toml", 'default_model = "openai/env"\n')
    monkeypatch.setenv("LLM_CALL_CONFIG", str(other))
    assert load_settings().default_model == "openai/env"
    explicit = write(tmp_path / "explicit.toml", 'default_model = "openai/explicit"\n')
    assert load_settings(explicit).default_model == "openai/explicit"


def test_missing_explicit_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist") as info:
        load_settings(tmp_path / "nope.toml")
    assert info.value.hint is not None and "--config" in info.value.hint


def test_missing_file_from_env_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_CALL_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match="LLM_CALL_CONFIG"):
        find_config_file()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("defualt_model = 'x'\n", "defualt_model: unknown key"),
        ("[aliases.fast]\nmodle = 'openai/x'\n", "aliases.fast.modle: unknown key"),
        ("[aliases.fast]\nsystem = 'hi'\n", "aliases.fast.model: Field required"),
        ("[openai]\nconnect_timeout = -1\n", "openai.connect_timeout"),
        ("[openai]\nmax_connections = 'lots'\n", "openai.max_connections"),
        ("[endpoints.vllm]\nbase_url = '127.0.0.1:8000'\n", "endpoints.vllm.base_url"),
        ("[endpoints.vllm]\nbase_url = 'http://x'\napi_kee_env = 'K'\n", "endpoints.vllm.api_kee_env: unknown key"),
        ("[endpoints.openai]\nbase_url = 'http://x'\n", "reserved"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[retry]\nmax_retries = -2\n", "retry.max_retries"),
        ("aliases = 3\n", "aliases"),
        ("source = 'elsewhere.toml'\n", "source: unknown key"),
    ],
)
def test_invalid_config_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "a = 1\n[openai]\nb = 2\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "a: unknown key" in str(info.value)
    assert "openai.b: unknown key" in str(info.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.toml", "[aliases\nfast = 'x'\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_binary_file_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ConfigError, match=r"binary\.toml"):
        load_settings(path)


def test_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "c.toml", 'default_model = "openai/file"\n')
    monkeypatch.setenv("LLM_CALL_DEFAULT_MODEL", "openai/env")
    monkeypatch.setenv("LLM_CALL_API_KEYS", "k1, k2")
    monkeypatch.setenv("LLM_CALL_TASKS", str(tmp_path / "tasks.db"))
    monkeypatch.setenv("LLM_CALL_CLAUDE_USE_API_KEY", "yes")
    settings = load_settings(path)
    assert settings.default_model == "openai/env"
    assert settings.server.api_keys == ["k1", "k2"]
    assert settings.tasks.store == str(tmp_path / "tasks.db")
    assert settings.claude.use_api_key is True


def test_bad_boolean_env_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_CALL_CLAUDE_USE_API_KEY", "maybe")
    with pytest.raises(ConfigError, match="LLM_CALL_CLAUDE_USE_API_KEY"):
        load_settings()


def test_masked_hides_secrets(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.toml",
        """
[endpoints.ep]
base_url = "http://127.0.0.1:1/v1"
api_key = "sk-very-secret"
headers = { Authorization = "Bearer hidden-token", "X-Api-Key" = "hidden-key", "X-Team" = "core" }

[endpoints.proxy]
base_url = "http://user:url-password@127.0.0.1:2/v1"

[server]
api_keys = ["server-secret-1", "server-secret-2"]

[tasks]
store = "redis://:redis-password@127.0.0.1:6379/0"
""",
    )
    masked = load_settings(path).masked()
    text = repr(masked)
    for secret in ("sk-very-secret", "hidden-token", "hidden-key", "server-secret", "url-password", "redis-password"):
        assert secret not in text
    assert masked["tasks"]["store"] == "redis://:***@127.0.0.1:6379/0"
    assert masked["endpoints"]["proxy"]["base_url"] == "http://user:***@127.0.0.1:2/v1"
    assert masked["endpoints"]["ep"]["api_key"] == "***"
    assert masked["endpoints"]["ep"]["headers"]["X-Team"] == "core"
    assert masked["server"]["api_keys"] == ["***", "***"]
    assert masked["source"] == str(path)


def test_get_settings_caches_and_set_settings_replaces(tmp_path: Path) -> None:
    write(tmp_path / "llm_call.toml", 'default_model = "openai/a"\n')
    first = get_settings()
    assert first.default_model == "openai/a"
    assert get_settings() is first
    custom = Settings(default_model="openai/b")
    set_settings(custom)
    assert get_settings() is custom
    other = write(tmp_path / "other.toml", 'default_model = "openai/c"\n')
    set_settings(None, path=str(other))
    assert get_settings().default_model == "openai/c"


def test_get_settings_with_bad_file_raises_each_time(tmp_path: Path) -> None:
    write(tmp_path / "llm_call.toml", "nonsense = 1\n")
    for _ in range(2):
        with pytest.raises(ConfigError, match="nonsense: unknown key"):
            get_settings()


def test_settings_reference_lists_every_section() -> None:
    ref = settings_reference()
    for key in ("`default_model`", "`openai.connect_timeout`", "`retry.max_retries`", "`server.port`"):
        assert key in ref


def test_mcp_servers_and_tool_profiles_are_strict(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[claude.mcp_servers.files]\ncommand = "python"\nargs = ["srv.py"]\nenv = {API_TOKEN = "s3cret", MODE = "x"}\n'
        '[claude.tool_profiles.research]\nallowed_tools = ["WebSearch", "mcp__files"]\nmcp_servers = ["files"]\n'
    )
    settings = load_settings(good)
    assert settings.claude.mcp_servers["files"].cli_entry()["command"] == "python"
    env = settings.masked()["claude"]["mcp_servers"]["files"]["env"]
    assert env == {"API_TOKEN": "***", "MODE": "x"}
    for text, where in (
        ('[claude.mcp_servers.files]\ncommand = "python"\ncomand = "x"\n', "claude.mcp_servers.files.comand: unknown key"),
        ('[claude.tool_profiles.r]\nmcp_servers = ["nope"]\n', "tool_profiles.r.mcp_servers names ['nope']"),
        ('[claude.tool_profiles.r]\nallowed = ["Read"]\n', "claude.tool_profiles.r.allowed: unknown key"),
        ('[claude.mcp_servers.web]\ntype = "http"\n', "needs url"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_settings(bad)
        assert str(bad) in str(info.value) and where in str(info.value), str(info.value)
