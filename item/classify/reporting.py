"""Assemble the HTML report of heads evaluated on a store."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from item.classify.features import store_features
from item.classify.report import html_table, project_2d, render_report
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
                 results: dict | None = None, audit: dict | None = None, each: bool = False) -> dict:
    """Evaluate ``heads`` on ``split`` and write one self-contained HTML file to ``out``.

    store: one store, or a list of stores of the same images, one per backbone (see ``evaluate``); each:
    each backbone of a head over several stores alone beside it (``evaluate(each=True)``).
    reals: the real pairing (see ``evaluate``); extra_sections: [(heading, trusted HTML)] placed
    before the evaluation tables (a benchmark's comparison table, robustness plots); results: the
    output of that very ``evaluate`` call when the caller already has it; audit: ``audit_store``'s
    result when the caller has it (otherwise the split is audited here, on the first store, its train
    split from the same store: the file cues do not depend on the backbone).
    """
    from item.classify.joined import backbone_label, join_line, open_join
    from item.classify.train import store_paths

    if results is None:
        results = evaluate(store, heads, split, reals=reals, each=each)
    paths = store_paths(store)
    first = next(iter(results.values()))
    joined = len(paths) > 1
    with open_join(paths) as join:
        rows = first["rows"]
        if rows.size > map_points:
            rows = np.sort(np.random.default_rng(0).choice(rows, map_points, replace=False))
        use = first.get("stores_read") if joined else None
        feats = join.features(first["info"]["recipe"], rows, use)
        meta = join.first.metadata([schema.LABEL, schema.GENERATOR])
        names = [("real" if lab == "real" else g) for lab, g in zip(meta[schema.LABEL][rows],
                                                                      meta[schema.GENERATOR][rows])]
        provenance = {}
        for j, (path, reader) in enumerate(zip(join.paths, join.readers)):
            tag = f" {j + 1} ({backbone_label(reader.compat)})" if joined else ""
            provenance.update({
                f"store{tag}": str(Path(path).resolve()), f"store{tag} fingerprint": reader.fingerprint,
                **({"split": split or "all labelled rows"} if j == 0 else {}),
                **{f"model: {role}{tag}": describe_model(spec) for role, spec in reader.models.items()
                   if isinstance(spec, dict) and role != "spec"},
                **({f"model spec{tag}": dict(reader.models["spec"])}
                   if isinstance(reader.models.get("spec"), dict) else {}),
                f"rows in the store{tag}": f"{reader.counts['n_ok']} ok, {reader.n_skipped} skipped, "
                                           f"{reader.n_objects} objects"})
        if joined:
            provenance["join"] = join_line(first["join"]) if first.get("join") else ""
        for (name, r), h in zip(results.items(), _head_dirs(results, heads)):
            provenance[f"head: {name}"] = (
                f"{h}: {r['info']['kind']} on {r['info']['recipe']} ({r['info']['feature_size']} features"
                + (f" of {', '.join(p['backbone']['label'] for p in _parts(r['info']))}" if joined else "")
                + f"), threshold {r['threshold']:.4f} fixed on {r['info'].get('threshold_from')}, trained on "
                f"{r['info'].get('n_train')} rows")
        random_weights = any(r.random_weights for r in join.readers)
    if joined and len(results) > 1:
        extra_sections = [("Heads side by side (acc at each head's validation threshold, AP, AUROC)",
                           html_table(side_by_side(results)))] + list(extra_sections or [])
    if audit is None:
        from item.classify.audit import audit_store
        from item.errors import InputError

        try:
            audit = audit_store(paths[0], split, reals=reals)
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


def _parts(info: dict) -> list[dict]:
    from item.classify.train import head_parts

    return head_parts(info)


def _head_dirs(results: dict, heads: list) -> list[str]:
    """What produced each result: its head folder, or for a backbone trained on the fly (``--each``) the head
    it was taken from."""
    given = iter(heads)
    out = []
    for r in results.values():
        of = r["info"].get("backbone_of")
        out.append(next(given, None) if of is None else f"{r['info'].get('store')} alone, on the rows of {of}")
    return out


def side_by_side(results: dict) -> list[dict]:
    """One row per generator (as the heads' tables order them), acc / AP / AUROC of each head in its own
    columns: the fused head and its backbones next to each other. Heads whose tables differ in rows are
    matched by (generator, reals)."""
    keys = ("acc", "ap", "auroc")
    first = next(iter(results.values()))["table"]
    by_head = {name: {(row["generator"], row["reals"]): row for row in r["table"]} for name, r in results.items()}
    out = []
    for row in first:
        k = (row["generator"], row["reals"])
        cells = {"generator": row["generator"], "reals": row["reals"], "n_real": row["n_real"], "n_fake": row["n_fake"]}
        for name, t in by_head.items():
            for m in keys:
                cells[f"{name} {m}"] = t.get(k, {}).get(m, float("nan"))
        out.append(cells)
    return out
