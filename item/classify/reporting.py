"""Assemble the HTML report of heads evaluated on a store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from item.classify.features import store_features
from item.classify.report import project_2d, render_report
from item.classify.train import evaluate
from item.store import StoreReader
from item.store import schema


def write_report(store, heads: list, out, split: str | None = "test", map_points: int = 5000) -> dict:
    """Evaluate ``heads`` on ``split`` and write one self-contained HTML file to ``out``."""
    results = evaluate(store, heads, split)
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
            "models": {k: v for k, v in reader.models.items()},
            "heads": {name: {"path": str(h), "recipe": r["info"]["recipe"], "kind": r["info"]["kind"],
                             "threshold": r["threshold"], "threshold from": r["info"].get("threshold_from")}
                      for (name, r), h in zip(results.items(), heads)},
        }
        random_weights = reader.random_weights
    curves = {}
    for name, r in results.items():
        per = {}
        for g in sorted(set(r["generators"][r["labels"] == 1])):
            own = (r["generators"] == g) & (r["labels"] == 0)
            reals = own if own.any() else (r["labels"] == 0)
            mask = reals | ((r["generators"] == g) & (r["labels"] == 1))
            per[g] = (r["scores"][mask], r["labels"][mask])
        curves[name] = per
    render_report(out, title=f"ITEM evaluation of {', '.join(results)}", random_weights=random_weights,
                  eval_tables={n: r["table"] for n, r in results.items()}, curves=curves,
                  histograms={n: (r["scores"], r["labels"]) for n, r in results.items()},
                  embedding_2d=(project_2d(feats), names) if len(rows) >= 3 else None, provenance=provenance)
    return results
