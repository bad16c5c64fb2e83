"""OmDet-Turbo as a grounder: one box per caption noun, behind the same interface as Grounding DINO.

OmDet-Turbo (transformers' ``OmDetTurboForObjectDetection``; hub id ``omlab/omdet-turbo-swin-tiny-hf``,
Apache-2.0) takes a list of class names and a task prompt per image. Each image's nouns are its class
names, and its task is the prompt transformers' processor writes by default, "Detect man, bike, road.".
The class names are encoded one by one by the text tower (CLIP text, 77 tokens) and kept in the model's own
language caches, keyed by token ids: most nouns repeat across a run, so the text tower runs once per new
noun (the caches are enlarged here from the model's 100 entries to CLASS_CACHE_SIZE).

Box selection follows transformers' ``OmDetTurboProcessor.post_process_grounded_object_detection`` for
one image alone: score s[q, j] = sigmoid(class logit of query q for noun j); of the (query, noun) pairs,
only the n_queries best of the image survive its top-k; a pair is kept when s > box_threshold (strict,
as there; the processor's default threshold is 0.3); noun j's box is its kept query with the highest
s[q, j], and Box.score is that s. (The processor's per-class NMS never removes a class's best box.)
As for every grounder here, a box covering less than MIN_BOX_AREA pixels of the image is no box.
Boxes are relative to the whole resized image (the processor resizes to a fixed size without padding),
so they map to the original image by its width and height.

The reported numbers (om-ai-lab/OmDet README, commit 02117ef, "Model Zoo"): OmDet-Turbo-Tiny (Swin-T,
O365 + GoldG) zero-shot COCO 42.5 AP, LVIS 30.3 AP, 21.5 FPS in PyTorch and 140.0 FPS with TensorRT
(the README's speed figures are on an A100, with the language cache). **Its grounding quality for ITEM
is not measured here** (no real weights are reachable from this workplace), like OWLv2's.

Batching: a forward pads every image's class list to the batch's longest, and the padded classes take
part in the encoder's query selection, so images share a forward only with images of the same number of
nouns and the same input shape (an image's boxes then do not depend on its batch).
"""

from __future__ import annotations

from item.errors import InputError
from item.featurize.models.grounding import (MIN_BOX_AREA, Box, GroundImage, ImageTextProcessor, PreparedGrounder,
                                             ProcessorPrep, _pixel_boxes)
from item.featurize.models.hub import autocast_for, to_device

#: Random builder names of the OmDet-Turbo family (seeded random weights, built offline).
OMDET_RANDOM_NAMES = ("omdet-tiny-random", "omdet-random")
HUB_ID = "omlab/omdet-turbo-swin-tiny-hf"
#: transformers' default ``threshold`` of OmDet-Turbo's post-processing; the random presets pass 0.0.
DEFAULT_BOX_THRESHOLD = 0.3
#: The task prompt transformers' OmDetTurboProcessor writes when none is given.
TASK = "Detect {}."
#: Text tokens of a class name or task (OmDetTurboProcessor's text_kwargs: padding to max_length 77).
TEXT_LEN = 77
#: Entries of the class-name cache (the model's own LRU, enlarged): one embedding of 512 floats each.
CLASS_CACHE_SIZE = 20000
#: Images per forward when the run leaves it to the grounder (FeaturizeConfig.ground_batch_size 0).
AUTO_BATCH = {"cuda": 16, "cpu": 1}


#: The box selection rule, recorded in a store's identity (see grounding_dino.BOX_SELECTION): it names the
#: family, so a store grounded by OmDet-Turbo is never resumed by another detector family.
BOX_SELECTION = "omdet-turbo-top-pairs-1"


def clean_noun(noun: str) -> str:
    return " ".join(str(noun).lower().split()) or "object"


class OmDetPrep(ProcessorPrep):
    """Picklable image preparation: the processor resizes the whole image (boxes relative to the image)."""


def select_omdet(scores, rel_boxes, size: tuple[int, int], n_queries: int, box_threshold: float) -> list[Box | None]:
    """One Box (or None) per noun from one image's output (the rule in the module docstring).

    scores: (n_queries, n_nouns) float sigmoid class scores of this image's own nouns; rel_boxes:
    (n_queries, 4) float cx, cy, w, h relative to the image; size: the image's (width, height).
    """
    import torch

    width, height = size
    px, area = _pixel_boxes(rel_boxes, width, height, float(width), float(height))
    flat = scores.flatten()
    k = min(int(n_queries), flat.numel())
    # the image's top-k of (query, noun) pairs, as transformers' post-processing keeps them
    kth = flat.topk(k).values[-1]
    ok = (scores >= kth) & (scores > box_threshold)
    ok &= (area >= min(MIN_BOX_AREA, width * height))[:, None]
    cand = torch.where(ok, scores, torch.tensor(-1.0))
    best, q = cand.max(0)
    out: list[Box | None] = []
    for j in range(scores.shape[1]):
        if float(best[j]) < 0:
            out.append(None)
            continue
        x0, y0, x1, y1 = px[q[j]].tolist()
        out.append(Box(x0, y0, x1, y1, float(best[j])))
    return out


