"""Storage: bytes per image and per object on disk, write and read throughput of the store.

    python benchmarks/storage.py --images 20000 --embed-dim 768 --out r.json

Records are seeded synthetic ones (item.store.synthetic: clustered embeddings, 0-4 objects an image,
mean 2) generated in memory first, so the write time is StoreWriter alone (validation, HDF5 shards,
manifest), not the generator. Reads: every image's image_emb and caption_emb, then every object's
crop_emb and noun_emb, then the hierarchical feature matrix (item.classify.features.store_features).
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

NOTE = "synthetic seeded embeddings (no model): sizes and speeds depend on shapes only"


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--embed-dim", type=int, default=768)
    ap.add_argument("--shard-size", type=int, default=1000, help="the featurize default")
    ap.add_argument("--recipe", default="hierarchical")
    ap.add_argument("--dir", default="", help="where to write the store (default: a temp dir, removed after)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    from item.classify.features import store_features
    from item.misalignment import compute, feature_size
    from item.store import StoreReader, schema
    from item.store.synthetic import synthetic_compat, synthetic_records
    from item.store.writer import StoreWriter

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    mdim = feature_size(args.recipe, args.embed_dim)
    t = time.perf_counter()
    records = list(synthetic_records(args.images, args.embed_dim, misalignment_fn=functools.partial(compute, args.recipe),
                                     misalignment_dim=mdim))
    log(f"generated {len(records)} records in {time.perf_counter() - t:.1f} s")
    n_obj = sum(len(r.objects) for r in records)
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="item-bench-storage-"))
    root = base / "store"
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    with StoreWriter(root, compat=synthetic_compat(args.embed_dim, mdim, args.recipe),
                     models={"clip": {"model": "synthetic", "random_weights": True}}, recipe=args.recipe,
                     shard_size=args.shard_size) as w:
        for rec in records:
            w.add(rec)
    write_s = time.perf_counter() - t
    del records
    size = du(root)
    d = args.embed_dim
    # What the bytes are: per image image_emb + caption_emb (float16) + misalignment (float32 here: see the
    # schema) + metadata; per object crop_emb + noun_emb + box and score.
    with StoreReader(root) as r:
        dtypes = {"embeddings": schema.EMB_DTYPE, "misalignment": schema.VEC_DTYPE}
        t = time.perf_counter()
        r.read(schema.IMAGE_EMB)
        r.read(schema.CAPTION_EMB)
        read_img_s = time.perf_counter() - t
        t = time.perf_counter()
        objs = r.objects(columns=[schema.CROP_EMB, schema.NOUN_EMB])
        read_obj_s = time.perf_counter() - t
        t = time.perf_counter()
        X = store_features(r, args.recipe, r.select())
        feat_s = time.perf_counter() - t
        n_shards = len(r.shards)
    emb_bytes_img = 2 * d * 2
    mis_bytes = mdim * np.dtype(schema.VEC_DTYPE).itemsize
    res = {
        "images": args.images, "objects": n_obj, "embed_dim": d, "shard_size": args.shard_size, "shards": n_shards,
        "dtypes": dtypes, "bytes_on_disk": size, "bytes_per_image_all": round(size / args.images),
        "raw_embedding_bytes_per_image_fp16": emb_bytes_img,
        "misalignment_bytes_per_image": mis_bytes, "raw_embedding_bytes_per_object_fp16": 2 * d * 2,
        "write_seconds": round(write_s, 2), "write_images_per_s": round(args.images / write_s),
        "write_mb_per_s": round(size / write_s / 1e6, 1),
        "read_image_and_caption_emb_images_per_s": round(args.images / read_img_s),
        "read_objects_per_s": round(len(objs[schema.CROP_EMB]) / read_obj_s),
        "features_rows_per_s": round(X.shape[0] / feat_s), "n_features": int(X.shape[1]),
    }
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    print(f"# {NOTE}")
    print("| images | objects | bytes/image (all, on disk) | image+caption emb | misalignment | per object (2 emb) | "
          "write img/s | write MB/s | read img+cap emb img/s | read objects/s | features rows/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {res['images']} | {res['objects']} | {res['bytes_per_image_all']} | {emb_bytes_img} | {mis_bytes} | {2 * d * 2} | "
          f"{res['write_images_per_s']} | {res['write_mb_per_s']} | {res['read_image_and_caption_emb_images_per_s']} | "
          f"{res['read_objects_per_s']} | {res['features_rows_per_s']} |")
    log(f"dtypes: {dtypes}")
    write_result(args.out, "storage", NOTE, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
