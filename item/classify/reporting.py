"""Assemble the HTML report of heads evaluated on a store."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from item.classify.features import store_features
from item.classify.report import project_2d, render_report
from item.classify.train import evaluate
from item.store import StoreReader
from item.store import schema


def describe_model(spec: dict) -> str:
    """One readable line for a model record of the store manifest."""
    if "model" in spec:  # CLIP
        text = f"{spec['model']} / {spec.get('pretrained') or 'no pretrained tag'}, {spec.get('embed_dim')}-d, " \
               f"weights {spec.get('weights')}"
    elif "id" in spec:
        text = str(spec["id"]) + (f" @ {spec['revision']}" if spec.get("revision") else "") + \
            (f", weights sha256 {spec['weights_sha256'][:12]}" if spec.get("weights_sha256") else "")
        if "box_threshold" in spec:
            text += f", thresholds box {spec['box_threshold']} / text {spec['text_threshold']}"
    else:
        text = ", ".join(f"{k} {v}" for k, v in spec.items() if not isinstance(v, (dict, list)))
    if spec.get("random_weights"):
        text += " (RANDOM WEIGHTS)"
    return text


def write_report(store, heads: list, out, split: str | None = "test", map_points: int = 5000, *,
                 reals: dict | None = None, title: str | None = None, extra_sections=None,
                 results: dict | None = None, audit: dict | None = None) -> dict:
    """Evaluate ``heads`` on ``split`` and write one self-contained HTML file to ``out``.

    reals: the real pairing (see ``evaluate``); extra_sections: [(heading, trusted HTML)] placed
    before the evaluation tables (a benchmark's comparison table, robustness plots); results: the
    output of that very ``evaluate`` call when the caller already has it; audit: ``audit_store``'s
    result when the caller has it (otherwise the split is audited here, its train split from the same store).
    """
    if results is None:
        results = evaluate(store, heads, split, reals=reals)
    first = next(iter(results.values()))
    with StoreReader(store) as reader:
        rows = first["rows"]
        if rows.size > map_points:
            rows = np.sort(np.random.default_rng(0).choice(rows, map_points, replace=False))
        feats = store_features(reader, first["info"]["recipe"], rows)
        meta = reader.metadata([schema.LABEL, schema.GENERATOR])
        names = [("real" if lab == "real" else g) for lab, g in zip(meta[schema.LABEL][rows],
                                                                      meta[schema.GENERATOR][rows])]
        provenance = {
            "store": str(Path(store).resolve()), "store fingerprint": reader.fingerprint,
            "split": split or "all labelled rows",
            **{f"model: {role}": describe_model(spec) for role, spec in reader.models.items()
               if isinstance(spec, dict) and role != "spec"},
            **({"model spec": dict(reader.models["spec"])} if isinstance(reader.models.get("spec"), dict) else {}),
            "rows in the store": f"{reader.counts['n_ok']} ok, {reader.n_skipped} skipped, "
                                 f"{reader.n_objects} objects",
            **{f"head: {name}": (f"{h}: {r['info']['kind']} on {r['info']['recipe']} "
                                 f"({r['info']['feature_size']} features), threshold {r['threshold']:.4f} "
                                 f"fixed on {r['info'].get('threshold_from')}, trained on "
                                 f"{r['info'].get('n_train')} rows")
               for (name, r), h in zip(results.items(), heads)},
        }
        random_weights = reader.random_weights
    if audit is None:
        from item.classify.audit import audit_store
        from item.errors import InputError

        try:
            audit = audit_store(store, split, reals=reals)
        except InputError as exc:
            audit = {"error": str(exc)}
    if audit.get("error"):
        audit_html = f"<p class=\"note\">No audit: {html.escape(audit['error'])}</p>"
    else:
        from item.classify.audit import html_section

        audit_html = html_section(audit)
    extra_sections = list(extra_sections or []) + [("Trivial cues: can the labels be read off the files?", audit_html)]
    curves = {}
    for name, r in results.items():
        per = {}
        for g in sorted(set(r["generators"][r["labels"] == 1])):
            own = (r["generators"] == g) & (r["labels"] == 0)
            reals = own if own.any() else (r["labels"] == 0)
            if g in r.get("real_pool", {}):
                reals = np.zeros(r["labels"].size, bool)
                reals[r["real_pool"][g]] = True
            mask = reals | ((r["generators"] == g) & (r["labels"] == 1))
            per[g] = (r["scores"][mask], r["labels"][mask])
        curves[name] = per
    render_report(out, title=title or f"ITEM evaluation of {', '.join(results)}", random_weights=random_weights,
                  extra_sections=extra_sections,
                  eval_tables={n: r["table"] for n, r in results.items()}, curves=curves,
                  histograms={n: (r["scores"], r["labels"]) for n, r in results.items()},
                  embedding_2d=(project_2d(feats), names) if len(rows) >= 3 else None, provenance=provenance,
                  warnings=list(dict.fromkeys(w for r in results.values() for w in r["warnings"])))
    return results
