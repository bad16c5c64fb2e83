"""A self-contained HTML report of an evaluation: tables, ROC/PR curves, histograms, a 2-D map.

The file has no external references: CSS is inline and every plot is a PNG drawn with
matplotlib's Agg canvas (no pyplot, no global backend switch) and embedded as base64. Every string
that comes from the caller (title, head and generator names, provenance) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from item.classify import metrics
from item.errors import InputError

RANDOM_WEIGHTS_BANNER = "RANDOM WEIGHTS: these numbers are not detection accuracy"
#: One colour per class everywhere in the report (histograms, 2-D map): real blue, fake red.
CLASS_COLOURS = {"real": "tab:blue", "fake": "tab:red"}
MAX_MAP_POINTS = 20_000  # more points only slow the drawing; the subsample is seeded

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
.warning { background: #fff3cd; border-left: 4px solid #b26a00; padding: .4em 1em; margin: 0 0 .6em; }
.banner { background: #b00020; color: #fff; font-weight: bold; padding: .6em 1em; margin: 0 0 1em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
tr.mean td { font-weight: bold; border-top: 2px solid #888; }
img { max-width: 100%; } .note { color: #666; font-size: 13px; }
""".strip()

_PERCENT_KEYS = {"acc", "real_acc", "fake_acc", "ap", "auroc", "acc_05", "real_acc_05", "fake_acc_05", "oracle_acc"}
#: Column headings where the key alone would mislead: the oracle saw the test labels.
_HEADINGS = {"acc": "acc (val. threshold)", "acc_05": "acc@0.5", "real_acc_05": "real_acc@0.5",
             "fake_acc_05": "fake_acc@0.5", "oracle_acc": "oracle acc (test labels)"}


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _mpl_text(value) -> str:
    """Caller strings in plot labels: '$' would start matplotlib mathtext."""
    return str(value).replace("$", r"\$")


