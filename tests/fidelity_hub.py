"""A Hugging Face hub cache laid out the way the hub lays it out, holding seeded random weights.

    $HF_HOME/hub/models--ORG--NAME/refs/main                      the 40-hex commit of 'main'
    $HF_HOME/hub/models--ORG--NAME/snapshots/<commit>/FILES       what the repo holds at that commit

With ``HF_HOME`` pointing here and ``HF_HUB_OFFLINE=1``, ``open_clip`` and ``transformers`` resolve a hub id
to these files exactly as they resolve a real download, so the code a user runs (hub id -> cache ->
weights) runs in tests. The weights are random: nothing computed from them means anything.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: open_clip's hub repo for ViT-B-32 'openai' (open_clip.pretrained.get_pretrained_cfg('ViT-B-32', 'openai')).
VIT_B_32_OPENAI_REPO = "timm/vit_base_patch32_clip_224.openai"
#: Random initialisation makes GELU and QuickGELU nearly equal (cosine ~0.9999); multiplying every MLP's input
#: weights (c_fc) by this makes the activation matter (measured here: L2 1e-2 between the two builds against
#: 2e-4 of float16 rounding, on ViT-B-32).
MLP_INPUT_SCALE = 3.0


def snapshot_dir(hf_home: Path, repo: str) -> Path:
    """Create models--ORG--NAME with refs/main naming a commit; returns that commit's snapshot folder."""
    repo_dir = Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()  # any 40-hex name will do; this one is stable
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def save_random_open_clip(hf_home: Path, model: str, repo: str, seed: int = 0,
                          mlp_scale: float = MLP_INPUT_SCALE) -> Path:
    """Seeded random weights of open_clip ``model`` (its real architecture) as the repo's
    open_clip_model.safetensors; every ``mlp.c_fc.weight`` multiplied by ``mlp_scale``. Returns the file."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = open_clip.create_model(model, pretrained=None)
    state = {k: (v * mlp_scale if k.endswith("mlp.c_fc.weight") else v).detach().contiguous().clone()
             for k, v in net.state_dict().items()}
    path = snapshot_dir(hf_home, repo) / "open_clip_model.safetensors"
    save_file(state, str(path))
    return path


def save_transformers(hf_home: Path, repo: str, model, processor) -> Path:
    """``save_pretrained`` of a model and its processor as the snapshot of hub repo ``repo``; returns the folder."""
    snap = snapshot_dir(hf_home, repo)
    model.save_pretrained(snap)
    processor.save_pretrained(snap)
    return snap


#: BERT's (bert-base-uncased) vocabulary layout: size and the ids Grounding DINO's delimiter handling relies on
#: (transformers hard-codes [CLS]=101, [SEP]=102, "."=1012 and "?"=1029 as the phrase delimiters).
BERT_VOCAB_SIZE = 30522
BERT_SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}


def write_bert_layout_vocab(path: Path, words: list[str]) -> Path:
    """A WordPiece vocab.txt of BERT's size with BERT's special ids (BERT_SPECIAL_IDS), ``words`` as whole-word
    tokens from id 2000 on, single letters and their '##' pieces for anything else, and '[unusedN]' fillers."""
    import string

    tokens = [f"[unused{i}]" for i in range(BERT_VOCAB_SIZE)]
    for tok, i in BERT_SPECIAL_IDS.items():
        tokens[i] = tok
    extra = list(dict.fromkeys(list(words) + list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
                               + list(string.digits) + list(",!'-")))
    for k, tok in enumerate(extra):
        if tok not in BERT_SPECIAL_IDS:
            tokens[2000 + k] = tok
    path = Path(path)
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def tiny_grounding_dino_bert(vocab_file: Path, seed: int = 0, num_queries: int = 30):
    """(seeded tiny GroundingDinoForObjectDetection whose text model has BERT's vocabulary size, its
    GroundingDinoProcessor over ``vocab_file``). Random weights: only the bookkeeping means anything."""
    import torch
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=BERT_VOCAB_SIZE, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=256, pad_token_id=0)
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, num_queries=num_queries,
                                 encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                                 encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2,
                                 decoder_n_points=2, num_feature_levels=4, max_text_len=256)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(config).eval()
    tokenizer = BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192})
    return model, GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def with_scaled_logits(model, scale: float, shift: float):
    """``model`` behind a wrapper whose outputs' logits are ``logits * scale - shift`` (-inf stays -inf).

    A tiny random Grounding DINO's logits are dot products of unit-variance vectors (tens in size), so every
    probability sits near 0 or 1 and every noun is grounded at any threshold; scaled down and shifted they
    spread around the real thresholds, so that both the kept and the dropped side of each rule are exercised.
    Whoever calls the wrapper (the project or transformers' post-processing) sees the same outputs."""
    import torch

    class Scaled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def forward(self, **inputs):
            out = self.inner(**inputs)
            out.logits = out.logits * scale - shift
            return out

    return Scaled(model).eval()


def tiny_mm_grounding_dino_bert(vocab_file: Path, seed: int = 0, num_queries: int = 30):
    """(seeded tiny MMGroundingDinoForObjectDetection with BERT's vocabulary size, unshared decoder heads and
    MMDetection's initial class bias, its GroundingDinoProcessor over ``vocab_file``): the MM-specific parts
    (class head bias, per-layer heads) differ from `tiny_grounding_dino_bert`'s model."""
    import torch
    from transformers import MMGroundingDinoConfig, MMGroundingDinoForObjectDetection

    from item.featurize.models.mm_grounding_dino import TINY_CLASS_BIAS, set_class_bias

    g, processor = tiny_grounding_dino_bert(vocab_file, seed=seed, num_queries=num_queries)
    keep = ("d_model", "num_queries", "encoder_layers", "decoder_layers", "encoder_ffn_dim", "decoder_ffn_dim",
            "encoder_attention_heads", "decoder_attention_heads", "encoder_n_points", "decoder_n_points",
            "num_feature_levels", "max_text_len")
    config = MMGroundingDinoConfig(backbone_config=g.config.backbone_config, text_config=g.config.text_config,
                                   decoder_bbox_embed_share=False, decoder_cls_embed_share=False,
                                   **{k: getattr(g.config, k) for k in keep})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = MMGroundingDinoForObjectDetection(config).eval()
    set_class_bias(model, TINY_CLASS_BIAS)
    return model, processor
