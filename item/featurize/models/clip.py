"""CLIP encoder (open_clip): image_emb / crop_emb from pixels, caption_emb / noun_emb from text.

Pointing at local CLIP weights: pass the checkpoint file (``.safetensors``, ``.bin`` or ``.pt``) as
`pretrained`, e.g. ``load_clip('ViT-L-14', '/models/vit-l-14.safetensors')``; a folder holding one checkpoint
also works. For an architecture open_clip does not ship, put open_clip's ``open_clip_config.json``
(``{"model_cfg": ..., "preprocess_cfg": ...}``, as `item.featurize.models.tiny.save_tiny_models` writes it) beside
the checkpoint: it is registered under the given model name before loading.

Models are built as their weights were trained. The activation (QuickGELU or GELU) is an architecture
switch the weights carry, not the model name: open_clip 3.x builds ``ViT-L-14`` with plain GELU even for
``pretrained='openai'`` (whose weights were trained with QuickGELU) and only warns. Here it comes from,
in order: the pretrained tag's config (``open_clip.pretrained.get_pretrained_cfg``); for a local
checkpoint, ``model_cfg.quick_gelu`` of the ``open_clip_config.json`` beside it (the file open_clip's hub
repos carry); else the named model config (so OpenAI weights in a bare local file need the
``-quickgelu`` model name, e.g. ``--clip ViT-B-32-quickgelu``). A bare local checkpoint (no config beside
it) under a plain name whose OpenAI weights need QuickGELU (ViT-L-14, ViT-B-32, RN50, ...: open_clip's
``openai`` tag for the name says ``quick_gelu``) is refused: nothing says which activation it was trained
with, and building GELU for OpenAI weights computes other numbers without any error. open_clip's mismatch
warning is an error here, and the built model is checked to hold the activation it was asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from item.errors import InputError, ModelLoadError
from item.featurize.models.hub import (
    BF16_AUTOCAST, autocast_for, file_sha256, hf_cache_dir, hub_offline, precision_in_effect,
)

RANDOM_SEED = 0
#: The file a checkpoint folder is loaded from, first found first: open_clip's local-dir: order
#: (``open_clip.factory._find_checkpoint_in_dir``), so both read the same file of a folder holding several.
_CHECKPOINT_NAMES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
)
_PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


class _Preprocess:
    """Picklable callable: PIL image -> (3, H, W) float32 tensor (the model's own eval transform)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image)


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class ClipEncoder:
    """An open_clip model in eval mode, with its own preprocessing.

    Attributes:
        embed_dim: width of every embedding it returns.
        device: 'cpu' or 'cuda' (or 'cuda:N').
        context_length: text tokens per sequence (77 for CLIP); longer texts are truncated and flagged.
        transform: the eval transform, PIL image -> (3, H, W) float32 tensor; picklable.
        preprocess: the same as a picklable callable (hand it to DataLoader workers).
        info: JSON-able description: model, pretrained, embed_dim, image_size, preprocess (size, mean, std,
            interpolation, resize mode), preprocess_hash (sha256 of that dict's canonical JSON), weights
            (sha256 of the checkpoint file, the pretrained tag, or 'random-init-seed-0'), activation (what the
            built MLPs use: 'quick_gelu' or 'gelu'), activation_from, open_clip_version, random_weights.
    """

    def __init__(self, model, transform, tokenizer, info: dict, device: str):
        self.model = model
        self.transform = transform
        self.preprocess = _Preprocess(transform)
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.embed_dim = int(info["embed_dim"])
        self.context_length = int(getattr(model, "context_length", None) or getattr(tokenizer, "context_length", 77))
        self._bf16_model = None  # the bfloat16 copy the CPU runs under bf16 (``_runner``), made on first use
        self._bf16_lock = threading.Lock()

    #: The arithmetic it runs in (hub.RUN_PRECISIONS; None: the device's own); set by ``load_models``.
    precision: str | None = None

    def _autocast(self):
        return autocast_for(self.device, self.precision)

    def _runner(self):
        """(model, pixel dtype or None, context) for the precision in effect now.

        bfloat16 on the CPU runs a bfloat16 copy of the weights, made on first use and kept beside the float32
        model (which stays as loaded, so ``item check`` compares both on one load), instead of autocast. Under
        autocast torch refuses ``nn.MultiheadAttention``'s fused inference path ("autocast is enabled") and
        runs its Python path, whose input projection is a bfloat16 ``linear`` over a transposed (seq, batch,
        width) view; torch 2.14's CPU matmul cannot fold that view into one matrix product and broadcasts the
        weight to every token instead (one copy of the projection weight per token, per layer: ViT-L-14's
        image tower ran 20x slower than in float32, BENCHMARKS section 10). With bfloat16 weights and no
        autocast the fused path runs (tests/test_cpu_precision.py checks that no per-token weight copy is
        made). LayerNorm and softmax then run in bfloat16 too, where autocast would keep them in float32;
        ``item check`` measures the result against float32 with the same bound (cosine >= 0.999).
        CUDA's fp16 autocast is unchanged."""
        import torch

        if (precision_in_effect(self.device, self.precision) == BF16_AUTOCAST
                and torch.device(self.device).type == "cpu"):
            with self._bf16_lock:
                if self._bf16_model is None:
                    import copy

                    self._bf16_model = copy.deepcopy(self.model).to(torch.bfloat16).eval()
            return self._bf16_model, torch.bfloat16, contextlib.nullcontext()
        return self.model, None, self._autocast()

    def encode_images(self, pixels) -> np.ndarray:
        """(n, 3, H, W) float tensor from `preprocess` -> (n, embed_dim) float32, L2-normalised rows."""
        import torch

        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise InputError(f"encode_images wants (n, 3, H, W) pixels, got shape {tuple(pixels.shape)}")
        if len(pixels) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        model, dtype, context = self._runner()
        with torch.inference_mode(), context:
            emb = model.encode_image(pixels.to(self.device, dtype=dtype, non_blocking=True))
        emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb.cpu().numpy().astype(np.float32, copy=False)

    def count_tokens(self, texts: list[str]) -> np.ndarray:
        """(n,) int64: tokens of each text with its start/end tokens, before any truncation."""
        if not texts:
            return np.zeros(0, np.int64)
        # A BPE token covers at least one character, so this length never truncates.
        long_len = max(len(t) for t in texts) + 3
        ids = self.tokenizer(list(texts), context_length=long_len)
        pad_id = getattr(getattr(self.tokenizer, "tokenizer", None), "pad_token_id", None) or 0
        return (ids != pad_id).sum(dim=1).numpy().astype(np.int64)

    def encode_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> ((n, embed_dim) float32 L2-normalised, (n,) bool: truncated to context_length tokens)."""
        import torch

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32), np.zeros(0, bool)
        truncated = self.count_tokens(texts) > self.context_length
        tokens = self.tokenizer(texts, context_length=self.context_length)
        model, _, context = self._runner()
        with torch.inference_mode(), context:
            emb = model.encode_text(tokens.to(self.device))
        emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb.cpu().numpy().astype(np.float32, copy=False), truncated


def _find_checkpoint(path: Path) -> Path:
    if path.is_file():
        return path
    for name in _CHECKPOINT_NAMES:
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + sorted(path.glob("*.pt")) \
        + sorted(path.glob("*.pth"))
    if len(found) == 1:
        return found[0]
    raise ModelLoadError(
        f"CLIP checkpoint folder {path} holds {len(found)} checkpoint files, need exactly one; "
        f"pass the file itself with --pretrained"
    )


def _register_beside(model: str, checkpoint: Path) -> str:
    """The open_clip name to build ``checkpoint`` under. The ``open_clip_config.json`` beside a checkpoint
    describes its architecture, as open_clip's own ``local-dir:`` loading reads it: when its ``model_cfg``
    differs from the built-in config of ``model`` (or ``model`` is not built in), it is registered under a
    name of its own (``model`` when open_clip does not know it, else ``model`` + its hash) and built from."""
    import open_clip

    beside = _config_beside(checkpoint)
    if beside is None:
        if model not in open_clip.list_models():
            raise InputError(
                f"open_clip has no model config {model!r} and no open_clip_config.json sits beside {checkpoint}; "
                f"use a name from open_clip.list_models() or put the config beside the weights")
        return model
    if model in open_clip.list_models() and _canonical_json(open_clip.get_model_config(model)) == _canonical_json(beside):
        return model
    name = model if model not in open_clip.list_models() else \
        f"{model}-local-{hashlib.sha256(_canonical_json(beside).encode()).hexdigest()[:12]}"
    if name not in open_clip.list_models():
        cfg_dir = Path(tempfile.mkdtemp(prefix="item-open-clip-cfg-"))
        (cfg_dir / f"{name}.json").write_text(json.dumps(beside))
        open_clip.add_model_config(cfg_dir)
    return name


def _preprocess_beside(checkpoint: Path | None) -> dict:
    """The ``preprocess_cfg`` of the open_clip_config.json beside a checkpoint (mean, std, resize mode,
    interpolation, fill colour), as open_clip's ``local-dir:`` loading merges it over its defaults. Its
    ``size`` is left out: open_clip takes the built model's own image size, whatever the file says."""
    cfg_file = checkpoint.parent / "open_clip_config.json" if checkpoint is not None else None
    if cfg_file is None or not cfg_file.is_file():
        return {}
    try:
        pp = json.loads(cfg_file.read_text()).get("preprocess_cfg") or {}
    except (ValueError, AttributeError) as e:
        raise ModelLoadError(f"cannot read CLIP config {cfg_file}: {e}") from None
    if not isinstance(pp, dict):
        raise ModelLoadError(f"CLIP config {cfg_file}: preprocess_cfg is not an object")
    return {k: v for k, v in pp.items() if k in _PREPROCESS_KEYS and k != "size" and v is not None}


def _local_transform(merged: dict, base: dict, local_pp: dict, checkpoint: Path):
    """open_clip's eval transform for the preprocess config ``merged`` (``local_pp``, the file's preprocess_cfg,
    over the model's ``base``), tried on one small image. A value open_clip cannot build or apply (an
    interpolation or resize mode it has no transform for, a mean that is not numbers, ...) is one
    ModelLoadError line naming the file and the key, as open_clip's own checks find it: open_clip's
    ``local-dir:`` loading of the same folder stops there too, with a bare AssertionError."""
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
    from PIL import Image

    def build(cfg: dict):
        t = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        t(Image.new("RGB", (8, 6)))
        return t

    try:
        return build(merged)
    except Exception as e:  # open_clip asserts on values it has no transform for; torchvision raises on the rest
        bad = next((k for k in local_pp if _fails(build, merge_preprocess_dict(base, {k: local_pp[k]}))), None)
        what = f"{bad} {local_pp[bad]!r}" if bad else json.dumps(local_pp)
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120] or type(e).__name__
        import open_clip

        raise ModelLoadError(
            f"CLIP config {checkpoint.parent / 'open_clip_config.json'}: preprocess_cfg {what} is not one open_clip "
            f"{open_clip.__version__} can build ({reason}); correct the value in the file or leave the key out"
        ) from None