class OmDetGrounder(PreparedGrounder):
    """OmDet-Turbo, batched: one forward per group of images with the same noun count and input shape."""

    family = "omdet-turbo"

    def __init__(self, model, processor, info: dict, device: str, box_threshold: float):
        from transformers.models.omdet_turbo.modeling_omdet_turbo import OmDetTurboLRUCache

        self.model = model
        self.processor = processor
        self.info = info
        self.device = device
        self.box_threshold = float(box_threshold)
        self.text_threshold = 0.0  # one score per (query, class); kept for a uniform models_info
        self.max_text_len = TEXT_LEN
        self.prepare = OmDetPrep(processor.image_processor)
        # One pair of text caches per precision (see `_use_text_caches`); the model holds the pair in use.
        self._caches: dict = {}
        self._cache_key = None
        model.language_cache_class = OmDetTurboLRUCache(CLASS_CACHE_SIZE)
        self.text_hits = 0
        self.text_misses = 0

    def _use_text_caches(self) -> None:
        """Put the text caches of the precision in effect now into the model (call inside the forward's
        autocast context).

        transformers keeps each class and task embedding in the dtype it was computed in: fp16 embeddings
        cached under autocast fail a later fp32 pass on the same model ("mat1 and mat2 must have the same
        dtype"), or, where only some are old, silently feed fp16 embeddings to the fp32 reference. So each
        (device, parameter dtype, autocast dtype or none) has its own caches, kept for the grounder's life
        (switching back and forth, as ``item check`` does, recomputes nothing)."""
        import torch
        from transformers.models.omdet_turbo.modeling_omdet_turbo import OmDetTurboLRUCache

        kind = torch.device(self.device).type
        autocast = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
        key = (str(self.device), next(self.model.parameters()).dtype, autocast)
        if key == self._cache_key:
            return
        if self._cache_key is not None:
            self._caches[self._cache_key] = (self.model.language_cache_class, self.model.language_cache_prompt)
        fresh = (OmDetTurboLRUCache(CLASS_CACHE_SIZE), OmDetTurboLRUCache(self.model.config.cache_size))
        self.model.language_cache_class, self.model.language_cache_prompt = self._caches.pop(key, fresh)
        self._cache_key = key

    @property
    def ground_size(self) -> int:
        return _input_side(self.processor.image_processor)

    def auto_batch_size(self, device: str) -> int:
        return AUTO_BATCH["cuda" if str(device).startswith("cuda") else "cpu"]

    def model_inputs(self, prepared: list[GroundImage], nouns: list[list[str]]) -> dict:
        """The forward's inputs (on the device) for images of one group."""
        import torch

        tok = self.processor.tokenizer
        classes = [[clean_noun(n) for n in ns] for ns in nouns]
        kw = dict(padding="max_length", truncation=True, max_length=TEXT_LEN, return_tensors="pt")
        tasks = tok([TASK.format(", ".join(c)) for c in classes], **kw)
        flat = tok([c for cs in classes for c in cs], **kw)
        cache = self.model.language_cache_class
        for ids, mask in zip(flat["input_ids"], flat["attention_mask"]):
            if cache.has(tuple(ids[mask != 0].tolist())):
                self.text_hits += 1
            else:
                self.text_misses += 1
        inputs = {"pixel_values": torch.stack([p.pixel_values for p in prepared]),
                  "classes_input_ids": flat["input_ids"], "classes_attention_mask": flat["attention_mask"],
                  "tasks_input_ids": tasks["input_ids"], "tasks_attention_mask": tasks["attention_mask"],
                  "classes_structure": torch.tensor([len(c) for c in classes], dtype=torch.long)}
        return {k: to_device(v, self.device) for k, v in inputs.items()}

    def ground_prepared(self, prepared: list[GroundImage | None], nouns: list[list[str]]) -> list[list[Box | None]]:
        import torch

        result, todo = self._start(prepared, nouns)
        groups: dict = {}
        for i in todo:
            groups.setdefault((len(nouns[i]), tuple(prepared[i].pixel_values.shape)), []).append(i)
        for idx in groups.values():
            with torch.inference_mode(), autocast_for(self.device, self.precision):
                self._use_text_caches()
                inputs = self.model_inputs([prepared[i] for i in idx], [nouns[i] for i in idx])
                out = self.model(**inputs)
            scores = out.decoder_class_logits.float().sigmoid().cpu()  # (batch, n_queries, n_nouns)
            boxes = out.decoder_coord_logits.float().cpu()  # (batch, n_queries, 4) cx, cy, w, h relative
            for b, i in enumerate(idx):
                result[i] = select_omdet(scores[b, :, :len(nouns[i])], boxes[b], prepared[i].size,
                                         self.model.config.num_queries, self.box_threshold)
        return result


def _input_side(image_processor) -> int:
    size = image_processor.size
    get = size.get if hasattr(size, "get") else (lambda k: getattr(size, k, None))
    return int(get("height") or get("shortest_edge") or 0)


