"""Names and layout of the on-disk store: the only place HDF5 dataset and attribute names appear.

A store is a directory::

    DIR/manifest.json            what the store holds; the only file ever rewritten (atomically)
    DIR/writer.lock              flock(2): shared by every writer and indexer, exclusive for --overwrite
    DIR/commit.lock              flock(2) held for a commit's rename + manifest replace only
    DIR/index.lock               flock(2) held by `item store index`
    DIR/writers/ID.lock          flock(2) held by writer ID for its run; JSON naming the holder
    DIR/shards/shard-ID-NNNNNN.h5  immutable HDF5 shards of writer ID, each a contiguous block of image rows
                                 (stores written before several writers were allowed: shard-NNNNNN.h5)
    DIR/index/ON-KIND.BUILD.faiss     FAISS index over image embeddings or misalignment vectors
    DIR/index/ON-KIND.BUILD.rows.npy  (count,) int64 store rows of the index's vectors, in index order
    DIR/index/ON-KIND.json       sidecar: kind, parameters, count, the shards it covers, and the names
                                 and checksums of its two data files (BUILD differs per build; sidecars
                                 that name no files mean ON-KIND.faiss and ON-KIND.rows.npy)

A shard has three groups: ``images`` (one row per distinct file content), ``objects`` (one row
per noun of each image, ragged: image row ``i`` owns objects
``object_start[i] : object_start[i] + object_count[i]`` of its shard) and ``aliases`` (other paths
whose bytes equal an already stored image).
"""

from __future__ import annotations

from dataclasses import dataclass

# 2: image column caption_encoded; identity keys in compat. 3: identity keys caption_decoding and
# box_selection; file cues (file_size, jpeg_quality, exif) per image; compat key alignment (see
# versions.MIGRATIONS)
SCHEMA_VERSION = 3
STORE_FORMAT = "item-store"

MANIFEST = "manifest.json"
LOCK_FILE = "writer.lock"
SHARD_DIR = "shards"
INDEX_DIR = "index"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".h5"
PARTIAL_SUFFIX = ".partial"
COMMIT_LOCK = "commit.lock"
INDEX_LOCK = "index.lock"
WRITERS_DIR = "writers"
LOCK_SUFFIX = ".lock"
OVERWRITE_PREFIX = ".overwrite-"  # a folder holding what an --overwrite is removing
# Every shard name a manifest may list: a plain file name inside shards/ (no folder, no "..").
SHARD_NAME_PATTERN = r"shard-(?:[0-9a-f]{6,32}-)?[0-9a-z]{1,32}\.h5"

# Groups
G_IMAGES = "images"
G_OBJECTS = "objects"
G_ALIASES = "aliases"

# Image columns
ID = "id"
PATH = "path"
LABEL = "label"
GENERATOR = "generator"
SPLIT = "split"
STATUS = "status"
REASON = "reason"
CAPTION = "caption"
CAPTION_SOURCE = "caption_source"
CAPTION_TRUNCATED = "caption_truncated"
CAPTION_ENCODED = "caption_encoded"  # the text CLIP encoded (the caption after clean-up)
NOUNS = "nouns"
WIDTH = "width"
HEIGHT = "height"
FORMAT = "format"
PERTURBATION = "perturbation"
# File cues recorded at decode time (schema 3), what `item audit` reads: UNKNOWN_CUE when not known.
FILE_SIZE = "file_size"  # bytes of the file as read
JPEG_QUALITY = "jpeg_quality"  # IJG quality (1..100) best fitting the luminance quantisation table; UNKNOWN_CUE if not JPEG
EXIF = "exif"  # 1 when the file carries EXIF data, 0 when not
IMAGE_EMB = "image_emb"
CAPTION_EMB = "caption_emb"
MISALIGNMENT = "misalignment"
OBJECT_START = "object_start"
OBJECT_COUNT = "object_count"

# Object columns
OBJ_IMAGE = "image"
NOUN = "noun"
BOX = "box"
SCORE = "score"
GROUNDED = "grounded"
CROP_EMB = "crop_emb"
NOUN_EMB = "noun_emb"

# Alias columns
ALIAS_ID = "id"
ALIAS_PATH = "path"
ALIAS_LABEL = "label"
ALIAS_GENERATOR = "generator"
ALIAS_SPLIT = "split"

