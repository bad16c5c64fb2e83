"""``item store ...``: info, validate, export, index, split, annotate."""

from __future__ import annotations

from pathlib import Path

import typer

from item.console import (RANDOM_WEIGHTS_LINE, emit, emit_json, guarded, human_bytes, info, progress_bar, table,
                          warn)

app = typer.Typer(no_args_is_help=True, add_completion=False)

StoreDir = typer.Argument(..., help="The store directory.", show_default=False, metavar="DIR")


def _random(store) -> bool:
    """Whether the store's embeddings come from random weights (False when it cannot be read: a
    damaged store's command says what is wrong instead)."""
    from item.errors import ItemError
    from item.store import StoreReader

    try:
        with StoreReader(store) as r:
            return bool(r.random_weights)
    except (ItemError, OSError, ValueError, KeyError):
        return False


@app.command("info")
@guarded
def info_cmd(store: Path = StoreDir,
             as_json: bool = typer.Option(False, "--json", help="Print JSON for other programs.")):
    """What a store holds: counts, skips by reason, models, groups, indexes."""
    from item.store import store_info

    d = store_info(store)
    if d["state"] != "ok":
        d.setdefault("random_weights", False)
    if as_json:
        emit_json(d)
        return
    if d["state"] != "ok":
        emit(f"store            {d['store']}")
        emit(f"state            {d['state']}")
        return
    if d["random_weights"]:
        emit(RANDOM_WEIGHTS_LINE)
    emit(f"store            {d['store']}")
    emit(f"schema           {d['schema_version']} (written by item {d['package_version']})")
    emit(f"images           {d['n_images']} ({d['n_ok']} ok, {d['n_skipped']} skipped, "
         f"{d['n_aliases']} duplicate paths)")
    for reason, n in sorted(d["skipped_by_reason"].items()):
        emit(f"  skipped: {reason:<20} {n}")
    emit(f"objects          {d['n_objects']} ({d['n_grounded']} grounded)")
    emit(f"embed_dim        {d['embed_dim']}  misalignment_dim {d['misalignment_dim']} (recipe {d['recipe']})")
    emit(f"shards           {d['n_shards']}  ({d['bytes_on_disk'] / 1e6:.1f} MB on disk)")
    for role, spec in d["models"].items():
        emit(f"model {role:<10} {_describe_model(spec)}")
    for role, spec in d["extractors"].items():
        emit(f"extractor {role:<6} " + ", ".join(str(v) if k in ("extractor", "version") else f"{k} {v}"
                                                   for k, v in spec.items()))
    if d.get("objects_from"):
        o = d["objects_from"]
        emit(f"objects from     {o.get('store')} (fingerprint {str(o.get('fingerprint'))[:12]}: captions by "
             f"{o.get('captioner')}, boxes by {o.get('grounder')}, embedded there with {o.get('clip_model')} "
             f"{o.get('clip_pretrained') or 'random'})")
    ov = d["overlay"]
    emit("metadata overlay " + (f"version {ov['version']} ({ov['n_rows']} rows annotated, digest {ov['digest']}, "
                                 f"{ov['updated']})" if ov["version"] else "none (labels and splits as featurized)"))
    emit("identity         " + ", ".join(f"{k}={v}" for k, v in d["identity"].items()))
    c = d["captions"]
    emit(f"captions         {c['without_nouns']} without any noun, {c['not_english']} not in English "
         f"(counted in {c['runs_counted']} of {c['runs']} runs; nouns are read in English only)")
    if d["groups"]:
        table(d["groups"], ["generator", "label", "split", "n"], title="rows with status ok:")
    for ix in d["indexes"]:
        emit(f"index {ix['file']}: {ix.get('kind')} on {ix.get('on')}, {ix.get('count')} rows, "
             + ("fresh" if ix["fresh"] else ix["problem"]))


def _describe_model(spec) -> str:
    if not isinstance(spec, dict):
        return str(spec)
    keys = [k for k in ("model", "pretrained", "id", "name", "path") if spec.get(k)]
    text = " ".join(f"{spec[k]}" for k in keys) or "-"
    if spec.get("family"):  # a grounder's family (grounding-dino, owlv2, omdet-turbo, mm-grounding-dino)
        text += f" [{spec['family']}]"
    if spec.get("random_weights"):
        text += " (random weights)"
    return text


