"""How a featurize run works: its frozen configuration and the names of its stages."""

from __future__ import annotations

from dataclasses import dataclass

from item.featurize.inputs.decode import DEFAULT_MAX_PIXELS
from item.featurize.text.nouns import DEFAULT_NOUN_PROMPT

#: How a run is executed: "local" (this process, decoding in worker processes) or "ray" (a Ray Data job).
ENGINES = ("local", "ray")
STAGES = ("decode", "caption", "ground", "clip_image", "clip_text", "write")


@dataclass(frozen=True)
class FeaturizeConfig:
    """How a run works (not what it computes, apart from max_objects, perturb and recipe)."""

    batch_size: int = 0  # images per batch (decoded together; shards end between batches); 0 = auto: 64 on CUDA, 16 on CPU
    max_objects: int = 8
    workers: int = -1  # decoding processes; -1 = auto (cores - 1, at most 4), 0 = in the main process
    shard_size: int = 1000  # image rows per shard: at most this many rows are redone after a kill
    flush_seconds: float = 600.0  # also close a shard after this long, whatever its size
    perturb: str = ""
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    device: str = "auto"
    # The models' arithmetic on the CPU (hub.PRECISIONS: fp32, bf16, auto; None: the device's own, fp32 on the CPU
    # and fp16 autocast on CUDA). Part of a store's identity (compat precision: hub.RUN_PRECISIONS).
    precision: str | None = None
    recipe: str = "hierarchical"
    clip_batch_size: int = 256  # images or texts per CLIP forward
    # Images per captioner generate(); the image batch caps it. BLIP on an H200: 21.7 ms an image at 16,
    # 5.7 ms at 64 (BENCHMARKS.md).
    caption_batch_size: int = 64
    # Images per grounder forward (--ground-batch-size); 0 = auto, the grounder's own (``auto_batch_size``):
    # Grounding DINO and OWLv2 4 on CUDA (H200: 27 ms an image at 4, 34 ms at 16, BENCHMARKS.md), OmDet-Turbo 16
    # (unmeasured: benchmarks/gpu_all.sh sweeps it); 1 on the CPU. Only images whose prepared inputs have one
    # shape share a forward (no image padding), so it changes no box beyond float rounding (a group's prompts
    # are padded to its longest: 3e-5 px on the samples, CPU). Recorded in each run's entry of the store
    # manifest, not in the store's identity.
    ground_batch_size: int = 0
    # Synchronise the GPU at the end of every stage so that the stage timers hold each stage's own GPU time
    # (``--profile-stages``). Off by default: a device-wide synchronize also waits for the overlapped CLIP
    # thread's kernels. The stored bits are the same either way.
    profile_stages: bool = False
    # Run the CLIP stage of batch i in a background thread while batch i+1 is captioned and grounded and
    # batch i-1 written (a bounded pipeline: at most two batches in flight). None = auto: on CUDA only (on the
    # CPU the two threads would share the same cores). The stored bits are the same either way.
    overlap: bool | None = None
    engine: str = "local"  # one of ENGINES
    ray_address: str | None = None  # an existing cluster ("auto", "ray://host:10001"); None starts a local one
    ray_actors: int = 2  # model actors in the pool (each loads the models once)
    gpus_per_actor: float = 0.0  # GPUs per model actor (0 on CPU; 1 or a fraction on GPU clusters)
    cpus_per_actor: float = 0.5  # below 1 so that actors and the decode tasks fit a small machine
    noun_prompt: str = DEFAULT_NOUN_PROMPT  # a name in nouns.NOUN_PROMPTS: the text each noun is encoded as
    # How BLIP's captions are decoded: a name in blip.CAPTION_DECODINGS ('authors': the BLIP authors' prompt and
    # beam search; 'greedy': no prompt, up to 30 new tokens). Part of a store's identity (compat caption_decoding).
    caption_decoding: str = "authors"
    # How the caller re-encoded the fakes before this run (item reproduce --align-format, e.g. 'jpeg:96'); ''
    # for files as given. Recorded in the store's identity (compat 'alignment'): aligned rows never mix with others.
    alignment: str = ""
    # --objects-from: a store whose captions, nouns and boxes this run takes (by content id) instead of
    # captioning and grounding (run.objects_from); '' for a full run. Its identity keys become the run's.
    objects_from: str = ""

    def resolved_batch_size(self, device: str) -> int:
        return self.batch_size or (64 if str(device).startswith("cuda") else 16)

    def resolved_ground_batch_size(self, device: str, auto: int | None = None) -> int:
        """Images per grounder forward: --ground-batch-size, else ``auto`` (the grounder's own), else 4 on
        CUDA and 1 on the CPU."""
        if self.ground_batch_size < 0:
            from item.errors import InputError

            raise InputError(f"--ground-batch-size must be 0 (auto) or more, got {self.ground_batch_size}")
        return self.ground_batch_size or auto or (4 if str(device).startswith("cuda") else 1)

    def resolved_overlap(self, device: str) -> bool:
        return str(device).startswith("cuda") if self.overlap is None else bool(self.overlap)