# Shard attributes
A_FORMAT = "format"
A_SCHEMA = "schema_version"
A_PACKAGE = "package_version"
A_COMPLETE = "complete"
A_N_IMAGES = "n_images"
A_N_OBJECTS = "n_objects"
A_N_ALIASES = "n_aliases"
A_EMBED_DIM = "embed_dim"
A_MISALIGNMENT_DIM = "misalignment_dim"
A_COMPAT = "compat_json"
A_CREATED = "created"
A_WRITER = "writer_id"
A_NAME = "shard_name"  # the file name the shard was committed under (absent in shards written before issue 21)

STATUS_OK = "ok"
STATUS_SKIPPED = "skipped"
STATUS_DUPLICATE = "duplicate"  # export only: an alias path of a stored image
LABELS = ("real", "fake", "unknown")

EMB_DTYPE = "float16"  # stored embeddings: L2-normalised in float32, then cast
VEC_DTYPE = "float32"  # misalignment vectors and boxes


@dataclass(frozen=True)
class Column:
    """One dataset of a group: name, kind and, for vectors, which width it takes."""

    name: str
    kind: str  # 'str' | 'int32' | 'int64' | 'float32' | 'bool' | 'emb' (embed_dim float16) | 'vec' (misalignment_dim float32) | 'box'


IMAGE_COLUMNS = (
    Column(ID, "str"),
    Column(PATH, "str"),
    Column(LABEL, "str"),
    Column(GENERATOR, "str"),
    Column(SPLIT, "str"),
    Column(STATUS, "str"),
    Column(REASON, "str"),
    Column(CAPTION, "str"),
    Column(CAPTION_SOURCE, "str"),
    Column(CAPTION_TRUNCATED, "bool"),
    Column(CAPTION_ENCODED, "str"),
    Column(NOUNS, "str"),
    Column(WIDTH, "int32"),
    Column(HEIGHT, "int32"),
    Column(FORMAT, "str"),
    Column(PERTURBATION, "str"),
    Column(FILE_SIZE, "int64"),
    Column(JPEG_QUALITY, "int32"),
    Column(EXIF, "int32"),
    Column(IMAGE_EMB, "emb"),
    Column(CAPTION_EMB, "emb"),
    Column(MISALIGNMENT, "vec"),
    Column(OBJECT_START, "int64"),
    Column(OBJECT_COUNT, "int32"),
)

OBJECT_COLUMNS = (
    Column(OBJ_IMAGE, "int64"),
    Column(NOUN, "str"),
    Column(BOX, "box"),
    Column(SCORE, "float32"),
    Column(GROUNDED, "bool"),
    Column(CROP_EMB, "emb"),
    Column(NOUN_EMB, "emb"),
)

ALIAS_COLUMNS = (
    Column(ALIAS_ID, "str"),
    Column(ALIAS_PATH, "str"),
    Column(ALIAS_LABEL, "str"),
    Column(ALIAS_GENERATOR, "str"),
    Column(ALIAS_SPLIT, "str"),
)

METADATA_COLUMNS = tuple(c.name for c in IMAGE_COLUMNS if c.kind not in ("emb", "vec"))
VECTOR_COLUMNS = (IMAGE_EMB, CAPTION_EMB, MISALIGNMENT)

#: Columns added after schema 1: shards written before read them as the named older column (schema 1 stores
#: encoded the caption as it was, so their encoded caption is the caption).
COLUMN_SINCE = {CAPTION_ENCODED: 2, FILE_SIZE: 3, JPEG_QUALITY: 3, EXIF: 3}
COLUMN_FALLBACK = {CAPTION_ENCODED: CAPTION}
#: Columns added later that no older column stands for: shards written before read them as this constant.
UNKNOWN_CUE = -1
COLUMN_DEFAULT = {FILE_SIZE: UNKNOWN_CUE, JPEG_QUALITY: UNKNOWN_CUE, EXIF: UNKNOWN_CUE}
#: The file cues `item audit` reads from the store (UNKNOWN_CUE in rows of shards older than schema 3).
AUDIT_COLUMNS = (FILE_SIZE, JPEG_QUALITY, EXIF)

# Keys of manifest['compat']: rows that differ in any of them never share a store. The identity keys
# (from clip_activation on) say what decides the numbers beyond the models' names; see
# item.featurize.identity for what each means.
IDENTITY_KEYS = ("clip_activation", "crop_mode", "caption_decoding", "caption_cleanup", "nouns_version", "noun_prompt",
                 "box_threshold", "text_threshold", "ground_input", "open_clip_version", "transformers_version",
                 "device_class", "precision", "box_selection")
