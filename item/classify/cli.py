"""``item train | eval | predict | neighbors | report | demo``."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import List, Optional

import typer

from item.cli import emit, emit_json, guarded, info, progress_bar, table, warn

METRIC_COLUMNS = ["generator", "reals", "n_real", "n_fake", "acc", "real_acc", "fake_acc", "ap", "auroc"]


def _strict_json(obj):
    """NaN / infinity -> null, so --json output parses with any JSON reader (jq, JavaScript)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj


def train_cmd(
    store: Path = typer.Argument(..., help="A featurized store.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Head directory to write (head.safetensors + head.json)."),
    recipe: str = typer.Option("hierarchical", help="Features: hierarchical, global, local or visual."),
    head: str = typer.Option("mlp", help="mlp or logistic."),
    hidden: str = typer.Option("256", help="MLP hidden sizes, comma-separated."),
    dropout: float = typer.Option(0.2, help="MLP dropout."),
    weight_decay: float = typer.Option(1e-4, help="MLP weight decay."),
    lr: float = typer.Option(1e-3, help="MLP learning rate."),
    max_epochs: int = typer.Option(200, help="MLP epochs at most (early stopping on validation loss)."),
    patience: int = typer.Option(10, help="MLP early-stopping patience in epochs."),
    batch_size: int = typer.Option(256, help="MLP batch size."),
    c: float = typer.Option(1.0, "--C", help="Logistic regression inverse regularisation."),
    train_split: str = typer.Option("train", help="Rows to train on."),
    val_split: str = typer.Option("val", help="Rows that fix early stopping and the threshold."),
    val_fraction: float = typer.Option(0.2, help="Held out of the training rows when the store has no "
                                       "validation split."),
    train_generators: Optional[str] = typer.Option(None, help="Comma-separated generators that train the "
                                                   "head: their fakes and their own reals, plus reals of no "
                                                   "generator; default all."),
    seed: int = typer.Option(0, help="Random seed."),
    as_json: bool = typer.Option(False, "--json", help="Print the head's metadata as JSON."),
):
    """Train a head on stored features; its decision threshold is fixed on validation rows."""
    from item.classify.heads import HeadConfig
    from item.classify.train import TrainConfig, train_head

    try:
        hidden_sizes = tuple(int(h) for h in hidden.split(",") if h.strip())
    except ValueError:
        from item.errors import InputError

        raise InputError(f"--hidden {hidden!r}: give comma-separated integers, e.g. 512,128") from None
    cfg = TrainConfig(recipe=recipe, head=HeadConfig(kind=head, hidden=hidden_sizes, dropout=dropout,
                                                     weight_decay=weight_decay, lr=lr, max_epochs=max_epochs,
                                                     batch_size=batch_size, patience=patience, C=c),
                      train_split=train_split, val_split=val_split, val_fraction=val_fraction,
                      train_generators=tuple(g.strip() for g in (train_generators or "").split(",") if g.strip()),
                      seed=seed)
    meta = train_head(store, out, cfg)
    if as_json:
        emit_json(_strict_json(meta))
        return
    if meta.get("random_weights"):
        emit("RANDOM WEIGHTS: features come from randomly initialised models; these numbers are not detection accuracy")
    v = meta.get("validation", {})
    emit(f"head {out}: {meta['kind']} on {meta['recipe']} ({meta['feature_size']} features), "
         f"{meta['n_train']} train rows, {meta['n_val']} validation rows ({meta['threshold_from']})")
    emit(f"threshold {meta['threshold']:.4f}; validation acc {v.get('acc', float('nan')):.4f} "
         f"AP {v.get('ap', float('nan')):.4f} AUROC {v.get('auroc', float('nan')):.4f}")


def eval_cmd(
    store: Path = typer.Argument(..., help="A featurized store.", show_default=False),
    heads: List[Path] = typer.Option(..., "--head", help="Head directory; repeat to compare heads side by side."),
    split: str = typer.Option("test", help="Rows to evaluate; 'all' for every labelled row."),
    as_json: Optional[Path] = typer.Option(None, "--json", help="Also write the tables as JSON to this file "
                                           "('-' for stdout)."),
    as_csv: Optional[Path] = typer.Option(None, "--csv", help="Also write the tables as CSV to this file."),
    allow_mixed: bool = typer.Option(False, "--allow-mixed", help="Apply a head made under another library "
                                     "version, device class or precision (rounding-level differences only)."),
):
    """Per-generator ACC, real/fake ACC, AP, AUROC and their mean, at each head's validation threshold."""
    from item.classify.train import evaluate

    results = evaluate(store, [str(h) for h in heads], None if split == "all" else split, allow_mixed=allow_mixed)
    random_weights = any(r["info"].get("random_weights") for r in results.values())
    flat = [{"head": name, **row} for name, r in results.items() for row in r["table"]]
    warnings = [w for r in results.values() for w in r["warnings"]]
    for w in warnings:
        warn(w)
    doc = _strict_json({"random_weights": random_weights, "split": split,
                        "thresholds": {name: r["threshold"] for name, r in results.items()},
                        "warnings": warnings, "rows": flat})
    if as_json and str(as_json) == "-":
        emit_json(doc)
        return
    if random_weights:
        emit("RANDOM WEIGHTS: features come from randomly initialised models; these numbers are not detection accuracy")
    for name, r in results.items():
        table(r["table"], METRIC_COLUMNS, title=f"{name} (threshold {r['threshold']:.4f}, split {split})")
        emit()
    emit("reals: own = a generator's fakes against its own reals; pooled = against all reals of the split")
    if as_json:
        import json

        as_json.write_text(json.dumps(doc, indent=2))
    if as_csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["head"] + METRIC_COLUMNS)
        w.writeheader()
        w.writerows(flat)
        as_csv.write_text(buf.getvalue())


