"""A benchmark's table: one row per test set, ITEM's heads beside the anchors' published numbers.

ITEM's numbers come from ``evaluate`` (fractions, turned into percent here); the anchors' from the
protocol file (percent, as published, each with its source). The mean row is computed the way the
benchmark's papers compute it: the unweighted mean over the protocol's ``mean_over`` test sets. An
anchor's mean is its published one when it covers the same sets, the mean of its published rows
when those cover them, and otherwise its published mean with the sets it covers named.
"""

from __future__ import annotations

import json
import math

import numpy as np

from item import __version__
from item.protocols.spec import Protocol

HEAD_METRICS = ("acc", "acc_05", "real_acc", "fake_acc", "real_acc_05", "fake_acc_05", "ap", "auroc", "oracle_acc")
#: Short column labels; "oracle" is always said to have seen the test labels.
LABELS = {"acc": "acc", "acc_05": "acc@0.5", "real_acc": "real", "fake_acc": "fake", "real_acc_05": "real@0.5",
          "fake_acc_05": "fake@0.5", "ap": "AP", "auroc": "AUROC", "oracle_acc": "oracle acc (test labels)"}
#: What a table shows when its protocol names no columns: the field's accuracy and AP.
DEFAULT_ITEM_COLUMNS = ("acc", "acc_05", "ap")
DEFAULT_ANCHOR_COLUMNS = ("acc", "ap")
from item.outputs import RANDOM_WEIGHTS_LINE as RANDOM_LINE  # noqa: E402  (one definition)


def pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{float(value):.1f}"


def _nanmean(values):
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else math.nan


def alignment_text(spec: str, ours: bool = True) -> str:
    """'jpeg:96' -> 'fakes re-encoded as JPEG quality 96 ...'; '' -> 'files as distributed'. ours: ITEM's run
    (names the flag) rather than an anchor's published setting."""
    if not spec:
        return "files as distributed (no format alignment)"
    kind, _, value = spec.partition(":")
    text = f"fakes re-encoded as {kind.upper()} quality {value}"
    return text + (f" before featurizing (--align-format {spec})" if ours else "")


def build_table(protocol: Protocol, results: dict, head_labels: dict, *, random_weights: bool,
                missing: list[str] = (), layout: dict | None = None, alignment: str = "") -> dict:
    """The comparison as a JSON-ready dict.

    results: evaluate()'s output {head name: {...'table': per_generator_table rows...}};
    head_labels: head name -> column label (e.g. 'ITEM hierarchical').
    """
    pairing = protocol.pairing()
    by_head = {name: {r["generator"]: r for r in res["table"]} for name, res in results.items()}
    rows = []
    for part in protocol.parts("test"):
        row = {"test_set": part.name, "reals": part.pool or "own", "missing": part.name in missing}
        first = next((t.get(part.name) for t in by_head.values() if t.get(part.name)), None)
        row["n_real"] = first["n_real"] if first else None
        row["n_fake"] = first["n_fake"] if first else None
        row["item"] = {head_labels[h]: {k: (100 * t[part.name][k] if part.name in t else None) for k in HEAD_METRICS}
                       for h, t in by_head.items()}
        row["anchors"] = {a.method: dict(a.results.get(part.name, {})) for a in protocol.verified_anchors()}
        rows.append(row)
    over = [r for r in rows if r["test_set"] in protocol.mean_over and not r["missing"]]
    mean = {"test_set": "mean", "reals": "", "over": [r["test_set"] for r in over],
            "complete": len(over) == len(protocol.mean_over),
            "item": {label: {k: _nanmean([r["item"][label][k] for r in over]) for k in HEAD_METRICS}
                     for label in head_labels.values()},
            "anchors": {}}
    for a in protocol.verified_anchors():
        want = list(protocol.mean_over)
        have = [s for s in want if a.results.get(s)]
        if a.mean and (not a.mean_over or list(a.mean_over) == want):
            mean["anchors"][a.method] = {**a.mean, "how": "published"}
        elif len(have) == len(want):
            keys = sorted({k for s in want for k in a.results[s]})
            mean["anchors"][a.method] = {**{k: _nanmean([a.results[s].get(k) for s in want]) for k in keys},
                                         "how": "mean of its published rows"}
        elif a.mean:
            mean["anchors"][a.method] = {**a.mean, "how": f"published, over {len(a.mean_over)} sets: "
                                                          + ", ".join(a.mean_over)}
        else:
            mean["anchors"][a.method] = {"how": f"not published (rows for {len(have)} of {len(want)} sets)"}
    return {
        "format": "item-reproduce", "item_version": __version__, "benchmark": protocol.name, "title": protocol.title,
        "reference": protocol.reference, "random_weights": bool(random_weights),
        "alignment": alignment, "alignment_text": alignment_text(alignment),
        "note": RANDOM_LINE if random_weights else "",
        "metric_convention": protocol.metric_convention, "pairing": pairing,
        "heads": {head_labels[h]: {"path": str(res.get("path", h)), "recipe": res["info"].get("recipe"),
                                   "threshold": res["threshold"], "threshold_from": res["info"].get("threshold_from")}
                  for h, res in results.items()},
        "rows": rows, "mean": mean,
        "anchors": [{"method": a.method, "paper": a.paper, "source": a.source, "verified": a.verified,
                     "trained_on": a.trained_on, "threshold": a.threshold, "alignment": a.alignment}
                    for a in protocol.anchors],
        "missing_sets": list(missing), "layout": layout or {},
        "columns": {"item": list(protocol.columns.get("item") or DEFAULT_ITEM_COLUMNS),
                    "anchors": list(protocol.columns.get("anchors") or DEFAULT_ANCHOR_COLUMNS)},
    }


