"""The FastAPI app of ``item serve``: the static page and the JSON API over a loaded :class:`Service`.

Every error is JSON ``{"error": message, "reason": word}`` with a 4xx status for what the request
got wrong (a non-image upload is 415 naming the decode reason, never a 500), the framework's own
errors (404, 405, a malformed body) included. An upload is admitted (``max_pending``) and its size
checked before its body is read (:class:`_Admission`). There is no ``/docs`` page (FastAPI's loads its
scripts from a CDN); the schema is ``/openapi.json``. The page is one HTML
file shipped in the package; each response gets a fresh CSP nonce for its inline script and style,
so no other script can run in it.

Other sites are kept out (:class:`_SiteGuard`): a request whose Host header is not one this server
answers to is refused 421 (a page on another site that rebinds its DNS name to 127.0.0.1 sends its
own name as Host), a state-changing request (POST, PUT, PATCH, DELETE) that carries an Origin other
than the server's own is refused 403, and no CORS header is ever sent, so no other origin may read a
response. With a token, every request must also present it (``Authorization: Bearer TOKEN``, or the
cookie the page sets when opened once as ``/?token=TOKEN``).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time, and
# they are imported inside create_app.
import asyncio
import logging
import secrets
from functools import lru_cache
from urllib.parse import unquote_to_bytes, urlsplit
from importlib import resources
import re
from http import HTTPStatus
from typing import Optional

from item.errors import InputError, ItemError
from item.serve.service import RequestError, Service

#: Headers sent with every response.
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                     "X-Frame-Options": "DENY"}
_MULTIPART_SLACK = 64 * 1024  # form boundaries, headers and the caption around the file
_SPOOL_MEMORY = 1 << 20  # bytes of an upload's body held in memory; the rest is spooled to disk
_REPLAY_CHUNK = 1 << 16
#: Seconds an admitted upload may send nothing before it is answered 408 and its place freed: without it,
#: ``max_pending`` clients that declare a body and then stall would hold every place (all others 503) for
#: as long as they keep the connection open.
BODY_IDLE_S = 30.0
UPLOAD_PATH = "/api/predict"
_ADMITTED = "item.admitted"  # scope key: the request holds an upload place (set by _Admission)
_log = logging.getLogger("uvicorn.error")  # the server's own log (uvicorn configures it)


@lru_cache(maxsize=1)
def page_template() -> str:
    """The page (one HTML file with its JS and CSS), read once from the package."""
    return (resources.files("item.serve") / "static" / "index.html").read_text(encoding="utf-8")


def _error(status: int, message: str, reason: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, "reason": reason}, status_code=status, headers=_SECURITY_HEADERS)


class _Admission:
    """ASGI middleware: admission and the size limit apply before a body is read.

    Any request whose declared Content-Length exceeds ``limit`` is answered 413 at once. An upload
    (``POST /api/predict``) then takes one of the service's ``max_pending`` places without waiting
    (503 ``busy`` when all are taken; its body is never read) and only then is read, into a spooled
    temporary file (``_SPOOL_MEMORY`` bytes in memory, the rest on disk, in the service's own folder),
    refused 413 as soon as it passes ``limit`` (a chunked upload has no length to check first), and
    replayed to the app in chunks. So the bytes in memory do not grow with the number or size of
    uploads in flight. An upload that sends nothing for ``BODY_IDLE_S`` seconds is answered 408
    ``upload-stalled`` and gives its place back. A client that goes away mid-upload costs one log line. Other requests carry
    no body any route reads: theirs is cut off past ``limit``.
    """

    def __init__(self, app, service: Service, limit: int):
        self.app, self.service, self.limit = app, service, limit

    async def _too_large(self, scope, receive, send):
        await _error(413, f"the upload is larger than the limit of {self.limit} bytes", "upload-too-large")(
            scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return await _error(400, "the Content-Length header is not a number", "bad-request")(
                    scope, receive, send)
            if int(declared) > self.limit:
                return await self._too_large(scope, receive, send)
        if not (scope["method"] == "POST" and scope["path"] == UPLOAD_PATH):
            return await self.app(scope, self._capped(receive), send)
        if not self.service.try_admit():
            exc = self.service.busy()
            return await _error(exc.status, str(exc), exc.reason)(scope, receive, send)
        try:
            await self._upload(scope, receive, send)
        finally:
            self.service.release_admission()

    def _capped(self, receive):
        seen = 0

        async def capped():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            return {"type": "http.disconnect"} if seen > self.limit else message

        return capped

    async def _upload(self, scope, receive, send):
        import tempfile

        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY, dir=self.service.upload_dir) as spool:
            size, more = 0, True
            while more:
                try:
                    message = await asyncio.wait_for(receive(), BODY_IDLE_S)
                except asyncio.TimeoutError:
                    _log.info("%s sent nothing of its upload for %.0f s (%d bytes received); its place is freed",
                              _client(scope), BODY_IDLE_S, size)
                    return await _error(408, f"the upload sent nothing for {BODY_IDLE_S:.0f} seconds; send it again",
                                        "upload-stalled")(scope, receive, send)
                if message["type"] != "http.request":
                    _log.info("%s went away during its upload (%d bytes received); nothing was scored",
                              _client(scope), size)
                    return
                body = message.get("body", b"")
                size += len(body)
                if size > self.limit:
                    return await self._too_large(scope, receive, send)
                spool.write(body)
                more = message.get("more_body", False)
            spool.seek(0)
            done = False

            async def replay():
                nonlocal done
                if done:
                    return await receive()
                chunk = spool.read(_REPLAY_CHUNK)
                done = len(chunk) < _REPLAY_CHUNK
                return {"type": "http.request", "body": chunk, "more_body": not done}

            scope = dict(scope, **{_ADMITTED: True})
            await self.app(scope, replay, send)


def _header(scope, name: bytes):
    """The value of header ``name`` (lower case), or None; the last one if repeated."""
    value = None
    for key, v in scope.get("headers", ()):
        if key == name:
            value = v
    return value


def _client(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"


class _SecurityHeaders:
    """ASGI middleware: ``_SECURITY_HEADERS`` on every response that does not set them itself."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()
                         if k.lower().encode() not in have]
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: Names of this machine's loopback that a local browser may send as Host.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
#: Methods that change or spend something: they need no Origin or the server's own.
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
TOKEN_COOKIE = "item_serve_token"


