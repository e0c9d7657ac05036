"""Local models over HTTP: the bundled model and the models the operator declared, by name; a
path in a request is refused with one message whatever is on the disk; loaded models are bounded
(LRU, ``local.max_loaded``) and closed when evicted."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_call.config import LocalConfig, Settings
from llm_call.providers import _local_models as models
from llm_call.providers.local import smollm2_path, unload_models
from support.llm_server import serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(120)

HI = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    unload_models()
    yield
    unload_models()


def _copy_of_smollm2(directory: Path, name: str) -> Path:
    """Another path to the bundled GGUF (a hard link when possible: no 100 MB copy)."""
    target = directory / name
    try:
        os.link(smollm2_path(), target)
    except OSError:
        shutil.copyfile(smollm2_path(), target)
    return target


def test_undeclared_local_models_get_one_message_whatever_is_on_disk(serve_llm: Any, tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    (tmp_path / "notgguf.gguf").write_text("not a model")
    real = _copy_of_smollm2(tmp_path, "real.gguf")  # even a loadable GGUF: not declared, not served
    served = serve_llm()
    names = [
        f"local/{tmp_path}/missing.gguf",
        f"local/{tmp_path}/adir",
        f"local/{tmp_path}/notgguf.gguf",
        f"local/{real}",
        "local//etc/passwd",
        "local/~/.bashrc",
        "local/undeclared",
    ]
    messages: dict[str, str] = {}
    for name in names:
        for field, body in (
            ("model", {"model": name, "messages": HI}),
            ("escalate.0", {"model": "up/x", "messages": HI, "validation": ["not_empty"], "escalate": [name]}),
            ("fallbacks.0", {"model": "up/x", "messages": HI, "fallbacks": [name]}),
            ("validation.0", {"model": "up/x", "messages": HI, "validation": [f"agent:prompt=ok? {{TEXT_TO_VALIDATE}},model={name}"]}),
        ):
            r = httpx.post(served.base_url + "/chat/completions", json=body, timeout=30)
            assert r.status_code == 404, (name, field, r.text)
            error = r.json()["error"]
            assert error["param"] == field
            messages[f"{name} {field}"] = error["message"].removeprefix(field)
    assert len(set(messages.values())) == 1, messages
    message = next(iter(messages.values()))
    assert "[local.models.NAME]" in message and str(tmp_path) not in message and "passwd" not in message
    assert not served.upstream.requests
    assert not models.loaded_models()  # nothing was even looked up


def test_a_declared_model_that_fails_names_no_path(serve_llm: Any, tmp_path: Path) -> None:
    """A declared model whose file is gone or does not load is the operator's problem: the key is
    told so, without the directory the operator keeps models in (the server log has it)."""
    models_dir = tmp_path / "operator-models"
    models_dir.mkdir()
    junk, gone = models_dir / "junk.gguf", models_dir / "gone.gguf"
    junk.write_bytes(b"GGUF" + bytes(100))
    gone.write_bytes(b"x")
    served = serve_llm(server={"api_keys": ["local-key-0123456789"]},
                       local={"models": {"junk": {"path": str(junk)}, "gone": {"path": str(gone)}}})
    gone.unlink()
    for model in ("local/junk", "local/gone"):
        r = httpx.post(served.base_url + "/chat/completions", json={"model": model, "messages": HI},
                       headers={"authorization": "Bearer local-key-0123456789"}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "route_unavailable", r.text
        assert "operator-models" not in r.text and str(tmp_path) not in r.text, r.text


def test_a_declared_local_model_answers_by_name(serve_llm: Any, tmp_path: Path) -> None:
    path = _copy_of_smollm2(tmp_path, "tiny.gguf")
    served = serve_llm(local={"models": {"tiny": {"path": str(path)}}, "max_tokens": 8})
    r = httpx.post(served.base_url + "/chat/completions", json={"model": "local/tiny", "messages": HI}, timeout=100)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    assert r.json()["model"] == "local/tiny"
    assert [m.key.path for m in models.loaded_models()] == [str(path.resolve())]


def test_declared_local_models_are_listed_by_name_without_their_path(serve_llm: Any, tmp_path: Path) -> None:
    path = tmp_path / "secret-dir" / "tiny.gguf"  # listing loads nothing: the file need not exist
    served = serve_llm(local={"models": {"tiny": {"path": str(path), "description": "Tiny test model"}, "bare": {"path": str(path)}}})
    rows = {row["id"]: row for row in httpx.get(served.base_url + "/models", timeout=30).json()["data"]}
    assert rows["local/tiny"]["llm_call"]["notes"] == "Tiny test model"
    assert rows["local/bare"]["llm_call"]["notes"] == "declared local model"
    r = httpx.get(served.base_url + "/models/local/tiny", timeout=30)
    assert r.status_code == 200 and r.json()["id"] == "local/tiny"
    listing = httpx.get(served.base_url + "/models?all=true", timeout=30).text
    assert "secret-dir" not in listing and str(tmp_path) not in listing
    assert not models.loaded_models()


def test_loaded_models_are_bounded_and_the_least_recently_used_is_closed(serve_llm: Any, tmp_path: Path) -> None:
    a, b = _copy_of_smollm2(tmp_path, "a.gguf"), _copy_of_smollm2(tmp_path, "b.gguf")
    local = {"models": {"a": {"path": str(a)}, "b": {"path": str(b)}}, "max_loaded": 1, "max_tokens": 4}
    served = serve_llm(local=local)

    def ask(model: str) -> None:
        r = httpx.post(served.base_url + "/chat/completions", json={"model": model, "messages": HI}, timeout=100)
        assert r.status_code == 200, r.text

    ask("local/a")
    (first,) = models.loaded_models()
    ask("local/b")
    (second,) = models.loaded_models()
    assert second.key.path == str(b.resolve())
    assert first.closed and not first._idle  # its llama instance was freed
    ask("local/a")  # loads again, evicting b
    assert [m.key.path for m in models.loaded_models()] == [str(a.resolve())]
    assert second.closed


def test_lru_keeps_the_recently_used_model() -> None:
    cfg = LocalConfig(max_loaded=2)
    x, y, z = (models.model_for(Path(f"/m/{n}.gguf"), cfg) for n in "xyz")
    assert x.closed and not y.closed and not z.closed
    models.model_for(Path("/m/y.gguf"), cfg)  # y is now the most recently used
    models.model_for(Path("/m/w.gguf"), cfg)
    assert z.closed and not y.closed
    assert [m.key.path for m in models.loaded_models()] == ["/m/y.gguf", "/m/w.gguf"]


def test_local_model_config_is_strict(tmp_path: Path) -> None:
    from llm_call.config import load_settings
    from llm_call.errors import ConfigError

    for text, where in (
        ('[local.models.tiny]\npath = "x.gguf"\nsize = 3\n', "local.models.tiny.size: unknown key"),
        ("[local.models.tiny]\n", "local.models.tiny.path"),
        ('[local.models.smollm2]\npath = "x.gguf"\n', "smollm2 is the bundled model"),
        ("[local]\nmax_loaded = 0\n", "local.max_loaded"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_settings(bad)
        assert str(bad) in str(info.value) and where in str(info.value), str(info.value)
    assert Settings.model_validate({"local": {"models": {"tiny": {"path": "x.gguf"}}}}).local.models["tiny"].path == "x.gguf"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "minLength": 20_000_000},
        {"type": "array", "items": {"type": "integer"}, "maxItems": 20_000_000},
        {"type": "string", "pattern": "^a{20000000}$"},
    ],
    ids=["minLength", "maxItems", "pattern"],
)
def test_a_schema_cannot_make_the_local_grammar_huge(serve_llm: Any, schema: dict[str, Any]) -> None:
    """llama.cpp writes out one grammar element per repetition, on a thread nothing can stop:
    a response_format asking for 50,000,000 characters took 1.5 GB and 7 s, a billion would take
    the server down. A 400 naming the limit, before any model is loaded."""
    served = serve_llm()
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    r = httpx.post(f"{served.base_url}/chat/completions",
                   json={"model": "local/smollm2", "messages": HI, "max_tokens": 3, "response_format": fmt}, timeout=60)
    assert r.status_code == 400, r.text[:300]
    assert "100,000" in r.json()["error"]["message"]