def _flat(table: dict, *, head_metrics=None, anchor_metrics=None) -> tuple[list, list]:
    """Display rows (strings) and their columns, the mean row last. The metrics shown are the protocol's
    (``table['columns']``) unless given."""
    cols_of = table.get("columns") or {}
    head_metrics = tuple(head_metrics or cols_of.get("item") or DEFAULT_ITEM_COLUMNS)
    anchor_metrics = tuple(anchor_metrics or cols_of.get("anchors") or DEFAULT_ANCHOR_COLUMNS)
    heads = list(table["heads"])
    anchors = [a["method"] for a in table["anchors"] if a["verified"] == "read"]
    cols = ["test set", "reals", "n real", "n fake"]
    cols += [f"{h} {LABELS[k]}" for h in heads for k in head_metrics]
    a_cols = [(m, k) for m in anchors for k in anchor_metrics
              if any(k in r["anchors"].get(m, {}) for r in table["rows"]) or k in table["mean"]["anchors"].get(m, {})]
    # An anchor measured on re-encoded fakes says so in its column name (e.g. 'DDA [fakes jpeg:96] acc').
    shown = {a["method"]: a["method"] + (f" [fakes {a['alignment']}]" if a.get("alignment") else "")
             for a in table["anchors"]}
    cols += [f"{shown[m]} {LABELS[k]}" for m, k in a_cols]
    out = []
    for r in table["rows"] + [table["mean"]]:
        is_mean = r["test_set"] == "mean"
        d = {"test set": r["test_set"] + (" (missing)" if r.get("missing") else ""), "reals": r.get("reals", ""),
             "n real": "" if is_mean or r.get("n_real") is None else str(r["n_real"]),
             "n fake": "" if is_mean or r.get("n_fake") is None else str(r["n_fake"])}
        if is_mean and not r["complete"]:
            d["test set"] = f"mean ({len(r['over'])} of the protocol's sets)"
        for h in heads:
            for k in head_metrics:
                d[f"{h} {LABELS[k]}"] = pct(r["item"][h][k])
        for m, k in a_cols:
            d[f"{shown[m]} {LABELS[k]}"] = pct(r["anchors"].get(m, {}).get(k))
        out.append(d)
    return out, cols


