"""The OpenAI-compatible HTTP server of ``llm-call serve``.

Routes: ``POST /v1/chat/completions`` (streaming too), ``GET /v1/models``, the Responses API with
background mode (``/v1/responses``), the task API (``/v1/tasks``), ``GET /health`` and
``GET /metrics``. See ``docs/server.md``.

This package imports FastAPI and uvicorn; ``import llm_call`` and the CLI never import it until
``llm-call serve`` runs.

Example::

    from llm_call.config import load_settings
    from llm_call.server import ServerThread, create_app

    with ServerThread(create_app(load_settings())) as srv:
        print(srv.base_url)          # http://127.0.0.1:<port>/v1
"""

from ._app import create_app
from ._run import ServerThread, configure_logging, serve, uvicorn_config

__all__ = ["ServerThread", "configure_logging", "create_app", "serve", "uvicorn_config"]
