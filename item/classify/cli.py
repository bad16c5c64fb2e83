"""``item train | eval | predict | neighbors | report | audit | demo``."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import List, Optional

import typer

from item.options import PRECISION_HELP, Precision, precision_value
from item.console import RANDOM_WEIGHTS_LINE, emit, emit_json, guarded, heads_random, info, progress_bar, table, warn

METRIC_COLUMNS = ["generator", "reals", "n_real", "n_fake", "acc", "real_acc", "fake_acc", "ap", "auroc",
                  "acc_05", "real_acc_05", "fake_acc_05", "oracle_acc"]
#: Text-table headings: the oracle column says it saw the test labels.
_HEADINGS = {"oracle_acc": "oracle_acc(test labels)"}
METRICS_LEGEND = ("acc, real_acc, fake_acc: at the head's validation threshold (the headline); *_05: at 0.5 (the "
                  "field's convention); oracle_acc: best threshold chosen on these test labels (an oracle, never a "
                  "headline)")


def metric_table(rows: list[dict], title: str | None = None) -> None:
    """A per-generator metrics table on stdout with the headings METRIC_COLUMNS / _HEADINGS give."""
    cols = [_HEADINGS.get(c, c) for c in METRIC_COLUMNS]
    table([{_HEADINGS.get(k, k): v for k, v in r.items()} for r in rows], cols, title=title)


def _strict_json(obj):
    """NaN / infinity -> null, so --json output parses with any JSON reader (jq, JavaScript)."""
    from item.outputs import strict_json

    return strict_json(obj)


def multi_head_table(results: dict, split: str) -> bool:
    """Several heads' per-generator tables as one table, a column group per head; False when their
    rows differ (then each head gets its own table)."""
    tables = {name: r["table"] for name, r in results.items()}
    keys = [[(row["generator"], row["reals"], row["n_real"], row["n_fake"]) for row in t] for t in tables.values()]
    if any(k != keys[0] for k in keys):
        return False
    shared = ["generator", "reals", "n_real", "n_fake"]
    per = ["acc", "real_acc", "fake_acc", "ap", "auroc", "acc_05", "oracle_acc"]

    def fmt(v):
        if isinstance(v, float):
            return "nan" if v != v else f"{v:.4f}"
        return str(v)

    header = shared + [_HEADINGS.get(c, c) for _ in tables for c in per]
    cells = [[fmt(row[c]) for c in shared] + [fmt(t[i][c]) for t in tables.values() for c in per]
             for i, row in enumerate(next(iter(tables.values())))]
    widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(header)]
    n_shared = len(shared)
    lead = "  ".join(" " * w for w in widths[:n_shared])
    groups = []
    for g, (name, r) in enumerate(results.items()):
        span = widths[n_shared + g * len(per): n_shared + (g + 1) * len(per)]
        text = f"{name} (threshold {r['threshold']:.4f})"
        width = sum(span) + 2 * (len(span) - 1)
        groups.append(text[:width].ljust(width, "-") if len(text) < width else text[:width])
    emit(f"split {split}: {len(results)} heads side by side")
    emit((lead + "  " + "  ".join(groups)).rstrip())
    emit("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for r in cells:
        emit("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return True


_STORES_HELP = ("A featurized store; several stores of the same images (one per backbone) are joined by image id "
                "and their features put side by side, in the order given.")


def train_cmd(
    store: List[Path] = typer.Argument(..., help=_STORES_HELP, show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Head directory to write (head.safetensors + head.json)."),
    recipe: str = typer.Option("hierarchical", help="Features: hierarchical, global, local or visual."),
    kind: str = typer.Option("mlp", "--kind", metavar="mlp|logistic", help="The head: mlp or logistic."),
    head_kind_old: Optional[str] = typer.Option(None, "--head", metavar="mlp|logistic", hidden=True,
                                                help="Deprecated alias of --kind (one release)."),
    hidden: str = typer.Option("256", metavar="N[,N...]", help="MLP hidden sizes, comma-separated."),
    dropout: float = typer.Option(0.2, help="MLP dropout."),
    weight_decay: float = typer.Option(1e-4, help="MLP weight decay."),
    lr: float = typer.Option(1e-3, help="MLP peak learning rate (warm-up, then cosine decay; see --schedule)."),
    max_epochs: int = typer.Option(0, help="Epochs (the schedule's length; early stopping on validation loss "
                                   "may end sooner). 0: auto, 1.5M row visits within 4..60 epochs."),
    patience: int = typer.Option(10, help="Early-stopping patience in epochs."),
    batch_size: int = typer.Option(0, help="Batch size. 0: auto, 1/32 of the training rows within 32..256."),
    schedule: str = typer.Option("cosine", help="Learning rate: cosine (5% warm-up, cosine decay to 0 over "
                                 "--max-epochs) or constant."),
    precision: str = typer.Option("auto", help="Training arithmetic: auto (bfloat16 on a GPU and on CPUs with "
                                  "native bfloat16, else float32), float32 or bfloat16."),
    device: str = typer.Option("auto", help="Where the head trains: auto (cuda when present), cpu or cuda."),
    c: float = typer.Option(1.0, "--C", help="Logistic regression inverse regularisation."),
    train_split: str = typer.Option("train", help="Rows to train on; 'all' for every labelled row outside "
                                    "the validation split."),
    val_split: str = typer.Option("val", help="Rows that fix early stopping and the threshold."),
    val_fraction: float = typer.Option(0.2, help="Held out of the training rows when the store has no "
                                       "validation split."),
    train_generators: Optional[str] = typer.Option(None, help="Comma-separated generators that train the "
                                                   "head: their fakes and their own reals, plus reals of no "
                                                   "generator; default all."),
    seed: int = typer.Option(0, help="Random seed."),
    max_memory: str = typer.Option("auto", help="Memory the feature rows may take (e.g. 8GB, 512MiB); more "
                                   "rows than fit are streamed from the store shard by shard (both heads). "
                                   "auto: half of this machine's RAM."),
    as_json: bool = typer.Option(False, "--json", help="Print the head's metadata as JSON."),
):
    """Train a head on stored features; its decision threshold is fixed on validation rows."""
    from item.api import train_head
    from item.classify.heads import load_head
    from item.classify.streaming import parse_memory

    said = _say_random_first(any(_store_random(s) for s in store), as_json)  # before the training and any warning
    if head_kind_old is not None:
        warn("--head for the head type is deprecated (it means a head folder everywhere else): use "
             f"--kind {head_kind_old}")
        kind = head_kind_old
    try:
        hidden_sizes = tuple(int(h) for h in hidden.split(",") if h.strip())
    except ValueError:
        from item.errors import InputError

        raise InputError(f"--hidden {hidden!r}: give comma-separated integers, e.g. 512,128") from None
    import warnings

    from item.outputs import RandomWeightsWarning

    with warnings.catch_warnings():  # the command says RANDOM WEIGHTS in its own first line
        warnings.simplefilter("ignore", RandomWeightsWarning)
        fitted = train_head(store if len(store) > 1 else store[0], recipe=recipe, kind=kind,
                            train_split=train_split, val_split=val_split,
                            val_fraction=val_fraction, seed=seed,
                            train_generators=tuple(g.strip() for g in (train_generators or "").split(",")
                                                   if g.strip()),
                            hidden=hidden_sizes, dropout=dropout, weight_decay=weight_decay, lr=lr,
                            max_epochs=max_epochs, batch_size=batch_size, patience=patience, C=c,
                            schedule=schedule, precision=precision, device=device,
                            max_memory=parse_memory(max_memory))
    fitted.save(out, overwrite=True)  # as documented: --out replaces a head already there
    meta = load_head(out)[1]
    if not said:
        _say_random_first(bool(meta.get("random_weights")), as_json)
    if meta.get("caption_source_warning"):
        warn(meta["caption_source_warning"])
    if meta.get("unsplit_warning"):
        warn(meta["unsplit_warning"])
    if as_json:
        emit_json(_strict_json({**meta, "random_weights": bool(meta.get("random_weights"))}))
        return
    if meta.get("join"):
        from item.classify.joined import join_line

        emit(join_line(meta["join"]))
    v = meta.get("validation", {})
    emit(f"head {out}: {meta['kind']} on {meta['recipe']} ({meta['feature_size']} features), "
         f"{meta['n_train']} train rows, {meta['n_val']} validation rows ({meta['threshold_from']})")
    emit(f"threshold {meta['threshold']:.4f}; validation acc {v.get('acc', float('nan')):.4f} "
         f"AP {v.get('ap', float('nan')):.4f} AUROC {v.get('auroc', float('nan')):.4f}")
    for part in meta.get("stores") or []:
        a, b = part["feature_columns"]
        emit(f"  features {a}..{b - 1}: {part['backbone']['label']} ({part['compat'].get('embed_dim')}-d), "
             f"store {part['store']} (fingerprint {part['store_fingerprint'][:12]})")


def eval_cmd(
    store: List[Path] = typer.Argument(..., help=_STORES_HELP + " Each head reads the stores of its backbones.",
                                       show_default=False),
    heads: List[Path] = typer.Option(..., "--head", help="Head directory; repeat to compare heads side by side."),
    split: str = typer.Option("test", help="Rows to evaluate; 'all' for every labelled row."),
    as_json: bool = typer.Option(False, "--json", help="Print the tables as JSON on stdout instead of text."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the tables to this file: .json "
                                       "or .csv by its extension."),
    as_csv: Optional[Path] = typer.Option(None, "--csv", help="Also write the tables as CSV to this file."),
    allow_mixed: bool = typer.Option(False, "--allow-mixed", help="Apply a head made under another library "
                                     "version, device class or precision (rounding-level differences only)."),
    reals: Optional[str] = typer.Option(None, "--reals", help="Real pairing GEN=REALGEN,... (GEN may be a pattern, "
                                        "e.g. 'ldm_*=laion,guided=imagenet'): score GEN's fakes against the reals "
                                        "of REALGEN."),
    each: bool = typer.Option(False, "--each", help="Beside each head over several stores, each of its backbones "
                              "alone: a head trained on the fly on that store's features with the same recipe, kind, "
                              "hyperparameters, seed and joined train / validation rows, its threshold fixed on "
                              "those validation rows."),
):
    """Per-generator ACC, real/fake ACC, AP, AUROC and their mean, at each head's validation threshold and at 0.5."""
    from item.classify.pairing import parse_reals
    from item.classify.train import evaluate, head_parts

    _refuse_files_as_stores(store)
    if out is not None and out.suffix.lower() not in (".json", ".csv"):
        from item.errors import InputError

        raise InputError(f"--out {out}: give a .json or .csv file")
    said = _say_random_first(heads_random(heads), as_json)  # read from head.json, before the work and warnings
    results = evaluate(store if len(store) > 1 else store[0], [str(h) for h in heads],
                       None if split == "all" else split, allow_mixed=allow_mixed, reals=parse_reals(reals), each=each)
    random_weights = any(r["info"].get("random_weights") for r in results.values())
    if not said:
        _say_random_first(random_weights, as_json)
    flat = [{"head": name, **row} for name, r in results.items() for row in r["table"]]
    warnings = [w for r in results.values() for w in r["warnings"]]
    for w in warnings:
        warn(w)
    join = next(iter(results.values())).get("join")
    doc = _strict_json({"random_weights": random_weights, "warnings": warnings, "split": split,
                        "heads": list(results),
                        "thresholds": {name: r["threshold"] for name, r in results.items()},
                        **({"join": join, "backbones": {name: [p["backbone"]["label"] for p in head_parts(r["info"])]
                                                         for name, r in results.items()}} if join else {}),
                        "rows": flat})
    if out is not None and out.suffix.lower() == ".csv":
        as_csv = out
    if as_json:
        emit_json(doc)
    else:
        if join:
            from item.classify.joined import join_line

            emit(join_line(join))
        if len(results) < 2 or not multi_head_table(results, split):
            for name, r in results.items():
                metric_table(r["table"], title=f"{name} (threshold {r['threshold']:.4f}, split {split})")
                emit()
        else:
            emit()
        emit("reals: own = a generator's fakes against its own reals; pooled = against all reals of the split; "
             "a generator name = against that generator's reals (--reals)")
        emit(METRICS_LEGEND)
    if out is not None and out.suffix.lower() == ".json":
        import json

        _write_file(out, json.dumps(doc, indent=2))
    if as_csv:
        from item.spreadsheet import safe_row

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["head"] + METRIC_COLUMNS)
        w.writeheader()
        w.writerows(safe_row(row) for row in flat)  # head and generator names as text, never formulas
        _write_file(as_csv, buf.getvalue())


