"""The gal-view web server: a Starlette application over a :class:`Catalogue`, served by uvicorn.

Routes (all GET, and nothing writes, except the marks of ``--labels``):

    /                        the page (HTML, CSS and JavaScript shipped in the package)
    /static/NAME             one of the page's own files, looked up by name in memory (never on disk)
    /api/info                what is shown: row count, columns, search kind, map
    /api/points              the map's points: ids, x, y (and colour values); ?filter=&colour=
    /api/search              neighbours: ?id=ID (repeatable, or several separated by spaces/commas)&k=&least=&filter=
    /api/tile                a cutout as PNG: ?id=ID
    /api/selection.csv       the object_ids the filter keeps, as CSV: ?filter=
    /api/label               (POST, JSON {"id": ID, "label": "yes"|"no"}; only with --labels) one mark, on disk
                             before the answer
    /api/rank                (only with --labels) the next objects to label: ?n=20

Errors are JSON ``{"error": "..."}`` under /api (400 for a bad request or filter, 404 for an unknown id or path)
and a short HTML page elsewhere; the server keeps serving after each.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import socket
from importlib import resources

from galtools.errors import GalError
from galtools.view.catalogue import UnknownId

log = logging.getLogger("galtools")

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                               "style-src 'self'; script-src 'self'; connect-src 'self'"}
ID_SEPARATORS = re.compile(r"[\s,;]+")
FOLDERS = re.compile(r"(?<![\w.:/])/(?:[^\s'\"/]+/)+(?=[^\s'\"/])")   # the folders of an absolute path


def static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once from the package: {name: (bytes, content type)}."""
    folder = resources.files("galtools.view") / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


def _status_of(error: GalError) -> int:
    return 404 if isinstance(error, UnknownId) else 400


def _error_page(status: int, text: str) -> str:
    from html import escape

    return ("<!doctype html><html><head><meta charset='utf-8'><title>gal-view: error</title>"
            "<link rel='stylesheet' href='/static/style.css'></head><body class='error-page'>"
            f"<h1>{status}</h1><p class='error'>{escape(text)}</p><p><a href='/'>back to the viewer</a></p>"
            "</body></html>")


def without_folders(text: str) -> str:
    """``text`` with every absolute path cut to its file name: a browser is never told where the tables are."""
    return FOLDERS.sub("", text)


def split_ids(values: list[str]) -> list[str]:
    return [part for value in values for part in ID_SEPARATORS.split(value) if part]


