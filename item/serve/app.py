"""The FastAPI app of ``item serve``: the static page and the JSON API over a loaded :class:`Service`.

Every error is JSON ``{"error": message, "reason": word}`` with a 4xx status for what the request
got wrong (a non-image upload is 415 naming the decode reason, never a 500). The page is one HTML
file shipped in the package; each response gets a fresh CSP nonce for its inline script and style,
so no other script can run in it.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time, and
# they are imported inside create_app.
import secrets
from functools import lru_cache
from importlib import resources
from typing import Optional

from item.errors import InputError, ItemError
from item.serve.service import RequestError, Service

#: Headers sent with every response.
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                     "X-Frame-Options": "DENY"}
_MULTIPART_SLACK = 64 * 1024  # form boundaries, headers and the caption around the file


@lru_cache(maxsize=1)
def page_template() -> str:
    """The page (one HTML file with its JS and CSS), read once from the package."""
    return (resources.files("item.serve") / "static" / "index.html").read_text(encoding="utf-8")


def _error(status: int, message: str, reason: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, "reason": reason}, status_code=status, headers=_SECURITY_HEADERS)


class _BodyLimit:
    """ASGI middleware: a POST body larger than ``limit`` bytes is answered 413 before anything parses it.

    The declared Content-Length is checked first; the body is then read (at most ``limit`` + 1 bytes are
    ever held) and replayed to the app, so a chunked upload without a length is bounded too.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def _too_large(self, scope, receive, send):
        await _error(413, f"the upload is larger than the limit of {self.limit} bytes", "upload-too-large")(
            scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._too_large(scope, receive, send)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def create_app(service: Service):
    """A FastAPI app answering from ``service`` (already loaded; the app never reloads it)."""
    from fastapi import FastAPI, File, Form, Query, Request, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from item import __version__

    app = FastAPI(title="ITEM serve", version=__version__,
                  description="Score a suspicious image, see why (per-object misalignment) and which stored "
                              "images and known generators it resembles.")
    app.state.service = service
    app.add_middleware(_BodyLimit, limit=service.config.max_upload_bytes + _MULTIPART_SLACK)

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in _SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return _error(exc.status, str(exc), exc.reason)

    @app.exception_handler(InputError)
    async def _input_error(request, exc: InputError):
        return _error(400, str(exc), "bad-request")

    @app.exception_handler(ItemError)
    async def _item_error(request, exc: ItemError):
        return _error(500, str(exc), "server-error")

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        return _error(500, f"internal error: {type(exc).__name__}", "internal-error")

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        parts = ["{}: {}".format(".".join(str(p) for p in e.get("loc", ())), e.get("msg", "")) for e in exc.errors()]
        return _error(422, "; ".join(parts) or "invalid request", "invalid-request")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        nonce = secrets.token_urlsafe(16)
        csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
               "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
               "frame-ancestors 'none'")
        return HTMLResponse(page_template().replace("__CSP_NONCE__", nonce),
                            headers={"Content-Security-Policy": csp, "Cache-Control": "no-store"})

    @app.get("/api/health", summary="What this server loaded: store, heads, models, index freshness")
    def health():
        return service.health()

    @app.get("/api/summary", summary="The store's summary, the heads and the default k (the page's first view)")
    def summary():
        return service.summary()

    @app.post("/api/predict", summary="Score one uploaded image (multipart field `file`)")
    async def predict(file: UploadFile = File(..., description="The image file."),
                      caption: Optional[str] = Form(None, description="Use this caption instead of the captioner's."),
                      k: Optional[int] = Form(None, description="Neighbours to return (default: the server's).")):
        # The whole request was bounded by _BodyLimit; the file itself is checked exactly here.
        data = await file.read(service.config.max_upload_bytes + 1)
        return await run_in_threadpool(service.predict_upload, data, filename=file.filename or "",
                                       caption=caption, k=k)

    @app.get("/api/rows", summary="Stored images, filtered by label / generator / split, a page at a time")
    def rows(label: Optional[str] = None, generator: Optional[str] = None, split: Optional[str] = None,
             offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)):
        return service.rows(label=label, generator=generator, split=split, offset=offset, limit=limit)

    @app.get("/api/rows/{image_id}", summary="A stored image's view, from its stored embeddings")
    def row(image_id: str, k: Optional[int] = None):
        return service.row_view(image_id, k=k)

    @app.get("/api/neighbors", summary="Nearest stored images to a stored one")
    def neighbors(id: str = Query(..., description="Image id (or a unique prefix of 6+ characters)."),
                  k: Optional[int] = None, on: str = Query("image", description="image or misalignment")):
        return service.neighbors(id, k=k, on=on)

    @app.get("/api/thumb/{image_id}", summary="JPEG thumbnail of a stored image (ids in the store only)",
             response_class=Response)
    def thumb(image_id: str, size: str = "small"):
        return Response(service.thumbnail(image_id, size), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.exception_handler(404)
    async def _not_found(request, exc):
        return JSONResponse({"error": f"no such route: {request.url.path}", "reason": "not-found"}, status_code=404,
                            headers=_SECURITY_HEADERS)

    return app
