"""``item featurize``: image files -> captions -> nouns -> grounded crops -> CLIP embeddings -> store."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from item.options import PRECISION_HELP, Precision, precision_value
from item.console import (RANDOM_WEIGHTS_LINE, emit, emit_json, guarded, info, progress_bar, stdout_for_json, table,
                          warn)


def featurize_cmd(
    sources: List[str] = typer.Argument(..., help="Folders (layout detected) or manifests (.csv / .jsonl).",
                                        show_default=False),
    store: Path = typer.Option(..., "--store", "-s", help="Store directory (created, or resumed when it exists)."),
    label: Optional[str] = typer.Option(None, help="Label for folders without label sub-folders: real|fake|unknown."),
    generator: Optional[str] = typer.Option(None, help="Generator name for rows whose layout or manifest gives "
                                           "none (without it they are 'unknown'; given, it names every row)."),
    split: Optional[str] = typer.Option(None, help="Split name (train|val|test) for rows whose layout gives none."),
    models: str = typer.Option("default", help="Model preset: default, small, fast, tiny-random, small-random, "
                               "default-random."),
    backbone: Optional[str] = typer.Option(None, help="Image-text backbone by name (overrides the preset's CLIP): "
                                           "openai-l14, pe-core-l14, metaclip2-h14, siglip2-so400m14, dfn5b-h14, "
                                           "mobileclip2-s2, ... (`item backbones` lists them all)."),
    clip: Optional[str] = typer.Option(None, help="open_clip model name (overrides the preset), e.g. ViT-L-14."),
    pretrained: Optional[str] = typer.Option(None, help="open_clip pretrained tag or a local checkpoint path."),
    captioner: Optional[str] = typer.Option(None, help="Captioner: HF id, local folder, or 'none' (then every "
                                            "row needs a caption from its manifest)."),
    grounder: Optional[str] = typer.Option(None, help="Grounder: HF id, local folder, random name or 'none' "
                                           "(global features only). Grounding DINO by default; OWLv2 "
                                           "(google/owlv2-base-patch16-ensemble, owlv2-random) is faster, "
                                           "its grounding quality for ITEM is not measured. Each family picks a "
                                           "noun's box by its reference's rule: Grounding DINO / MM-Grounding-DINO "
                                           "keep a query whose best token beats the box threshold and score a noun "
                                           "by the mean of its tokens (the authors' phrase score); OWLv2 gives each "
                                           "box its best query, so two nouns never share a box; OmDet-Turbo keeps "
                                           "transformers' post-processing. Images go to the grounder as its own "
                                           "processor resizes them, at any aspect ratio; one too small for the detector's "
                                           "feature maps (Grounding DINO: fewer cells than its 900 queries, beyond "
                                           "about 40:1) is not grounded (counted)."),
    ground_size: Optional[int] = typer.Option(None, help="Grounder input size, shortest side in pixels "
                                              "(default: the model's own, 800 for Grounding DINO). Smaller is "
                                              "faster; what it costs in quality only real weights can tell."),
    ground_batch_size: int = typer.Option(0, help="Images per grounder forward; 0: 4 on CUDA, 1 on CPU. Only "
                                          "images of one prepared shape share a forward, so it changes no box "
                                          "(recorded in the run's manifest entry)."),
    box_threshold: Optional[float] = typer.Option(None, help="Box threshold, kept strictly above (default: the "
                                                  "family's own: Grounding DINO 0.35, MM-Grounding-DINO 0.4 as in "
                                                  "transformers' example, OWLv2 0.1, OmDet-Turbo 0.3)."),
    text_threshold: Optional[float] = typer.Option(None, help="Text threshold on a noun's mean token score, kept "
                                                   "strictly above (Grounding DINO 0.25, MM-Grounding-DINO 0.3)."),
    max_objects: Optional[int] = typer.Option(None, help="At most this many nouns per caption are grounded "
                                              "(default 8; with --objects-from, OLD's, or fewer)."),
    objects_from: Optional[Path] = typer.Option(None, "--objects-from", help="A store of the same images whose "
                                                "captions, nouns, boxes and grounding decisions this run reuses "
                                                "(matched by content id): no captioner or grounder loads, only "
                                                "the CLIP given by --backbone / --clip / --models is run. Every "
                                                "input must be in OLD; OLD's captioner, grounder, thresholds, "
                                                "perturbation and max objects become this store's.",
                                                show_default=False),
    perturb: Optional[List[str]] = typer.Option(None, help="Robustness perturbation applied after decoding: "
                                                "jpeg:75, blur:1.0, resize:0.5; repeat or join with '+'."),
    batch_size: int = typer.Option(0, help="Images per batch (decoded together); 0: 64 on CUDA, 16 on CPU."),
    caption_batch_size: int = typer.Option(64, help="Images per captioner generate() (capped by --batch-size)."),
    clip_batch_size: int = typer.Option(256, help="Images or texts per CLIP forward pass."),
    workers: int = typer.Option(-1, help="Decoding processes (-1: auto, 0: in the main process)."),
    shard_size: int = typer.Option(1000, help="Image rows per store shard (at most this many are redone "
                                   "after a crash)."),
    max_pixels: Optional[int] = typer.Option(None, help="Decompression-bomb limit in pixels (default: "
                                             "Pillow's, 89,478,485); 0 removes the limit."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    precision: Optional[Precision] = typer.Option(None, help=PRECISION_HELP + " A store is resumed only under "
                                                  "the precision it was written with.", show_default=False),
    profile_stages: bool = typer.Option(False, "--profile-stages", help="Synchronise the GPU after every stage so "
                                        "that the summary's stage times are each stage's own (slower: no overlap)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete what the store holds and start afresh."),
    noun_prompt: str = typer.Option("photo", help="Text each noun is encoded as: photo ('a photo of a "
                                    "{noun}.') or bare ('{noun}'); recorded in the store."),
    caption_decoding: str = typer.Option("authors", help="How BLIP's captions are decoded: authors (the BLIP "
                                         "authors' captioning: prompt 'a picture of ', 3 beams, 5-20 tokens) or "
                                         "greedy (no prompt, greedy search, up to 30 new tokens: ITEM's decoding "
                                         "before); recorded in the store."),
    allow_mixed: bool = typer.Option(False, "--allow-mixed", help="Resume a store made under another library "
                                     "version, device class or precision (rounding-level differences only; "
                                     "device class and precision only where no captioner or grounder ran; "
                                     "the run records its own values)."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout."),
    augment: Optional[List[str]] = typer.Option(None, help="Train-time augmentation: also store a perturbed copy "
                                                "of every training-split image as a row of its own (id "
                                                "<sha256>+SPEC, its perturbation recorded), e.g. --augment "
                                                "jpeg:75 --augment blur:1.0. Never evaluated."),
    engine: str = typer.Option("local", help="local (this process) or ray (a Ray Data job; needs "
                               'pip install -e ".[ray]").'),
    ray_address: Optional[str] = typer.Option(None, help="With --engine ray: an existing cluster's address "
                                              "(auto, ray://HOST:10001); default: start a local cluster."),
    ray_actors: int = typer.Option(2, help="With --engine ray: model actors (each loads the models once)."),
    gpus_per_actor: float = typer.Option(0.0, help="With --engine ray: GPUs per model actor (e.g. 1, or 0.5 "
                                         "for two actors per GPU)."),
):
    """Featurize images into a store. Re-running the same command resumes where it stopped."""
    import dataclasses

    from item.featurize import FeaturizeConfig, featurize_store, resolve_models
    from item.featurize.inputs.decode import DEFAULT_MAX_PIXELS
    from item.featurize.inputs.discover import discover
    from item.featurize.inputs.perturb import parse_perturb

    from item.featurize.models.blip import check_caption_decoding

    check_caption_decoding(caption_decoding)  # refused before any input is read or model loaded
    perturbation = parse_perturb(perturb or None)
    old_random = False
    if objects_from is not None:
        old_random = _check_objects_from(objects_from, captioner=captioner, grounder=grounder, ground_size=ground_size,
                            box_threshold=box_threshold, text_threshold=text_threshold, augment=augment)
    spec = resolve_models(models, clip=clip, pretrained=pretrained, captioner=captioner, grounder=grounder,
                          ground_size=ground_size, backbone=backbone)
    if old_random:
        spec = dataclasses.replace(spec, random_weights=True)
    if spec.random_weights and not as_json:  # the first line, before discovery and hours of work
        emit(RANDOM_WEIGHTS_LINE)
    disc = discover(list(sources), label=label, generator=generator, split=split)
    for src, layout in disc.layouts.items():
        info(f"{src}: {layout}")
    for p in disc.problems[:20]:
        warn(p)
    if len(disc.problems) > 20:
        warn(f"... and {len(disc.problems) - 20} more problems")
    if not disc.rows:
        from item.errors import InputError

        raise InputError("no image found in the given sources")
    counts = disc.counts()
    table([{"generator": g, "label": lab, "images": n} for (g, lab), n in sorted(counts.items())],
          ["generator", "label", "images"], title=f"{len(disc.rows)} inputs:", stderr=True)
    given = {r.label for r in disc.rows if r.caption}
    missing = {r.label for r in disc.rows if not r.caption}
    if given and missing and given != missing and len(given | missing) > 1:
        warn("captions are given for some labels only: real and fake rows will be captioned by different "
             "sources, which a head can learn instead of misalignment")
    no_caption = [r for r in disc.rows if not r.caption]
    if spec.captioner == "none" and no_caption and objects_from is None:
        from item.errors import InputError

        # Refused before any model loads and before the store folder exists.
        raise InputError(f"--captioner none: {len(no_caption)} of {len(disc.rows)} inputs have no caption "
                         f"(first: {no_caption[0].origin}); give captions in a manifest's caption column, "
                         "or choose a captioner")
    if box_threshold is not None or text_threshold is not None:
        spec = dataclasses.replace(spec, box_threshold=spec.box_threshold if box_threshold is None else box_threshold,
                                   text_threshold=spec.text_threshold if text_threshold is None else text_threshold)
    config = FeaturizeConfig(
        batch_size=batch_size, clip_batch_size=clip_batch_size, caption_batch_size=caption_batch_size,
        ground_batch_size=ground_batch_size,
        max_objects=8 if max_objects is None else max_objects, workers=workers,
        shard_size=shard_size, perturb=str(perturbation), device=device, noun_prompt=noun_prompt,
        caption_decoding=caption_decoding,
        max_pixels=(None if max_pixels == 0 else (max_pixels or DEFAULT_MAX_PIXELS)),
        engine=engine, ray_address=ray_address, ray_actors=ray_actors, gpus_per_actor=gpus_per_actor,
        profile_stages=profile_stages, precision=precision_value(precision))
    command = "item featurize " + " ".join(sources)
    if objects_from is not None:
        info(f"captions, nouns and boxes from {objects_from}: loading the CLIP only ({spec.clip_model} "
             f"{spec.clip_pretrained or 'random'}) ...")
    info(f"loading models ({models}{', RANDOM WEIGHTS' if spec.random_weights else ''})"
         f"{' in ' + str(ray_actors) + ' Ray actors' if engine == 'ray' else ''} ...")
    if augment and engine != "local":
        from item.errors import InputError

        raise InputError("--augment runs in this process: use it with --engine local")
    with stdout_for_json(as_json):  # Ray and the models' libraries may print; --json keeps stdout for JSON
        run_models = spec
        if augment:  # loaded once, for the run and its augmented copies
            from item.featurize import load_models

            run_models = load_models(spec, device, precision_value(precision))
        with progress_bar(len(disc.rows), "featurizing") as advance:
            summary = featurize_store(disc.rows, store, models=run_models, config=config, progress=advance,
                                      overwrite=overwrite, command=command,
                                      allow_mixed=allow_mixed, objects_from=objects_from,
                                      max_objects=max_objects if objects_from is not None else None)
        for k, v in summary.mixed_identity.items():
            warn(f"--allow-mixed: {k} was {v['run']!r} in this run, the store's is {v['store']!r}")
        if augment:
            from item.featurize.inputs.augment import augment_store

            with progress_bar(None, "augmenting") as advance:
                augmented = augment_store(disc.rows, store, models=run_models, config=config, specs=augment,
                                          progress=advance, command=command)
            for aug, n in augmented.items():
                info(f"augmentation {aug}: {n} training copies written")
    _after_run_warnings(store, disc.rows, sources)
    if as_json:
        emit_json({**summary.to_json(), "random_weights": bool(spec.random_weights)})
        return
    info(f"done in {summary.seconds:.1f} s on {summary.device} ({summary.precision}): {summary.n_written} images written, "
         f"{summary.n_skipped} skipped, {summary.n_already_done} already in the store, "
         f"{summary.n_duplicates} duplicate paths ({summary.images_per_second:.2f} img/s)")
    for reason, n in sorted(summary.skipped_by_reason.items()):
        info(f"  skipped {n:>6}  {reason}")
    for path, reason in summary.skipped_examples[:5]:
        info(f"    e.g. {path}: {reason}")
    if summary.n_captions_without_nouns or summary.n_captions_not_english:
        info(f"captions: {summary.n_captions_without_nouns} without any noun, {summary.n_captions_not_english} "
             "not in English (the noun extractor reads English only: such rows get global features only)")
    if summary.n_not_grounded:
        info(f"grounding: {summary.n_not_grounded} images the grounder cannot take (too small a detector input "
             "after its processor's resize), their nouns left ungrounded (the row's reason says which)")
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in summary.stage_seconds.items())
    info(f"time per stage: {stages}")
    info(f"text cache: {summary.text_cache_hits} hits, {summary.text_cache_misses} misses "
         f"({100 * summary.text_cache_hit_rate:.0f}% hit rate)")


def _check_objects_from(path: Path, **given) -> bool:
    """--objects-from with an option that only a captioner or grounder would use: one line, before any work.
    True when OLD was made with random weights."""
    from item.errors import InputError
    from item.featurize.run.objects_from import ObjectsSource

    clash = [k for k, v in given.items() if v]
    if clash:
        opt = "--" + clash[0].replace("_", "-")
        raise InputError(f"--objects-from {path} takes captions, nouns and boxes from that store: {opt} does not "
                         "apply (no captioner or grounder runs)")
    if not path.is_dir():
        raise InputError(f"--objects-from {path}: no such store folder")
    source = ObjectsSource(path)
    try:
        return bool(source.compat.get("random_weights"))
    finally:
        source.close()


def _after_run_warnings(store: Path, rows, sources) -> None:
    """Rows without a label, and stored rows whose metadata this run's sources now contradict."""
    from item.store.annotate import conflict_message, input_conflicts, metadata_disagreements

    unlabelled = sum(r.label == "unknown" for r in rows)
    if unlabelled:
        warn(f"{unlabelled} of {len(rows)} inputs have no label (no label column or value; stored as 'unknown', "
             f"and no head trains on them): add labels and run `item store annotate {store} MANIFEST`")
    given = [(r.path, r.label, r.generator, r.split) for r in rows]
    conflicts = input_conflicts(store, given)
    if conflicts:  # the same bytes under two labels: no annotation can fix that, the manifest must be corrected
        warn(conflict_message(conflicts[0], len(conflicts)))
    diff = metadata_disagreements(store, given)
    if diff:
        n = len({d[0] for d in diff})
        path, field, have, given = diff[0]
        fields = ", ".join(sorted({d[1] for d in diff}))
        warn(f"{n} inputs already in the store are given other {fields} now (e.g. {path}: {field} {have!r} stored, "
             f"{given!r} given); featurize never changes stored rows: run `item store annotate {store} "
             f"{' '.join(sources)}` to apply them")


