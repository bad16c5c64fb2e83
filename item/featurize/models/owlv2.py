"""OWLv2 as a grounder: one box per caption noun, behind the same interface as Grounding DINO.

OWLv2 (transformers' ``Owlv2ForObjectDetection``) scores every image patch's box against each text
query. Each noun is one query, "a photo of a {noun}" (OWL's own prompt style), so nouns never share
tokens and need no character spans.

Box selection is transformers' ``Owlv2ImageProcessor.post_process_object_detection`` for the image alone
(read in transformers 5.25): each patch's box gets one label, its best query (argmax over the image's own
queries), and the score s[p] = sigmoid of that query's logit; a box is kept when s[p] > box_threshold
(strictly). Noun j's box is the kept box labelled j with the highest score, among those covering at least
MIN_BOX_AREA pixels of the image (a box in the square's padding is no box); a noun no box is labelled with
stays ungrounded (None). So two nouns never share one box: near-synonyms and part/whole nouns compete for
each box as the reference makes them (the rule before, 'owlv2-best-patch-1', gave each noun its best patch
whatever that patch's label, and grounded nouns the reference leaves ungrounded).

The image processor pads each image to a square (bottom and right) and resizes it to the model's input
size (960 for google/owlv2-base-patch16-ensemble); boxes come back relative to that square and are mapped
to pixels of the original image and clipped inside it.

**Quality unknown here**: no real OWLv2 weights are reachable from this workplace, so whether its boxes
serve ITEM's misalignment as well as Grounding DINO's has not been measured. Speed is measured with
random weights of the real architecture (``owlv2-random``); ``owlv2-tiny-random`` is for tests.
"""

from __future__ import annotations

from item.errors import InputError
from item.featurize.models.grounding import (MIN_BOX_AREA, Box, GroundImage, ImageTextProcessor, PreparedGrounder,
                                             ProcessorPrep, _pixel_boxes)
from item.featurize.models.hub import autocast_for, to_device

#: Random builder names of the OWLv2 family (seeded random weights, built offline).
OWL_RANDOM_NAMES = ("owlv2-tiny-random", "owlv2-random")
PROMPT = "a photo of a {}"
#: The box selection rule, recorded in a store's identity (see grounding_dino.BOX_SELECTION).
BOX_SELECTION = "owlv2-argmax-label-2"
#: OWLv2's own detection threshold in its examples; the random presets pass 0.0.
DEFAULT_BOX_THRESHOLD = 0.1


#: OWLv2's processor pads an image to the square of its longest side at full resolution before resizing
#: (float32): beyond this side that canvas alone is over 3 GB (a 1x50000 strip would take 30 GB), so such an
#: image is not grounded (its row's reason says so).
MAX_PAD_SIDE = 16384


class OwlPrep(ProcessorPrep):
    """Picklable image preparation: the processor pads the image to a square (boxes relative to it)."""

    def padded(self, size: tuple[int, int]) -> tuple[float, float]:
        side = max(size)
        return side, side

    def __call__(self, image):
        if max(image.size) > MAX_PAD_SIDE:
            return None
        return super().__call__(image)


class OwlGrounder(PreparedGrounder):
    """OWLv2, batched: one forward per group of equally shaped inputs (every input is one square, so one per
    `ground_prepared` call), every image's nouns as its text queries."""

    family = "owlv2"
    too_small = (f"not grounded: OWLv2's processor pads an image to the square of its longest side; beyond "
                 f"{MAX_PAD_SIDE} px that canvas alone is over 3 GB")

    def __init__(self, model, processor, info: dict, device: str, box_threshold: float):
        self.model = model
        self.processor = processor
        self.info = info
        self.device = device
        self.box_threshold = float(box_threshold)
        self.text_threshold = 0.0  # OWLv2 has one score per query; kept for a uniform models_info
        self.max_text_len = int(model.config.text_config.max_position_embeddings)
        self.prepare = OwlPrep(processor.image_processor)

    @property
    def ground_size(self) -> int:
        return _square_size(self.processor.image_processor)

    def ground_batch(self, prepared: list[GroundImage], nouns: list[list[str]]) -> list[list[Box | None]]:
        """One forward over `prepare` outputs (all one square shape) and their nouns."""
        import torch

        n_q = max(len(n) for n in nouns)
        # Every image gets n_q queries (the model wants a rectangle); padding queries are ignored below, and
        # each query's embedding is computed on its own, so the padding changes no other query's score.
        texts = []
        for ns in nouns:
            qs = [PROMPT.format(" ".join(str(n).lower().split()) or "object") for n in ns]
            texts.extend(qs + [""] * (n_q - len(qs)))
        tok = self.processor.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_text_len,
                                       return_tensors="pt")
        pixel_values = torch.stack([g.pixel_values for g in prepared])
        inputs = {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"],
                  "pixel_values": pixel_values}
        inputs = {k: to_device(v, self.device) for k, v in inputs.items()}
        with torch.inference_mode(), autocast_for(self.device, self.precision):
            out = self.model(**inputs)
        logits = out.logits.float().cpu()  # (batch, n_patches, n_q)
        boxes = out.pred_boxes.float().cpu()  # (batch, n_patches, 4) cx, cy, w, h relative to the square
        result: list[list[Box | None]] = []
        for b, (g, ns) in enumerate(zip(prepared, nouns)):
            width, height = g.size
            side_w, side_h = g.padded
            result.append(select_owl(logits[b, :, :len(ns)], boxes[b], g.size, g.padded, self.box_threshold))
        return result


