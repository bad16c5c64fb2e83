"""One definition of every object ITEM hands to other programs, and the JSON Schema of each.

The command line's ``--json``, the Python API (``item.predict``, ``item.evaluate``, ...) and
``item serve``'s JSON API build their objects with the functions here, so one thing has one name
everywhere: an object's score cos(crop_emb, noun_emb) is ``alignment`` wherever it appears, the
nearest stored images are ``neighbors``, a generator's row in a vote is ``generator`` / ``votes`` /
``share`` / ``mean_similarity`` / ``top1``.

Shared objects (``OBJECTS``): ``object``, ``neighbour``, ``generator_vote``, ``verdict``,
``prediction``, ``eval_row``, ``store_summary``, ``check_result``. Documents (``DOCUMENTS``): what
each command's ``--json`` and each API route returns, built from those objects. Every document
carries ``random_weights`` (True when any model or head behind it has random weights).

The schemas are published as ``docs/schemas/NAME.json`` (``python -m item.outputs docs/schemas``
writes them; a test checks that the files equal what this module defines) and every ``--json``
output and API response is validated against its schema in the tests (``validate``).

A new command adds its object in three steps: a ``_doc(...)`` entry in ``DOCUMENTS`` (reusing the
shared objects through ``_ref``), ``python -m item.outputs docs/schemas``, and a test that runs the
command with ``--json`` and calls ``validate(doc, NAME)``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

#: The first line of every result computed with random weights (text); JSON carries ``random_weights``.
RANDOM_WEIGHTS_LINE = ("RANDOM WEIGHTS: features come from randomly initialised models; these numbers are not "
                       "detection accuracy")


class RandomWeightsWarning(UserWarning):
    """What the Python API warns with when a result comes from random weights."""


def warn_random_weights(random_weights: bool, stacklevel: int = 3) -> None:
    """The Python API's RANDOM WEIGHTS line: a warning (shown once per call site in a notebook)."""
    if random_weights:
        import warnings

        warnings.warn(RANDOM_WEIGHTS_LINE, RandomWeightsWarning, stacklevel=stacklevel)


SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE = "https://item-detect.example/schemas/"  # an identifier only; nothing is fetched from it

# -- field types -----------------------------------------------------------------------------------
_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}
_PROB = {"type": "number", "minimum": 0, "maximum": 1}
_COS = {"type": "number", "minimum": -1, "maximum": 1}


def _null(t: dict) -> dict:
    return {"anyOf": [t, {"type": "null"}]}


def _arr(items: dict) -> dict:
    return {"type": "array", "items": items}


def _ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


def _obj(props: dict, required=None, *, closed: bool = True, description: str = "") -> dict:
    out = {"type": "object", "properties": props, "required": list(props if required is None else required),
           "additionalProperties": not closed}
    if description:
        out["description"] = description
    return out


# -- shared objects ------------------------------------------------------------------------------
OBJECT_PROPS = {
    "noun": _STR, "grounded": _BOOL,
    "box": _null({"type": "array", "items": _NUM, "minItems": 4, "maxItems": 4}),
    "alignment": _null(_COS), "detector_score": _NUM, "worst": _BOOL,
}
NEIGHBOUR_PROPS = {"id": _STR, "row": _INT, "path": _STR, "label": _STR, "generator": _STR, "split": _STR,
                   "caption": _STR, "similarity": _COS}
VOTE_PROPS = {"generator": _STR, "votes": _INT, "share": _PROB, "mean_similarity": _COS, "top1": _INT}
VERDICT_PROPS = {"head": _STR, "recipe": _STR, "kind": _STR, "p_fake": _PROB, "label": {"enum": ["real", "fake"]},
                 "threshold": _NUM, "threshold_from": _STR, "random_weights": _BOOL}
PREDICTION_PROPS = {
    "path": _STR, "id": _STR, "status": _STR, "reason": _STR,
    "p_fake": _null(_PROB), "label": _null({"enum": ["real", "fake"]}), "threshold": _null(_NUM),
    "threshold_from": _STR, "head": _STR,
    "caption": _null(_STR), "caption_source": _null(_STR), "global_alignment": _null(_COS),
    "width": _null(_INT), "height": _null(_INT), "objects": _arr(_ref("object")), "random_weights": _BOOL,
}
EVAL_ROW_PROPS = {"head": _STR, "generator": _STR, "reals": _STR, "n_real": _INT, "n_fake": _INT,
                  **{k: _null(_NUM) for k in ("acc", "real_acc", "fake_acc", "ap", "auroc", "acc_05",
                                              "real_acc_05", "fake_acc_05", "oracle_acc")}}
