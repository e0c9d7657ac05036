"""The documentation this area owns stays true: the configuration reference is generated from the
settings model and lists every key (named tables included, each with a note) and every
environment variable, and the batch docs name every batch key and status."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args, get_origin

from pydantic import BaseModel

from llm_call import config
from llm_call._config_reference import settings_reference
from llm_call.batch import NATIVE_KEYS, STATUSES
from llm_call.config import Settings
from llm_call.legacy import LEGACY_KEYS, RETRY_CONFIG_KEYS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_configuration_reference_is_up_to_date() -> None:
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == settings_reference() + "\n", (
        "docs/configuration.md is out of date: run `llm-call config reference > docs/configuration.md`"
    )


def test_migration_guide_maps_every_original_key() -> None:
    text = (DOCS / "migration.md").read_text(encoding="utf-8")
    for key in LEGACY_KEYS:
        assert f"| `{key}`" in text or f"| `{key}:" in text or f"| `{key}." in text, key
    for key in RETRY_CONFIG_KEYS:
        assert f"`retry_config.{key}`" in text, key


def test_quickstart_lists_every_batch_key_and_status() -> None:
    text = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    for key in NATIVE_KEYS:
        if key != "llm_config":
            assert f"`{key}`" in text, key
    for status in STATUSES:
        assert f"`{status}`" in text, status


def _keys(model: type[BaseModel], prefix: str) -> list[tuple[str, str | None]]:
    """Every key path of the settings with its description; named tables as NAME / PATTERN."""
    out: list[tuple[str, str | None]] = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(_keys(ann, f"{prefix}{name}."))
            continue
        out.append((f"{prefix}{name}", field.description))
        args = get_args(ann)
        if get_origin(ann) is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
            out.extend(_keys(args[1], f"{prefix}{name}.{'PATTERN' if name == 'routes' else 'NAME'}."))
    return out


def test_every_setting_is_in_the_reference_with_a_note() -> None:
    reference = settings_reference()
    keys = _keys(Settings, "")
    assert ("aliases.NAME.model", keys[[k for k, _ in keys].index("aliases.NAME.model")][1]) in keys
    for key, description in keys:
        assert f"| `{key}` |" in reference, key
        assert description, f"{key} has no description: add Field(description=...) in config.py"


def test_every_environment_variable_is_in_the_reference() -> None:
    source = Path(config.__file__).read_text(encoding="utf-8")
    names = set(re.findall(r"LLM_CALL_[A-Z_]+", source))
    assert {"LLM_CALL_CONFIG", "LLM_CALL_TASKS", "LLM_CALL_API_KEYS"} <= names
    reference = settings_reference()
    for name in names:
        assert f"`{name}`" in reference, name
