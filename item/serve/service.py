"""What ``item serve`` loads at start-up and how it answers, as plain dicts (no web framework here).

Loaded once, in :class:`Service`'s constructor: the store (read-only) and its per-image metadata,
the heads (each checked against the store's models), the featurize models the store records, and
every fresh FAISS index (a missing or stale one means exact search over the stored vectors).
Requests never reload any of it.

Concurrency: the web server answers requests in a pool of threads. Two locks serialise what is
not safe to share: ``model_lock`` in front of the models (one upload is featurized at a time; the
models hold no per-request state, and on a GPU one forward at a time is also what fits), and
``store_lock`` in front of the store reader and the indexes (h5py file handles and the reader's
caches are shared objects). Pixels are decoded only inside a bounded slot: an upload's (checked
and then featurized) inside ``model_lock``, a thumbnail's inside ``decode_slots``; so at most one
upload image and ``THUMB_DECODES`` thumbnails are in memory as pixels at any time. Uploads wait in
a queue of ``max_pending`` places (the one being scored included); a request that finds it full is
answered 503 at once, and a thumbnail that waits more than ``SLOT_WAIT_S`` for a slot is answered
503. An upload's pixel count is checked from its header against the server's own budget
(``DEFAULT_UPLOAD_PIXELS``, lower than featurize's) before any pixel is decoded, and after a large
image the memory it used is handed back to the system (``gc`` and glibc's ``malloc_trim``).

One store, one answer: the server holds the store's ``writer.lock`` shared for its whole life, so an
``--overwrite`` is refused while it runs, and before and after every answer it checks that the store on
disk is still the one it loaded (the manifest's and overlay's file identity, then the store's
fingerprint and overlay version when those moved). A store that changed (rows added by another
writer, metadata annotated, the folder replaced) is answered 503 ``store-changed`` from then on, on
every endpoint, until the server is restarted: no answer mixes what it loaded with what is there now.

Nothing a request sends becomes a path: uploads are written under a name this process makes up in
a private temporary folder, and thumbnails are served only for ids found in the store, from the
path the store records.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from item.errors import InputError, ItemError

#: Largest upload accepted by default (bytes).
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Largest upload accepted by default (pixels, width * height from the header): a 24-megapixel camera
#: frame fits; featurize's limit (Pillow's 89,478,485) would let one request hold several GB.
DEFAULT_UPLOAD_PIXELS = 25_000_000
#: Uploads admitted at once (being scored or waiting for the models) unless configured otherwise.
DEFAULT_MAX_PENDING = 8
#: Thumbnails decoded at once.
THUMB_DECODES = 2
#: Longest wait for a decode slot before a request is answered 503 (seconds).
SLOT_WAIT_S = 30.0
#: Images at least this large (pixels) are followed by handing freed memory back to the system.
_TRIM_AFTER_PIXELS = 4_000_000
#: Longest caption a request may give (characters).
MAX_CAPTION_CHARS = 1000
#: Most neighbours one request may ask for.
MAX_K = 100
#: Thumbnail sizes by name: the longest side in pixels.
THUMB_SIZES = {"small": 160, "large": 512}
#: Ids are sha256 hex digests; a unique prefix of at least 6 characters is accepted.
_ID_RE = re.compile(r"^[0-9a-f]{6,64}$")
#: What a token may hold: URL-unreserved ASCII, which a header, a cookie and a query string all carry as is.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~-]+$")
#: Bytes copied at a time from an upload's file to the server's own.
_COPY_CHUNK = 1 << 16


def check_token(token: str | None) -> None:
    """Raise InputError unless ``token`` (when given) is at least 16 characters a header, a cookie and a
    URL can all carry unchanged: letters, digits and ``-._~`` (what ``secrets.token_urlsafe`` makes)."""
    if token is None:
        return
    if len(token) < 16:
        raise InputError("--token must be at least 16 characters (e.g. python -c 'import secrets; "
                         "print(secrets.token_urlsafe())')")
    if not _TOKEN_RE.match(token):
        bad = next(c for c in token if not _TOKEN_RE.match(c))
        raise InputError(f"--token holds {bad!r}, which an HTTP header, cookie or URL cannot carry as is: use only "
                         "ASCII letters, digits and - . _ ~ (e.g. python -c 'import secrets; "
                         "print(secrets.token_urlsafe())')")


class RequestError(InputError):
    """A request that cannot be answered; ``status`` is the HTTP status, ``reason`` a short word."""

    def __init__(self, message: str, *, status: int = 400, reason: str = "bad-request"):
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ServeConfig:
    """What ``item serve`` serves and its limits."""

    store: str
    heads: tuple[str, ...]
    device: str = "auto"
    #: The models' arithmetic on the CPU (``--precision``: fp32, bf16, auto; None: the device's own). Uploads may
    #: be scored in another precision than the store was made in; /api/health says which.
    precision: str | None = None
    #: Run every model once at start (``LoadedModels.warm_up``), so that the first upload does not pay it.
    warm_up: bool = True
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int | None = None  # None: DEFAULT_UPLOAD_PIXELS; 0: no limit
    k: int = 10
    max_pending: int = DEFAULT_MAX_PENDING
    #: Host names (besides loopback names and ``host``) a request's Host header may carry.
    allowed_hosts: tuple[str, ...] = ()
    #: The address the server listens on (its Host header is accepted).
    host: str = "127.0.0.1"
    #: When set, every request must present it (header ``Authorization: Bearer TOKEN`` or the cookie the
    #: page sets from ``/?token=TOKEN``).
    token: str | None = None


def _file_stamp(path) -> tuple | None:
    """(inode, size, modification time in ns) of the file at ``path``, None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def release_memory() -> None:
    """Hand memory freed by a large decode back to the system: a collection, then glibc's malloc_trim.

    Without the trim, glibc keeps the freed arenas of a multi-GB decode mapped and the server's resident
    size stays at its peak. A no-op where there is no glibc (macOS, musl).
    """
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _answers(method):
    """An answer given only while the store on disk is the one loaded: checked before and after (see the
    module doc); a store error met meanwhile is a 503 when the store changed under it."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self.check_store()
        try:
            out = method(self, *args, **kwargs)
        except RequestError:
            raise
        except (ItemError, OSError):
            self.check_store()
            raise
        self.check_store()
        return out

    return wrapper


def vote(hits: list[dict]) -> list[dict]:
    """Known generators (and 'real') by vote of one query's neighbours (``item.outputs.vote_table``)."""
    from item.outputs import vote_table

    return vote_table([hits])


