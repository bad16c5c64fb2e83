"""``item demo``: the whole main job on the shipped sample images, start to finish.

featurize (samples -> store) -> train a hierarchical head and the visual baseline -> evaluate both
per generator -> write the HTML report. It calls the stages' public APIs in order; nothing here is
specific to the samples except where they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from item.errors import ModelLoadError

SAMPLES_MANIFEST = Path(__file__).resolve().parent / "samples" / "manifest.csv"


def demo_load_message(message: str) -> str:
    """A model-loading error in the demo's own terms: the loaders' advice names featurize's flags
    (--pretrained, --captioner, ...), which the demo does not take."""
    kept = [part for part in message.split("; ") if "--" not in part]
    return ("; ".join(kept) + "; the demo takes the pretrained weights from the Hugging Face cache (set HF_HOME to one "
            "that holds them, or allow network access), or runs offline with `item demo --models tiny-random`")


@dataclass
class DemoResult:
    store: Path
    heads: dict  # recipe -> head dir
    report: Path
    evaluation: dict  # head name -> per-generator table
    random_weights: bool
    summary: object


def run_demo(out_dir, *, models: str = "default", device: str = "auto", overwrite: bool = False,
             progress: Callable[[int], None] | None = None, log: Callable[[str], None] = lambda s: None) -> DemoResult:
    from item.classify.heads import HeadConfig
    from item.classify.reporting import write_report
    from item.classify.train import TrainConfig, train_head
    from item.featurize import FeaturizeConfig, featurize_store, load_models, resolve_models
    from item.featurize.inputs.discover import discover

    out = Path(out_dir)
    store = out / "store"
    spec = resolve_models(models)
    log(f"loading models ({models}{', RANDOM WEIGHTS' if spec.random_weights else ''}) ...")
    config = FeaturizeConfig(device=device, batch_size=8, workers=0)
    # The models load before anything is written: without the weights the demo fails and leaves no folder.
    try:
        loaded = load_models(spec, device)
    except ModelLoadError as exc:
        raise ModelLoadError(demo_load_message(str(exc))) from None
    rows = discover([str(SAMPLES_MANIFEST)]).rows
    log(f"featurizing {len(rows)} sample images into {store}")
    summary = featurize_store(rows, store, models=loaded, config=config, progress=progress, overwrite=overwrite,
                              command="item demo")
    heads = {}
    # The demo set is tiny: a small MLP, few epochs, and the logistic baseline beside it.
    head_cfg = HeadConfig(kind="mlp", hidden=(64,), max_epochs=100, patience=10, batch_size=16)
    for recipe in ("hierarchical", "visual"):
        heads[recipe] = out / f"head-{recipe}"
        log(f"training the {recipe} head -> {heads[recipe]}")
        train_head(store, heads[recipe], TrainConfig(recipe=recipe, head=head_cfg))
    report = out / "report.html"
    log(f"evaluating on the test split and writing {report}")
    results = write_report(store, list(heads.values()), report, split="test")
    return DemoResult(store, heads, report, {n: r["table"] for n, r in results.items()}, spec.random_weights, summary)
