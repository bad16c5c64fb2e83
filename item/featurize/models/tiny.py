"""Seeded random models of the real classes, built offline: for tests, demos and speed benchmarks.

Three random presets exist (see `item.featurize.models.presets.PRESETS`):

- ``tiny-random``: tiny configs of the same classes (open_clip CLIP, BLIP, Grounding DINO). Built in well
  under a second, same weights on every build (seeded), so tests and `item demo` run offline.
- ``small-random`` / ``default-random``: the *real* full-size architectures of the ``small`` / ``default``
  presets (ViT-B-32 / ViT-L-14, BLIP base / large, Grounding DINO tiny: Swin-T + BERT-base) with seeded random
  weights. Their outputs mean nothing; they exist to measure speed and memory without a model hub.

No BERT vocabulary is on disk in this workplace, so the text tokenizer is a WordPiece model trained here on a
few hundred words of caption-like English (objects, colours, verbs). Its vocabulary is put in a canonical
order after training so token ids never depend on the trainer's tie-breaking. For the full-size
architectures the vocabulary is padded with pronounceable pseudo-words up to BERT's size (30522 / 30524), so
every id a random decoder emits decodes to a word.

Everything built here is random: callers record ``random_weights=True`` in every ``info`` dict.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

SEED = 0

#: open_clip model name under which the tiny CLIP config is registered.
TINY_CLIP_MODEL = "item-tiny-clip"

#: The tiny CLIP architecture (open_clip config format). vocab_size/context_length are CLIP's, so the
#: tokenizer bundled with open_clip works unchanged.
TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

#: Names the `load_*` functions accept for the random builders here.
RANDOM_NAMES = ("tiny-random", "small-random", "default-random")

_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]

# A few hundred words of caption-like English: BLIP-tiny picks from these, so its captions look like captions.
_NOUNS = (
    "man woman person child boy girl people dog cat horse cow sheep bird duck bear elephant zebra giraffe "
    "car truck bus bike bicycle motorcycle train boat plane airplane road street sidewalk building house "
    "window door wall roof tree grass field flower plant bush forest mountain hill river lake sea ocean beach "
    "sand sky cloud sun moon snow water rock stone bridge fence sign light pole bench chair table desk bed "
    "couch sofa lamp clock book cup glass bottle plate bowl fork knife spoon food pizza cake sandwich apple "
    "banana orange carrot bread phone laptop computer screen television keyboard mouse bag backpack umbrella "
    "hat shirt jacket dress shoe ball kite skateboard surfboard frisbee racket bat glove helmet room kitchen "
    "bathroom sink toilet mirror shelf box basket painting picture city park garden farm tower castle church "
    "shadow face hand hair eye head leg arm"
).split()
_ADJECTIVES = (
    "red blue green yellow white black brown gray grey orange pink purple golden silver dark bright small "
    "large big little tall short old young new wooden metal empty busy sunny snowy rainy cloudy colorful"
).split()
_VERBS = (
    "is are sitting standing walking running riding holding eating drinking playing flying swimming "
    "looking lying parked driving jumping reading talking smiling wearing carrying crossing waiting "
    "sleeping cooking watching"
).split()
_FUNCTION = "a an the on in at of with near next to by under over behind and two three some".split()
_PLACES = "on the road|in the field|on the beach|in the kitchen|next to the building|under the sky".split("|")


def caption_corpus(n_sentences: int = 400) -> list[str]:
    """Deterministic caption-like sentences over the vocabulary above (the tokenizer's training text)."""
    rng = random.Random(SEED)
    words = " ".join(_NOUNS + _ADJECTIVES + _VERBS + _FUNCTION)
    sentences = [words, ". , ' - ! ? ( ) : ; / 0 1 2 3 4 5 6 7 8 9"]
    for _ in range(n_sentences):
        subj, obj = rng.choice(_NOUNS), rng.choice(_NOUNS)
        adj = rng.choice(_ADJECTIVES)
        sentences.append(
            f"a {adj} {subj} {rng.choice(_VERBS)} a {obj} {rng.choice(_PLACES)} ."
        )
    return sentences


def _pseudo_words(n: int, taken: set[str]) -> list[str]:
    """`n` distinct pronounceable pseudo-words (consonant-vowel syllables), deterministic, none in `taken`."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    syllables = [c + v for c in consonants for v in vowels]
    out: list[str] = []
    for n_syll in (2, 3, 4):
        for idx in range(len(syllables) ** n_syll):
            word, k = "", idx
            for _ in range(n_syll):
                word = syllables[k % len(syllables)] + word
                k //= len(syllables)
            if word not in taken:
                out.append(word)
                if len(out) == n:
                    return out
    return out


@functools.lru_cache(maxsize=4)
def _wordpiece_vocab(vocab_size: int | None) -> tuple[tuple[str, int], ...]:
    """A WordPiece vocabulary built from `caption_corpus()`, the same in every process.

    Returns ((token, id), ...): special tokens first (ids 0..6, [PAD]=0), then every word and every
    single character of the corpus sorted, then single-character '##' pieces sorted; padded with
    pseudo-words up to `vocab_size` when given. It is built by rule, not by `tokenizers`' trainer,
    whose output varied from process to process (435 to 441 tokens), which made tiny-random captions,
    and so every stored row, differ between a run and its resumption.
    """
    import re

    words, chars = set(), set()
    for line in caption_corpus():
        for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", line.lower()):
            words.add(w)
            chars.update(w)
    tokens = list(_SPECIAL_TOKENS) + sorted(words | chars) + sorted("##" + c for c in chars)
    if vocab_size is not None and vocab_size > len(tokens):
        tokens += _pseudo_words(vocab_size - len(tokens), set(tokens))
    return tuple((t, i) for i, t in enumerate(tokens))


def build_tokenizer(vocab_size: int | None = None):
    """A fast BERT tokenizer (transformers `BertTokenizer`, tokenizers-backed) over the trained vocabulary.

    Lower-cases like bert-base-uncased; [PAD] is id 0, [DEC] is BLIP's decoder start token.
    """
    from transformers import BertTokenizer

    vocab = dict(_wordpiece_vocab(vocab_size))
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tokenizer


@contextlib.contextmanager
def seeded(seed: int = SEED):
    """Seed torch's CPU RNG inside the block, restoring the caller's RNG state afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------- CLIP


@functools.lru_cache(maxsize=1)
def register_tiny_clip() -> str:
    """Register the tiny CLIP config with open_clip (once per process); returns its model name."""
    import open_clip

    if TINY_CLIP_MODEL not in open_clip.list_models():
        cfg_dir = Path(tempfile.mkdtemp(prefix="item-open-clip-cfg-"))
        (cfg_dir / f"{TINY_CLIP_MODEL}.json").write_text(json.dumps(TINY_CLIP_CFG))
        open_clip.add_model_config(cfg_dir)
    return TINY_CLIP_MODEL


# ---------------------------------------------------------------- BLIP


def blip_config(name: str):
    """`BlipConfig` of a random captioner: 'tiny-random', 'small-random' (BLIP base), 'default-random' (BLIP large)."""
    from transformers import BlipConfig, BlipTextConfig, BlipVisionConfig

    tokenizer_vocab = dict(_wordpiece_vocab(None if name == "tiny-random" else 30524))
    ids = dict(
        vocab_size=len(tokenizer_vocab),
        pad_token_id=tokenizer_vocab["[PAD]"],
        bos_token_id=tokenizer_vocab["[DEC]"],
        sep_token_id=tokenizer_vocab["[SEP]"],
        eos_token_id=tokenizer_vocab["[SEP]"],
    )
    if name == "tiny-random":
        vision = BlipVisionConfig(
            hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8, projection_dim=32,
        )
        text = BlipTextConfig(
            hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
            encoder_hidden_size=32, max_position_embeddings=64, projection_dim=32, **ids,
        )
        config = BlipConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), projection_dim=32)
        config.item_max_new_tokens = 12  # short captions keep the tiny pipeline's noun lists short
        config.item_random_weights = True  # saved with the config, so a reloaded copy is still marked random
        return config
    if name == "small-random":  # Salesforce/blip-image-captioning-base: ViT-B/16 at 384, BERT-base decoder
        vision = BlipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, image_size=384, patch_size=16)
        text = BlipTextConfig(encoder_hidden_size=768, **ids)
    elif name == "default-random":  # Salesforce/blip-image-captioning-large: ViT-L/16 at 384
        vision = BlipVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=384, patch_size=16)
        text = BlipTextConfig(encoder_hidden_size=1024, **ids)
    else:
        raise ValueError(f"not a random captioner name: {name!r}")
    config = BlipConfig(vision_config=vision.to_dict(), text_config=text.to_dict())
    config.item_random_weights = True
    return config


