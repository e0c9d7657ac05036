"""The documentation this area owns stays true: the configuration reference is generated from the
settings model, and the batch docs name every batch key and status."""

from __future__ import annotations

from pathlib import Path

from llm_call.batch import NATIVE_KEYS, STATUSES
from llm_call.config import settings_reference
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