def select_owl(logits, rel_boxes, size: tuple[int, int], padded: tuple[float, float],
               box_threshold: float) -> list[Box | None]:
    """One Box (or None) per noun from one image's OWLv2 output (the rule in the module docstring).

    logits: (n_patches, n_nouns) float logits of the image's own queries (padding queries of a batch left
    out; the label is the argmax of the logits, as the reference takes it, since sigmoids saturate to equal
    1.0 where logits still differ); rel_boxes: (n_patches, 4) float cx, cy, w, h relative to the padded square; size: the image's
    (width, height); padded: the square's (width, height) in the image's pixels."""
    import torch

    width, height = size
    px, area = _pixel_boxes(rel_boxes, width, height, *padded)
    best, label = logits.max(-1)  # (n_patches,) each box's one label, as the reference gives it
    score = best.sigmoid()
    ok = (score > box_threshold) & (area >= min(MIN_BOX_AREA, width * height))
    found: list[Box | None] = []
    for j in range(logits.shape[1]):
        mine = torch.where(ok & (label == j), score, torch.tensor(-1.0))
        best, patch = mine.max(0)
        if float(best) < 0:
            found.append(None)
            continue
        x0, y0, x1, y1 = px[patch].tolist()
        found.append(Box(x0, y0, x1, y1, float(best), float(best)))
    return found


def _square_size(image_processor) -> int:
    size = image_processor.size
    get = size.get if hasattr(size, "get") else (lambda k: getattr(size, k, None))
    return int(get("height") or get("shortest_edge") or 0)


def owlv2_config(name: str):
    """`Owlv2Config` of a random OWLv2: 'owlv2-tiny-random', or 'owlv2-random' (owlv2-base-patch16 shapes)."""
    from transformers import Owlv2Config

    from item.featurize.models.tiny import _wordpiece_vocab

    if name == "owlv2-tiny-random":
        vocab = dict(_wordpiece_vocab(None))
        text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                    num_attention_heads=2, max_position_embeddings=16, pad_token_id=vocab["[PAD]"],
                    bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"])
        vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                      image_size=64, patch_size=16)
        config = Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)
    elif name == "owlv2-random":  # google/owlv2-base-patch16-ensemble: ViT-B/16 at 960, CLIP text 512 wide
        vocab = dict(_wordpiece_vocab(30524))
        text = dict(vocab_size=len(vocab), max_position_embeddings=16, pad_token_id=vocab["[PAD]"],
                    bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"])
        vision = dict(image_size=960, patch_size=16)
        config = Owlv2Config(text_config=text, vision_config=vision)
    else:
        raise ValueError(f"not a random OWLv2 name: {name!r}")
    config.item_random_weights = True
    return config


def build_owlv2(name: str):
    """(Owlv2ForObjectDetection in eval mode, Owlv2Processor) with seeded random weights, built offline."""
    from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from item.featurize.models.tiny import build_tokenizer, seeded

    config = owlv2_config(name)
    with seeded():
        model = Owlv2ForObjectDetection(config).eval()
    side = config.vision_config.image_size
    image_processor = Owlv2ImageProcessor(size={"height": side, "width": side})
    tokenizer = build_tokenizer(None if name == "owlv2-tiny-random" else config.text_config.vocab_size)
    try:
        processor = Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    except (TypeError, ValueError):  # a transformers that insists on OWL's own (CLIP) tokenizer class
        processor = ImageTextProcessor(image_processor, tokenizer)
    return model, processor


def load_owlv2(name_or_path: str, device: str = "cpu", box_threshold: float = DEFAULT_BOX_THRESHOLD,
               ground_size: int | None = None) -> OwlGrounder:
    """OWLv2 from a hub id, a local `save_pretrained` folder, or a random name (OWL_RANDOM_NAMES).

    ``ground_size``: the square input side (None = the model's own, 960 for the base model). The model's
    position embeddings are interpolated for another size (transformers' ``interpolate_pos_encoding``
    is not used: the size is fixed per run, so the processor's size must match the model's grid).
    """
    from transformers import AutoProcessor, Owlv2ForObjectDetection

    from item.featurize.models.hub import load_hf_pretrained
    from item.featurize.models.tiny import SEED

    if name_or_path in OWL_RANDOM_NAMES:
        model, processor = build_owlv2(name_or_path)
        source, random_weights = {"id": name_or_path, "seed": SEED}, True
    else:
        model, processor, source = load_hf_pretrained("grounder", name_or_path, Owlv2ForObjectDetection,
                                                      AutoProcessor, "--grounder")
        random_weights = bool(getattr(model.config, "item_random_weights", False))
    native = int(model.config.vision_config.image_size)
    if ground_size and int(ground_size) != native:
        raise InputError(f"--ground-size {ground_size}: OWLv2 runs at its own input size {native} here "
                         "(other sizes would need interpolated position embeddings, not offered)")
    processor.image_processor.size = {"height": native, "width": native}
    model.to(device)
    info = {
        **source, "class": type(model).__name__, "family": "owlv2", "random_weights": random_weights,
        "box_threshold": float(box_threshold), "ground_size": native,
        "input_size": {"height": native, "width": native}, "min_box_area": MIN_BOX_AREA,
        "prompt": PROMPT.format("{noun}") + " (one query per noun)", "noun_score": "sigmoid of the query's logit; each box labelled with its best query (argmax), score > threshold",
        "box_selection": BOX_SELECTION,
        "quality": "not measured in this project (no real weights were reachable)",
    }
    return OwlGrounder(model, processor, info, str(device), box_threshold)