STORE_SUMMARY_PROPS = {
    "store": _STR, "state": _STR, "n_images": _INT, "n_ok": _INT, "n_skipped": _INT, "n_objects": _INT,
    "n_grounded": _INT, "n_aliases": _INT, "n_shards": _INT, "schema_version": _INT, "package_version": _STR,
    "embed_dim": _INT, "misalignment_dim": _INT, "recipe": _STR, "models": {"type": "object"},
    "extractors": {"type": "object"}, "identity": {"type": "object"}, "overlay": {"type": "object"},
    "groups": _arr(_obj({"generator": _STR, "label": _STR, "split": _STR, "n": _INT})),
    "generator_rule": _STR, "n_unknown_generator": _INT,
    "generators": _arr(_STR), "splits": _arr(_STR), "indexes": _arr({"type": "object"}), "random_weights": _BOOL,
}
CHECK_RESULT_PROPS = {"ok": _BOOL, "state": _STR, "problems": _arr(_STR), "warnings": _arr(_STR),
                      "random_weights": _BOOL}

OBJECTS = {
    "object": _obj(OBJECT_PROPS, description="One noun of an image's caption: its box in pixels (x0, y0, x1, y1), "
                   "the detector's score and alignment = cos(crop_emb, noun_emb), null when not grounded; worst: in "
                   "the lowest third of the image's grounded objects."),
    "neighbour": _obj(NEIGHBOUR_PROPS, description="A stored image near a query; similarity is the cosine, "
                      "clamped to [-1, 1]."),
    "generator_vote": _obj(VOTE_PROPS, description="A known generator (or 'real') in the vote of neighbours: "
                           "votes (neighbours in this group), share of all neighbours, their mean similarity, "
                           "top1 (queries whose nearest neighbour is in this group)."),
    "verdict": _obj(VERDICT_PROPS, description="One head's verdict on one image."),
    "prediction": _obj(PREDICTION_PROPS, required=["path", "id", "status", "reason", "p_fake", "label", "threshold",
                                                   "caption", "global_alignment", "objects", "random_weights"],
                       description="One image scored by a head (skipped images: status 'skipped', reason, "
                                   "nulls)."),
    "eval_row": _obj(EVAL_ROW_PROPS, required=[k for k in EVAL_ROW_PROPS if k != "head"],
                     description="One generator's metrics (or the 'mean' row); acc* at the head's validation "
                                 "threshold, *_05 at 0.5, oracle_acc chosen on the test labels."),
    "store_summary": _obj(STORE_SUMMARY_PROPS, required=["store", "state", "n_images", "n_ok", "n_skipped",
                                                         "n_objects", "random_weights"], closed=False,
                          description="What a store holds (item store info --json; the page's empty state)."),
    "check_result": _obj(CHECK_RESULT_PROPS, required=["ok", "problems", "warnings", "random_weights"],
                         closed=False, description="A check's verdict: ok, the problems that fail it, warnings."),
}

#: Keys of the objects that more than one surface emits, in their order.
OBJECT_KEYS = tuple(OBJECT_PROPS)
NEIGHBOUR_KEYS = tuple(NEIGHBOUR_PROPS)
VOTE_KEYS = tuple(VOTE_PROPS)
PREDICTION_KEYS = tuple(PREDICTION_PROPS)
EVAL_ROW_KEYS = tuple(EVAL_ROW_PROPS)


def _doc(props: dict, required=None, closed: bool = True, description: str = "") -> dict:
    props = {**props, "random_weights": _BOOL}
    req = list(props) if required is None else list(dict.fromkeys([*required, "random_weights"]))
    return _obj(props, req, closed=closed, description=description)


_VIEW_EXTRA = {"heads": _arr(_ref("verdict")), "neighbors": _arr(_ref("neighbour")),
               "neighbors_misalignment": _arr(_ref("neighbour")),
               "generators": _arr(_obj({"on": {"enum": ["image", "misalignment"]}, "k": _INT,
                                        "table": _arr(_ref("generator_vote"))})),
               "in_store": _BOOL, "warnings": _arr(_STR)}