def build_blip(name: str):
    """(BlipForConditionalGeneration in eval mode, BlipProcessor) with seeded random weights."""
    from transformers import BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    config = blip_config(name)
    with seeded():
        model = BlipForConditionalGeneration(config).eval()
    size = config.vision_config.image_size
    image_processor = BlipImageProcessor(size={"height": size, "width": size})
    tokenizer = build_tokenizer(None if name == "tiny-random" else config.text_config.vocab_size)
    return model, BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


# ---------------------------------------------------------------- Grounding DINO


def grounding_dino_config(name: str):
    """`GroundingDinoConfig` of a random grounder: 'tiny-random', or Grounding DINO tiny's real shapes."""
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    if name == "tiny-random":
        vocab = dict(_wordpiece_vocab(None))
        backbone = SwinConfig(
            image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
            window_size=4, out_features=["stage2", "stage3", "stage4"],
        )
        text = BertConfig(
            vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=37, max_position_embeddings=256, pad_token_id=vocab["[PAD]"],
        )
        # decoder_layers must be >= 2: with 1, tying the box heads fails at construction.
        config = GroundingDinoConfig(
            backbone_config=backbone, text_config=text, d_model=32, num_queries=30,
            encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2, decoder_n_points=2,
            num_feature_levels=4, max_text_len=256,
        )
        config.item_random_weights = True  # saved with the config, so a reloaded copy is still marked random
        return config
    if name in ("small-random", "default-random"):  # both presets use IDEA-Research/grounding-dino-tiny
        backbone = SwinConfig(
            image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
            window_size=7, out_features=["stage2", "stage3", "stage4"],
        )
        text = BertConfig(vocab_size=30522)  # bert-base-uncased shapes
        config = GroundingDinoConfig(backbone_config=backbone, text_config=text)
        config.item_random_weights = True
        return config
    raise ValueError(f"not a random grounder name: {name!r}")


