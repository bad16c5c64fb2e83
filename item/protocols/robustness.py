"""``item robustness SOURCE --head HEAD``: one head on perturbed copies of a test set.

Each perturbation (and the clean images) is featurized into its own store, WORK/stores/<slug>: a
store holds one perturbation setting, and a rerun resumes each store where it stopped. The head
is evaluated on every store at its own validation threshold (never re-tuned on perturbed data);
the report plots accuracy and AP against the perturbation, one line per generator plus the mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from item.errors import InputError
from item.protocols.stores import StoreJob, featurize_jobs, spec_from_head, write_manifest


@dataclass(frozen=True)
class RobustnessConfig:
    perturbs: tuple[str, ...] = ("jpeg:95", "jpeg:75", "jpeg:50", "resize:0.5", "blur:1", "blur:2")
    reals: dict = field(default_factory=dict)  # real pairing, as `item eval --reals`
    device: str = "auto"
    batch_size: int = 16
    workers: int = 0


def slug(spec: str) -> str:
    """A folder name for a perturbation spec: 'jpeg:75+blur:1.0' -> 'jpeg-75_blur-1.0'; '' -> 'clean'."""
    if not spec:
        return "clean"
    return re.sub(r"[^A-Za-z0-9._-]", "-", spec.replace("+", "_").replace(":", "-"))


def _plot(results: dict, specs: list[str], head: str):
    from item.classify.report import html_img, new_figure

    fig = new_figure(11, 4.2)
    acc_ax, ap_ax = fig.subplots(1, 2)
    x = list(range(len(specs)))
    gens = sorted({g for by in results.values() for g in by if g != "mean"}) + ["mean"]
    for g in gens:
        acc = [results[s].get(g, {}).get("acc", float("nan")) for s in specs]
        ap = [results[s].get(g, {}).get("ap", float("nan")) for s in specs]
        style = dict(lw=2.4, color="black") if g == "mean" else dict(lw=1.2)
        label = str(g).replace("$", r"\$")
        acc_ax.plot(x, [100 * v for v in acc], marker="o", label=label, **style)
        ap_ax.plot(x, [100 * v for v in ap], marker="o", label=label, **style)
    names = [s or "none" for s in specs]
    for ax, what in ((acc_ax, "accuracy at the head's threshold (%)"), (ap_ax, "average precision (%)")):
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set(xlabel="perturbation", ylabel=what, ylim=(0, 101))
        ax.grid(alpha=0.3)
    ap_ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    acc_ax.set_title(f"Accuracy vs perturbation: {head}".replace("$", r"\$"), fontsize=10)
    ap_ax.set_title("AP vs perturbation", fontsize=10)
    return html_img(fig, f"accuracy and AP of {head} against each perturbation, per generator")


def protocol_set_source(protocol, root, test_set: str, work: Path, log: Callable[[str], None] = lambda s: None
                        ) -> tuple[str, dict]:
    """One test set of a benchmark as a manifest of its own: (manifest path, real pairing).

    The rows are the protocol's: every fake of the set (all its category folders) under the set's name, and
    its reals, its own or its pool's (then paired with ``{set: pool}``), so the set is one row as in the
    benchmark's table. The manifest is written to WORK/manifests/<set>.csv."""

    from item.protocols.layout import check_layout

    names = [p.name for p in protocol.parts("test")]
    if test_set not in names:
        raise InputError(f"--set {test_set!r}: not a test set of {protocol.name}. Available: {', '.join(names)}")
    part = next(p for p in protocol.parts("test") if p.name == test_set)
    layout = check_layout(protocol, root, ("test",))
    for line in layout.lines()[:2]:
        log(line)
    if ("test", test_set) in layout.missing_parts:
        why = next((m for m in layout.missing if m.startswith(f"test set {test_set!r}")), "missing")
        raise InputError(f"{protocol.name} test set {test_set!r} is not in {layout.root}: {why}")
    rows = [r for r in layout.rows("test") if r["generator"] in (test_set, part.pool or test_set)]
    path = Path(work) / "manifests" / f"{slug(test_set)}.csv"
    write_manifest(rows, path)
    return str(path), ({test_set: part.pool} if part.pool else {})