DOCUMENTS = {
    # the command line
    "cli_predict": _doc({"warnings": _arr(_STR), "precision": _STR, "rows": _arr(_ref("prediction"))},
                        description="item predict --json"),
    "cli_neighbors": _doc({"query": _STR, "kind": {"enum": ["row", "file"]}, "id": _STR, "row": _INT,
                           "stored_row": _INT, "path": _STR, "caption": _STR, "models_loaded": _arr(_STR),
                           "on": _STR, "method": _STR, "k": _INT, "excluded": _arr(_INT),
                           "neighbors": _arr(_ref("neighbour")), "warnings": _arr(_STR)},
                          required=["query", "kind", "id", "on", "method", "k", "neighbors", "warnings"],
                          description="item neighbors DIR QUERY --json"),
    "cli_generator_profile": _doc({"generator": _STR, "n_queries": _INT, "k": _INT, "on": _STR,
                                   "table": _arr(_ref("generator_vote"))},
                                  description="item neighbors DIR --generator NAME --json"),
    "cli_eval": _doc({"warnings": _arr(_STR), "split": _STR, "thresholds": {"type": "object"},
                      "heads": _arr(_STR), "rows": _arr(_ref("eval_row")),
                      "join": _obj({"by": _STR, "n_joined": _INT,
                                    "stores": _arr(_obj({"store": _STR, "n_ok": _INT, "dropped": _INT}))}),
                      "backbones": {"type": "object", "additionalProperties": _arr(_STR)}},
                     required=["warnings", "split", "thresholds", "heads", "rows"],
                     description="item eval --json (join and backbones: with several stores, one per backbone)"),
    "cli_featurize": _doc({"n_inputs": _INT, "n_already_done": _INT, "n_duplicates": _INT, "n_written": _INT,
                           "n_skipped": _INT, "skipped_by_reason": {"type": "object"}, "seconds": _NUM,
                           "images_per_second": _NUM, "device": _STR, "precision": _STR},
                          required=["n_inputs", "n_written", "n_skipped", "skipped_by_reason"], closed=False,
                          description="item featurize --json: the run's summary (also appended to the manifest's "
                                      "runs)"),
    "cli_train": _doc({"kind": _STR, "recipe": _STR, "threshold": _NUM, "feature_size": _INT},
                      required=["kind", "recipe", "threshold", "feature_size"], closed=False,
                      description="item train --json: the head's metadata (head.json)"),
    "cli_store_info": {**OBJECTS["store_summary"], "description": "item store info --json"},
    "cli_store_validate": {**OBJECTS["check_result"], "description": "item store validate --json"},
    "cli_store_split": _doc({"overlay_version": _INT, "overlay_digest": _STR, "n_changed": _INT,
                             "counts": _arr({"type": "object"})}, description="item store split --json"),
    "cli_store_annotate": _doc({"overlay_version": _INT, "overlay_digest": _STR, "n_rows": _INT, "n_matched": _INT,
                                "n_changed": _INT, "changed_by_field": {"type": "object"},
                                "matched_by": {"type": "object"}, "not_in_store": _arr({"type": "object"}),
                                "warnings": _arr(_STR)}, description="item store annotate --json"),
    "cli_protocols": {"type": "array", "description": "item protocols --json: the registered benchmarks",
                      "items": _obj({"name": _STR, "title": _STR, "test sets": _INT, "trains": _STR,
                                     "anchors read": _INT})},
    "cli_protocol": _obj({"name": _STR, "title": _STR}, closed=False, description="item protocols NAME --json"),
    "cli_reproduce_check": _obj({"protocol": _STR, "root": _STR, "splits": _arr(_STR), "layout": _STR,
                                 "layout_rule": _STR, "sets": {"type": "object"},
                                 "missing": _arr(_STR), "unexpected": _arr({"type": "object"}),
                                 "hints": _arr(_STR), "counts": _arr(_STR), "unused_images": _INT},
                                description="item reproduce --check-only --json: the layout check (no model runs)"),
    "cli_reproduce": _doc({"format": {"const": "item-reproduce"}, "benchmark": _STR, "rows": _arr({"type": "object"}),
                           "mean": {"type": "object"}, "heads": {"type": "object"}},
                          required=["format", "benchmark", "rows", "mean", "heads"], closed=False,
                          description="item reproduce --json (and WORK/results.json)"),
    "cli_robustness": _doc({"format": {"const": "item-robustness"}, "head": _STR, "threshold": _NUM,
                            "results": {"type": "object"}},
                           required=["format", "head", "threshold", "results"], closed=False,
                           description="item robustness --json (and WORK/robustness.json)"),
    "cli_check": _doc({"passed": _BOOL, "device": _STR, "precision": _STR, "identity": {"type": "object"}, "models": {"type": "object"},
                       "checks": _arr(_obj({"name": _STR, "passed": _null(_BOOL), "value": _null(_NUM), "bound": _NUM,
                                            "op": _STR, "what": _STR, "skipped": _STR},
                                           required=["name", "passed", "value", "bound"], closed=False)),
                       "samples": _arr({"type": "object"})},
                      required=["passed", "checks"], closed=False,
                      description="item check --json: one entry a check, with its measured value and bound "
                                  "(passed and value null where the check was skipped, with the reason)"),
    "cli_audit": _doc({"store": _STR, "split": _STR, "n_images": _INT, "per_class": {"type": "object"},
                       "per_generator": {"type": "object"}, "sources": {"type": "object"},
                       "trivial_cue": _obj({"test_acc": _null(_NUM), "test_auroc": _null(_NUM)},
                                           required=["test_acc", "test_auroc"], closed=False),
                       "verdict": _STR},
                      required=["store", "split", "n_images", "trivial_cue", "verdict"], closed=False,
                      description="item audit --json: file cues per class and generator, and the trivial-cue "
                                  "head's test accuracy and AUROC"),
    # item serve's JSON API
    "api_predict": _doc({**PREDICTION_PROPS, **_VIEW_EXTRA},
                        required=[*OBJECTS["prediction"]["required"], *_VIEW_EXTRA],
                        description="POST /api/predict: a prediction with every head's verdict, neighbours and "
                                    "the generators' vote"),
    "api_row_view": _doc({**PREDICTION_PROPS, **_VIEW_EXTRA, "row": _INT,
                          "stored": _obj({"path": _STR, "label": _STR, "generator": _STR, "split": _STR})},
                         required=[*OBJECTS["prediction"]["required"], *_VIEW_EXTRA, "row", "stored"],
                         description="GET /api/rows/{id}: a stored image's view, from its stored embeddings"),
    "api_neighbors": _doc({"id": _STR, "on": _STR, "k": _INT, "method": _STR, "neighbors": _arr(_ref("neighbour")),
                           "generators": _arr(_ref("generator_vote"))}, description="GET /api/neighbors"),
    "api_rows": _doc({"total": _INT, "offset": _INT, "limit": _INT, "facets": {"type": "object"},
                      "rows": _arr(_obj({k: v for k, v in NEIGHBOUR_PROPS.items() if k != "similarity"}))},
                     description="GET /api/rows"),
    "api_summary": _doc({"store": _ref("store_summary"), "heads": _arr({"type": "object"}), "k": _INT},
                        description="GET /api/summary: what the page shows before the first upload"),
    "api_health": _doc({"status": _STR, "store": {"type": "object"}, "heads": _arr({"type": "object"}),
                        "models": {"type": "object"}, "indexes": _arr({"type": "object"}),
                        "neighbors": {"type": "object"}, "limits": {"type": "object"}},
                       required=["status", "store", "heads", "models", "limits"], closed=False,
                       description="GET /api/health"),
    "api_error": _obj({"error": _STR, "reason": _STR}, description=(
        "Any 4xx/5xx answer of the API, the framework's own (404, 405, a malformed body) included. `reason` is "
        "one word: e.g. busy (503: all --max-pending upload places are taken; the body was not read), "
        "store-changed (503, on every endpoint: the store on disk is no longer the one the server loaded, "
        "restart it), upload-too-large (413), token-required (401), unknown-host (421), cross-origin (403), "
        "not-found (404), method-not-allowed (405), bad-request (400), invalid-request (422), or an image's "
        "skip reason (415, 413 too-large).")),
}


