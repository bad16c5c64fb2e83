"""``item reproduce BENCHMARK``: one benchmark's table, end to end.

layout check -> manifests (the protocol resolved to labelled rows, kept in WORK/manifests for
audit) -> featurize train and test into WORK/stores/{train,test} (resumable) -> train the heads
into WORK/heads/<recipe> (kept when already trained on the same store) -> evaluate every test set
with the protocol's real pairing -> the trivial-cue audit of the test store (can its labels be read
off file format and size? see item.classify.audit) -> WORK/results.{md,json} and WORK/report.html.

With ``backbones`` (``--backbone NAME``, repeatable) each backbone gets its own stores and heads in
WORK/backbones/NAME, and the one table carries every backbone's heads (``ITEM visual [pe-core-l14]``:
the visual recipe on a backbone is the linear-probe baseline of arXiv 2509.12995 with ``--kind logistic``).

Test-only benchmarks (Chameleon, Co-Spy-Bench, Synthbuster) take heads trained elsewhere (--head).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from item.errors import InputError
from item.protocols.layout import LayoutReport, check_layout
from item.protocols.spec import Protocol
from item.protocols.stores import StoreJob, featurize_jobs, spec_from_head, write_manifest


@dataclass(frozen=True)
class ReproduceConfig:
    models: str = "default"  # model preset for featurizing (ignored with heads: their models are used)
    recipes: tuple[str, ...] = ("hierarchical", "visual")  # heads trained, one per feature recipe
    head_kind: str = "mlp"
    heads: tuple[str, ...] = ()  # existing head folders to evaluate instead of training
    device: str = "auto"
    batch_size: int = 16
    workers: int = 0
    allow_missing: bool = False  # run on the sets that are there when some are missing
    augment: tuple[str, ...] = ()  # train-time augmentation of the training images
    seed: int = 0
    align_format: str = ""  # e.g. 'jpeg:96': the fakes re-encoded before featurizing (see align.py)
    backbones: tuple[str, ...] = ()  # registered backbones (item backbones): stores and heads for each, one table


@dataclass
class ReproduceResult:
    table: dict
    layout: LayoutReport
    work: Path
    files: dict = field(default_factory=dict)
    heads: dict = field(default_factory=dict)  # label -> head folder
    random_weights: bool = False


def needed_splits(protocol: Protocol, cfg: ReproduceConfig) -> tuple[str, ...]:
    if cfg.heads:
        return ("test",)
    if protocol.test_only:
        raise InputError(f"{protocol.name} ({protocol.title}) is test-only: give the heads to evaluate with --head "
                         "(e.g. WORK/heads/hierarchical of `item reproduce genimage`)")
    return ("train", "val", "test")


def check_backbones(cfg: ReproduceConfig) -> None:
    """Refuse (InputError) an unknown backbone name (listing the valid ones), one named twice, and
    backbones with given heads (those bring their own models); before any work."""
    if not cfg.backbones:
        return
    from item.featurize.models.backbones import get_backbone

    for b in cfg.backbones:
        get_backbone(b)
    if cfg.heads:
        raise InputError("--backbone picks the CLIP model to featurize and train with; heads given with --head "
                         "bring their own models: give one or the other")
    if len(set(cfg.backbones)) < len(cfg.backbones):
        raise InputError(f"--backbone names a backbone twice: {', '.join(cfg.backbones)}")


def _head_is_current(head_dir: Path, recipe: str, kind: str, fingerprint: str) -> bool:
    meta = head_dir / "head.json"
    if not meta.is_file():
        return False
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("recipe") == recipe and info.get("kind") == kind and info.get("store_fingerprint") == fingerprint


def _audit(test_store: Path, train_store: Path | None, reals: dict, log) -> dict:
    """The trivial-cue audit of the test store (its head trained on the train store's train split when there is
    one), or {'error': why} when it cannot run (e.g. a test store with one class)."""
    from item.classify.audit import audit_store

    try:
        res = audit_store(test_store, "test", train_store=train_store, reals=reals)
    except InputError as exc:
        return {"error": str(exc), "verdict": f"trivial-cue audit not run: {exc}"}
    log(f"audit: {res['verdict']}")
    return res


def run_reproduce(protocol: Protocol, root, work, cfg: ReproduceConfig = ReproduceConfig(), *,
                  layout: LayoutReport | None = None, log: Callable[[str], None] = lambda s: None,
                  progress: Callable[[int], None] | None = None) -> ReproduceResult:
    """Reproduce ``protocol``'s table on the data in ``root``, working in ``work``. See the module docstring."""
    from item.classify.heads import HeadConfig, load_head
    from item.classify.reporting import describe_model, write_report
    from item.classify.train import TrainConfig, evaluate, train_head
    from item.featurize import resolve_models
    from item.protocols import tables
    from item.store import StoreReader

    from item.protocols.align import align_rows, parse_alignment

    check_backbones(cfg)
    alignment = parse_alignment(cfg.align_format)
    work = Path(work) / alignment.slug if alignment else Path(work)
    splits = needed_splits(protocol, cfg)
    layout = layout or check_layout(protocol, root, splits)
    if not layout.ok and not cfg.allow_missing:
        raise InputError(f"{layout.root} does not match the {protocol.name} layout: {len(layout.missing)} set(s) missing "
                         f"({'; '.join(layout.missing[:3])}{' ...' if len(layout.missing) > 3 else ''}); fix the folders "
                         "or pass --allow-missing to run on the sets that are there")
    missing_train = [n for s, n in layout.missing_parts if s in ("train", "val")]
    if missing_train:
        raise InputError(f"the training data of {protocol.name} is missing ({', '.join(missing_train)}): "
                         "nothing to train on")
    missing_tests = [n for s, n in layout.missing_parts if s == "test"]
    if len(missing_tests) == len(protocol.parts("test")):
        raise InputError(f"none of the {protocol.name} test sets is in {layout.root}")
    test_rows = layout.rows("test")
    train_rows = layout.rows("train") + layout.rows("val") if "train" in splits else []
    if alignment:
        log(f"format alignment {alignment}: re-encoding the fakes into {work / 'files'}")
        test_rows, n_test = align_rows(test_rows, work / "files", alignment, log=log)
        train_rows, n_train = align_rows(train_rows, work / "files", alignment, log=log)
        log(f"format alignment {alignment}: " + ", ".join(f"{k} {n_test[k] + n_train[k]}" for k in n_test))
    manifests = {"test": work / "manifests" / "test.csv"}
    write_manifest(test_rows, manifests["test"])
    if train_rows:
        manifests["train"] = work / "manifests" / "train.csv"
        write_manifest(train_rows, manifests["train"])
    reals = {p.name: p.pool for p in protocol.parts("test") if p.pool and p.name not in missing_tests}
    # One run of stores and heads per backbone (WORK/backbones/NAME with --backbone), one table for all.
    results, labels, heads, test_stores, models_by = {}, {}, {}, [], {}
    random_weights = False
    for backbone in cfg.backbones or (None,):
        sub = work if backbone is None else work / "backbones" / backbone
        tag = "" if backbone is None else f" [{backbone}]"
        stores = {"train": sub / "stores" / "train", "test": sub / "stores" / "test"}
        jobs = []
        if train_rows:
            jobs.append(StoreJob((str(manifests["train"]),), stores["train"], augment=tuple(cfg.augment),
                                 alignment=str(alignment or "")))
        jobs.append(StoreJob((str(manifests["test"]),), stores["test"], alignment=str(alignment or "")))
        if cfg.heads:
            infos = [load_head(h)[1] for h in cfg.heads]
            models = spec_from_head(infos[0])
        elif backbone is not None:
            models = resolve_models(cfg.models, backbone=backbone)
            log(f"backbone {backbone}: {models.clip_model} / {models.clip_pretrained or 'random weights'}")
        else:
            models = cfg.models
        featurize_jobs(jobs, models=models, device=cfg.device, batch_size=cfg.batch_size, workers=cfg.workers,
                       log=log, progress=progress, command=f"item reproduce {protocol.name}")
        these: dict[str, Path] = {}
        if cfg.heads:
            for h in cfg.heads:
                these[f"ITEM {Path(h).name}"] = Path(h)
        else:
            with StoreReader(stores["train"]) as r:
                fingerprint = r.fingerprint
            for recipe in cfg.recipes:
                out = sub / "heads" / recipe
                if _head_is_current(out, recipe, cfg.head_kind, fingerprint):
                    log(f"head {out}: already trained on this store, kept")
                else:
                    log(f"training the {recipe} head -> {out}")
                    train_head(stores["train"], out, TrainConfig(recipe=recipe, head=HeadConfig(kind=cfg.head_kind),
                                                                 train_split="train", val_split="val", seed=cfg.seed))
                these[f"ITEM {recipe}{tag}"] = out
        log(f"evaluating {len(these)} head(s) on {len(protocol.parts('test')) - len(missing_tests)} test set(s)"
            + (f" ({backbone})" if backbone else ""))
        got = evaluate(stores["test"], [str(h) for h in these.values()], "test", reals=reals)
        for (name, res), (label, h) in zip(got.items(), these.items()):
            res["path"] = str(h)
            results[name + tag] = res
            labels[name + tag] = label
        heads.update(these)
        test_stores.append(stores["test"])
        with StoreReader(stores["test"]) as r:
            models_by[backbone] = {role: describe_model(spec) for role, spec in r.models.items()
                                   if isinstance(spec, dict)}
            random_weights = random_weights or bool(r.random_weights)
    models_used = next(iter(models_by.values()))
    # the file cues the audit reads do not depend on the backbone: the first backbone's stores serve
    first = work if not cfg.backbones else work / "backbones" / cfg.backbones[0]
    audit = _audit(test_stores[0], first / "stores" / "train" if train_rows else None, reals, log)
    table = tables.build_table(protocol, results, labels, random_weights=random_weights, missing=missing_tests,
                               layout=layout.summary(), alignment=str(alignment or ""))
    table["audit"] = {k: audit[k] for k in ("verdict", "error") if k in audit}
    if "trivial_cue" in audit:
        table["audit"].update({k: audit["trivial_cue"][k] for k in ("test_acc", "test_auroc", "trained_on",
                                                                     "threshold_from", "per_generator")})
    table["config"] = {**asdict(cfg), "root": str(layout.root), "work": str(work)}
    table["models"] = models_used
    if cfg.backbones:
        table["backbones"] = {b: {"work": str(work / "backbones" / b), "models": m} for b, m in models_by.items()}
    files = {"json": work / "results.json", "markdown": work / "results.md", "html": work / "report.html"}
    tables.write_json(table, files["json"])
    files["markdown"].write_text(tables.markdown(table), encoding="utf-8")
    write_report(test_stores if len(test_stores) > 1 else test_stores[0], [str(h) for h in heads.values()],
                 files["html"], "test", reals=reals,
                 title=f"ITEM on {protocol.title}", results=results, audit=audit,
                 extra_sections=[(f"{protocol.title}: ITEM beside the published numbers", tables.html_section(table))])
    return ReproduceResult(table=table, layout=layout, work=work, files=files, heads=heads, random_weights=random_weights)