def _query_value(query: bytes, name: bytes) -> bytes:
    """The first value of ``name`` in a raw query string, percent-decoded to bytes (b"" when absent).

    ``urllib.parse.parse_qs`` on bytes decodes through UTF-8 and encodes back as ASCII, which raises on
    any escaped non-ASCII byte (``?token=%C3%A9``); bytes in, bytes out here.
    """
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")) == name:
            return unquote_to_bytes(value.replace(b"+", b" "))
    return b""


def _host_name(value: str) -> str:
    """'Example.org:8000' -> 'example.org'; '[::1]:8000' -> '::1'; '' for what cannot be parsed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    if value.count(":") > 1:  # a bare IPv6 address
        return value
    return value.rsplit(":", 1)[0] if ":" in value else value


def allowed_host_names(host: str, extra=()) -> frozenset:
    """The Host names a server listening on ``host`` answers to: loopback names, ``host`` itself and ``extra``.

    Listening on every address (0.0.0.0 or ::) adds this machine's host name, fully qualified name and the
    addresses that name resolves to; any other name or address needs ``extra`` (``--allow-host``).
    """
    import socket

    names = set(LOCAL_HOSTS) | {_host_name(host) or host.lower()} | {_host_name(h) for h in extra if h.strip()}
    if host in ("0.0.0.0", "::", "[::]"):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        try:  # the addresses the machine's name resolves to (best effort: no resolver, no addresses)
            names |= set(socket.gethostbyname_ex(socket.gethostname())[2])
        except OSError:
            pass
    return frozenset(n for n in names if n)


class _SiteGuard:
    """ASGI middleware: Host allow-list, same-origin state changes, optional token (see the module doc)."""

    def __init__(self, app, hosts: frozenset, token):
        self.app, self.hosts, self.token = app, hosts, token

    async def _refuse(self, scope, receive, send, status, message, reason):
        await _error(status, message, reason)(scope, receive, send)

    def _has_token(self, headers: dict, scope) -> tuple[bool, bool]:
        """(presented, from_query): whether the request carries the token, and whether it came in ?token=.

        Compared as bytes: a header, cookie or query holding any other bytes (non-ASCII included) is
        simply not the token (401), never an error.
        """
        token = self.token.encode("ascii")  # checked at start: ASCII a header can carry
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer " and secrets.compare_digest(auth[7:].strip(), token):
            return True, False
        for part in headers.get(b"cookie", b"").split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == TOKEN_COOKIE.encode() and secrets.compare_digest(value, token):
                return True, False
        if scope.get("path") == "/":
            given = _query_value(scope.get("query_string", b""), b"token")
            if given and secrets.compare_digest(given, token):
                return True, True
        return False, False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if _host_name(host) not in self.hosts:
            return await self._refuse(scope, receive, send, 421, f"this server does not answer for host {host!r}; "
                                      "start it with --allow-host NAME to accept that name", "unknown-host")
        origin = headers.get(b"origin")
        if scope["method"] in _UNSAFE and origin is not None:
            o = urlsplit(origin.decode("latin-1"))
            if o.scheme not in ("http", "https") or o.netloc.lower() != host.lower():
                return await self._refuse(scope, receive, send, 403, "cross-site requests are refused: the Origin "
                                          f"{origin.decode('latin-1')!r} is not this server", "cross-origin")
        if self.token:
            presented, from_query = self._has_token(headers, scope)
            if not presented:
                return await self._refuse(scope, receive, send, 401, "this server needs its token: send "
                                          "'Authorization: Bearer TOKEN', or open /?token=TOKEN once in the browser",
                                          "token-required")
            if from_query:  # the page keeps the token in a cookie no other site's request carries
                async def send_with_cookie(message):
                    if message["type"] == "http.response.start":
                        message = dict(message)
                        message["headers"] = list(message.get("headers", [])) + [(
                            b"set-cookie", f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                            .encode("latin-1"))]
                    await send(message)

                return await self.app(scope, receive, send_with_cookie)
        return await self.app(scope, receive, send)


def create_app(service: Service):
    """A FastAPI app answering from ``service`` (already loaded; the app never reloads it)."""
    from fastapi import FastAPI, File, Form, Query, Request, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from item import __version__

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, which breaks offline and calls out
    # to a third party; the schema itself is served, as JSON, at /openapi.json.
    app = FastAPI(title="ITEM serve", version=__version__, docs_url=None, redoc_url=None,
                  description="Score a suspicious image, see why (per-object misalignment) and which stored "
                              "images and known generators it resembles. Every error is JSON "
                              '{"error": message, "reason": word}.')
    app.state.service = service
    app.add_middleware(_SecurityHeaders)
    app.add_middleware(_Admission, service=service, limit=service.config.max_upload_bytes + _MULTIPART_SLACK)
    # Added last, so it runs first: nothing from another site is read, parsed or decoded.
    app.add_middleware(_SiteGuard, hosts=allowed_host_names(service.config.host, service.config.allowed_hosts),
                       token=service.config.token)

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

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        if exc.status_code == 404 and exc.detail == "Not Found":
            return _error(404, f"no such route: {request.url.path}", "not-found")
        reason = re.sub(r"[^a-z0-9]+", "-", HTTPStatus(exc.status_code).phrase.lower()).strip("-") \
            if exc.status_code in HTTPStatus._value2member_map_ else "http-error"
        response = _error(exc.status_code, str(exc.detail), reason)
        for k, v in (exc.headers or {}).items():  # e.g. Allow on a 405
            response.headers[k] = v
        return response

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

    @app.post(UPLOAD_PATH, summary="Score one uploaded image (multipart field `file`)")
    async def predict(request: Request, file: UploadFile = File(..., description="The image file."),
                      caption: Optional[str] = Form(None, description="Use this caption instead of the captioner's."),
                      k: Optional[int] = Form(None, description="Neighbours to return (default: the server's).")):
        # Admitted and bounded by _Admission before the body was read; the file is copied from its spooled
        # part a chunk at a time (never whole in memory) and checked exactly there.
        return await run_in_threadpool(service.predict_upload, file.file, filename=file.filename or "",
                                       caption=caption, k=k, admitted=bool(request.scope.get(_ADMITTED)))

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

    return app
