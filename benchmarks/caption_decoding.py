"""Cost of the caption decodings: BLIP's authors' beam search (prompt, 3 beams, 5-20 tokens) against greedy.

    python benchmarks/caption_decoding.py --captioner small-random --n-images 8 --batch 8 --reps 2 \
        --threads 2 --out benchmarks/results/caption_decoding_cpu_small.json

Times `Captioner.caption_prepared` alone (images prepared beforehand, the model loaded once), decodings
alternated per repetition; reports seconds per image (median over repetitions) and the mean caption length
in tokens. RANDOM WEIGHTS with the random builder names (tiny-random, small-random = BLIP base's
architecture, default-random = BLIP large's): a random decoder rarely stops early, so both decodings run
close to their length limits; with real weights captions end sooner and the ratio may differ.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captioner", default="tiny-random", help="random builder name or a local BLIP folder")
    ap.add_argument("--n-images", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="images per generate()")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from benchmarks._common import write_result
    from item.featurize.models.blip import CAPTION_DECODINGS, load_captioner

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"loading {args.captioner} ...", file=sys.stderr)
    cap = load_captioner(args.captioner, args.device)
    random_weights = bool(cap.info.get("random_weights"))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (240 + 16 * (i % 5), 320, 3), dtype=np.uint8))
              for i in range(args.n_images)]
    pixels = [cap.prepare(im) for im in images]
    names = list(CAPTION_DECODINGS)
    times = {n: [] for n in names}
    lengths = {}
    for n in names:  # warm-up, and the captions' lengths
        caps = cap.caption_prepared(pixels[:args.batch], n)
        lengths[n] = statistics.mean(len(cap.processor.tokenizer(c).input_ids) - 2 for c in caps)
    for rep in range(args.reps):
        for n in (names if rep % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            for s in range(0, len(pixels), args.batch):
                cap.caption_prepared(pixels[s:s + args.batch], n)
            times[n].append((time.perf_counter() - t) / len(pixels))
            print(f"rep {rep} {n}: {times[n][-1] * 1000:.1f} ms/image", file=sys.stderr)
    results = [{"decoding": n, "settings": CAPTION_DECODINGS[n],
                "ms_per_image": round(1000 * statistics.median(times[n]), 2),
                "all_ms_per_image": [round(1000 * x, 2) for x in times[n]], "mean_caption_tokens": round(lengths[n], 2)}
               for n in names]
    ratio = results[0]["ms_per_image"] / results[1]["ms_per_image"]
    if random_weights:
        print("RANDOM WEIGHTS: captions mean nothing; only their cost is measured")
    print(f"captioner {args.captioner} on {args.device}, {args.n_images} images, batch {args.batch}, "
          f"{args.reps} reps, load average before {load[0]:.2f}")
    print(f"{'decoding':<10} {'ms/image':>10} {'tokens':>8}")
    for r in results:
        print(f"{r['decoding']:<10} {r['ms_per_image']:>10.1f} {r['mean_caption_tokens']:>8.1f}")
    print(f"authors / greedy: {ratio:.2f}x")
    write_result(args.out, "caption_decoding",
                 ("RANDOM WEIGHTS; " if random_weights else "") + f"load average before {load[0]:.2f}, "
                 f"after {os.getloadavg()[0]:.2f}", results, args.device, captioner=args.captioner,
                 n_images=args.n_images, batch=args.batch, reps=args.reps, authors_over_greedy=round(ratio, 3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