def markdown(table: dict) -> str:
    lines = []
    if table["random_weights"]:
        lines += [table["note"], ""]
    lines += [f"# {table['title']}: ITEM beside the published numbers", "", f"Benchmark: {table['reference']}", "",
              f"Metrics: {table['metric_convention']}. ITEM's `acc` is at each head's validation threshold (the "
              "honest number); `acc@0.5` is at the fixed threshold 0.5, the convention of the anchors' tables. "
              "Anchors' numbers are as published (percent), each from the source listed below.", "",
              f"Format alignment of ITEM's run: {table.get('alignment_text') or alignment_text('')}.", ""]
    rows, cols = _flat(table)
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        lines.append("| " + " | ".join(r[c] for c in cols) + " |")
    if table.get("audit"):
        a = table["audit"]
        lines += ["", "## Trivial cues", "", f"**{a['verdict']}**" + (
            f" (AUROC {a['test_auroc']:.3f}; a logistic regression on file format, JPEG quality, width, height, "
            f"aspect, EXIF and file size alone, trained on {a['trained_on']}, threshold from {a['threshold_from']}; "
            "see `item audit`)" if "test_acc" in a else "")]
    lines += ["", "## ITEM's heads", ""]
    for label, h in table["heads"].items():
        lines.append(f"- **{label}**: recipe `{h['recipe']}`, threshold {h['threshold']:.4f} fixed on "
                     f"{h['threshold_from']} ({h['path']})")
    lines += ["", "## Anchors and their sources", ""]
    for a in table["anchors"]:
        status = "numbers read in the source" if a["verified"] == "read" else "numbers not verified here, left out"
        extra = (f"; trained on {a['trained_on']}" if a["trained_on"] else "") + \
                (f"; threshold {a['threshold']}" if a["threshold"] else "") + \
                (f"; {alignment_text(a['alignment'], ours=False)}" if a.get("alignment") else "")
        lines.append(f"- **{a['method']}** ({a['paper']}): {a['source']} — {status}{extra}")
    means = table["mean"]["anchors"]
    notes = [f"{m}: mean {v['how']}" for m, v in means.items() if v.get("how") != "published"]
    if notes:
        lines += ["", "Mean row: " + "; ".join(notes) + "."]
    if table["missing_sets"]:
        lines += ["", "Missing test sets (not in the data folder): " + ", ".join(table["missing_sets"])]
    return "\n".join(lines) + "\n"


def text_rows(table: dict) -> tuple[list, list]:
    """For the terminal: ITEM's columns as the protocol names them, the anchors' without AP (width)."""
    anchors = [k for k in (table.get("columns") or {}).get("anchors", DEFAULT_ANCHOR_COLUMNS) if k != "ap"] or ["acc"]
    return _flat(table, anchor_metrics=tuple(anchors))


def html_section(table: dict) -> str:
    from item.classify.report import html_table

    import html as _html

    rows, cols = _flat(table)
    parts = [f'<p class="note">{_html.escape(table["metric_convention"])}. ITEM acc: at the head\'s validation '
             "threshold; acc@0.5: at 0.5, the anchors' convention. Anchors: as published. Format alignment: "
             f"{_html.escape(table.get('alignment_text') or alignment_text(''))}.</p>",
             html_table([{c: r[c] for c in cols} for r in rows]), "<ul>"]
    for a in table["anchors"]:
        status = "read in the source" if a["verified"] == "read" else "not verified here, numbers left out"
        aligned = f"; {alignment_text(a['alignment'], ours=False)}" if a.get("alignment") else ""
        parts.append(f"<li><b>{_html.escape(a['method'])}</b> ({_html.escape(a['paper'])}): "
                     f"{_html.escape(a['source'])} ({status}{_html.escape(aligned)})</li>")
    parts.append("</ul>")
    return "".join(parts)


def strict(obj):
    """NaN / infinity -> None (JSON null), numpy scalars -> Python, recursively."""
    if isinstance(obj, (float, np.floating)):
        obj = float(obj)
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_json(obj: dict, path) -> None:
    path.write_text(json.dumps(strict(obj), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