def make_app(catalogue, default_k: int = 10, allowed_hosts: list[str] | None = None, labelling=None):
    """The Starlette application serving ``catalogue`` (and, with ``labelling``, a
    :class:`galtools.view.labelling.Labelling`, the marks and the ranking)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    files = static_files()

    def headers(extra=None):
        return {**SECURITY_HEADERS, **(extra or {})}

    def page(request: Request):
        body, kind = files["index.html"]
        return Response(body, media_type=kind, headers=headers({"Cache-Control": "no-cache"}))

    def static(request: Request):
        found = files.get(request.path_params["name"])
        if found is None:
            raise HTTPException(404, f"no file {request.path_params['name']!r} in the viewer")
        return Response(found[0], media_type=found[1], headers=headers({"Cache-Control": "no-cache"}))

    def info(request: Request):
        return JSONResponse({**catalogue.info(), "default_k": default_k,
                             "labels": labelling.path if labelling is not None else None}, headers=headers())

    def points(request: Request):
        query = request.query_params
        return JSONResponse(catalogue.points(query.get("filter"), query.get("colour") or query.get("color")),
                            headers=headers())

    def search(request: Request):
        query = request.query_params
        ids = split_ids(query.getlist("id"))
        try:
            k = int(query.get("k", default_k))
        except ValueError:
            raise GalError(f"k={query.get('k')!r} is not a number", "ask for k=10, say") from None
        least = query.get("least", "0").lower() in ("1", "true", "yes", "on")
        results = catalogue.search(ids, k, least, query.get("filter"))
        return JSONResponse({"results": results}, headers=headers())

    def tile(request: Request):
        text = request.query_params.get("id", "")
        value = catalogue.parse_id(text)
        png = catalogue.cutouts.tile(value)
        if png is None:
            raise UnknownId(f"no cutout of object_id {value!r} in {os.path.basename(catalogue.cutouts.name)}",
                            "give the cutout table the embeddings came from")
        return Response(png, media_type="image/png", headers=headers({"Cache-Control": "max-age=3600"}))

    def selection(request: Request):
        expression = request.query_params.get("filter")
        ids = catalogue.selected_ids(expression)
        body = "object_id\n" + "".join(f"{_csv_cell(v)}\n" for v in ids)
        return Response(body, media_type="text/csv; charset=utf-8",
                        headers=headers({"Content-Disposition": 'attachment; filename="selection.csv"'}))

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    async def gal_error(request: Request, exc: GalError):
        status, text = _status_of(exc), without_folders(exc.one_line())
        log.info(f"{request.method} {request.url.path}: {status} {exc.one_line()}")
        if wants_json(request):
            return JSONResponse({"error": text}, status_code=status, headers=headers())
        return HTMLResponse(_error_page(status, text), status_code=status, headers=headers())

    async def http_error(request: Request, exc: HTTPException):
        text = exc.detail
        if exc.status_code == 404 and text == "Not Found":
            text = f"nothing at {request.url.path} (the viewer serves only its page, /static/ and /api/)"
        elif exc.status_code == 405:
            text = f"{request.method} is not served here: the viewer only reads (use GET)"
        if wants_json(request):
            return JSONResponse({"error": text}, status_code=exc.status_code, headers=headers())
        return HTMLResponse(_error_page(exc.status_code, text), status_code=exc.status_code, headers=headers())

    async def internal_error(request: Request, exc: Exception):
        log.error(f"{request.method} {request.url.path}: internal error: {type(exc).__name__}: {exc}")
        text = f"internal error: {type(exc).__name__} (see the server's log; please report it)"
        if wants_json(request):
            return JSONResponse({"error": text}, status_code=500, headers=headers())
        return HTMLResponse(_error_page(500, text), status_code=500, headers=headers())

    routes = [Route("/", page), Route("/static/{name}", static), Route("/api/info", info),
              Route("/api/points", points), Route("/api/search", search), Route("/api/tile", tile),
              Route("/api/selection.csv", selection)]
    if labelling is not None:
        routes += labelling_routes(labelling, headers)
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["*"])]
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={GalError: gal_error, HTTPException: http_error, Exception: internal_error})


def labelling_routes(labelling, headers) -> list:
    """POST /api/label (a mark, written before the answer) and GET /api/rank (the next to label)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def label(request: Request):
        # JSON only: a cross-site form cannot send it without the browser asking first (CORS), so no other page
        # can write marks through a user's browser
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise GalError("a mark is sent as JSON", 'POST {"id": ..., "label": "yes"} as application/json')
        try:
            body = await request.json()
        except ValueError:
            raise GalError("the mark is not valid JSON", '{"id": ..., "label": "yes"}') from None
        if not isinstance(body, dict) or "id" not in body or "label" not in body:
            raise GalError("a mark needs an id and a label", '{"id": ..., "label": "yes"}')
        done = await run_in_threadpool(labelling.mark, str(body["id"]), body["label"])
        return JSONResponse(done, headers=headers())

    def rank(request: Request):
        try:
            count = int(request.query_params.get("n", 20))
        except ValueError:
            raise GalError(f"n={request.query_params.get('n')!r} is not a number", "ask for n=20, say") from None
        return JSONResponse(labelling.ranking(count), headers=headers())

    return [Route("/api/label", label, methods=["POST"]), Route("/api/rank", rank)]


def _csv_cell(value) -> str:
    text = str(value)
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one chosen by the system).

    Made with proto=IPPROTO_TCP, as asyncio sets TCP_NODELAY on an accepted connection only when the socket says
    it is TCP; and TCP_NODELAY is set on the listener too (Linux passes it on to what it accepts). Without it, a
    response written as headers then body waits for the client's delayed ACK (about 40 ms) on every request of a
    reused (keep-alive) connection, as browsers make them."""
    from galtools.errors import UsageProblem

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageProblem(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                           "choose another --port, or leave it out for a free one") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def allowed_hosts_for(host: str) -> list[str]:
    """Host headers accepted: the loopback names when bound to loopback (a guard against DNS rebinding)."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return ["127.0.0.1", "localhost", "[::1]", "::1"]
    return ["*"]


def serve(app, sock: socket.socket) -> str | None:
    """Serve until Ctrl-C or SIGTERM; returns the name of the signal that stopped it."""
    import uvicorn

    class _Server(uvicorn.Server):
        stopped_by = None

        def handle_exit(self, sig, frame):   # stop gracefully, and do not re-raise the signal afterwards
            self.stopped_by = sig
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    server = _Server(config)
    server.run(sockets=[sock])
    return signal.Signals(server.stopped_by).name if server.stopped_by else None