COMPAT_KEYS = ("clip_model", "clip_pretrained", "embed_dim", "preprocess_hash", "captioner", "grounder",
               "recipe", "misalignment_dim", "random_weights", "perturbation", "max_objects",
               "alignment") + IDENTITY_KEYS
#: ``alignment``: how the store's fakes were re-encoded before featurizing (``item reproduce --align-format``,
#: e.g. 'jpeg:96'); '' for files as given. Stores older than schema 3 were never aligned: ''.
#: Identity keys that ``--allow-mixed`` may override: the same models, weights and texts computed by another
#: library release, on another device class or in another precision differ at rounding level (fp16 against
#: fp32: about 1e-3 per embedding), not in what they mean. Everything else (activation, crops, clean-up,
#: nouns, prompt, thresholds, input size) changes what is computed and is never mixed.
ALLOW_MIXED_KEYS = ("open_clip_version", "transformers_version", "device_class", "precision")
#: Of ALLOW_MIXED_KEYS, the ones that may differ only where no captioner or grounder ran (captions given,
#: no grounding): fp16 against fp32 can flip a greedy or beam caption token and a box past its threshold,
#: which changes what is computed, not its rounding. CLIP alone differs at rounding level.
DEVICE_KEYS = ("device_class", "precision")
#: The compat value of "captioner" / "grounder" when none ran.
NO_MODEL = "none"


def models_ran(compat: dict) -> bool:
    """Whether a captioner or a grounder ran under identity ``compat`` (a key it lacks counts as ran)."""
    return any(compat.get(k, "") != NO_MODEL for k in ("captioner", "grounder"))


def mixable_keys(*compats: dict) -> tuple:
    """The identity keys ``--allow-mixed`` may let differ between ``compats``: ALLOW_MIXED_KEYS, less
    DEVICE_KEYS when a captioner or grounder ran under any of them."""
    ran = any(models_ran(c) for c in compats)
    return tuple(k for k in ALLOW_MIXED_KEYS if not (ran and k in DEVICE_KEYS))


def why_not_mixable(keys, *compats: dict) -> str:
    """One sentence saying why the DEVICE_KEYS among ``keys`` cannot be mixed ('' when none is refused)."""
    held = [k for k in keys if k in DEVICE_KEYS and k not in mixable_keys(*compats)]
    if not held:
        return ""
    return (f"{' and '.join(held)} may differ only where no captioner or grounder ran (captions given, "
            "--grounder none): fp16 or bf16 against fp32 can change a caption's words and which boxes pass a "
            "threshold")
#: What a store written before an identity key existed records for it (schema 1: every key but
#: caption_decoding; schema 2: box_selection; schema-2 stores record the legacy greedy caption decoding,
#: versions.migrate_compat).
UNRECORDED = "unrecorded"

# Index sidecar keys
INDEX_ON = ("image", "misalignment")


def shard_name(number: int, writer_id: str | None = None) -> str:
    """Name of a writer's ``number``-th shard (``shard-ID-NNNNNN.h5``; ``shard-NNNNNN.h5`` without a writer)."""
    return f"{SHARD_PREFIX}{writer_id + '-' if writer_id else ''}{number:06d}{SHARD_SUFFIX}"


def shard_writer(name: str) -> str | None:
    """The writer id in a shard (or partial shard) file name, None for an old single-writer name."""
    core = name.lstrip(".")
    if core.endswith(PARTIAL_SUFFIX):
        core = core[:-len(PARTIAL_SUFFIX)]
    parts = core[len(SHARD_PREFIX):].split("-")
    return parts[0] if core.startswith(SHARD_PREFIX) and len(parts) == 2 else None


def column_dtype(kind: str):
    """numpy dtype of a column kind (strings are h5py variable-length UTF-8)."""
    import h5py
    import numpy as np

    return {
        "str": h5py.string_dtype("utf-8"),
        "int32": np.dtype("int32"),
        "int64": np.dtype("int64"),
        "float32": np.dtype("float32"),
        "bool": np.dtype("bool"),
        "emb": np.dtype(EMB_DTYPE),
        "vec": np.dtype(VEC_DTYPE),
        "box": np.dtype(VEC_DTYPE),
    }[kind]


def column_width(kind: str, embed_dim: int, misalignment_dim: int) -> int | None:
    """Second dimension of a column, None for 1-D columns."""
    return {"emb": embed_dim, "vec": misalignment_dim, "box": 4}.get(kind)