def _fails(build, cfg: dict) -> bool:
    try:
        build(cfg)
    except Exception:
        return True
    return False


def load_tokenizer(model: str, build_name: str | None = None, checkpoint: Path | None = None):
    """open_clip's tokenizer for ``model``, as ``open_clip.get_tokenizer`` builds it: for a local checkpoint
    with an open_clip_config.json beside it, as ``local-dir:`` builds it from that folder (the Hugging Face
    tokenizer files beside the weights when the config names one, else open_clip's BPE with the config's context
    length), whatever the model's name; else from the model config (the BPE vocabulary open_clip ships, a
    Hugging Face tokenizer from the hub cache, or SigLIP's vocabulary). A tokenizer that is not on this machine is one
    ModelLoadError line naming what is missing and how to fetch it."""
    import open_clip

    from item.featurize.models.backbones import tokenizer_source

    name = build_name or model
    beside = _config_beside(checkpoint)
    local_hf = (beside.get("text_cfg") or {}).get("hf_tokenizer_name") if beside is not None else None
    src = tokenizer_source(name)
    import logging

    logging.disable(logging.WARNING)
    try:
        if beside is not None:
            # Exactly local-dir:'s tokenizer: the folder's config decides (its Hugging Face tokenizer files,
            # or open_clip's BPE with the file's context length and kwargs). By name, open_clip would pick
            # SigLIP's tokenizer for any name holding 'siglip', whatever the file says.
            return open_clip.get_tokenizer("local-dir:" + str(checkpoint.parent))
        return open_clip.get_tokenizer(name)
    except Exception as e:  # hub errors (OSError, connection errors) or missing files: one line
        reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
        if local_hf:
            raise ModelLoadError(
                f"CLIP {model}: its open_clip_config.json names the Hugging Face tokenizer {local_hf!r} and its "
                f"files are not in {checkpoint.parent} ({reason}); copy the tokenizer files (tokenizer.json, "
                f"tokenizer_config.json, ...) beside the weights, e.g. `hf download {local_hf} tokenizer.json "
                f"tokenizer_config.json special_tokens_map.json --local-dir {checkpoint.parent}` where the hub is "
                "reachable") from None
        if src["kind"] == "hf":
            raise ModelLoadError(
                f"CLIP {model} needs the tokenizer {src['hub']!r} from the Hugging Face hub and it is not in the "
                f"cache {hf_cache_dir()}{' (HF_HUB_OFFLINE is set)' if hub_offline() else ''}: fetch it with "
                f"`hf download {src['hub']}` where the hub is reachable (or set HF_HOME to a cache that holds it)"
            ) from None
        if src["kind"] == "siglip":
            raise ModelLoadError(
                f"CLIP {model} needs SigLIP's tokenizer vocabulary {src['vocab']} and cannot read it ({reason}); "
                "allow network access once, or load the weights from a local folder that holds the tokenizer "
                "files and its open_clip_config.json") from None
        raise ModelLoadError(f"CLIP {model}: cannot build its tokenizer ({reason})") from None
    finally:
        logging.disable(logging.NOTSET)


