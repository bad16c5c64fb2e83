"""What every model family shares: hub ids and revisions, cache folders, offline mode, devices, autocast,
and loading pretrained weights or building seeded random ones.

Every family module (clip, blip, grounding_dino, owlv2) imports from here; this module imports none of
them (only ``tiny``, the random builders, which import nothing of the project).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
from pathlib import Path

from item.errors import InputError, ModelLoadError


_hash_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (memoised on path, size and mtime for this process)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hash_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _hash_cache[key] = h.hexdigest()
    return _hash_cache[key]


def hf_cache_dir() -> str:
    """Where the Hugging Face hub cache lives now (HF_HOME / HF_HUB_CACHE aware)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers / open_clip
        return os.path.expanduser("~/.cache/huggingface/hub")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _weights_sha256(folder: Path) -> str | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return file_sha256(folder / name)
    return None


def hub_revision(repo: str, filename: str = "config.json") -> str | None:
    """The commit of ``repo`` whose ``filename`` the local Hugging Face cache holds (what was loaded), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo, filename)
    except Exception:  # an odd repo name or cache layout: the revision is simply not recorded
        return None
    if not isinstance(path, str):
        return None
    commit = Path(path).parent.name
    return commit if len(commit) == 40 and all(c in "0123456789abcdef" for c in commit) else None


def load_hf_pretrained(kind: str, name_or_path: str, model_cls, processor_cls, flag: str):
    """`model_cls.from_pretrained` + `processor_cls.from_pretrained` (HF cache or local folder).

    Returns (model, processor, source info dict). Raises ModelLoadError with one line naming the model,
    where it looked and what fixes it.
    """
    local = Path(name_or_path).expanduser()
    # Hub ids are 'name' or 'org/name'; anything else that looks like a path is treated as one.
    looks_local = local.exists() or name_or_path.startswith((".", os.sep, "~")) or name_or_path.count("/") > 1
    if looks_local and not local.is_dir():
        raise ModelLoadError(
            f"{kind} {name_or_path!r}: no such folder; pass a folder written by save_pretrained with {flag}"
        )
    try:
        model = model_cls.from_pretrained(str(local) if looks_local else name_or_path)
        processor = processor_cls.from_pretrained(str(local) if looks_local else name_or_path)
    except Exception as e:  # OSError (missing files / offline), ValueError (wrong model type), ...
        if looks_local:
            reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
            raise ModelLoadError(
                f"cannot load {kind} from {local} ({reason}); pass a folder written by save_pretrained with {flag}"
            ) from None
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the download failed"
        raise ModelLoadError(
            f"cannot load {kind} {name_or_path!r}: not in the Hugging Face cache {hf_cache_dir()} and {why}; "
            f"allow network access, set HF_HOME to a cache that holds it, or pass a local folder with {flag}"
        ) from None
    source = {"id": str(local.resolve()) if looks_local else name_or_path}
    revision = getattr(model.config, "_commit_hash", None) or (None if looks_local else hub_revision(name_or_path))
    if revision:
        source["revision"] = revision
    if looks_local:
        sha = _weights_sha256(local)
        if sha:
            source["weights_sha256"] = sha
    return model.eval(), processor, source


#: ``--precision``: the models' arithmetic on the CPU. fp32; bf16 (bfloat16 autocast); auto (bf16 where the CPU
#: computes bfloat16 natively, ``item.hardware.native_bfloat16``, else fp32). CUDA runs fp16 autocast.
PRECISIONS = ("fp32", "bf16", "auto")
#: What a store's identity records (compat ``precision``) for each arithmetic the models run in.
FP32, FP16_AUTOCAST, BF16_AUTOCAST = "fp32", "fp16-autocast", "bf16-autocast"
RUN_PRECISIONS = (FP32, FP16_AUTOCAST, BF16_AUTOCAST)


def check_precision(setting: str | None) -> str | None:
    """``setting`` when it is one of PRECISIONS (or None: the device's own); else InputError listing them."""
    if setting is not None and setting not in PRECISIONS:
        raise InputError(f"unknown precision {setting!r}; valid precisions: {', '.join(PRECISIONS)}")
    return setting


def resolve_precision(setting: str | None, device: str) -> str:
    """The arithmetic (one of RUN_PRECISIONS) the models run in on ``device`` under ``--precision setting``.

    None (the option left out) is the device's own: fp32 on the CPU, fp16 autocast on CUDA, as stores were
    always written. On CUDA ``auto`` is fp16 autocast too; ``fp32`` and ``bf16`` name the CPU's arithmetic and
    are refused there (InputError, one line), so no setting is ignored without a word."""
    check_precision(setting)
    if str(device).startswith("cuda"):
        if setting in (None, "auto"):
            return FP16_AUTOCAST
        raise InputError(f"--precision {setting} sets the arithmetic on the CPU; on CUDA the models run under fp16 "
                         "autocast: leave --precision out (or give auto), or use --device cpu")
    if setting == "bf16":
        return BF16_AUTOCAST
    if setting == "auto":
        from item.hardware import native_bfloat16

        return BF16_AUTOCAST if native_bfloat16() else FP32
    return FP32


#: Set inside ``run_precision()``: every model runs in this arithmetic, whatever it was loaded with (a context
#: variable, so a server's other threads keep their own setting).
_RUN_PRECISION: contextvars.ContextVar[str | None] = contextvars.ContextVar("item_run_precision", default=None)


@contextlib.contextmanager
def run_precision(precision: str):
    """Inside the block every model runs in ``precision`` (one of RUN_PRECISIONS) instead of its own: what
    ``item check`` compares a precision against fp32 with. Stores are never written this way (a store's
    identity records the precision its models were loaded with)."""
    if precision not in RUN_PRECISIONS:
        raise InputError(f"unknown run precision {precision!r}; valid: {', '.join(RUN_PRECISIONS)}")
    token = _RUN_PRECISION.set(precision)
    try:
        yield
    finally:
        _RUN_PRECISION.reset(token)


def full_precision():
    """Inside the block every model runs in fp32, on CUDA too (no autocast): the reference ``item check``
    compares fp16 (CUDA) and bf16 (CPU) autocast against."""
    return run_precision(FP32)


def precision_in_effect(device: str, precision: str | None = None) -> str:
    """The arithmetic a model on ``device`` loaded with ``precision`` (None: the device's own) runs in now."""
    return _RUN_PRECISION.get() or precision or (FP16_AUTOCAST if str(device).startswith("cuda") else FP32)


def autocast_for(device: str, precision: str | None = None):
    """The autocast context of a model on ``device`` loaded with ``precision`` (one of RUN_PRECISIONS; None:
    the device's own, fp16 autocast on CUDA and fp32 on the CPU), unless ``run_precision()`` says otherwise:
    fp16 or bfloat16 autocast, or nothing for fp32."""
    import torch

    p = precision_in_effect(device, precision)
    if p == FP32:
        return contextlib.nullcontext()
    kind = torch.device(str(device)).type
    if p == FP16_AUTOCAST and kind != "cuda":
        return contextlib.nullcontext()  # fp16 autocast is CUDA's; a CPU model asked for it stays in fp32
    return torch.autocast(kind, dtype=torch.float16 if p == FP16_AUTOCAST else torch.bfloat16)


def load_model_or_random(kind: str, name_or_path: str, builder, model_cls, processor_cls, flag: str, hint: str = ""):
    """(model, processor, source info, random_weights) for a random builder name or a real checkpoint.

    Shared by the captioner and the grounder: random names ('tiny-random', 'small-random',
    'default-random') call ``builder(name)``; anything else goes through ``load_hf_pretrained``.
    """
    from item.featurize.models import tiny

    if name_or_path in ("", "none"):
        raise InputError(f"{kind} is 'none': there is nothing to load{hint}")
    if name_or_path in tiny.RANDOM_NAMES:
        model, processor = builder(name_or_path)
        return model, processor, {"id": name_or_path, "seed": tiny.SEED}, True
    model, processor, source = load_hf_pretrained(kind, name_or_path, model_cls, processor_cls, flag)
    return model, processor, source, bool(getattr(model.config, "item_random_weights", False))


def to_device(tensor, device: str):
    """Host tensor -> device; through pinned memory with a non-blocking copy on CUDA."""
    if str(device).startswith("cuda"):
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if device != "cpu" and not device.startswith("cuda"):
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda[:N]")
    return device
