"""MM-Grounding-DINO and LLMDet as grounders: Grounding DINO's prompt and box selection, another model class.

transformers' ``MMGroundingDinoForObjectDetection`` runs both MM-Grounding-DINO (OpenMMLab's open
re-training of Grounding DINO) and LLMDet (fine-tuned from it); their outputs (per-query token logits and
boxes) and their processor (``GroundingDinoProcessor``) are Grounding DINO's, so the grounder is
`grounding_dino.Grounder` with this model: the same "man . bike ." prompt, the same character-span noun
scores and the same `grounding_dino.select_boxes` rule (a change of that rule changes both families at once).
That rule's noun score is the mean over the noun's tokens, which is MM-Grounding-DINO's authors' own:
MMDetection's ``GroundingDINOHead._predict_by_feat_single`` (mmdet/models/dense_heads/grounding_dino_head.py)
scores an entity by ``convert_grounding_to_cls_scores`` (atss_vlfusion_head.py), the mean of the sigmoid
token scores over the entity's positive tokens (read at 0c5238c).

Thresholds: box 0.4, text 0.3, the values of transformers' own MM Grounding DINO example
(docs/source/en/model_doc/mm-grounding-dino.md, ``post_process_grounded_object_detection(...,
box_threshold=0.4, text_threshold=0.3)``, read at 36f003d), where Grounding DINO's are 0.35 / 0.25.
MMDetection additionally keeps only the top ``max_per_img`` (query, entity) pairs (300 of 900 queries x
entities); with a caption's few nouns that cut never reaches a noun's best query, and transformers'
post-processing has none, so ITEM has none.

The model differs from Grounding DINO in its class head (a learned bias on the contrastive logits, scaled by
1/sqrt(d_model)) and in unshared decoder heads; the tiny random build differs in both, so tests exercise them.

Hub ids and the numbers their authors report (read at their sources, not measured here):
- ``openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det`` (Swin-T): LVIS minival 41.4 AP
  (zero-shot; transformers' MM Grounding DINO documentation, v4.56), licence Apache-2.0 (MMDetection);
- ``iSEE-Laboratory/llmdet_tiny`` (LLMDet Swin-T): LVIS minival 44.7 AP (iSEE-Laboratory/LLMDet README,
  commit 0175609, "Model Zoo"), licence Apache-2.0.
**Their grounding quality for ITEM is not measured here** (no real weights are reachable from this workplace).
"""

from __future__ import annotations

from item.featurize.models.grounding import MIN_BOX_AREA, set_ground_size
from item.featurize.models.grounding_dino import BOX_SELECTION, Grounder

#: Random builder names of this family (seeded random weights, built offline).
MM_GDINO_RANDOM_NAMES = ("mm-gdino-tiny-random", "mm-gdino-random")
HUB_ID = "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det"
LLMDET_HUB_ID = "iSEE-Laboratory/llmdet_tiny"


class MMGroundingDinoGrounder(Grounder):
    """Grounding DINO's grounder (prompt, spans, `select_boxes`) over an MMGroundingDinoForObjectDetection."""

    family = "mm-grounding-dino"


#: Box / text thresholds of transformers' MM Grounding DINO example (see the module docstring).
DEFAULT_THRESHOLDS = (0.4, 0.3)
#: The tiny random build's contrastive bias: MMDetection's initial value -log((1 - 0.01) / 0.01) (a
#: learned parameter, 0.0 at transformers' init, which made the tiny build numerically Grounding DINO's).
TINY_CLASS_BIAS = -4.59512