def _marked_random(checkpoint: Path | None) -> bool:
    """True when the open_clip_config.json beside a checkpoint says its weights are random (tiny test models)."""
    cfg_file = checkpoint.parent / "open_clip_config.json" if checkpoint is not None else None
    if cfg_file is None or not cfg_file.is_file():
        return False
    try:
        return bool(json.loads(cfg_file.read_text()).get("item_random_weights", False))
    except ValueError:
        return False


def _config_beside(checkpoint: Path | None) -> dict | None:
    """model_cfg of the open_clip_config.json beside a checkpoint, or None when there is none."""
    cfg_file = checkpoint.parent / "open_clip_config.json" if checkpoint is not None else None
    if cfg_file is None or not cfg_file.is_file():
        return None
    try:
        cfg = json.loads(cfg_file.read_text())["model_cfg"]
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"cannot read CLIP config {cfg_file}: {e}") from None
    return cfg if isinstance(cfg, dict) else None


def check_bare_checkpoint(model: str, checkpoint: Path | None) -> None:
    """Refuse (InputError, one line) a local checkpoint with no open_clip_config.json beside it, under a
    model name without '-quickgelu' whose OpenAI weights were trained with QuickGELU: its activation is
    unknown, and GELU would be built silently."""
    import open_clip

    if checkpoint is None or _config_beside(checkpoint) is not None or model.endswith("-quickgelu"):
        return
    if (open_clip.get_model_config(model) or {}).get("quick_gelu"):
        return  # the model config itself says QuickGELU
    openai = open_clip.pretrained.get_pretrained_cfg(model, "openai") or {}
    if openai.get("quick_gelu"):
        raise InputError(
            f"CLIP {model} from {checkpoint}: nothing says whether these weights use QuickGELU (OpenAI's {model} "
            f"does) or GELU; pass --clip {model}-quickgelu for OpenAI weights, or put an open_clip_config.json "
            f"with model_cfg.quick_gelu beside the checkpoint")