@app.command("validate")
@guarded
def validate_cmd(store: Path = StoreDir,
                 quick: bool = typer.Option(False, help="Skip reading every vector and the checksums (shapes, sizes "
                                            "and counts only)."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON for other programs.")):
    """Check shapes, dtypes, counts, sizes and checksums of the shards against the manifest, non-finite
    values, norms, and every index (opened, its checksums, freshness).

    Exits 1 and lists the problems when the store is not valid.
    """
    from item.store import validate

    rep = validate(store, check_values=not quick)
    random_weights = _random(store)
    if as_json:
        emit_json({"ok": rep.ok, "problems": rep.problems, "warnings": rep.warnings, "state": rep.state or "ok",
                   "random_weights": random_weights})
    else:
        if random_weights:
            emit(RANDOM_WEIGHTS_LINE)
        for w in rep.warnings:
            warn(w)
        for p in rep.problems:
            emit(f"problem: {p}")
        verdict = rep.state or "valid" if rep.ok else f"{len(rep.problems)} problem(s)"
        emit(f"{store}: {verdict}")
    if not rep.ok:
        raise typer.Exit(1)


@app.command("export")
@guarded
def export_cmd(store: Path = StoreDir,
               out: Path = typer.Option(..., "--out", "-o", help="Output file: .csv or .parquet.")):
    """Write the per-image metadata (one row per image and per duplicate path) as CSV or Parquet.

    In CSV, a text cell that starts with =, +, -, @, a tab or a carriage return (a path, caption or
    generator a spreadsheet would run as a formula) is written with a leading apostrophe, so the
    spreadsheet shows it as text (OWASP's CSV-injection guidance); `item store annotate` reads such a
    cell back without the apostrophe. Parquet keeps the raw values.
    """
    from item.store import export_metadata

    if _random(store):
        emit(RANDOM_WEIGHTS_LINE)
    n = export_metadata(store, out)
    info(f"wrote {n} rows to {out}")


@app.command("index")
@guarded
def index_cmd(store: Path = StoreDir,
              kind: str = typer.Option("flat", help="flat (exact), hnsw (graph), ivfsq (8-bit codes, float16 "
                                       "re-ranking), ivfpq (compressed, re-ranked), ivfpq4 (4-bit fast-scan "
                                       "codes in memory, float16 re-ranking from disk: tens of millions of rows) "
                                       "or auto (chosen from the row count and --memory-budget)."),
              on: str = typer.Option("image", help="image: what does it look like? misalignment: how does it fail?"),
              hnsw_m: int = typer.Option(None, "--hnsw-m", help="HNSW: links per node (default 32)."),
              ef_search: int = typer.Option(None, help="HNSW: search breadth (default 128)."),
              nlist: int = typer.Option(None, help="IVF: inverted lists (default: ivfsq about sqrt(n), "
                                        "ivfpq about 4*sqrt(n))."),
              pq_m: int = typer.Option(None, "--pq-m", help="IVF-PQ: sub-quantizers (default ivfpq dim/8, "
                                       "ivfpq4 dim/2, i.e. dim/4 bytes a vector)."),
              nprobe: int = typer.Option(None, help="IVF: lists probed per query (default ivfsq 16, ivfpq 32)."),
              target_recall: float = typer.Option(None, "--target-recall", help="Tune the search parameter "
                                                  "(efSearch / nprobe) at build time: the cheapest value whose "
                                                  "recall@10 on 500 held-out queries reaches this, recorded in "
                                                  "the sidecar; kinds that re-rank also deepen the re-ranking "
                                                  "(k_factor) when more lists stop helping."),
              memory_budget: str = typer.Option(None, "--memory-budget", help="Most memory the index may take "
                                                "(e.g. 4G, 512M); --kind auto fits the index to it."),
              device: str = typer.Option("cpu", help="cpu, cuda or auto: train IVF on the GPU when faiss has GPU "
                                         "support and sees one (the file stays a CPU index).")):
    """Build a FAISS index (cosine) over image embeddings or misalignment vectors."""
    from item.store import StoreReader, build_index

    params = {"M": hnsw_m, "ef_search": ef_search, "nlist": nlist, "m": pq_m, "nprobe": nprobe}
    with StoreReader(store) as r:
        total = r.counts["n_ok"]
        if r.random_weights:
            emit(RANDOM_WEIGHTS_LINE)
    with progress_bar(total, f"indexing {on} ({kind})", unit="rows") as advance:
        side = build_index(store, on=on, kind=kind, params=params, progress=advance, memory_budget=memory_budget,
                           target_recall=target_recall, device=device)
    on_disk = sum(int(f.get("bytes", 0)) for f in (side.get("files") or {}).values())
    info(f"indexed {side['count']} rows: {store}/index/{side['files']['faiss']['name']} ({human_bytes(on_disk)} on "
         f"disk, about {human_bytes(side['memory_bytes'])} in memory by the estimate"
         + (f"; {human_bytes(side['disk_bytes'])} of it float16 re-ranking copies, read from disk per query"
            if side.get("disk_bytes") else "") + ")")
    tuning = side.get("tuning")
    if tuning:
        depth = f", re-ranking {tuning['k_factor']} x k" if "k_factor" in tuning else ""
        msg = (f"{tuning['param']} {tuning['chosen']}{depth}: recall@{tuning['k']} {tuning['recall_at_k']} on "
               f"{tuning['n_queries']} held-out queries (target {tuning['target_recall']})")
        (info if tuning["reached"] else warn)(msg if tuning["reached"] else msg + ": target not reached")


@app.command("split")
@guarded
def split_cmd(store: Path = StoreDir,
              val: float = typer.Option(0.2, "--val", help="Fraction of each stratum for validation."),
              test: float = typer.Option(0.2, "--test", help="Fraction of each stratum for test."),
              by: str = typer.Option("generator", "--by", help="Stratify by generator (each generator's reals "
                                     "and fakes apart) or label."),
              seed: int = typer.Option(0, "--seed", help="Random seed."),
              overwrite: bool = typer.Option(False, "--overwrite", help="Reassign rows that already have a split."),
              new_only: bool = typer.Option(False, "--new-only", help="Split only the rows without a split (e.g. "
                                            "added after an earlier split); the others keep theirs."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON for other programs.")):
    """Assign train / val / test splits (seeded, stratified) in the metadata overlay; shards are not touched."""
    from item.store.annotate import split_store
    from item.store.reader import StoreReader

    StoreReader(store).close()  # a missing or malformed store fails here, with its one-line error
    res = split_store(store, val=val, test=test, by=by, seed=seed, overwrite=overwrite, new_only=new_only,
                      command=f"item store split {store} --val {val} --test {test} --by {by} --seed {seed}"
                              + (" --new-only" if new_only else ""))
    random_weights = _random(store)
    if as_json:
        emit_json({"overlay_version": res.version, "overlay_digest": res.digest, "n_changed": res.n_changed,
                   "counts": res.counts, "random_weights": random_weights})
        return
    if random_weights:
        emit(RANDOM_WEIGHTS_LINE)
    table(res.counts, ["split", "label", "n"], title=f"{store}: splits (metadata overlay version {res.version}, "
                                                      f"{res.n_changed} rows changed)")


@app.command("annotate")
@guarded
def annotate_cmd(store: Path = StoreDir,
                 manifest: Path = typer.Argument(..., help="CSV or JSON Lines with path (or id) and any of label, "
                                                 "generator, split.", show_default=False),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON for other programs.")):
    """Update label, generator and split of stored rows from a manifest, without re-encoding an image."""
    from item.store.annotate import annotate_store, updates_from_manifest
    from item.store.reader import StoreReader

    StoreReader(store).close()  # a missing or malformed store fails here, with its one-line error
    res = annotate_store(store, updates_from_manifest(manifest), command=f"item store annotate {store} {manifest}")
    random_weights = _random(store)
    warnings = list(res.warnings)
    if as_json:
        emit_json({"overlay_version": res.version, "overlay_digest": res.digest, "n_rows": res.n_rows,
                   "n_matched": res.n_matched, "n_changed": res.n_changed, "changed_by_field": res.changed_by_field,
                   "matched_by": res.matched_by,
                   "not_in_store": [{"origin": o, "path": p} for o, p in res.not_in_store],
                   "warnings": warnings, "random_weights": random_weights})
        for w in warnings:
            warn(w)
        return
    if random_weights:
        emit(RANDOM_WEIGHTS_LINE)
    for w in warnings:
        warn(w)
    for origin, what in res.not_in_store[:20]:
        warn(f"{origin}: not in the store: {what}")
    if len(res.not_in_store) > 20:
        warn(f"... and {len(res.not_in_store) - 20} more rows not in the store")
    fields = ", ".join(f"{k} {v}" for k, v in sorted(res.changed_by_field.items())) or "nothing new"
    emit(f"{store}: {res.n_matched} of {res.n_rows} manifest rows matched, {res.n_changed} images changed "
         f"({fields}); {len(res.not_in_store)} not in the store; metadata overlay version {res.version}")