def mm_grounding_dino_config(name: str):
    """`MMGroundingDinoConfig`: 'mm-gdino-tiny-random' (the tiny Grounding DINO test shapes, decoder heads
    not shared across layers), or 'mm-gdino-random' (transformers' defaults: Swin-T + BERT-base, the tiny
    checkpoints' architecture)."""
    from transformers import MMGroundingDinoConfig

    from item.featurize.models.tiny import grounding_dino_config

    if name == "mm-gdino-tiny-random":
        g = grounding_dino_config("tiny-random")
        keep = ("d_model", "num_queries", "encoder_layers", "decoder_layers", "encoder_ffn_dim", "decoder_ffn_dim",
                "encoder_attention_heads", "decoder_attention_heads", "encoder_n_points", "decoder_n_points",
                "num_feature_levels", "max_text_len")
        config = MMGroundingDinoConfig(backbone_config=g.backbone_config, text_config=g.text_config,
                                       decoder_bbox_embed_share=False, decoder_cls_embed_share=False,
                                       **{k: getattr(g, k) for k in keep})
    elif name == "mm-gdino-random":
        config = MMGroundingDinoConfig()
    else:
        raise ValueError(f"not a random MM-Grounding-DINO name: {name!r}")
    config.item_random_weights = True
    return config


def set_class_bias(model, value: float) -> None:
    """Set the learned bias of every contrastive class head of an MMGroundingDinoForObjectDetection."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") and param.ndim == 0:
                param.fill_(value)


def build_mm_grounding_dino(name: str):
    """(MMGroundingDinoForObjectDetection in eval mode, GroundingDinoProcessor), seeded random weights."""
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor, MMGroundingDinoForObjectDetection

    from item.featurize.models.tiny import build_tokenizer, seeded

    config = mm_grounding_dino_config(name)
    with seeded():
        model = MMGroundingDinoForObjectDetection(config).eval()
    if name == "mm-gdino-tiny-random":
        set_class_bias(model, TINY_CLASS_BIAS)
        image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192})
    else:
        image_processor = GroundingDinoImageProcessor()  # 800 / 1333, as Grounding DINO's
    tokenizer = build_tokenizer(None if name == "mm-gdino-tiny-random" else config.text_config.vocab_size)
    return model, GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def load_mm_grounding_dino(name_or_path: str, device: str = "cpu", box_threshold: float = DEFAULT_THRESHOLDS[0],
                           text_threshold: float = DEFAULT_THRESHOLDS[1], ground_size: int | None = None) -> MMGroundingDinoGrounder:
    """MM-Grounding-DINO / LLMDet from a hub id, a local `save_pretrained` folder or a random name."""
    from transformers import AutoProcessor, MMGroundingDinoForObjectDetection

    from item.featurize.models.hub import load_hf_pretrained
    from item.featurize.models.tiny import SEED

    if name_or_path in MM_GDINO_RANDOM_NAMES:
        model, processor = build_mm_grounding_dino(name_or_path)
        source, random_weights = {"id": name_or_path, "seed": SEED}, True
    else:
        model, processor, source = load_hf_pretrained("grounder", name_or_path, MMGroundingDinoForObjectDetection,
                                                      AutoProcessor, "--grounder")
        random_weights = bool(getattr(model.config, "item_random_weights", False))
    shortest = set_ground_size(processor.image_processor, ground_size)
    model.to(device)
    size = getattr(processor.image_processor, "size", None)
    info = {
        **source, "class": type(model).__name__, "family": "mm-grounding-dino", "random_weights": random_weights,
        "ground_size": shortest, "input_size": dict(size) if size is not None else None,
        "min_box_area": MIN_BOX_AREA, "min_feature_cells": "num_queries (grounding_dino.Grounder.input_problem)",
        "box_threshold": float(box_threshold), "text_threshold": float(text_threshold),
        "prompt": "noun . noun . (lower-case)", "noun_score": "mean token probability over the noun's span (MMDetection's convert_grounding_to_cls_scores)",
        "selection": "grounding_dino.select_boxes (the Grounding DINO rule)",
        "box_selection": "mm-" + BOX_SELECTION,
        "quality": "not measured in this project (no real weights were reachable)",
    }
    return MMGroundingDinoGrounder(model, processor, info, str(device), box_threshold, text_threshold)
