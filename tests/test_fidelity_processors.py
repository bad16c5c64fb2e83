"""OWLv2 and OmDet-Turbo loaded from a ``save_pretrained`` folder holding their real processor classes
(``Owlv2Processor`` / ``OmDetTurboProcessor`` over a CLIP BPE tokenizer, the vocabulary open_clip ships),
the way a real checkpoint loads: ITEM's boxes against each processor's own ``__call__`` (its prompts, task,
padding and pixels), the model's forward on a second copy of the weights, and the processor's own
post-processing, with DESIGN.md's per-noun rule written out here. The other fidelity tests use random
builds whose processors are not these classes, so they never run the processors' ``__call__``.

Images from 1:1 to 19:1 either way and tiny ones; nouns of several BPE pieces, repeated, nested and with
punctuation. Random weights: only the bookkeeping means anything."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from item.featurize.models.grounders import load_grounder

NOUNS = ["dog", "hot dog", "dog house", "dog", "traffic light", "light", "Traffic  Light", "t-shirt", "man's hat",
         "st. bernard", "rock & roll", "xylophone", "ice-cream cone", "café", "3d printer", "red sofa", "sofa"]


def _bytes_to_unicode() -> dict[int, str]:
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_tokenizer(folder: Path, max_length: int):
    """transformers' CLIPTokenizer over openai CLIP's vocabulary, rebuilt from open_clip's bundled BPE merges
    (vocab.json / merges.txt as the openai/clip-vit-base-patch32 repo holds them)."""
    import open_clip
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = [tuple(m.split()) for m in gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    tok = CLIPTokenizer.from_pretrained(str(folder), pad_token="!")
    tok.model_max_length = max_length
    assert len(tok) == 49408 and tok("a photo of a dog")["input_ids"] == [49406, 320, 1125, 539, 320, 1929, 49407]
    return tok


def _owl_folder(root: Path, seed: int) -> Path:
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16, pad_token_id=0, bos_token_id=49406, eos_token_id=49407)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=128,
                  patch_size=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)).eval()
    proc = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 128, "width": 128}),
                          tokenizer=clip_tokenizer(root / "tok", 16))  # OWLv2's tokenizer pads to 16
    out = root / f"owl-{seed}"
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def _omdet_folder(root: Path, seed: int) -> Path:
    import torch
    from transformers import DetrImageProcessor, OmDetTurboForObjectDetection, OmDetTurboProcessor

    from item.featurize.models.omdet import omdet_config

    config = omdet_config("omdet-tiny-random")
    config.text_config.vocab_size = 49408
    config.text_config.pad_token_id, config.text_config.bos_token_id, config.text_config.eos_token_id = 0, 49406, 49407
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OmDetTurboForObjectDetection(config).eval()
    proc = OmDetTurboProcessor(image_processor=DetrImageProcessor(size={"height": 64, "width": 64}, do_pad=False),
                               tokenizer=clip_tokenizer(root / "tok", 77))
    out = root / f"omdet-{seed}"
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def _cases(seed: int, n: int):
    rng = np.random.default_rng(seed)
    sizes = [(20, 20), (33, 7), (7, 33), (3, 3), (57, 3)]
    out = []
    for i in range(n):
        if i < len(sizes):
            w, h = sizes[i]
        elif i % 4 == 0:
            w, h = out[-1][0].size  # equal shapes share ITEM's forward
        else:
            r = float(rng.choice([1.0, 1.5, 2.5, 4.0, 7.0, 13.0, 19.0]))
            s = int(rng.integers(8, max(9, int(300 / r))))
            w, h = (int(s * r), s) if rng.random() < 0.5 else (s, int(s * r))
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        out.append((img, [NOUNS[j] for j in rng.choice(len(NOUNS), size=int(rng.integers(1, 7)))]))
    return out


def _best_labelled(res, j: int, w: int, h: int):
    """The highest-scoring post-processed box labelled j, clipped, covering at least 16 px (or the image)."""
    best = None
    for box, score, label in zip(res["boxes"].tolist(), res["scores"].tolist(), res["labels"].tolist()):
        x0, x1 = (min(max(v, 0.0), w) for v in (box[0], box[2]))
        y0, y1 = (min(max(v, 0.0), h) for v in (box[1], box[3]))
        if int(label) == j and (x1 - x0) * (y1 - y0) >= min(16, w * h) and (best is None or score > best[4]):
            best = (x0, y0, x1, y1, score)
    return best


def _expected(family: str, model, proc, image, nouns: list[str], threshold: float):
    import torch

    names = [" ".join(n.lower().split()) for n in nouns]
    w, h = image.size
    if family == "owlv2":
        inputs = proc(text=[["a photo of a " + n for n in names]], images=image, return_tensors="pt")
        with torch.inference_mode():
            out = model(**inputs)
        res = proc.image_processor.post_process_object_detection(out, threshold=threshold, target_sizes=[(h, w)])[0]
    else:  # the processor's default task, "Detect a, b."
        inputs = proc(images=image, text=names, return_tensors="pt")
        with torch.inference_mode():
            out = model(**inputs)
        res = proc.post_process_grounded_object_detection(out, text_labels=names, threshold=threshold,
                                                          target_sizes=[(h, w)])[0]
    return [_best_labelled(res, j, w, h) for j in range(len(nouns))]


@pytest.mark.parametrize("family,threshold,seed", [("owlv2", 0.05, 61), ("omdet-turbo", 0.1, 67)])
def test_the_real_processor_classes_give_items_boxes(tmp_path, family, threshold, seed):
    from transformers import OmDetTurboForObjectDetection, Owlv2ForObjectDetection

    folder = (_owl_folder if family == "owlv2" else _omdet_folder)(tmp_path, seed)
    g = load_grounder(str(folder), box_threshold=threshold)
    assert g.family == family and type(g.processor).__name__ in ("Owlv2Processor", "OmDetTurboProcessor")
    cls = Owlv2ForObjectDetection if family == "owlv2" else OmDetTurboForObjectDetection
    model, proc = cls.from_pretrained(folder).eval(), g.processor  # a second copy: no cache is shared
    cases = _cases(seed, 24)
    ours = g.ground([im for im, _ in cases], [ns for _, ns in cases])
    agree = total = grounded = 0
    for (im, ns), mine in zip(cases, ours):
        for a, b in zip(mine, _expected(family, model, proc, im, ns, threshold)):
            total += 1
            grounded += b is not None
            if a is None or b is None:
                agree += a is None and b is None
            else:
                agree += max(abs(x - y) for x, y in zip((a.x0, a.y0, a.x1, a.y1), b[:4])) <= 1.0 and \
                    abs(a.score - b[4]) <= 1e-4
    assert total >= 60 and 5 <= grounded <= total - 5, (grounded, total)  # both sides exercised
    assert agree == total, f"{agree} of {total} noun decisions agree"


@pytest.mark.parametrize("family", ["owlv2", "omdet-turbo"])
def test_items_model_inputs_are_the_real_processors(tmp_path, family):
    # the forward's inputs themselves, as ITEM passes them to the model (a random model can be nearly blind to
    # part of them: OmDet-Turbo's task), against the processor's own __call__ on the image alone
    import torch

    folder = (_owl_folder if family == "owlv2" else _omdet_folder)(tmp_path, 71)
    g = load_grounder(str(folder))
    seen = []
    g.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    for im, ns in _cases(73, 12):
        names = [" ".join(n.lower().split()) for n in ns]
        if family == "owlv2":
            theirs = g.processor(text=[["a photo of a " + n for n in names]], images=im, return_tensors="pt")
        else:
            theirs = g.processor(images=im, text=names, return_tensors="pt")
        seen.clear()
        g.ground([im], [ns])
        (ours,) = seen
        assert sorted(ours) == sorted(theirs), (sorted(ours), sorted(theirs))
        for k, v in ours.items():
            same = torch.allclose(v, theirs[k], atol=1e-5) if k == "pixel_values" else torch.equal(v, theirs[k])
            assert same, (k, ns)