def omdet_config(name: str):
    """`OmDetTurboConfig` of a random OmDet-Turbo: 'omdet-tiny-random', or 'omdet-random' (the real
    omlab/omdet-turbo-swin-tiny-hf architecture: transformers' defaults, a timm Swin-T backbone at 640 px
    and a CLIP text tower, 49408 tokens)."""
    from transformers import CLIPTextConfig, OmDetTurboConfig, SwinConfig

    from item.featurize.models.tiny import _wordpiece_vocab

    if name == "omdet-tiny-random":
        vocab = dict(_wordpiece_vocab(None))
        backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                              window_size=4, out_features=["stage2", "stage3", "stage4"])
        # The text width must equal class_embed_dim (the task features enter the decoder at that width), and
        # class_embed_dim must differ from decoder_hidden_dim (transformers 5.x builds the task projection
        # only then, and the decoder uses it unconditionally).
        text = CLIPTextConfig(vocab_size=len(vocab), hidden_size=24, intermediate_size=37, num_hidden_layers=1,
                              num_attention_heads=2, max_position_embeddings=TEXT_LEN, pad_token_id=vocab["[PAD]"],
                              bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"], projection_dim=24)
        config = OmDetTurboConfig(
            backbone_config=backbone, text_config=text, use_timm_backbone=False, image_size=64,
            apply_layernorm_after_vision_backbone=False,  # the HF Swin backbone returns channels-first maps
            text_projection_in_dim=24, text_projection_out_dim=24, class_embed_dim=24, task_encoder_hidden_dim=32,
            num_queries=30, encoder_in_channels=[16, 32, 64], vision_features_channels=[32, 32, 32],
            encoder_hidden_dim=32, decoder_hidden_dim=32, encoder_dim_feedforward=32, decoder_dim_feedforward=32,
            encoder_attention_heads=2, decoder_num_heads=2, decoder_num_layers=1, decoder_num_points=2)
    elif name == "omdet-random":
        config = OmDetTurboConfig()  # transformers documents its defaults as omlab/omdet-turbo-swin-tiny-hf's
    else:
        raise ValueError(f"not a random OmDet-Turbo name: {name!r}")
    config.item_random_weights = True
    return config


def build_omdet(name: str):
    """(OmDetTurboForObjectDetection in eval mode, processor) with seeded random weights, built offline.

    The processor is a fixed-size resize (the config's image size) with ImageNet normalisation, and the
    project's WordPiece tokenizer (no CLIP vocabulary is on disk here) padded to the text tower's vocabulary."""
    from transformers import DetrImageProcessor, OmDetTurboForObjectDetection

    from item.featurize.models.tiny import build_tokenizer, seeded

    config = omdet_config(name)
    with seeded():
        model = OmDetTurboForObjectDetection(config).eval()
    side = int(config.image_size if isinstance(config.image_size, int) else config.image_size[0])
    image_processor = DetrImageProcessor(size={"height": side, "width": side}, do_pad=False)
    tokenizer = build_tokenizer(None if name == "omdet-tiny-random" else config.text_config.vocab_size)
    return model, ImageTextProcessor(image_processor, tokenizer)


def load_omdet(name_or_path: str, device: str = "cpu", box_threshold: float = DEFAULT_BOX_THRESHOLD,
               ground_size: int | None = None) -> OmDetGrounder:
    """OmDet-Turbo from a hub id, a local `save_pretrained` folder, or a random name (OMDET_RANDOM_NAMES).

    The real checkpoint's config asks for a timm backbone (``pip install timm``). ``ground_size`` other than
    the model's own input size is refused (its position embeddings are built for that size)."""
    from transformers import AutoProcessor, OmDetTurboForObjectDetection

    from item.featurize.models.hub import load_hf_pretrained
    from item.featurize.models.tiny import SEED

    if name_or_path in OMDET_RANDOM_NAMES:
        model, processor = build_omdet(name_or_path)
        source, random_weights = {"id": name_or_path, "seed": SEED}, True
    else:
        model, processor, source = load_hf_pretrained("grounder", name_or_path, OmDetTurboForObjectDetection,
                                                      AutoProcessor, "--grounder")
        random_weights = bool(getattr(model.config, "item_random_weights", False))
    native = _input_side(processor.image_processor)
    if ground_size and int(ground_size) != native:
        raise InputError(f"--ground-size {ground_size}: OmDet-Turbo runs at its own input size {native} here")
    model.to(device)
    size = processor.image_processor.size
    info = {
        **source, "class": type(model).__name__, "family": "omdet-turbo", "random_weights": random_weights,
        "box_threshold": float(box_threshold), "ground_size": native,
        "input_size": dict(size) if size is not None else None, "min_box_area": MIN_BOX_AREA,
        "prompt": "classes: the nouns (lower-case); task: " + TASK.format("noun, noun"),
        "noun_score": "sigmoid of the class logit; the image's top n_queries (query, noun) pairs, score > box_threshold",
        "box_selection": BOX_SELECTION,
        "text_cache": f"the model's class-embedding LRU, {CLASS_CACHE_SIZE} entries",
        "quality": "not measured in this project (no real weights were reachable)",
    }
    return OmDetGrounder(model, processor, info, str(device), box_threshold)