def predict_cmd(
    inputs: List[str] = typer.Argument(..., help="Image files or folders.", show_default=False),
    head: Path = typer.Option(..., "--head", help="Head directory."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    batch_size: int = typer.Option(16, help="Images per batch."),
    as_json: bool = typer.Option(False, "--json", help="JSON with per-object detail (noun, box, alignment)."),
    allow_mixed: bool = typer.Option(False, "--allow-mixed", help="Apply a head made under another library "
                                     "version, device class or precision (rounding-level differences only)."),
):
    """Score image files: P(fake), the label at the head's threshold, the caption."""
    from item.classify.predict import predict

    rows = predict(list(inputs), head, device=device, batch_size=batch_size, allow_mixed=allow_mixed)
    if as_json:
        emit_json(_strict_json(rows))
        return
    table([{"path": r["path"], "p_fake": r.get("p_fake", float("nan")),
            "label": r.get("label", f"skipped: {r['reason']}"), "caption": r.get("caption", "")} for r in rows],
          ["path", "p_fake", "label", "caption"])


def neighbors_cmd(
    store: Path = typer.Argument(..., help="A featurized store.", show_default=False),
    query: Optional[str] = typer.Argument(None, help="An image file, a row number or an image id (prefix)."),
    k: int = typer.Option(10, "-k", help="Neighbours to return."),
    on: str = typer.Option("image", help="image (looks like) or misalignment (fails like)."),
    generator: Optional[str] = typer.Option(None, help="Profile a whole generator: which other generators its "
                                            "rows sit nearest to."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N] (to featurize an image query)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Nearest stored images to a query, or which known generators an unseen one resembles."""
    from item.classify.predict import generator_profile, neighbors
    from item.errors import InputError

    if generator:
        prof = generator_profile(store, generator, k=k, on=on)
        if as_json:
            emit_json(_strict_json(prof))
            return
        table(prof["table"], ["neighbour", "share", "mean_similarity", "top1"],
              title=f"{generator}: {prof['n_queries']} rows, {k} nearest neighbours each among other "
                    f"generators ({on} embeddings)")
        return
    if not query:
        raise InputError("give a QUERY (image file, row number or id) or --generator NAME")
    res = neighbors(store, query, k=k, on=on, device=device)
    if as_json:
        emit_json(_strict_json(res))
        return
    info(f"query {query} ({res['kind']}), {res['method']} search on {on}")
    table(res["hits"], ["row", "similarity", "label", "generator", "path"])


def report_cmd(
    store: Path = typer.Argument(..., help="A featurized store.", show_default=False),
    heads: List[Path] = typer.Option(..., "--head", help="Head directory; repeat for several."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
    split: str = typer.Option("test", help="Rows to evaluate; 'all' for every labelled row."),
):
    """One self-contained HTML report: tables, ROC/PR curves, histograms, a 2-D feature map, provenance."""
    from item.classify.reporting import write_report

    results = write_report(store, [str(h) for h in heads], out, None if split == "all" else split)
    for r in results.values():
        for w in r["warnings"]:
            warn(w)
    info(f"wrote {out}")


def demo_cmd(
    out: Path = typer.Option(Path("item-demo"), "--out", "-o", help="Folder for the store, heads and report."),
    models: str = typer.Option("default", help="default (pretrained, needs the weights) or tiny-random (offline)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the demo store afresh."),
):
    """The main job on the shipped sample images: featurize, train, evaluate, report."""
    from item.demo import SAMPLES_MANIFEST, run_demo

    with progress_bar(None, "featurizing samples") as advance:
        res = run_demo(out, models=models, device=device, overwrite=overwrite, progress=advance, log=info)
    if res.random_weights:
        emit("RANDOM WEIGHTS: the demo ran with randomly initialised models; these numbers are not detection accuracy")
    for name, rows in res.evaluation.items():
        table(rows, METRIC_COLUMNS, title=f"{name} on the test split of {SAMPLES_MANIFEST.parent}")
        emit()
    emit(f"store {res.store}\nheads {', '.join(str(h) for h in res.heads.values())}\nreport {res.report}")


def register(app: typer.Typer) -> None:
    app.command("train")(guarded(train_cmd))
    app.command("eval")(guarded(eval_cmd))
    app.command("predict")(guarded(predict_cmd))
    app.command("neighbors")(guarded(neighbors_cmd))
    app.command("report")(guarded(report_cmd))
    app.command("demo")(guarded(demo_cmd))