def _refuse_files_as_stores(stores) -> None:
    """A .json / .csv file among the stores is a mistyped option value (``--json out.json`` for ``--out``):
    a usage error, as click gives one for an extra argument."""
    from typer.core import _click  # typer's vendored click: the root command turns its errors into one line

    for p in stores[1:]:
        if p.suffix.lower() in (".json", ".csv") and not p.is_dir():
            raise _click.exceptions.UsageError(f"Got unexpected extra argument ({p}): a store is a folder (to write "
                                               f"a file, use --out {p})",
                                               ctx=_click.globals.get_current_context(silent=True))


def _say_random_first(random_weights: bool, as_json: bool) -> bool:
    """RANDOM WEIGHTS before any warning (issue 23: the first line of every output): on stdout in text, on
    stderr with --json (stdout carries the one JSON document, which says ``random_weights`` itself).
    Returns whether it was said."""
    if random_weights:
        (info if as_json else emit)(RANDOM_WEIGHTS_LINE)
    return random_weights


def _store_random(store) -> bool:
    """Whether the store's manifest records random weights (False when it cannot be read: the command's
    own load says what is wrong)."""
    from item.errors import ItemError
    from item.store import StoreReader

    try:
        with StoreReader(store) as r:
            return bool(r.random_weights)
    except ItemError:
        return False


