"""``item serve``: the analyst's web page and JSON API over a store and its heads."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import List, Optional

import typer

from item.options import PRECISION_HELP, Precision, precision_value
from item.console import RANDOM_WEIGHTS_LINE, emit, guarded, heads_random, info, warn

SERVE_EXTRA = "pip install 'item-detect[serve]' (FastAPI, uvicorn, python-multipart)"


def is_local_host(host: str) -> bool:
    """True when ``host`` only listens on this machine (loopback address or 'localhost')."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _require_extra() -> None:
    from item.errors import InputError

    for module in ("fastapi", "uvicorn", "python_multipart"):
        try:
            __import__(module)
        except ImportError:
            raise InputError(f"item serve needs {module}, which is not installed: {SERVE_EXTRA}") from None


def _any_random(store, heads) -> bool:
    """Whether the store or a head records random weights (read from their metadata; nothing loads)."""
    from item.errors import ItemError
    from item.store import StoreReader

    try:
        with StoreReader(store) as r:
            if r.random_weights:
                return True
    except ItemError:
        return False  # the Service's own load says what is wrong
    return heads_random(heads)


def serve_cmd(
    store: Path = typer.Argument(..., help="A featurized store (opened read-only).", show_default=False),
    heads: List[Path] = typer.Option(..., "--head", help="Head directory; repeat to show several heads' verdicts."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on. Anything but loopback is reachable by "
                             "others: give it a --token."),
    port: int = typer.Option(8000, help="Port to listen on."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N] (for the models that score uploads)."),
    precision: Optional[Precision] = typer.Option(None, help=PRECISION_HELP + " Uploads may be scored in another "
                                                  "precision than the store was made in; /api/health says which.",
                                                  show_default=False),
    warm_up: bool = typer.Option(True, "--warm-up/--no-warm-up", help="Run every model once at start, so that "
                                 "the first upload does not pay what a first forward costs."),
    k: int = typer.Option(10, "-k", help="Neighbours shown by default."),
    max_upload_mb: float = typer.Option(20.0, help="Largest upload accepted, in MiB."),
    max_pixels: Optional[int] = typer.Option(None, help="Largest upload in pixels, read from its header before "
                                             "decoding (default 25,000,000: lower than featurize's, since a "
                                             "server decodes for others); 0 removes the limit."),
    max_pending: int = typer.Option(8, help="Uploads admitted at once (scored one at a time; the rest wait, "
                                    "holding only their bytes); more are answered 503."),
    allow_host: List[str] = typer.Option([], "--allow-host", help="Another Host name to answer to (repeat); by "
                                         "default only loopback names and --host are accepted."),
    token: Optional[str] = typer.Option(None, envvar="ITEM_SERVE_TOKEN", help="Require this token on every "
                                        "request (header 'Authorization: Bearer TOKEN'; a browser opens "
                                        "/?token=TOKEN once): 16 or more ASCII letters, digits and - . _ ~. "
                                        "Also read from $ITEM_SERVE_TOKEN."),
):
    """Serve a web page and JSON API: score an image, see why, and what it resembles."""
    _require_extra()  # numbers are checked before this body runs (item/options.py)
    import uvicorn

    from item.serve.app import create_app
    from item.serve.service import ServeConfig, Service, check_token

    check_token(token)  # at least 16 characters that a header, a cookie and a URL carry as they are

    config = ServeConfig(store=str(store), heads=tuple(str(h) for h in heads), device=device,
                         precision=precision_value(precision), warm_up=warm_up,
                         max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels, k=k,
                         max_pending=max_pending, allowed_hosts=tuple(allow_host), host=host, token=token or None)
    if _any_random(store, heads):  # the first line, before minutes of loading
        emit(RANDOM_WEIGHTS_LINE)
    if not is_local_host(host) and not token:
        warn(f"--host {host}: this server has NO authentication. Anyone who can reach {host}:{port} can upload "
             "images and read the store's paths, captions and thumbnails. Keep it on 127.0.0.1 (reach it through "
             "an SSH tunnel), give it a --token, or put it behind a reverse proxy that authenticates.")
    sock = listen(host, port)  # before the loading: a port in use is one line, not uvicorn's exit 3 after it
    try:
        service = Service(config, log=info)
    except BaseException:
        sock.close()
        raise
    try:
        info(f"serving on http://{host}:{port}/ (the JSON API's schema: http://{host}:{port}/openapi.json; e.g. "
             f"curl -F file=@image.jpg http://{host}:{port}/api/predict); Ctrl-C stops"
             + ("; every request needs the token (open /?token=TOKEN once in a browser)" if token else ""))
        app = create_app(service)
        sock.close()  # held through the loading; uvicorn binds the address again at once (SO_REUSEADDR)
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        sock.close()
        service.close()


def listen(host: str, port: int):
    """A socket bound to (host, port), as uvicorn binds one, held while the server loads; InputError in one
    line when the name does not resolve or the address cannot be had (in use, not this machine's, a
    privileged port)."""
    import socket

    from item.errors import InputError

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"--host {host}: not an address of this machine ({getattr(exc, 'strerror', None) or exc})") \
            from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise InputError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    return sock


def register(app: typer.Typer) -> None:
    app.command("serve")(guarded(serve_cmd))