def trained_activation(model: str, pretrained: str, checkpoint: Path | None = None) -> tuple[bool, str]:
    """(quick_gelu, where that came from) for the weights `pretrained` of `model`; see the module docstring."""
    import open_clip

    if pretrained and checkpoint is None:
        cfg = open_clip.pretrained.get_pretrained_cfg(model, pretrained)
        if cfg:
            return bool(cfg.get("quick_gelu", False)), f"pretrained tag {pretrained!r}"
    beside = _config_beside(checkpoint)
    if beside is not None:
        return bool(beside.get("quick_gelu", False)), "open_clip_config.json beside the checkpoint"
    return bool((open_clip.get_model_config(model) or {}).get("quick_gelu", False)), f"model config {model!r}"


def built_activation(model_obj) -> str:
    """What the built model's MLPs really use: 'quick_gelu', 'gelu', 'mixed' or 'other'."""
    import torch
    from open_clip.transformer import QuickGELU

    quick = any(isinstance(m, QuickGELU) for m in model_obj.modules())
    gelu = any(isinstance(m, torch.nn.GELU) for m in model_obj.modules())
    return {(True, False): "quick_gelu", (False, True): "gelu", (True, True): "mixed"}.get((quick, gelu), "other")


def _hub_source(model: str, tag: str) -> dict:
    """{'hub': repo, 'revision': commit} of the cached hub files a pretrained tag loaded, where known."""
    import open_clip

    from item.featurize.models.hub import hub_revision

    hub = (open_clip.pretrained.get_pretrained_cfg(model, tag) or {}).get("hf_hub", "").strip("/") if tag else ""
    if not hub:
        return {}
    revision = next(filter(None, (hub_revision(hub, f) for f in _CHECKPOINT_NAMES[:3])), None)
    return {"hub": hub, **({"revision": revision} if revision else {})}