def _write_file(path: Path, text: str) -> None:
    """Write a result file; a full disk or an unwritable folder is one line naming the file."""
    from item.errors import InputError

    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot write it ({exc.strerror or exc})") \
            from None


def predict_cmd(
    inputs: List[str] = typer.Argument(..., help="Image files, folders, or manifests (.csv / .jsonl with path and "
                                       "optional caption).", show_default=False),
    head: Path = typer.Option(..., "--head", help="Head directory."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    batch_size: int = typer.Option(16, help="Images per batch."),
    as_json: bool = typer.Option(False, "--json", help="JSON with per-object detail (noun, box, alignment)."),
    allow_mixed: bool = typer.Option(False, "--allow-mixed", help="Apply a head made under another library "
                                     "version, device class or precision (rounding-level differences only)."),
    model_path: Optional[List[Path]] = typer.Option(None, "--model-path", help="A local model file or folder the "
                                                    "head may name (repeat); a head can name no other local path."),
    precision: Optional[Precision] = typer.Option(None, help=PRECISION_HELP + " Given, it may differ from the "
                                                  "head's (the output says both).", show_default=False),
):
    """Score images: P(fake), the label at the head's threshold, the caption (given ones are used)."""
    from item.classify.heads import load_head
    from item.classify.predict import predict_files  # what item.predict() calls

    meta = load_head(head)[1]
    if (meta.get("random_weights") or (meta.get("compat") or {}).get("random_weights")) and not as_json:
        emit(RANDOM_WEIGHTS_LINE)  # first, before the minutes of featurizing
    with progress_bar(None, "scoring") as advance:
        res = predict_files(list(inputs), head, device=device, batch_size=batch_size, allow_mixed=allow_mixed,
                            model_paths=[str(p) for p in model_path or []], progress=advance, log=info,
                            precision=precision_value(precision))
    for w in res["warnings"]:
        warn(w)
    if as_json:
        emit_json(_strict_json(res))
        return
    info(f"models ran in {res['precision']}")
    ok_row = lambda r: r["status"] == "ok"  # noqa: E731
    table([{"path": r["path"], "p_fake": r["p_fake"] if ok_row(r) else float("nan"),
            "label": r["label"] if ok_row(r) else f"skipped: {r['reason']}", "caption": r["caption"] or ""}
           for r in res["rows"]], ["path", "p_fake", "label", "caption"])


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

    if generator is not None:
        prof = generator_profile(store, generator, k=k, on=on)
        if as_json:
            emit_json(_strict_json(prof))
            return
        if prof["random_weights"]:
            emit(RANDOM_WEIGHTS_LINE)
        table(prof["table"], ["generator", "votes", "share", "mean_similarity", "top1"],
              title=f"{prof['generator']}: {prof['n_queries']} rows, {k} nearest neighbours each among other "
                    f"generators ({on} embeddings)")
        return
    if not query:
        raise InputError("give a QUERY (image file, row number or id) or --generator NAME")
    res = neighbors(store, query, k=k, on=on, device=device)
    if as_json:
        emit_json(_strict_json(res))
        return
    if res["random_weights"]:
        emit(RANDOM_WEIGHTS_LINE)
    for w in res["warnings"]:
        warn(w)
    how = ""
    if res["kind"] == "file":
        how = (f", stored row {res['stored_row']}, no model loaded" if "stored_row" in res
               else f", featurized with {', '.join(res.get('models_loaded', []))}")
    info(f"query {query} ({res['kind']}{how}), {res['method']} search on {on}")
    if res["excluded"]:
        info(f"the query is stored (row {res['excluded'][0]}): left out of its own neighbours")
    table(res["neighbors"], ["row", "similarity", "label", "generator", "path"])


def report_cmd(
    store: List[Path] = typer.Argument(..., help=_STORES_HELP + " Each head reads the stores of its backbones.",
                                       show_default=False),
    heads: List[Path] = typer.Option(..., "--head", help="Head directory; repeat for several."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
    split: str = typer.Option("test", help="Rows to evaluate; 'all' for every labelled row."),
    each: bool = typer.Option(False, "--each", help="Beside each head over several stores, each of its backbones "
                              "alone (trained on the fly as for `item eval --each`)."),
):
    """One self-contained HTML report: tables, ROC/PR curves, histograms, a 2-D feature map, provenance."""
    from item.classify.reporting import write_report

    results = write_report(store if len(store) > 1 else store[0], [str(h) for h in heads], out,
                           None if split == "all" else split, each=each)
    if any(r["info"].get("random_weights") for r in results.values()) or any(_store_random(s) for s in store):
        emit(RANDOM_WEIGHTS_LINE)
    for r in results.values():
        for w in r["warnings"]:
            warn(w)
    join = next(iter(results.values())).get("join")
    if join:
        from item.classify.joined import join_line

        info(join_line(join))
    emit(f"wrote {out}")


def audit_cmd(
    store: Path = typer.Argument(..., help="A featurized store.", show_default=False),
    split: str = typer.Option("test", help="The rows to audit."),
    train_store: Optional[Path] = typer.Option(None, "--train-store", help="Store holding the train / val splits "
                                               "(default: STORE itself)."),
    reals: Optional[str] = typer.Option(None, "--reals", help="Real pairing GEN=REALGEN,... as for `item eval`."),
    as_json: bool = typer.Option(False, "--json", help="Print the audit as JSON on stdout."),
):
    """Can the labels be read off the files? Format, JPEG quality, size, EXIF per class and generator, and a
    logistic regression on those cues alone (trained on the train split, threshold from val)."""
    from item.classify.audit import audit_store
    from item.classify.pairing import parse_reals

    res = audit_store(store, split, train_store=train_store, reals=parse_reals(reals))
    if as_json:
        emit_json(_strict_json(res))
        return
    if res["random_weights"]:
        emit(RANDOM_WEIGHTS_LINE.split(":")[0] + ": the store's embeddings are random; this audit reads only the "
             "files' format and size, which do not depend on them")
    emit(res["verdict"])
    tc = res["trivial_cue"]
    emit(f"trivial-cue head: test acc {tc['test_acc']:.3f}, AUROC {tc['test_auroc']:.3f}, threshold "
         f"{tc['threshold']:.4f} from {tc['threshold_from']}; trained on {tc['trained_on']}")
    emit(f"cues: {', '.join(tc['features'])}")
    rows = []
    for gen, by in [("all", res["per_class"])] + list(res["per_generator"].items()):
        for lab in ("real", "fake"):
            d = by.get(lab) or {}
            if d.get("n"):
                rows.append({"generator": gen, "class": lab, "n": d["n"],
                             "formats": " ".join(f"{k}:{v}" for k, v in d["formats"].items()),
                             "jpeg_q": "-" if d["jpeg_quality_median"] is None else f"{d['jpeg_quality_median']:.0f}",
                             "size": f"{d['width_median']:.0f}x{d['height_median']:.0f}",
                             "aspect": f"{d['aspect_median']:.2f}",
                             "exif": "-" if d["exif_share"] is None else f"{100 * d['exif_share']:.0f}%",
                             "file_kib": "-" if d["file_size_median"] is None else f"{d['file_size_median'] / 1024:.1f}"})
    emit()
    table(rows, ["generator", "class", "n", "formats", "jpeg_q", "size", "aspect", "exif", "file_kib"],
          title=f"file cues of split {split!r} (medians)")
    emit()
    table([{"generator": r["generator"], "reals": r["reals"], "n_real": r["n_real"], "n_fake": r["n_fake"],
            "acc": f"{r['acc']:.3f}", "auroc": "-" if r["auroc"] != r["auroc"] else f"{r['auroc']:.3f}"}
           for r in tc["per_generator"]], ["generator", "reals", "n_real", "n_fake", "acc", "auroc"],
          title="trivial-cue head per generator")
    for cue, src in res["sources"].items():
        if "unavailable" in src:
            warn(f"{cue}: {src}")
        elif src != "store":
            info(f"{cue}: read from the files (the store did not record it)")


def demo_cmd(
    out: Path = typer.Option(Path("item-demo"), "--out", "-o", help="Folder for the store, heads and report."),
    models: str = typer.Option("default", help="default (pretrained, needs the weights) or tiny-random (offline)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the demo store afresh."),
):
    """The main job on the shipped sample images: featurize, train, evaluate, report."""
    from item.demo import SAMPLES_MANIFEST, run_demo
    from item.featurize import resolve_models

    if resolve_models(models).random_weights:
        emit(RANDOM_WEIGHTS_LINE)
    with progress_bar(None, "featurizing samples") as advance:
        res = run_demo(out, models=models, device=device, overwrite=overwrite, progress=advance, log=info)
    for name, rows in res.evaluation.items():
        metric_table(rows, title=f"{name} on the test split of {SAMPLES_MANIFEST.parent}")
        emit()
    emit(f"store {res.store}\nheads {', '.join(str(h) for h in res.heads.values())}\nreport {res.report}")


def register(app: typer.Typer) -> None:
    app.command("train")(guarded(train_cmd))
    app.command("eval")(guarded(eval_cmd))
    app.command("predict")(guarded(predict_cmd))
    app.command("neighbors")(guarded(neighbors_cmd))
    app.command("report")(guarded(report_cmd))
    app.command("audit")(guarded(audit_cmd))
    app.command("demo")(guarded(demo_cmd))