def run_robustness(source: str, head, work, cfg: RobustnessConfig = RobustnessConfig(), *,
                   protocol=None, test_set: str | None = None,
                   log: Callable[[str], None] = lambda s: None,
                   progress: Callable[[int], None] | None = None) -> dict:
    """Featurize ``source`` clean and under each perturbation, evaluate ``head`` on each; write the report.

    protocol, test_set: ``source`` is that benchmark's data folder and only ``test_set`` is used, as one row
    with the protocol's real pairing (see ``protocol_set_source``); otherwise rows are named by the folders
    detected in ``source``.
    Returns a JSON-ready dict: {'results': {spec: {generator: metrics}}, 'files', 'random_weights', ...}
    (metrics as fractions; spec '' is the clean images).
    """
    import html as _html

    from item.classify.heads import load_head
    from item.classify.reporting import write_report
    from item.classify.train import evaluate
    from item.featurize.inputs.perturb import parse_perturb
    from item.protocols import tables
    from item.store import StoreReader

    from dataclasses import replace

    work = Path(work)
    shown = str(source)
    if (protocol is None) != (test_set is None):
        raise InputError("--protocol and --set go together: the benchmark and the one test set of it to perturb")
    if protocol is not None:
        source, pairing = protocol_set_source(protocol, source, test_set, work, log)
        if cfg.reals and pairing:
            raise InputError(f"--reals with --protocol: {protocol.name} pairs {test_set} with its {pairing[test_set]} "
                             "reals already")
        cfg = replace(cfg, reals=pairing or cfg.reals)
        shown = f"{protocol.title} test set {test_set} ({shown})"
    specs = [""]
    for p in cfg.perturbs:
        canon = str(parse_perturb(p))
        if not canon:
            raise InputError(f"--perturb {p!r}: empty perturbation (the clean images are always included)")
        if canon not in specs:
            specs.append(canon)
    if len(specs) == 1:
        raise InputError("--perturb names no perturbation; e.g. --perturb jpeg:75,blur:1")
    _, info = load_head(head)
    models = spec_from_head(info)
    stores = {s: work / "stores" / slug(s) for s in specs}
    featurize_jobs([StoreJob((str(source),), stores[s], perturb=s) for s in specs], models=models, device=cfg.device,
                   batch_size=cfg.batch_size, workers=cfg.workers, log=log, progress=progress,
                   command="item robustness")
    results, evals = {}, {}
    for s in specs:
        evals[s] = evaluate(stores[s], [str(head)], None, reals=cfg.reals)
        r = next(iter(evals[s].values()))
        results[s] = {row["generator"]: {k: row[k] for k in ("n_real", "n_fake", "reals", "acc", "acc_05", "real_acc",
                                                             "fake_acc", "ap", "auroc")}
                      for row in r["table"]}
    with StoreReader(stores[""]) as reader:
        random_weights = bool(reader.random_weights)
    name = Path(head).name or str(head)
    first = next(iter(evals[""].values()))
    out = {"format": "item-robustness", "source": shown, "head": name, "head_path": str(head),
           "threshold": first["threshold"], "random_weights": random_weights,
           "note": tables.RANDOM_LINE if random_weights else "",
           "perturbations": specs, "stores": {s or "none": str(p) for s, p in stores.items()},
           "results": {s or "none": by for s, by in results.items()},
           "config": {"perturbs": list(cfg.perturbs), "reals": dict(cfg.reals), "device": cfg.device,
                      "batch_size": cfg.batch_size, "workers": cfg.workers, "work": str(work)}}
    files = {"json": work / "robustness.json", "markdown": work / "robustness.md", "html": work / "report.html"}
    out["files"] = {k: str(v) for k, v in files.items()}
    tables.write_json(out, files["json"])
    gens = sorted({g for by in results.values() for g in by if g != "mean"}) + ["mean"]
    md = [out["note"], ""] if random_weights else []
    md += [f"# Robustness of {name} on {shown}", "",
           f"Accuracy at the head's validation threshold ({first['threshold']:.4f}, never re-tuned) and AP, in "
           "percent, per perturbation (rows) and generator (columns).", "",
           "| perturbation | " + " | ".join(f"{g} acc | {g} AP" for g in gens) + " |",
           "|---|" + "---|" * (2 * len(gens))]
    for s in specs:
        md.append(f"| {s or 'none'} | " + " | ".join(
            f"{tables.pct(100 * results[s].get(g, {}).get('acc', float('nan')))} | "
            f"{tables.pct(100 * results[s].get(g, {}).get('ap', float('nan')))}" for g in gens) + " |")
    files["markdown"].write_text("\n".join(md) + "\n", encoding="utf-8")
    plot = _plot(results, specs, name)
    rows = [{"perturbation": s or "none", **{f"{g} acc": tables.pct(100 * results[s].get(g, {}).get("acc", float("nan")))
                                             for g in gens},
             **{f"{g} AP": tables.pct(100 * results[s].get(g, {}).get("ap", float("nan"))) for g in gens}}
            for s in specs]
    from item.classify.report import html_table

    section = (f'<p class="note">Each perturbation featurized into its own store under {_html.escape(str(work))}; '
               "accuracy at the head's validation threshold.</p>" + plot + html_table(rows))
    write_report(stores[""], [str(head)], files["html"], None, reals=cfg.reals, results=evals[""],
                 title=f"Robustness of {name}", extra_sections=[("Accuracy and AP against each perturbation", section)])
    return out