def _figure(width=10.0, height=4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _img(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _fmt(key, value) -> str:
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "&mdash;"
        return f"{100 * value:.1f}" if key in _PERCENT_KEYS else f"{value:.4g}"
    return _e(value)


def _table(rows: list[dict]) -> str:
    if not rows:
        return '<p class="note">No rows (no fake images in the scored set).</p>'
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    head = "".join(
        f'<th class="name">{_e(c)}</th>' if c in ("generator", "reals")
        else f"<th>{_e(_HEADINGS.get(c, c))}{' %' if c in _PERCENT_KEYS else ''}</th>"
        for c in columns
    )
    body = []
    for row in rows:
        cls = ' class="mean"' if row.get("generator") == "mean" else ""
        cells = "".join(
            f'<td class="name">{_fmt(c, row.get(c, ""))}</td>' if c in ("generator", "reals") else f"<td>{_fmt(c, row.get(c, ''))}</td>"
            for c in columns
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def html_table(rows: list[dict]) -> str:
    """Rows as an HTML table (values escaped; floats of metric keys in percent): for extra_sections."""
    return _table(rows)


def html_img(fig, alt: str) -> str:
    """A matplotlib Figure (from ``new_figure``) as an embedded PNG: for extra_sections."""
    return _img(fig, alt)


def new_figure(width=10.0, height=4.0):
    """A matplotlib Figure on an Agg canvas (no pyplot): for extra_sections."""
    return _figure(width, height)


def _curves_img(head: str, per_generator: dict) -> str:
    fig = _figure(11, 4.5)
    roc_ax, pr_ax = fig.subplots(1, 2)
    for name, (scores, labels) in per_generator.items():
        scores, labels = np.asarray(scores), np.asarray(labels)
        fpr, tpr = metrics.roc_points(scores, labels)
        recall, precision = metrics.pr_points(scores, labels)
        auc, ap = metrics.auroc(scores, labels), metrics.average_precision(scores, labels)
        roc_ax.plot(fpr, tpr, lw=1.3, label=f"{_mpl_text(name)} (AUROC {auc:.3f})")
        pr_ax.step(recall, precision, where="post", lw=1.3, label=f"{_mpl_text(name)} (AP {ap:.3f})")
    roc_ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    roc_ax.set(xlabel="false positive rate (reals called fake)", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    pr_ax.set(xlabel="recall (fakes)", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        if per_generator:
            ax.legend(fontsize=7, loc="lower right" if ax is roc_ax else "lower left")
    return _img(fig, f"ROC and PR curves of {head}")


def _histogram_img(head: str, scores, labels) -> str:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    fig = _figure(7, 3.5)
    ax = fig.subplots()
    lo, hi = (float(scores.min()), float(scores.max())) if scores.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 51)
    for value, name, colour in ((0, "real", CLASS_COLOURS["real"]), (1, "fake", CLASS_COLOURS["fake"])):
        part = scores[labels == value]
        if part.size:
            ax.hist(part, bins=bins, density=True, alpha=0.55, color=colour, label=f"{name} (n={part.size})")
    ax.set(xlabel="score (P(fake))", ylabel="density", title=f"Scores, real vs fake: {_mpl_text(head)}")
    if scores.size:
        ax.legend(fontsize=8)
    return _img(fig, f"score histogram of {head}")


def map_colours(names) -> dict[str, str]:
    """Colour of each name on the 2-D map: 'real' in the real class colour; each generator (its fakes)
    in a colour of its own that is neither class colour, so red on the map never means real."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    # Distinct hues first (tab10 without its blue and red, then Dark2 and Set1's), dark/light pairs
    # of one hue (tab20b/c) only after them: two generators should never look alike on the map.
    reserved = {to_hex(c) for c in CLASS_COLOURS.values()}
    near_class = {"#1f77b4", "#d62728", "#e41a1c", "#377eb8"}  # blues and reds of Set1 too
    palette = [to_hex(c) for c in (*colormaps["tab10"].colors, *colormaps["Dark2"].colors, *colormaps["Set1"].colors,
                                   *colormaps["tab20b"].colors, *colormaps["tab20c"].colors)]
    palette = list(dict.fromkeys(c for c in palette if c not in near_class))
    palette = [c for c in palette if c not in reserved]
    out, k = {}, 0
    for name in sorted(set(str(n) for n in names)):
        if name in CLASS_COLOURS:
            out[name] = to_hex(CLASS_COLOURS[name])
        else:
            out[name] = palette[k % len(palette)]
            k += 1
    return out


def _colour_key(colours: dict[str, str]) -> str:
    spans = " ".join(f'<span class="name" data-colour="{_e(c)}" style="color:{_e(c)}">&#9632; {_e(n)}</span>'
                     for n, c in colours.items())
    return f'<p class="note colours">Colours: {spans}</p>'


def _map_img(points: np.ndarray, names: list[str]) -> str:
    points = np.asarray(points, dtype=np.float64)
    names = np.asarray([str(n) for n in names])
    if points.ndim != 2 or points.shape[1] != 2 or names.shape[0] != points.shape[0]:
        raise InputError(f"embedding_2d needs (n, 2) points and n names, got {points.shape} and {names.shape[0]}")
    note = ""
    if points.shape[0] > MAX_MAP_POINTS:
        keep = np.sort(np.random.default_rng(0).choice(points.shape[0], MAX_MAP_POINTS, replace=False))
        note = f'<p class="note">A seeded random {MAX_MAP_POINTS} of {points.shape[0]} points are drawn.</p>'
        points, names = points[keep], names[keep]
    colours = map_colours(names.tolist())
    # a marker shape per name as well as a colour: names past the first few colours stay apart
    shapes = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*"]
    markers = {n: ("o" if n == "real" else shapes[i % len(shapes)]) for i, n in enumerate(colours)}
    fig = _figure(8, 6)
    ax = fig.subplots()
    for name, colour in colours.items():
        sel = names == name
        ax.scatter(points[sel, 0], points[sel, 1], s=28, alpha=0.8, color=colour, marker=markers[name],
                   edgecolors="white", linewidths=0.4, label=_mpl_text(name))
    ax.set(xlabel="PC 1", ylabel="PC 2", title="Feature rows in 2-D (PCA): reals, and fakes by generator")
    if names.size:
        ax.legend(fontsize=8, markerscale=1.2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return note + _colour_key(colours) + _img(fig, "2-D map of feature rows coloured by generator")


def _cell(value) -> str:
    if isinstance(value, str):
        return value if value else "(none)"
    return json.dumps(value, default=str, sort_keys=True)


def _provenance_table(provenance: dict) -> str:
    items = dict(provenance)
    items.setdefault("date", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    rows = []
    for key, value in items.items():
        if isinstance(value, dict):  # e.g. the model spec: a table of its fields, not a dump
            inner = "".join(f'<tr><th class="name">{_e(k)}</th><td class="name">{_e(_cell(v))}</td></tr>'
                            for k, v in value.items())
            rows.append(f'<tr><th class="name">{_e(key)}</th><td class="name"><table class="inner">{inner}</table>'
                        "</td></tr>")
            continue
        rows.append(f'<tr><th class="name">{_e(key)}</th><td class="name">{_e(_cell(value))}</td></tr>')
    return f"<table>{''.join(rows)}</table>"


def render_report(
    out_path,
    *,
    title: str,
    random_weights: bool,
    eval_tables: dict,
    curves: dict,
    histograms: dict,
    embedding_2d,
    provenance: dict,
    extra_sections=None,
    warnings: list[str] = (),
) -> None:
    """Write one self-contained HTML report to ``out_path`` (temporary name, then ``os.replace``).

    eval_tables: head name -> ``metrics.per_generator_table`` rows.
    curves: head name -> {generator: (scores (n,) float, labels (n,) 0/1)} for ROC and PR curves.
    histograms: head name -> (scores (n,) float, labels (n,) 0/1).
    embedding_2d: None, or ((n, 2) float points, n generator/label names) for the 2-D map.
    provenance: what produced the numbers (models, store, head, date ...); 'date' defaults to now (UTC).
    extra_sections: [(heading, HTML)] inserted before the evaluation; the HTML is the caller's, already
    escaped (item.protocols builds it with ``html_table`` / ``html_img``).
    warnings: lines shown right below the banner (caption sources by label, rows seen in training).
    With random_weights, the <title> and the first line of the body say RANDOM_WEIGHTS_BANNER.
    """
    from matplotlib.colors import to_hex

    page_title = f"{RANDOM_WEIGHTS_BANNER} | {title}" if random_weights else str(title)
    body = []
    if random_weights:
        body.append(f'<p class="banner">{_e(RANDOM_WEIGHTS_BANNER)}</p>')
    for w in warnings:
        body.append(f'<p class="warning">warning: {_e(w)}</p>')
    body.append(f"<h1>{_e(title)}</h1>")
    body.append("<h2>Provenance</h2>" + _provenance_table(provenance))

    for heading, section in extra_sections or ():
        body.append(f"<h2>{_e(heading)}</h2>" + section)

    body.append("<h2>Evaluation</h2>")
    body.append(
        '<p class="note">Percentages. "reals: own" means a generator\'s fakes are scored against its own '
        'reals (UniversalFakeDetect style); "pooled", against every real image in the set (GenImage '
        "style). The mean row averages over generators.</p>"
    )
    for head, rows in eval_tables.items():
        body.append(f"<h3>{_e(head)}</h3>" + _table(rows))

    body.append("<h2>ROC and precision-recall curves, per generator</h2>")
    for head, per_generator in curves.items():
        body.append(f"<h3>{_e(head)}</h3>" + _curves_img(head, per_generator))

    body.append("<h2>Score histograms</h2>")
    body.append(_colour_key({n: to_hex(c) for n, c in CLASS_COLOURS.items()}))
    for head, (scores, labels) in histograms.items():
        body.append(f"<h3>{_e(head)}</h3>" + _histogram_img(head, scores, labels))

    body.append("<h2>2-D map</h2>")
    if embedding_2d is None:
        body.append('<p class="note">Not computed.</p>')
    else:
        body.append(_map_img(*embedding_2d))

    # The banner must be the first line of the body: nothing but "<body>" comes before it.
    text = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_e(page_title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    from item.errors import InputError
    from item.store.files import write_output

    out_path = Path(out_path)
    data = text.encode("utf-8")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_output(out_path, lambda fh: fh.write(data))
    except OSError as exc:
        raise InputError(f"{out_path}: cannot write the report ({exc.strerror or exc}); nothing was written") from None


def project_2d(features: np.ndarray, seed=0) -> np.ndarray:
    """PCA of (n, n_features) float rows to (n, 2) float32; deterministic for a given seed.

    Uses scikit-learn's PCA (randomized SVD on large inputs, seeded; component signs fixed by
    scikit-learn's svd_flip). Fewer than 2 rows or features: the missing columns are zeros.
    """
    from sklearn.decomposition import PCA

    X = np.asarray(features, dtype=np.float32)
    if X.ndim != 2:
        raise InputError(f"features must be (n, n_features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise InputError("features hold NaN or infinite values")
    out = np.zeros((X.shape[0], 2), dtype=np.float32)
    k = min(2, X.shape[0], X.shape[1])
    if X.shape[0] < 2 or k == 0:
        return out
    out[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(X)
    return out