def load_clip(model: str, pretrained: str, device: str = "cpu") -> ClipEncoder:
    """Load an open_clip model: `pretrained` is a tag ('openai'), a local checkpoint file / folder, or ''.

    '' builds the architecture with seeded random weights (the same every time; info['random_weights']
    is True). 'item-tiny-clip' is the tiny test architecture (registered on demand).
    Raises ModelLoadError (one line) when weights cannot be found or loaded, InputError for an unknown model.
    """
    import open_clip

    from item.featurize.models import tiny
    from item.featurize.models.presets import check_no_schema

    check_no_schema(model)
    check_no_schema(pretrained)
    if model == tiny.TINY_CLIP_MODEL:
        tiny.register_tiny_clip()
    checkpoint: Path | None = None
    if pretrained and (os.sep in pretrained or os.path.exists(pretrained)):
        if not os.path.exists(pretrained):
            raise ModelLoadError(
                f"CLIP {model} weights not found at {pretrained}; pass an existing checkpoint file with --pretrained"
            )
        checkpoint = _find_checkpoint(Path(pretrained))
    build_name = _register_beside(model, checkpoint) if checkpoint is not None else model
    if build_name not in open_clip.list_models():
        raise InputError(f"unknown CLIP model {model!r}; valid names: open_clip.list_models() (e.g. ViT-B-32, ViT-L-14)")

    # open_clip logs its own failures and its "initialized randomly" notice on the root logger; what
    # went wrong reaches the user as one ModelLoadError line below, and random weights are recorded.
    import logging
    import warnings

    check_bare_checkpoint(model, checkpoint)
    quick_gelu, quick_gelu_from = trained_activation(model, pretrained, checkpoint)
    switches: dict = {"force_quick_gelu": quick_gelu}
    if not quick_gelu and (open_clip.get_model_config(build_name) or {}).get("quick_gelu") and checkpoint is not None:
        switches["quick_gelu"] = False  # a '-quickgelu' name with GELU weights: the config beside them decides
    local_pp = _preprocess_beside(checkpoint)
    if local_pp:  # a value open_clip cannot build fails here, before any weight is read
        from dataclasses import asdict

        from open_clip.transform import PreprocessCfg, merge_preprocess_dict

        defaults = asdict(PreprocessCfg())
        _local_transform(merge_preprocess_dict(defaults, local_pp), defaults, local_pp, checkpoint)
    # The tokenizer first: a missing one (SigLIP 2's and MetaCLIP 2's come from the hub) fails in one line
    # before gigabytes of weights are read.
    tokenizer = load_tokenizer(model, build_name, checkpoint)
    logging.disable(logging.ERROR)
    try:
        # open_clip only warns when the activation it builds differs from the one the tag was trained with;
        # a model built that way computes other numbers than the pretrained one, so it is an error here.
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*QuickGELU mismatch.*")
            if pretrained:
                model_obj, _, transform = open_clip.create_model_and_transforms(
                    build_name, pretrained=str(checkpoint) if checkpoint else pretrained, device=device, **switches
                )
            else:
                with tiny.seeded(RANDOM_SEED):
                    model_obj, _, transform = open_clip.create_model_and_transforms(
                        build_name, pretrained=None, device=device, **switches)
    except UserWarning as w:
        raise ModelLoadError(
            f"CLIP {model} with weights {pretrained!r} would be built with another activation than the weights "
            f"were trained with ({str(w).splitlines()[0]}); open_clip {open_clip.__version__} cannot build this "
            f"combination as trained: pick a model name whose config matches the tag"
        ) from None
    except Exception as e:  # open_clip wraps hub / file errors in RuntimeError; keep the message to one line
        known = open_clip.list_pretrained_tags_by_model(model)
        if checkpoint is not None:
            reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
            raise ModelLoadError(
                f"cannot load CLIP {model} weights from {checkpoint} ({reason}); pass a checkpoint of this "
                f"architecture with --pretrained, or the matching model name with --clip"
            ) from None
        if pretrained not in known:
            raise ModelLoadError(
                f"CLIP {model} has no pretrained tag {pretrained!r} and no such file exists; "
                f"known tags: {', '.join(known) or 'none'}; or pass a local checkpoint file with --pretrained"
            ) from None
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the download failed"
        hub = (open_clip.pretrained.get_pretrained_cfg(model, pretrained) or {}).get("hf_hub", "").strip("/")
        fetch = f"allow network access once or fetch them with `hf download {hub}`, " if hub else "allow network access, "
        raise ModelLoadError(
            f"cannot load CLIP {model} weights {pretrained!r}{f' (hub repo {hub})' if hub else ''}: not in the "
            f"Hugging Face cache {hf_cache_dir()} and {why}; {fetch}set HF_HOME to a cache that holds them, "
            f"or pass a local checkpoint file with --pretrained"
        ) from None
    finally:
        logging.disable(logging.NOTSET)
    model_obj.eval()
    if local_pp:
        # The checkpoint's own preprocessing, as open_clip's local-dir: loading applies it: open_clip's
        # defaults, the file's preprocess_cfg over them, the built model's image size (factory.create_model).
        from open_clip.model import set_model_preprocess_cfg
        from open_clip.transform import merge_preprocess_dict

        base = dict(model_obj.visual.preprocess_cfg)
        merged = merge_preprocess_dict(base, local_pp)
        transform = _local_transform(merged, base, local_pp, checkpoint)
        set_model_preprocess_cfg(model_obj, merged)
    activation = built_activation(model_obj)
    if activation != ("quick_gelu" if quick_gelu else "gelu") and activation != "other":
        raise ModelLoadError(
            f"CLIP {model}: built with {activation} but its weights were trained with "
            f"{'quick_gelu' if quick_gelu else 'gelu'} (from {quick_gelu_from}); this open_clip "
            f"{open_clip.__version__} ignores the switch for this architecture"
        )
    pp = dict(model_obj.visual.preprocess_cfg)
    preprocess = {k: _jsonable(pp[k]) for k in _PREPROCESS_KEYS if k in pp}
    if checkpoint is not None:
        weights = "sha256:" + file_sha256(checkpoint)
    elif pretrained:
        weights = f"tag:{pretrained}"
    else:
        weights = f"random-init-seed-{RANDOM_SEED}"
    size = preprocess.get("size", 224)
    info = {
        "model": model,
        "pretrained": str(checkpoint) if checkpoint else pretrained,
        "embed_dim": int(open_clip.get_model_config(build_name)["embed_dim"]),
        **({"model_cfg_from": "open_clip_config.json beside the checkpoint"} if build_name != model else {}),
        "image_size": _jsonable(size),
        "preprocess": preprocess,
        "preprocess_hash": hashlib.sha256(_canonical_json(preprocess).encode()).hexdigest(),
        "weights": weights,
        **_hub_source(model, pretrained if checkpoint is None else ""),
        "activation": activation,
        "activation_from": quick_gelu_from,
        "open_clip_version": open_clip.__version__,
        "random_weights": not pretrained or _marked_random(checkpoint),
    }
    return ClipEncoder(model_obj, transform, tokenizer, info, device=str(device))