class Service:
    """The store, heads, models and indexes of one ``item serve``, loaded once.

    ``log`` receives progress lines while loading. ``models``: already loaded models to share (an
    object like :class:`item.serve.featurizer.LoadedModels`); by default the models the store records
    are loaded. Raises ItemError subclasses (a missing store or head, a head trained on other models,
    models that do not load).
    """

    def __init__(self, config: ServeConfig, *, log: Callable[[str], None] = lambda s: None,
                 models=None):
        from item.store.locks import ReaderLock

        if not config.heads:
            raise InputError("give at least one --head")
        if config.max_pending < 1:
            raise InputError(f"max_pending must be at least 1, got {config.max_pending}")
        check_token(config.token)
        # Held until close(): an --overwrite of this store is refused while the server answers from it.
        self._store_lock_file = ReaderLock(config.store).acquire()
        try:
            self._load(config, log, models)
        except BaseException:
            self.close()
            raise

    def _load(self, config: ServeConfig, log, models) -> None:
        from item.classify.heads import load_head
        from item.classify.train import check_head_fits
        from item.featurize.inputs.decode import DEFAULT_MAX_PIXELS
        from item.store import StoreReader, list_indexes
        from item.store import schema

        self.config = config
        self.reader = None
        self.indexes = {}
        self._upload_dir = None
        self._changed: str | None = None
        self._watch_lock = threading.Lock()
        self.max_pixels = DEFAULT_UPLOAD_PIXELS if config.max_pixels is None else (config.max_pixels or None)
        # Stored images were accepted by featurize under its own limit: their thumbnails use it.
        self.thumb_max_pixels = DEFAULT_MAX_PIXELS
        self.model_lock = threading.Lock()
        self.pending = threading.BoundedSemaphore(config.max_pending)
        self.decode_slots = threading.BoundedSemaphore(THUMB_DECODES)
        self.store_lock = threading.Lock()
        log(f"opening store {config.store} (read-only)")
        self._seen = self._file_state()
        self.reader = StoreReader(config.store)
        self.loaded_fingerprint = self.reader.fingerprint
        self.loaded_overlay = self._overlay_key(self.reader.overlay)
        self.meta = self.reader.metadata()
        self.ok_rows = self.reader.select()
        self._ok = np.zeros(self.reader.n_images, bool)
        self._ok[self.ok_rows] = True
        self.facets = {c: sorted(set(self.meta[c][self.ok_rows].astype(str).tolist()))
                       for c in (schema.LABEL, schema.GENERATOR, schema.SPLIT)}
        self._row_of_id = {str(i): r for r, i in enumerate(self.meta[schema.ID])}
        self.heads = []
        names = set()
        for h in config.heads:
            head, info = load_head(h)
            check_head_fits(info, self.reader.compat, f"store {config.store}")
            name = Path(h).resolve().name
            while name in names:
                name += "'"
            names.add(name)
            self.heads.append((name, head, info))
            log(f"head {name}: {info.get('kind')} on {info['recipe']}, threshold {info['threshold']:.4f}")
        if models is None:
            from item.serve.featurizer import LoadedModels

            clip = self.reader.compat.get("clip_model")
            log(f"loading models ({clip}, {self.reader.compat.get('captioner')}, {self.reader.compat.get('grounder')}"
                f"{', RANDOM WEIGHTS' if self.reader.random_weights else ''}) ...")
            models = LoadedModels(self.reader.manifest, device=config.device, max_pixels=self.max_pixels,
                                  precision=config.precision)
        self.models = models
        log(f"models run in {getattr(models, 'precision', '?')} on {models.device}")
        if config.warm_up and hasattr(models, "warm_up"):
            log(f"warm-up: every model ran once in {models.warm_up():.1f} s")
        self.indexes, self.index_status = {}, []
        from item.store import INDEX_ON, StoreIndex

        fresh = {}
        for info in list_indexes(config.store):
            self.index_status.append({"on": info.get("on"), "kind": info.get("kind"), "fresh": bool(info.get("fresh")),
                                      "problem": info.get("problem", "")})
            if info.get("fresh") and info.get("on") in INDEX_ON and info.get("on") not in fresh:
                fresh[info["on"]] = info["kind"]
        for on in INDEX_ON:
            if on in fresh:
                self.indexes[on] = StoreIndex(config.store, on=on, kind=fresh[on])
                log(f"neighbours on {on}: {fresh[on]} index")
            else:
                log(f"neighbours on {on}: exact search (no fresh index)")
        self.random_weights = bool(self.reader.random_weights or self.models.random_weights
                                   or any(info.get("random_weights") for _, _, info in self.heads))
        self._upload_dir = tempfile.mkdtemp(prefix="item-serve-")
        self._thumbs: OrderedDict[tuple[int, str], tuple[tuple | None, bytes]] = OrderedDict()  # (stamp, jpeg)
        self._thumb_lock = threading.Lock()
        log(f"ready: {self.ok_rows.size} images, {len(self.heads)} head(s)"
            + (" (RANDOM WEIGHTS)" if self.random_weights else ""))

    def close(self) -> None:
        for ix in getattr(self, "indexes", {}).values():
            ix.close()
        if getattr(self, "reader", None) is not None:
            self.reader.close()
        if getattr(self, "_upload_dir", None):
            shutil.rmtree(self._upload_dir, ignore_errors=True)
        self._store_lock_file.release()

    @property
    def upload_dir(self) -> str:
        """The private folder uploads are written to (and spooled in) while they are scored."""
        return self._upload_dir

    # -- the store on disk is the one loaded ------------------------------------------------
    def _file_state(self) -> tuple:
        """Identity of the store folder, its manifest and its overlay on disk (None for a missing one)."""
        from item.store import schema
        from item.store.overlay import overlay_path

        root = Path(self.config.store)
        out = []
        for path, full in ((root, False), (root / schema.MANIFEST, True), (overlay_path(root), True)):
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
                continue
            out.append((st.st_dev, st.st_ino) + ((st.st_mtime_ns, st.st_size) if full else ()))
        return tuple(out)

    @staticmethod
    def _overlay_key(overlay: dict) -> tuple:
        from item.store.overlay import overlay_version

        v = overlay_version(overlay)
        return v["version"], v["digest"]

    def check_store(self) -> None:
        """Raise RequestError 503 ``store-changed`` when the store on disk is no longer the one loaded.

        Cheap while nothing moved (three ``stat`` calls); when a file moved, the manifest and overlay are
        read again and compared by fingerprint and overlay version, so a rewrite that changes neither
        (a run that added no rows) is no change. Once changed, every later answer is refused too.
        """
        if self._changed is None:
            state = self._file_state()
            if state != self._seen:
                with self._watch_lock:
                    if state != self._seen and self._changed is None:
                        self._changed = self._what_changed(state)
                        if self._changed is None:
                            self._seen = state
        if self._changed is not None:
            raise RequestError(f"the store {self.config.store} changed after this server loaded it: {self._changed}; "
                               "restart item serve to answer from the store as it is now", status=503,
                               reason="store-changed")

    def _what_changed(self, state: tuple) -> str | None:
        """Why the store at ``state`` is not the one loaded, or None when it still is."""
        from item.store.manifest import read_manifest
        from item.store.overlay import read_overlay
        from item.store.reader import manifest_fingerprint

        if state[0] != self._seen[0]:
            return "its folder was moved, removed or replaced"
        root = Path(self.config.store)
        try:
            now_fp = manifest_fingerprint(read_manifest(root))
            now_ov = self._overlay_key(read_overlay(root))
        except (ItemError, OSError, KeyError, TypeError) as exc:
            return f"it cannot be read as it was loaded ({exc})"
        if now_fp != self.loaded_fingerprint:
            return f"its content changed (fingerprint {self.loaded_fingerprint} when loaded, {now_fp} now)"
        if now_ov != self.loaded_overlay:
            return f"its metadata overlay changed (version {self.loaded_overlay[0]} when loaded, {now_ov[0]} now)"
        return None

    # -- admission ---------------------------------------------------------------------------
    def try_admit(self) -> bool:
        """Take one of the ``max_pending`` upload places, without waiting; False when all are taken."""
        return self.pending.acquire(blocking=False)

    def release_admission(self) -> None:
        self.pending.release()

    def busy(self) -> RequestError:
        return RequestError(f"the server is busy: {self.config.max_pending} uploads are already being scored or "
                            "waiting; try again shortly", status=503, reason="busy")

    # -- helpers -------------------------------------------------------------------------
    def _k(self, k: int | None) -> int:
        k = self.config.k if k is None else int(k)
        if not 1 <= k <= MAX_K:
            raise RequestError(f"k must be between 1 and {MAX_K}, got {k}", reason="bad-k")
        return k

    def _on(self, on: str) -> str:
        from item.store import INDEX_ON

        if on not in INDEX_ON:
            raise RequestError(f"unknown on={on!r}; choose {', '.join(INDEX_ON)}", reason="bad-on")
        return on

    def row_of(self, image_id: str) -> int:
        """The store row of an image id (or a unique prefix of 6+ hex characters); 404 otherwise."""
        key = str(image_id).lower()
        if not _ID_RE.match(key):
            raise RequestError("an image id is 6 to 64 hex characters", status=404, reason="unknown-id")
        row = self._row_of_id.get(key)
        if row is None:
            hits = [r for i, r in self._row_of_id.items() if i.startswith(key)]
            if len(hits) != 1:
                raise RequestError(f"no single stored image with id {key}", status=404, reason="unknown-id")
            row = hits[0]
        return row

    def _hit(self, row: int, similarity: float) -> dict:
        from item.outputs import neighbour
        from item.store import schema

        m = self.meta
        return neighbour(id=m[schema.ID][row], row=row, path=m[schema.PATH][row], label=m[schema.LABEL][row],
                         generator=m[schema.GENERATOR][row], split=m[schema.SPLIT][row],
                         caption=m[schema.CAPTION][row], similarity=similarity)

    def _search(self, on: str, vector: np.ndarray, k: int, exclude: set[int]) -> list[dict]:
        """The k stored rows nearest to ``vector`` (cosine): the fresh index, else exact search."""
        from item.classify.predict import _exact_search
        from item.store import INDEX_ON

        vec = np.asarray(vector, np.float32).reshape(1, -1)
        with self.store_lock:
            ix = self.indexes.get(on)
            if ix is not None:
                hits = ix.search_rows(vec, k, exclude=exclude)[0]
                return [self._hit(h["row"], h["similarity"]) for h in hits]
            cand = np.setdiff1d(self.ok_rows, np.array(sorted(exclude), np.int64))
            if cand.size == 0:
                return []
            scores, rows = _exact_search(self.reader, INDEX_ON[on], cand, vec, k)
        return [self._hit(int(r), float(s)) for s, r in zip(scores[0], rows[0]) if np.isfinite(s)]

    def _lookups(self, image_emb, misalignment, k: int, exclude: set[int]) -> dict:
        near = {"image": self._search("image", image_emb, k, exclude),
                "misalignment": self._search("misalignment", misalignment, k, exclude)}
        return {"neighbors": near["image"], "neighbors_misalignment": near["misalignment"],
                "generators": [{"on": on, "k": k, "table": vote(hits)} for on, hits in near.items()]}

    def _verdicts(self, features_of: Callable[[str], np.ndarray]) -> list[dict]:
        out = []
        for name, head, info in self.heads:
            p = float(head.predict_proba(features_of(info["recipe"]))[0, 1])
            out.append({"head": name, "recipe": info["recipe"], "kind": info.get("kind"), "p_fake": p,
                        "label": "fake" if p >= info["threshold"] else "real", "threshold": float(info["threshold"]),
                        "threshold_from": info.get("threshold_from", ""),
                        "random_weights": bool(info.get("random_weights"))})
        return out

    @staticmethod
    def _objects(nouns, boxes, grounded, detector, crop_emb, noun_emb) -> list[dict]:
        """Per noun an ``item.outputs`` object: its box (x0, y0, x1, y1 in pixels) and alignment
        cos(crop_emb, noun_emb); the worst third marked."""
        from item.misalignment import pair_scores
        from item.outputs import objects

        cos = [float(pair_scores(np.asarray(crop_emb[i], np.float32)[None],
                                 np.asarray(noun_emb[i], np.float32)[None])[0]) if grounded[i] else float("nan")
               for i in range(len(nouns))]
        return objects(nouns, boxes, grounded, detector, cos)

    def _view(self, verdicts: list[dict], *, path: str, id: str, status: str = "ok", caption, caption_source,  # noqa: A002
              width, height, global_alignment, objects, **rest) -> dict:
        """An ``item.outputs.prediction`` (the first head's verdict) with every head's verdict and the
        neighbours' view around it; the keys the CLI's prediction has, under the same names."""
        from item.outputs import prediction

        first = verdicts[0]
        pred = prediction(path=path, id=id, status=status, random_weights=self.random_weights, p_fake=first["p_fake"],
                          label=first["label"], threshold=first["threshold"], threshold_from=first["threshold_from"],
                          head=first["head"], caption=caption, caption_source=caption_source, width=width,
                          height=height, global_alignment=global_alignment, objects=objects)
        return {**pred, "heads": verdicts, **rest}

    def _warnings(self, caption_source: str) -> list[str]:
        """The heads' caption warnings, as ``item predict`` gives them."""
        from types import SimpleNamespace

        from item.classify.predict import _caption_warnings
        from item.store import schema

        rec = SimpleNamespace(status=schema.STATUS_OK, caption_source=caption_source)
        out = []
        for name, _, info in self.heads:
            out += [f"{name}: {w}" for w in _caption_warnings(info, [rec])]
        return out

    # -- answers -------------------------------------------------------------------------
    @_answers
    def predict_upload(self, data: bytes | BinaryIO, *, filename: str = "", caption: str | None = None,
                       k: int | None = None, admitted: bool = False) -> dict:
        """Score one uploaded image (its bytes, or a binary file read in chunks): verdict per head,
        caption, objects, neighbours, generators.

        ``admitted``: the caller already holds one of the ``max_pending`` places (:meth:`try_admit`,
        as the web app does before it reads a body) and releases it; otherwise one is taken here.
        """
        from item.classify.features import record_features
        from item.store import schema

        k = self._k(k)
        if caption is not None:
            caption = caption.strip() or None
            if caption and len(caption) > MAX_CAPTION_CHARS:
                raise RequestError(f"the caption has {len(caption)} characters, more than {MAX_CAPTION_CHARS}",
                                   reason="caption-too-long")
        if not admitted and not self.try_admit():
            raise self.busy()
        try:
            rec = self._featurize_upload(data, caption)
        finally:
            if not admitted:
                self.release_admission()
        if rec.status != schema.STATUS_OK:
            raise RequestError(f"the image could not be featurized: {rec.reason}", status=422, reason=rec.reason)
        verdicts = self._verdicts(lambda recipe: record_features(recipe, [rec]))
        objs = rec.objects
        d = int(np.asarray(rec.image_emb).shape[-1])
        objects = self._objects([o.noun for o in objs], [o.box for o in objs], [o.box is not None for o in objs],
                                [o.score for o in objs],
                                [o.crop_emb if o.crop_emb is not None else np.zeros(d, np.float32) for o in objs],
                                [o.noun_emb for o in objs])
        from item.misalignment import pair_scores

        stored = self._row_of_id.get(rec.id)
        glob = float(pair_scores(np.asarray(rec.image_emb, np.float32)[None],
                                 np.asarray(rec.caption_emb, np.float32)[None])[0])
        # a stored image's own row is left out of its neighbours, as for a stored row's view
        exclude = {int(stored)} if stored is not None else set()
        return self._view(verdicts, path=filename, id=rec.id, caption=rec.caption,
                          caption_source=rec.caption_source, width=int(rec.width), height=int(rec.height),
                          global_alignment=glob, objects=objects, **self._lookups(rec.image_emb, rec.misalignment, k,
                                                                                  exclude),
                          in_store=stored is not None, warnings=self._warnings(rec.caption_source))

    def _featurize_upload(self, data: bytes, caption: str | None):
        """The upload's ImageRecord: header checked, then decoded and featurized under the model lock."""
        from item.featurize.inputs.decode import SKIP_REASONS, DecodeError, decode_image, probe_image

        # A name this process makes up, in a folder only it writes: nothing from the request is a path.
        path = os.path.join(self._upload_dir, uuid.uuid4().hex)
        pixels = 0
        try:
            self._save_upload(data, path)
            try:
                # The header alone (no pixel decoded) decides the size: a bomb is refused before it costs memory.
                w, h = probe_image(path, max_pixels=self.max_pixels)
                pixels = w * h
                with self.model_lock:
                    # The featurize decode rules, checked before the models are touched; one image's pixels
                    # in memory at a time, since the models run one upload at a time anyway.
                    decode_image(path, max_pixels=self.max_pixels)
                    return self.models.featurize([path], {path: caption} if caption else None)[0]
            except DecodeError as exc:
                status = 413 if exc.reason == "too-large" else 415
                limit = f"; this server accepts at most {self.max_pixels:,} pixels" if (
                    exc.reason == "too-large" and self.max_pixels) else ""
                raise RequestError(f"not a usable image: {exc.reason} ({SKIP_REASONS[exc.reason]}){limit}",
                                   status=status, reason=exc.reason) from None
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
            if pixels >= _TRIM_AFTER_PIXELS:
                release_memory()

    def _save_upload(self, data: bytes | BinaryIO, path: str) -> None:
        """Write the upload to ``path``, a chunk at a time from a file; 413 past ``max_upload_bytes``."""
        limit = self.config.max_upload_bytes
        too_large = RequestError(f"the upload is larger than the limit of {limit} bytes", status=413,
                                 reason="upload-too-large")
        if isinstance(data, (bytes, bytearray, memoryview)):
            if len(data) > limit:
                raise too_large
            with open(path, "wb") as f:
                f.write(data)
            return
        size = 0
        with open(path, "wb") as f:
            while chunk := data.read(_COPY_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise too_large
                f.write(chunk)

    @_answers
    def row_view(self, image_id: str, k: int | None = None) -> dict:
        """A stored image's view from its stored embeddings (nothing is re-encoded)."""
        from item.classify.features import store_features
        from item.store import schema

        k = self._k(k)
        row = self.row_of(image_id)
        m = self.meta
        if m[schema.STATUS][row] != schema.STATUS_OK:
            raise RequestError(f"this image was skipped at featurize time ({m[schema.REASON][row]})", status=404,
                               reason="skipped-row")
        with self.store_lock:
            feats = {info["recipe"]: store_features(self.reader, info["recipe"], np.array([row]))
                     for _, _, info in self.heads}
            objs = self.reader.objects(np.array([row]))
            image_emb = self.reader.read(schema.IMAGE_EMB, [row])[0]
            caption_emb = self.reader.read(schema.CAPTION_EMB, [row])[0]
            mis = self.reader.read(schema.MISALIGNMENT, [row])[0]
        verdicts = self._verdicts(lambda recipe: feats[recipe])
        objects = self._objects(objs[schema.NOUN], objs[schema.BOX], objs[schema.GROUNDED], objs[schema.SCORE],
                                objs[schema.CROP_EMB], objs[schema.NOUN_EMB])
        from item.misalignment import pair_scores

        stored = {c: str(m[c][row]) for c in (schema.PATH, schema.LABEL, schema.GENERATOR, schema.SPLIT)}
        glob = float(pair_scores(np.asarray(image_emb, np.float32)[None], np.asarray(caption_emb, np.float32)[None])[0])
        source = str(m[schema.CAPTION_SOURCE][row])
        return self._view(verdicts, path=stored[schema.PATH], id=str(m[schema.ID][row]),
                          caption=str(m[schema.CAPTION][row]), caption_source=source,
                          width=int(m[schema.WIDTH][row]), height=int(m[schema.HEIGHT][row]), global_alignment=glob,
                          objects=objects, **self._lookups(image_emb, mis, k, {row}), in_store=True,
                          warnings=self._warnings(source), row=int(row), stored=stored)

    @_answers
    def neighbors(self, image_id: str, k: int | None = None, on: str = "image") -> dict:
        """The k stored images nearest to a stored one (itself excluded), on image or misalignment vectors."""
        from item.store import INDEX_ON

        k, on = self._k(k), self._on(on)
        row = self.row_of(image_id)
        if not self._ok[row]:
            raise RequestError("this image was skipped at featurize time", status=404, reason="skipped-row")
        with self.store_lock:
            vec = self.reader.read(INDEX_ON[on], [row])[0]
        hits = self._search(on, vec, k, {row})
        return {"id": self._hit(row, 1.0)["id"], "on": on, "k": k,
                "method": f"index {self.indexes[on].kind}" if on in self.indexes else "exact",
                "neighbors": hits, "generators": vote(hits), "random_weights": self.random_weights}

    @_answers
    def rows(self, *, label: str | None = None, generator: str | None = None, split: str | None = None,
             offset: int = 0, limit: int = 100) -> dict:
        """Stored (ok) images matching the filters, a page at a time, and the values each filter takes."""
        from item.store import schema

        if offset < 0 or not 1 <= limit <= 1000:
            raise RequestError("offset must be >= 0 and limit between 1 and 1000", reason="bad-page")
        m = self.meta
        mask = np.ones(self.ok_rows.size, bool)
        for col, want in ((schema.LABEL, label), (schema.GENERATOR, generator), (schema.SPLIT, split)):
            if want:
                mask &= m[col][self.ok_rows].astype(str) == want
        rows = self.ok_rows[mask]
        page = rows[offset:offset + limit]
        return {"total": int(rows.size), "offset": offset, "limit": limit, "facets": self.facets,
                "rows": [{k: v for k, v in self._hit(int(r), 1.0).items() if k != "similarity"} for r in page],
                "random_weights": self.random_weights}

    @_answers
    def thumbnail(self, image_id: str, size: str = "small") -> bytes:
        """JPEG bytes of a stored image, longest side THUMB_SIZES[size]; only for ids in the store.

        The file at the row's path must still be the one featurized: an image id is the sha256 of the file,
        so a file that was replaced since (another picture under the same name) is answered 404
        ``file-changed`` instead of showing that other picture beside this row's features. A cached
        thumbnail is kept only while the file's inode, size and modification time stay as they were."""
        from PIL import Image

        from item.featurize.inputs.decode import DecodeError, decode_image, file_id
        from item.store import schema

        if size not in THUMB_SIZES:
            raise RequestError(f"unknown size {size!r}; choose {', '.join(THUMB_SIZES)}", reason="bad-size")
        row = self.row_of(image_id)
        key = (row, size)
        from item.store import openable_path

        # recorded by featurize, never taken from the request (a non-UTF-8 name given back its bytes)
        path = openable_path(str(self.meta[schema.PATH][row]))
        stamp = _file_stamp(path)
        with self._thumb_lock:
            cached = self._thumbs.get(key)
            if cached is not None and stamp is not None and cached[0] == stamp:
                self._thumbs.move_to_end(key)
                return cached[1]
        if not self.decode_slots.acquire(timeout=SLOT_WAIT_S):
            raise RequestError("the server is busy decoding images; try again shortly", status=503, reason="busy")
        try:
            try:
                # an augmented row's id is its original's plus "+SPEC": the file is the original
                if file_id(path) != str(self.meta[schema.ID][row]).split("+", 1)[0]:
                    raise RequestError("the stored image's file changed since it was featurized (its sha256 is no "
                                       "longer the row's id): it is another image now", status=404,
                                       reason="file-changed")
                img = decode_image(path, max_pixels=self.thumb_max_pixels,
                                   draft=(THUMB_SIZES[size], THUMB_SIZES[size])).image
            except DecodeError as exc:
                raise RequestError(f"the stored image's file cannot be read now ({exc.reason})", status=404,
                                   reason=exc.reason) from None
            big = img.width * img.height >= _TRIM_AFTER_PIXELS
            img.thumbnail((THUMB_SIZES[size], THUMB_SIZES[size]), Image.Resampling.BICUBIC)
        finally:
            self.decode_slots.release()
        if big:
            release_memory()
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        with self._thumb_lock:
            self._thumbs[key] = (stamp, data)
            self._thumbs.move_to_end(key)
            while len(self._thumbs) > 1024:
                self._thumbs.popitem(last=False)
        return data

    @_answers
    def summary(self) -> dict:
        """What the page shows before the first upload: the store's summary (images, generators, splits,
        groups, indexes), the heads and the number of neighbours shown by default."""
        from item.store import store_info

        with self.store_lock:
            d = store_info(self.config.store)
        d["generators"] = list(self.facets.get("generator", []))
        d["splits"] = list(self.facets.get("split", []))
        heads = [{"name": n, "kind": i.get("kind"), "recipe": i["recipe"], "threshold": float(i["threshold"]),
                  "random_weights": bool(i.get("random_weights"))} for n, _, i in self.heads]
        return {"store": d, "heads": heads, "k": self.config.k, "random_weights": self.random_weights}

    @_answers
    def health(self) -> dict:
        """Store, heads, models and indexes: what this server loaded at start-up."""
        r = self.reader
        return {
            "status": "ok",
            "store": {"path": str(r.root), "n_images": r.n_images, "n_ok": int(self.ok_rows.size),
                      "embed_dim": r.embed_dim, "recipe": r.compat.get("recipe"), "fingerprint": r.fingerprint,
                      "random_weights": r.random_weights},
            "heads": [{"name": n, "kind": i.get("kind"), "recipe": i["recipe"], "threshold": i["threshold"],
                       "threshold_from": i.get("threshold_from", ""), "random_weights": bool(i.get("random_weights"))}
                      for n, _, i in self.heads],
            "models": {**self.models.info(), "device": str(self.models.device),
                       "precision": getattr(self.models, "precision", None),
                       "warm_up_seconds": getattr(self.models, "warm_up_seconds", None)},
            "indexes": self.index_status,
            "neighbors": {on: (f"index {ix.kind}" if (ix := self.indexes.get(on)) else "exact")
                          for on in ("image", "misalignment")},
            "limits": {"max_upload_bytes": self.config.max_upload_bytes, "max_pixels": self.max_pixels,
                       "max_k": MAX_K, "k": self.config.k,
                       "max_pending": self.config.max_pending},
            "random_weights": self.random_weights,
        }


__all__ = ["DEFAULT_UPLOAD_PIXELS", "ItemError", "RequestError", "ServeConfig", "Service", "check_token", "release_memory",
           "vote"]
