"""``item protocols | reproduce | robustness``: the field's benchmarks in one command each."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from item.console import RANDOM_WEIGHTS_LINE, emit, emit_json, guarded, heads_random, info, progress_bar, table, warn


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def protocols_cmd(
    name: Optional[str] = typer.Argument(None, help="A benchmark name; without it, list them."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """List the registered benchmarks, or show one: layout, sets, pairing, anchors and their sources."""
    from dataclasses import asdict

    from item.protocols import get_protocol, protocol_names

    if not name:
        rows = [{"name": n, "title": get_protocol(n).title, "test sets": len(get_protocol(n).parts("test")),
                 "trains": "no (test only)" if get_protocol(n).test_only else "yes",
                 "anchors read": len(get_protocol(n).verified_anchors())} for n in protocol_names()]
        if as_json:
            emit_json(rows)
            return
        table(rows, ["name", "title", "test sets", "trains", "anchors read"])
        return
    p = get_protocol(name)
    if as_json:
        emit_json(asdict(p))
        return
    emit(f"{p.name}: {p.title}\n{p.reference}\n\n{p.description}\n\nlayout: {p.layout}")
    for src in p.layout_sources:
        emit(f"  - {src.get('what')} [{src.get('source')}; verified: {src.get('verified')}]")
    if p.layouts:
        emit("accepted layouts (the one finding the most sets is used, and named):")
        for lay in p.layouts:
            emit(f"  - {lay.name}: {lay.what} [{lay.source}; verified: {lay.verified}]")
    for split in ("train", "val", "test"):
        if p.parts(split):
            emit(f"{split}: " + ", ".join(f"{t.name}" + (f" (reals: {t.pool})" if t.pool else "") for t in p.parts(split)))
    emit(f"metrics: {p.metric_convention}")
    emit("anchors:")
    for a in p.anchors:
        emit(f"  - {a.method}: {a.source} [{'numbers read' if a.verified == 'read' else 'not verified, numbers left out'}]"
             + (f" (fakes re-encoded: {a.alignment})" if a.alignment else ""))
    if p.ignore:
        emit(f"known and not used: {', '.join(p.ignore)}")
    if p.notes:
        emit("notes:")
        for n in p.notes:
            emit(f"  - {n}")


def _random_models(models: str, heads=(), backbones=()) -> bool:
    """Whether the model preset (with each backbone) or a given head has random weights (read, nothing loaded)."""
    from item.featurize import resolve_models

    if heads:
        return heads_random(heads)
    try:
        return any(bool(resolve_models(models, backbone=b).random_weights) for b in (backbones or (None,)))
    except Exception:  # an unknown preset: the run itself says so in one line
        return False


def reproduce_cmd(
    benchmark: str = typer.Argument(..., help="Benchmark name (see `item protocols`) or a protocol JSON file.",
                                    show_default=False),
    root: Path = typer.Option(..., "--root", help="The benchmark's data folder, as distributed."),
    work: Path = typer.Option(..., "--work", help="Folder for manifests, stores, heads and results (resumable)."),
    models: str = typer.Option("default", help="Model preset: default, small, tiny-random, small-random, "
                               "default-random."),
    heads: str = typer.Option("hierarchical,visual", "--heads", help="Feature recipes to train a head for, "
                              "comma-separated."),
    kind: str = typer.Option("mlp", "--kind", metavar="mlp|logistic", help="The heads to train: mlp or logistic."),
    head_kind_old: Optional[str] = typer.Option(None, "--head-kind", metavar="mlp|logistic", hidden=True,
                                                help="Deprecated alias of --kind (one release)."),
    head: Optional[List[Path]] = typer.Option(None, "--head", help="Evaluate this trained head instead of training "
                                              "(repeat; required for test-only benchmarks)."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Run on the test sets that are there when "
                                       "some are missing."),
    check_only: bool = typer.Option(False, "--check-only", help="Only check the data folder's layout."),
    augment: Optional[List[str]] = typer.Option(None, help="Train-time augmentation of the training images "
                                                "(e.g. jpeg:75; repeat)."),
    align_format: Optional[str] = typer.Option(None, "--align-format", help="Re-encode the fakes before "
                                               "featurizing, e.g. jpeg:96 (as Dual Data Alignment reports); "
                                               "stores, heads and results go to WORK/aligned-jpeg-96."),
    backbone: Optional[List[str]] = typer.Option(None, "--backbone", help="Image-text backbone to featurize with "
                                                 "(overrides the preset's CLIP; `item backbones` lists them); repeat "
                                                 "for several: each gets its stores and heads in WORK/backbones/NAME "
                                                 "and a column group in the one table."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    batch_size: int = typer.Option(16, help="Images per featurize batch."),
    workers: int = typer.Option(0, help="Decoding processes (0: in the main process)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
):
    """Reproduce a benchmark's table: layout check, featurize, train, evaluate with its real pairing, report."""
    from item.errors import InputError
    from item.protocols import get_protocol
    from item.protocols.layout import check_layout
    from item.protocols.reproduce import ReproduceConfig, check_backbones, needed_splits, run_reproduce
    from item.protocols.tables import text_rows

    if head_kind_old is not None:
        warn(f"--head-kind is deprecated: use --kind {head_kind_old}")
        kind = head_kind_old
    protocol = get_protocol(benchmark)
    cfg = ReproduceConfig(models=models, recipes=_csv(heads), head_kind=kind,
                          heads=tuple(str(h) for h in head or ()), device=device, batch_size=batch_size,
                          workers=workers, allow_missing=allow_missing, augment=tuple(augment or ()),
                          align_format=align_format or "", backbones=tuple(backbone or ()))
    if align_format:
        from item.protocols.align import parse_alignment

        parse_alignment(align_format)  # a bad spec fails before the layout check
    if not cfg.recipes and not cfg.heads:
        raise InputError("--heads names no recipe; give e.g. --heads hierarchical,visual")
    check_backbones(cfg)
    if check_only:
        splits = ("test",) if protocol.test_only or cfg.heads else ("train", "val", "test")
    else:
        splits = needed_splits(protocol, cfg)
    early = False
    if not as_json and _random_models(models, cfg.heads, cfg.backbones):  # the first line, before hours of work
        emit(RANDOM_WEIGHTS_LINE)
        early = True
    layout = check_layout(protocol, root, splits)
    for line in layout.lines():
        info(line)
    if check_only:
        if as_json:
            emit_json(layout.summary())
        if not layout.ok:
            raise InputError(f"{len(layout.missing)} set(s) missing")
        return
    with progress_bar(None, "featurizing") as advance:
        res = run_reproduce(protocol, root, work, cfg, layout=layout, log=info, progress=advance)
    if as_json:
        from item.protocols.tables import strict

        emit_json(strict(res.table))
        return
    if res.random_weights and not early:
        emit(res.table["note"])
    rows, cols = text_rows(res.table)
    table(rows, cols, title=f"{protocol.title}: ITEM beside the anchors' published numbers "
                            f"({res.table['alignment_text']})")
    for w in res.table["mean"]["anchors"].items():
        if w[1].get("how") != "published":
            warn(f"{w[0]}: mean {w[1]['how']}")
    if res.table.get("audit"):
        emit(f"audit: {res.table['audit']['verdict']}")
    emit()
    emit(f"results {res.files['markdown']} {res.files['json']}\nreport {res.files['html']}")