def backbones_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout."),
):
    """List the named image-text backbones (--backbone NAME): open_clip model and tag, embedding width,
    input size, preprocessing, activation, tokenizer and licence, as open_clip's configs give them."""
    from item.featurize.models.backbones import BACKBONES, DEFAULT_BACKBONE, describe

    rows = [describe(b) for b in BACKBONES.values()]
    if as_json:
        emit_json({"default": DEFAULT_BACKBONE, "backbones": rows})
        return

    def tok(t):
        return {"hf": f"hf:{t.get('hub')}", "siglip": "siglip-vocab (hub)", "clip-bpe": "clip-bpe"}[t["kind"]] \
            + f"/{t['context_length']}"

    table([{"backbone": r["name"] + (" *" if r["name"] == DEFAULT_BACKBONE else ""),
            "open_clip": f"{r['clip_model']} {r['pretrained']}", "dim": r["embed_dim"], "size": r["image_size"],
            "mean/std": "clip" if r["mean"][0] < 0.49 and r["mean"][0] > 0.48 else f"{r['mean'][0]:g}/{r['std'][0]:g}",
            "resize": f"{r['resize_mode']}/{r['interpolation']}", "act": r["activation"],
            "tokenizer": tok(r["tokenizer"]), "licence": r["licence"]}
           for r in rows],
          ["backbone", "open_clip", "dim", "size", "mean/std", "resize", "act", "tokenizer", "licence"])
    info("* the default. Any other open_clip model works with --clip NAME --pretrained TAG; a local checkpoint "
         "with --pretrained PATH (its open_clip_config.json decides architecture and preprocessing).")


def register(app: typer.Typer) -> None:
    app.command("featurize")(guarded(featurize_cmd))
    app.command("backbones")(guarded(backbones_cmd))
