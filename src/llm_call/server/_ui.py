"""``/ui``: the dashboard, static files shipped in the package (``server/ui/``): the page, its
style sheet and three JavaScript modules.

The page is plain HTML, CSS and JavaScript: no build step, nothing fetched from elsewhere. It is
an ordinary client of the JSON and SSE APIs (``/v1/tasks``, ``/v1/routes``, ``/v1/usage/quota``)
with the key the user types (kept in ``sessionStorage``), so it sees exactly what that key sees.
The files themselves hold nothing secret and are served without a key: a browser cannot attach
a bearer token to a page load.

Served only from a fixed table of names (a request never names a file), under a strict
Content-Security-Policy: scripts, styles and connections from this origin only, no inline
script or style, no frames, no plugins, no form posts. The script renders every piece of task
data with ``textContent``, so a prompt holding HTML is shown as characters.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from starlette.responses import RedirectResponse, Response

__all__ = ["CSP", "STATIC_PATHS", "register"]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "lib.js": "text/javascript; charset=utf-8",
    "render.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
_cache: dict[str, bytes] = {}
#: what the gateway serves without a key (nothing secret: the page asks for the key itself)
STATIC_PATHS = frozenset({"/ui", "/ui/", *(f"/ui/{name}" for name in _FILES if name != "index.html")})


def _file(name: str) -> Response:
    body = _cache.get(name)
    if body is None:
        body = resources.files(__package__ or "llm_call.server").joinpath("ui", name).read_bytes()
        _cache[name] = body
    return Response(body, media_type=_FILES[name], headers=_HEADERS)


def register(app: FastAPI) -> None:
    @app.get("/ui", include_in_schema=False)
    async def ui_page() -> Response:
        return _file("index.html")

    @app.get("/ui/", include_in_schema=False)
    async def ui_slash() -> Response:
        return RedirectResponse("/ui", 308)

    def static(name: str) -> None:
        async def serve() -> Response:
            return _file(name)

        app.add_api_route(f"/ui/{name}", serve, methods=["GET"], include_in_schema=False, name=f"ui_{name}")

    for name in _FILES:
        if name != "index.html":
            static(name)