def build_grounding_dino(name: str):
    """(GroundingDinoForObjectDetection in eval mode, GroundingDinoProcessor) with seeded random weights."""
    from transformers import (
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    config = grounding_dino_config(name)
    with seeded():
        model = GroundingDinoForObjectDetection(config).eval()
    if name == "tiny-random":
        image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192})
    else:
        image_processor = GroundingDinoImageProcessor()  # the real processor's 800 / 1333 sizes
    tokenizer = build_tokenizer(None if name == "tiny-random" else config.text_config.vocab_size)
    return model, GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


# ---------------------------------------------------------------- saving


def save_tiny_models(out_dir: str | os.PathLike) -> dict[str, str]:
    """Write the tiny random models to `out_dir` in the formats real weights come in, and return their paths.

    Returns {'clip_model': open_clip model name, 'clip_pretrained': checkpoint file (safetensors, with
    `open_clip_config.json` beside it), 'captioner': BLIP dir, 'grounder': Grounding DINO dir}; the dirs are
    `save_pretrained` output (model + processor + tokenizer). Load them back with
    ``load_clip(paths['clip_model'], paths['clip_pretrained'])``, ``load_captioner(paths['captioner'])``,
    ``load_grounder(paths['grounder'])``.
    """
    import open_clip
    from safetensors.torch import save_file

    out = Path(out_dir)
    clip_dir, blip_dir, gdino_dir = out / "clip", out / "blip", out / "grounding_dino"
    clip_dir.mkdir(parents=True, exist_ok=True)

    model_name = register_tiny_clip()
    with seeded():
        clip_model = open_clip.create_model(model_name, pretrained=None)
    state = {k: v.contiguous() for k, v in clip_model.state_dict().items()}
    ckpt = clip_dir / "open_clip_model.safetensors"
    save_file(state, str(ckpt))
    # open_clip's own format for a local model dir: architecture + preprocessing beside the weights.
    (clip_dir / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": TINY_CLIP_CFG,
                "preprocess_cfg": dict(clip_model.visual.preprocess_cfg),
                "item_random_weights": True,
            },
            indent=2,
        )
    )

    model, processor = build_blip("tiny-random")
    model.save_pretrained(blip_dir)
    processor.save_pretrained(blip_dir)
    model, processor = build_grounding_dino("tiny-random")
    model.save_pretrained(gdino_dir)
    processor.save_pretrained(gdino_dir)
    return {
        "clip_model": model_name,
        "clip_pretrained": str(ckpt),
        "captioner": str(blip_dir),
        "grounder": str(gdino_dir),
    }
