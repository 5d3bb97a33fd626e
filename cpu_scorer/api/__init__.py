"""The results endpoint: ``tandem serve --store URI`` (FastAPI), read-only over a store.

Routes (``_routes``): ``/runs`` (paginated, filter by model and task), ``/runs/{id}``
(spec, environment, what the workers resolved, telemetry, profile),
``/runs/{id}/scores``, ``/runs/{id}/samples`` (filtered and paged on the server),
``/runs/{id}/sample``, ``/runs/{id}/export``, ``/compare`` and ``/compare/tests``
(flips, paired tests), ``/sweeps``, ``/metrics`` (Prometheus); ``/healthz`` and the
viewer at ``/`` (``static/``). The app never writes to the store.

Errors: a missing run or task answers 404, a malformed request 400 or 422, a compare of
runs that do not cover the same samples 409, and a store
that cannot be read -- unreachable, or a damaged record or shard -- 503 with a message;
never 500, and no message carries the store's location on the server.

Security: run ids and task names are validated by pattern before any path is built
(``Store.run_path`` checks again), so no request reaches outside ``runs/<id>/``; page
sizes are capped; no CORS headers are sent, so other origins' scripts cannot read
results; and a bearer token, when set, is required on every data route. ``serve``
refuses to bind to a non-loopback address without one.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from cpu_scorer import _queries
from cpu_scorer.api._deps import (
    Records,
    Settings,
    StoreDep,
    authorize,
    authorize_if_set,
    get_settings,
)
from cpu_scorer.api._routes import router
from cpu_scorer.compare import NotPaired
from shared.errors import TandemError
from shared.store import Store

__all__ = ["Settings", "create_app", "get_settings", "is_loopback", "serve"]

# Documented so clients (and schemathesis) know every status a route can answer.
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid run id or task name"},
    401: {"description": "Missing or wrong bearer token"},
    404: {"description": "No such run, or no such task in the run"},
    503: {"description": "The store, or a file of the run, cannot be read"},
}
# The viewer is static files (static/: index.html, one ES module per view, one
# stylesheet) read once per app and served as they are: no build step, no CDN, and no
# inline script, so the policy allows scripts and styles from this origin only.
_STATIC = Path(__file__).parent / "static"
_STATIC_NAME = re.compile(r"^[a-z]+\.(js|css)$")
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
}


def _static_files() -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for path in sorted(_STATIC.iterdir())
        if path.name == "index.html" or _STATIC_NAME.match(path.name)
    }


def _redacted(request: Request, text: str) -> str:
    """An error message without the store's location on the server."""
    for store in request.app.state.stores.values():
        for where in (store.root, store.uri):
            if where and where not in ("/", "."):
                text = text.replace(where, "<store>")
    return text


def _error(request: Request, status: int, text: str) -> JSONResponse:
    return JSONResponse({"detail": _redacted(request, text)}, status_code=status)


def create_app(store_uri: str, token: str | None = None) -> FastAPI:
    """The results app over the store at ``store_uri``; ``token`` requires a bearer."""
    app = FastAPI(
        title="tandem results",
        version="1",
        description="Read-only results of tandem evaluation runs.",
    )
    app.state.settings = Settings(store_uri=store_uri, token=token or None)
    app.state.stores = {}
    app.state.records = Records()
    app.state.samples = _queries.SampleCache(capacity=16)

    @app.exception_handler(_queries.RunNotFound)
    def _not_found(request: Request, error: _queries.RunNotFound) -> JSONResponse:
        return _error(request, 404, str(error))

    @app.exception_handler(NotPaired)
    def _not_paired(request: Request, error: NotPaired) -> JSONResponse:
        return _error(request, 409, str(error))

    @app.exception_handler(_queries.Damaged)
    def _damaged(request: Request, error: _queries.Damaged) -> JSONResponse:
        return _error(request, 503, str(error))

    @app.exception_handler(TandemError)
    def _bad_request(request: Request, error: TandemError) -> JSONResponse:
        return _error(request, 400, str(error))

    @app.exception_handler(OSError)
    def _unavailable(request: Request, error: OSError) -> JSONResponse:
        return _error(request, 503, f"store unavailable: {error}")

    @app.exception_handler(pa.ArrowException)
    def _unreadable(request: Request, error: Exception) -> JSONResponse:
        return _error(request, 503, f"a file in the store cannot be read: {error}")

    files = _static_files()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(files["index.html"], headers=_PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        """The viewer's scripts and stylesheet (data-free, so no token needed)."""
        if not _STATIC_NAME.match(name) or name not in files:
            return JSONResponse({"detail": "no such file"}, status_code=404)
        media = _TYPES[name[name.rindex(".") :]]
        return Response(files[name], media_type=media, headers=_PAGE_HEADERS)

    @app.get("/healthz", responses={503: _ERRORS[503]})
    def healthz(store: StoreDep, request: Request) -> Any:
        """Liveness and store reachability: 503 when the store cannot be listed."""
        try:
            store.check(writable=False)
        except TandemError as error:
            return _error(request, 503, str(error))
        return {"status": "ok"}

    # Without a token the routes are open, and the OpenAPI schema says so (no security
    # scheme); with one, every data route requires it.
    token_set = app.state.settings.token is not None
    guard = Depends(authorize) if token_set else Depends(authorize_if_set)
    errors = _ERRORS if token_set else {k: v for k, v in _ERRORS.items() if k != 401}
    data = APIRouter(dependencies=[guard], responses=errors)
    data.include_router(router)
    app.include_router(data)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def serve(
    store_uri: str, host: str = "127.0.0.1", port: int = 8000, token: str | None = None
) -> int:
    """``tandem serve``: refuses a non-loopback address without a bearer token, and a
    store that cannot be read, before binding anything."""
    if not is_loopback(host) and not token:
        raise TandemError(
            f"refusing to serve on {host!r} without a token: anyone who can reach it "
            "could read every result. Set --token or TANDEM_TOKEN, or bind to 127.0.0.1"
        )
    if not 1 <= port <= 65535:
        raise TandemError(f"--port must be 1..65535, got {port}")
    Store(store_uri).check(writable=False)
    import uvicorn

    uvicorn.run(
        create_app(store_uri, token=token),
        host=host,
        port=port,
        log_level="info",
        server_header=False,
    )
    return 0
