"""``item store ...``: info, validate, export, index."""

from __future__ import annotations

from pathlib import Path

import typer

from item.cli import emit, emit_json, guarded, info, progress_bar, table, warn

app = typer.Typer(no_args_is_help=True, add_completion=False)

StoreDir = typer.Argument(..., help="The store directory.", show_default=False)


@app.command("info")
@guarded
def info_cmd(store: Path = StoreDir,
             as_json: bool = typer.Option(False, "--json", help="Print JSON for other programs.")):
    """What a store holds: counts, skips by reason, models, groups, indexes."""
    from item.store import store_info

    d = store_info(store)
    if as_json:
        emit_json(d)
        return
    if d["random_weights"]:
        emit("RANDOM WEIGHTS: embeddings in this store come from randomly initialised models")
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
    emit("identity         " + ", ".join(f"{k}={v}" for k, v in d["identity"].items()))
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
    if spec.get("random_weights"):
        text += " (random weights)"
    return text


@app.command("validate")
@guarded
def validate_cmd(store: Path = StoreDir,
                 quick: bool = typer.Option(False, help="Skip reading every vector (shapes and counts only)."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON for other programs.")):
    """Check shapes, dtypes, counts, manifest vs shards, non-finite values, norms, index freshness.

    Exits 1 and lists the problems when the store is not valid.
    """
    from item.store import validate

    rep = validate(store, check_values=not quick)
    if as_json:
        emit_json({"ok": rep.ok, "problems": rep.problems, "warnings": rep.warnings})
    else:
        for w in rep.warnings:
            warn(w)
        for p in rep.problems:
            emit(f"problem: {p}")
        emit(f"{store}: {'valid' if rep.ok else f'{len(rep.problems)} problem(s)'}")
    if not rep.ok:
        raise typer.Exit(1)


@app.command("export")
@guarded
def export_cmd(store: Path = StoreDir,
               out: Path = typer.Option(..., "--out", "-o", help="Output file: .csv or .parquet.")):
    """Write the per-image metadata (one row per image and per duplicate path) as CSV or Parquet."""
    from item.store import export_metadata

    n = export_metadata(store, out)
    info(f"wrote {n} rows to {out}")


@app.command("index")
@guarded
def index_cmd(store: Path = StoreDir,
              kind: str = typer.Option("flat", help="flat (exact), hnsw (graph), ivfsq (8-bit codes, float16 "
                                       "re-ranking), ivfpq (compressed, re-ranked) or auto (chosen from the "
                                       "row count and --memory-budget)."),
              on: str = typer.Option("image", help="image: what does it look like? misalignment: how does it fail?"),
              hnsw_m: int = typer.Option(None, "--hnsw-m", help="HNSW: links per node (default 32)."),
              ef_search: int = typer.Option(None, help="HNSW: search breadth (default 128)."),
              nlist: int = typer.Option(None, help="IVF: inverted lists (default: ivfsq about sqrt(n), "
                                        "ivfpq about 4*sqrt(n))."),
              pq_m: int = typer.Option(None, "--pq-m", help="IVF-PQ: sub-quantizers (default dim/8)."),
              nprobe: int = typer.Option(None, help="IVF: lists probed per query (default ivfsq 16, ivfpq 32)."),
              target_recall: float = typer.Option(None, "--target-recall", help="Tune the search parameter "
                                                  "(efSearch / nprobe) at build time: the cheapest value whose "
                                                  "recall@10 on 500 held-out queries reaches this, recorded in "
                                                  "the sidecar."),
              memory_budget: str = typer.Option(None, "--memory-budget", help="Most memory the index may take "
                                                "(e.g. 4G, 512M); --kind auto fits the index to it."),
              device: str = typer.Option("cpu", help="cpu, cuda or auto: train IVF on the GPU when faiss has GPU "
                                         "support and sees one (the file stays a CPU index).")):
    """Build a FAISS index (cosine) over image embeddings or misalignment vectors."""
    from item.store import StoreReader, build_index

    params = {"M": hnsw_m, "ef_search": ef_search, "nlist": nlist, "m": pq_m, "nprobe": nprobe}
    with StoreReader(store) as r:
        total = r.counts["n_ok"]
    with progress_bar(total, f"indexing {on} ({kind})", unit="rows") as advance:
        side = build_index(store, on=on, kind=kind, params=params, progress=advance, memory_budget=memory_budget,
                           target_recall=target_recall, device=device)
    info(f"indexed {side['count']} rows: {store}/index/{on}-{side['kind']}.faiss "
         f"(about {side['memory_bytes'] / 2**20:.0f} MiB in memory)")
    tuning = side.get("tuning")
    if tuning:
        msg = (f"{tuning['param']} {tuning['chosen']}: recall@{tuning['k']} {tuning['recall_at_k']} on "
               f"{tuning['n_queries']} held-out queries (target {tuning['target_recall']})")
        (info if tuning["reached"] else warn)(msg if tuning["reached"] else msg + ": target not reached")