def robustness_cmd(
    source: str = typer.Argument(..., help="A test folder (layout detected) or manifest.", show_default=False),
    head: Path = typer.Option(..., "--head", help="The trained head to evaluate."),
    work: Path = typer.Option(..., "--work", help="Folder for the perturbed stores and the report (resumable)."),
    perturb: str = typer.Option("jpeg:95,jpeg:75,jpeg:50,resize:0.5,blur:1,blur:2", "--perturb",
                                help="Perturbations, comma-separated (each may combine steps with '+')."),
    reals: Optional[str] = typer.Option(None, "--reals", help="Real pairing GEN=REALGEN,... as for `item eval`."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="SOURCE is this benchmark's data folder "
                                           "(see `item protocols`); use with --set."),
    test_set: Optional[str] = typer.Option(None, "--set", help="The benchmark's test set to perturb: reported as "
                                           "its one row, with the benchmark's real pairing."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    batch_size: int = typer.Option(16, help="Images per featurize batch."),
    workers: int = typer.Option(0, help="Decoding processes (0: in the main process)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
):
    """Evaluate a head on perturbed copies of a test set: accuracy and AP against each perturbation."""
    from item.protocols import get_protocol
    from item.classify.pairing import parse_reals
    from item.protocols.robustness import RobustnessConfig, run_robustness
    from item.protocols.tables import RANDOM_LINE, strict

    cfg = RobustnessConfig(perturbs=_csv(perturb), reals=parse_reals(reals), device=device, batch_size=batch_size,
                           workers=workers)
    early = not as_json and _random_models("", (str(head),))
    if early:  # the first line, before the perturbed copies are featurized
        emit(RANDOM_LINE)
    with progress_bar(None, "featurizing") as advance:
        res = run_robustness(source, head, work, cfg, protocol=get_protocol(protocol) if protocol else None,
                             test_set=test_set, log=info, progress=advance)
    if as_json:
        emit_json(strict(res))
        return
    if res["random_weights"] and not early:
        emit(RANDOM_LINE)
    rows = [{"perturbation": p or "none", "generator": g, "acc": f"{100 * m['acc']:.1f}",
             "acc@0.5": f"{100 * m['acc_05']:.1f}", "AP": f"{100 * m['ap']:.1f}" if m["ap"] == m["ap"] else "—"}
            for p, by in res["results"].items() for g, m in by.items()]
    table(rows, ["perturbation", "generator", "acc", "acc@0.5", "AP"],
          title=f"{res['head']} (threshold {res['threshold']:.4f}) on perturbed copies of {res['source']}")
    emit()
    emit(f"results {res['files']['json']} {res['files']['markdown']}\nreport {res['files']['html']}")


def register(app: typer.Typer) -> None:
    app.command("protocols")(guarded(protocols_cmd))
    app.command("reproduce")(guarded(reproduce_cmd))
    app.command("robustness")(guarded(robustness_cmd))