def schema(name: str) -> dict:
    """The JSON Schema (draft 2020-12) of one shared object or document, self-contained."""
    from item.errors import InputError

    if name in OBJECTS:
        body = OBJECTS[name]
    elif name in DOCUMENTS:
        body = DOCUMENTS[name]
    else:
        raise InputError(f"unknown output schema {name!r}. Available: {', '.join([*OBJECTS, *DOCUMENTS])}")
    return {"$schema": SCHEMA_DIALECT, "$id": f"{SCHEMA_BASE}{name}.json", "title": name, **body,
            "$defs": {k: v for k, v in OBJECTS.items() if k != name}}


def schema_names() -> list[str]:
    return [*OBJECTS, *DOCUMENTS]


def write_schemas(folder) -> list[Path]:
    """Write every schema as ``folder/NAME.json`` (the published copies in docs/schemas)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in schema_names():
        p = folder / f"{name}.json"
        p.write_text(json.dumps(schema(name), indent=2) + "\n", encoding="utf-8")
        out.append(p)
    return out


def validate(doc, name: str) -> None:
    """Raise ``jsonschema.ValidationError`` when ``doc`` (parsed JSON) does not fit schema ``name``.

    Needs the ``jsonschema`` package (the ``dev`` extra)."""
    import jsonschema

    jsonschema.Draft202012Validator(schema(name)).validate(doc)


# -- builders: what every surface calls ------------------------------------------------------------
def clamp_cos(x) -> float:
    """A cosine computed in float32 can come out as 1.0000001: clamp to [-1, 1] (NaN stays NaN)."""
    x = float(x)
    return x if math.isnan(x) else min(1.0, max(-1.0, x))


def objects(nouns, boxes, grounded, detector, alignment) -> list[dict]:
    """Per noun an ``object``; the lowest third (at least one) of the grounded objects' alignments is
    marked ``worst``. ``alignment``: cos(crop_emb, noun_emb) per noun (ignored where not grounded)."""
    out = []
    for i, noun in enumerate(nouns):
        g = bool(grounded[i])
        out.append({"noun": str(noun), "grounded": g,
                    "box": [round(float(v), 1) for v in boxes[i]] if g else None,
                    "alignment": clamp_cos(alignment[i]) if g else None,
                    "detector_score": round(float(detector[i]), 4), "worst": False})
    scored = sorted((o for o in out if o["alignment"] is not None), key=lambda o: o["alignment"])
    for o in scored[:max(1, len(scored) // 3)]:
        o["worst"] = True
    return out


def neighbour(*, id, row, path, label, generator, split, caption, similarity) -> dict:  # noqa: A002
    return {"id": str(id), "row": int(row), "path": str(path), "label": str(label), "generator": str(generator),
            "split": str(split), "caption": str(caption), "similarity": clamp_cos(similarity)}


def neighbour_from_hit(hit: dict) -> dict:
    """A ``neighbour`` from a store search hit (``item.store.index.hit_rows``)."""
    return neighbour(**{k: hit.get(k, "") for k in NEIGHBOUR_KEYS})


def vote_group(label: str, generator: str) -> str:
    """A neighbour's vote: reals are one group whatever their source; fakes vote by generator (a fake whose
    source named none under ``unknown``, as everywhere: :data:`item.manifests.UNKNOWN_GENERATOR`)."""
    from item.manifests import generator_name

    if str(label) == "real":
        return "real"
    return generator_name(generator)


def vote_table(per_query: list[list[dict]]) -> list[dict]:
    """``generator_vote`` rows from the neighbours of one or more queries (each a list of dicts with
    label, generator, similarity, nearest first), most votes first."""
    count, sims, top1 = defaultdict(int), defaultdict(float), defaultdict(int)
    for hits in per_query:
        for j, h in enumerate(hits):
            g = vote_group(h["label"], h["generator"])
            count[g] += 1
            sims[g] += float(h["similarity"])
            if j == 0:
                top1[g] += 1
    n = max(1, sum(count.values()))
    return sorted(({"generator": g, "votes": count[g], "share": count[g] / n,
                    "mean_similarity": clamp_cos(sims[g] / count[g]), "top1": top1[g]} for g in count),
                  key=lambda d: (-d["votes"], -d["mean_similarity"]))


def prediction(*, path, id, status, reason="", random_weights=False, **fields) -> dict:  # noqa: A002
    """A ``prediction`` with every key present (None where a skipped image has no value)."""
    out = {k: None for k in PREDICTION_KEYS}
    out.update({"path": str(path), "id": str(id), "status": str(status), "reason": str(reason or ""),
                "threshold_from": "", "head": "", "objects": [], "random_weights": bool(random_weights)})
    unknown = set(fields) - set(PREDICTION_KEYS)
    if unknown:
        raise ValueError(f"not prediction fields: {sorted(unknown)}")
    out.update(fields)
    if out["global_alignment"] is not None:
        out["global_alignment"] = clamp_cos(out["global_alignment"])
    return out


def strict_json(obj):
    """NaN / infinity -> null (so any JSON reader parses it), numpy scalars and arrays -> Python."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if np is not None and isinstance(obj, np.generic):
        obj = obj.item()
    if np is not None and isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


if __name__ == "__main__":  # python -m item.outputs docs/schemas
    import sys

    for p in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"):
        print(p)
