"""``item check``: the chosen models on the shipped samples against the hand-written expectations.

Stand-in models that answer what the expectations say pass every check that runs on a CPU (through the same
interfaces as the real models, and the same featurize path); random weights fail them; the command runs
offline on tiny-random and from a hub-layout cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from PIL import Image
from typer.testing import CliRunner

from item.check import load_expectations, run_checks
from item.check.checks import SAMPLES_DIR, iou, names_main_object
from item.cli import app
from item.featurize.inputs.decode import decode_image
from tests._schemas import assert_valid

QUALITY_CHECKS = ("captions", "grounding", "clip_retrieval")
REFERENCE_CHECKS = ("reference_grounding", "reference_grounding_boxes", "reference_clip", "reference_captions")
BF16_CHECKS = ("bf16_captions", "bf16_grounding", "bf16_cosine")


def test_caption_names_match_whole_words_and_plurals():
    assert names_main_object("two dogs on a couch", ["dog"])
    assert names_main_object("a man riding a horse", ["horses"])
    assert not names_main_object("a hotdog stand", ["dog"])
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_drawn_samples_are_the_pixels_their_script_draws():
    from tests.drawn_samples import SAMPLES

    for key, make in SAMPLES.items():
        with Image.open(SAMPLES_DIR / key) as shipped:
            assert shipped.mode == make().mode and shipped.tobytes() == make().tobytes(), key


def test_check_decodes_the_samples_as_featurize_does():
    from item.check.checks import load_expectations

    exp = load_expectations()
    sizes = {k: decode_image(SAMPLES_DIR / k).image.size for k in exp["samples"]}
    assert max(max(w / h, h / w) for w, h in sizes.values()) >= 6  # an extreme aspect ratio
    assert min(min(s) for s in sizes.values()) <= 20  # a tiny image
    assert sum(" " in o["noun"] for e in exp["samples"].values() for o in e["objects"]) >= 3  # multi-word nouns
    key = "drawn/tennis_ball_transparent.png"
    with Image.open(SAMPLES_DIR / key) as im:
        assert im.mode == "RGBA" and im.convert("RGB").getpixel((0, 0)) == (0, 0, 0)
    assert decode_image(SAMPLES_DIR / key).image.getpixel((0, 0)) == (255, 255, 255)  # composited over white


def test_shipped_expectations_cover_every_sample_with_boxes_inside_the_image():
    exp = load_expectations()
    on_disk = {f"{d.name}/{p.name}" for d in (SAMPLES_DIR / "real", SAMPLES_DIR / "fake", SAMPLES_DIR / "drawn")
               for p in d.iterdir()}
    assert set(exp["samples"]) == on_disk
    descriptions = [e["description"] for e in exp["samples"].values() if not e.get("duplicate_of")]
    assert len(set(descriptions)) == len(descriptions)  # retrieval needs one description per image
    for key, e in exp["samples"].items():
        with Image.open(SAMPLES_DIR / key) as im:
            w, h = im.size
        for o in e["objects"]:
            for x0, y0, x1, y1 in o["boxes"]:
                assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (key, o)


# ------------------------------------------------------------------ stand-in models


def _key(image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes() + repr(image.size).encode()).hexdigest()


class _StandInClip:
    """Image i and description i map to the same unit vector; anything else to the last axis."""

    def __init__(self, keys, descriptions):
        self.index = {k: i for i, k in enumerate(keys)}
        self.texts = {d: i for i, d in enumerate(descriptions)}
        self.embed_dim = len(keys) + 1
        self.info = {"model": "stand-in", "pretrained": "stand-in", "embed_dim": self.embed_dim,
                     "preprocess_hash": "stand-in", "activation": "gelu", "random_weights": False}
        self.device = "cpu"

    def preprocess(self, image):
        import torch

        return torch.full((3, 1, 1), float(self.index.get(_key(image), self.embed_dim - 1)))

    def _onehot(self, idx):
        out = np.zeros((len(idx), self.embed_dim), np.float32)
        out[np.arange(len(idx)), idx] = 1.0
        return out

    def encode_images(self, pixels):
        return self._onehot([int(v) for v in pixels[:, 0, 0, 0].tolist()])

    def encode_texts(self, texts):
        return self._onehot([self.texts.get(t, self.embed_dim - 1) for t in texts]), np.zeros(len(texts), bool)


class _StandInCaptioner:
    def __init__(self, keys, entries):
        self.captions = {k: f"a photo of a {e['caption_names'][0]}" for k, e in zip(keys, entries)}
        self.info = {"id": "stand-in", "random_weights": False}
        self.device = "cpu"

    def prepare(self, image):
        return _key(image)

    def caption_prepared(self, pixels):
        return [self.captions.get(k, "a photo") for k in pixels]


def _stand_in_grounder(keys, entries):
    from item.featurize.models.grounding import Box, PreparedGrounder

    class StandInGrounder(PreparedGrounder):
        family = "stand-in"
        box_threshold, text_threshold = 0.35, 0.25
        info = {"id": "stand-in", "random_weights": False, "input_size": {"shortest_edge": 800}}

        def __init__(self):
            self.boxes = {k: {o["noun"]: o["boxes"][0] for o in e["objects"]} for k, e in zip(keys, entries)}
            self.prepare = _key

        def ground_batch(self, prepared, nouns):
            out = []
            for k, ns in zip(prepared, nouns):
                got = [self.boxes.get(k, {}).get(n) for n in ns]
                out.append([None if b is None else Box(*map(float, b), 0.9, 0.9) for b in got])
            return out

    return StandInGrounder()


def _stand_in_models(exp):
    from item.featurize import ModelSpec
    from item.featurize.models.loading import Models

    keys, entries = [], []
    for k, e in exp["samples"].items():
        if e.get("duplicate_of"):
            continue
        keys.append(_key(decode_image(SAMPLES_DIR / k).image))  # what featurize (and check) decode
        entries.append(e)
    spec = ModelSpec(clip_model="stand-in", clip_pretrained="stand-in", captioner="stand-in", grounder="stand-in",
                     random_weights=False)
    return Models(spec, _StandInClip(keys, [e["description"] for e in entries]),
                  _StandInCaptioner(keys, entries), _stand_in_grounder(keys, entries), "cpu")


def test_stand_in_models_that_answer_the_expectations_pass_every_check():
    exp = load_expectations()
    report = run_checks(_stand_in_models(exp), expectations=exp, cpu_bf16=False)
    ran = [c for c in report.checks if not c.skipped]
    assert {c.name for c in ran} == {"captions", "grounding", "batch_invariance", "clip_retrieval"}
    assert all(c.passed for c in ran), [(c.name, c.value) for c in ran]
    assert report.passed and not report.random_weights
    skipped = {c.name: c.skipped for c in report.checks if c.skipped}
    # stand-ins have no reference code path: the reference checks say so
    assert set(skipped) == {"fp16_agreement", "fp16_cosine", *REFERENCE_CHECKS, *BF16_CHECKS}
    assert "CUDA" in skipped["fp16_cosine"] and skipped["bf16_cosine"] == "not asked for"
    assert "stand-in" in skipped["reference_grounding"] and "open_clip" in skipped["reference_clip"]


def test_bf16_agreement_is_measured_on_the_cpu_and_fails_when_bf16_changes_the_answers():
    from item.featurize.models.hub import BF16_AUTOCAST, precision_in_effect

    exp = load_expectations()
    models = _stand_in_models(exp)
    report = run_checks(models, expectations=exp, cpu_bf16=True)
    by_name = {c.name: c for c in report.checks}
    # the stand-ins answer alike in either arithmetic: every agreement is 1 and passes its bound
    assert [(by_name[n].value, by_name[n].passed) for n in BF16_CHECKS] == [(1.0, True)] * 3
    assert (by_name["bf16_captions"].bound, by_name["bf16_grounding"].bound, by_name["bf16_cosine"].bound) == \
        (0.95, 0.95, 0.999)
    assert report.passed and report.precision == "fp32"

    # a captioner whose words change under bfloat16 autocast, and a grounder that loses half its nouns there
    captioner, grounder = models.captioner, models.grounder
    plain_caption, plain_ground = captioner.caption_prepared, type(grounder).ground_batch

    def caption_prepared(pixels):
        low = precision_in_effect("cpu", getattr(captioner, "precision", None)) == BF16_AUTOCAST
        return ["a blurry photo" for _ in pixels] if low else plain_caption(pixels)

    def ground_batch(prepared, nouns):
        out = plain_ground(grounder, prepared, nouns)
        if precision_in_effect("cpu", grounder.precision) == BF16_AUTOCAST:
            out = [[b if j % 2 else None for j, b in enumerate(bs)] for bs in out]
        return out

    captioner.caption_prepared, grounder.ground_batch = caption_prepared, ground_batch
    report = run_checks(models, expectations=exp, cpu_bf16=True)
    by_name = {c.name: c for c in report.checks}
    assert by_name["bf16_captions"].passed is False and by_name["bf16_captions"].value == 0.0
    assert by_name["bf16_grounding"].passed is False and by_name["bf16_grounding"].value < 0.95
    assert by_name["bf16_cosine"].passed and by_name["captions"].passed  # the run itself was fp32
    assert not report.passed


def test_bf16_agreement_is_skipped_with_its_reason_where_the_cpu_lacks_bfloat16(monkeypatch):
    import item.hardware

    monkeypatch.setattr(item.hardware, "native_bfloat16", lambda: False)
    exp = load_expectations()
    report = run_checks(_stand_in_models(exp), expectations=exp)
    skipped = {c.name: c.skipped for c in report.checks if c.skipped}
    assert set(BF16_CHECKS) <= set(skipped) and "does not compute bfloat16 natively" in skipped["bf16_cosine"]
    monkeypatch.setattr(item.hardware, "native_bfloat16", lambda: True)  # auto would pick bf16: measured
    report = run_checks(_stand_in_models(exp), expectations=exp)
    assert all(c.value == 1.0 for c in report.checks if c.name in BF16_CHECKS)


def test_a_stand_in_that_misses_fails_the_check_it_misses():
    exp = load_expectations()
    models = _stand_in_models(exp)
    models.captioner.captions = {k: "a photo of something" for k in models.captioner.captions}
    report = run_checks(models, expectations=exp)
    by_name = {c.name: c for c in report.checks}
    assert by_name["captions"].passed is False and by_name["captions"].value == 0.0
    assert by_name["grounding"].passed and not report.passed


# ------------------------------------------------------------------ the command


@pytest.mark.slow
def test_random_weights_fail_with_json_report():
    r = CliRunner().invoke(app, ["check", "--models", "tiny-random", "--device", "cpu", "--json"])
    assert r.exit_code == 1, r.output
    report = assert_valid(json.loads(r.stdout), "cli_check")
    assert report["random_weights"] is True and report["passed"] is False
    measured = [c for c in report["checks"] if c["value"] is not None]
    assert len(measured) >= 4
    assert all(isinstance(c["bound"], float) and isinstance(c["passed"], bool) for c in measured)
    by_name = {c["name"]: c for c in report["checks"]}
    assert not any(by_name[n]["passed"] for n in QUALITY_CHECKS)
    assert set(report["identity"]) >= {"grounder", "box_threshold", "precision"}
    # random weights answer as their reference code paths do: every reference comparison runs and passes
    for name in REFERENCE_CHECKS:
        assert by_name[name]["passed"] is True, by_name[name]
    assert by_name["reference_grounding"]["value"] == 1.0 and by_name["reference_clip"]["value"] >= 0.9999


def _small_expectations(tmp_path: Path, n: int = 4) -> Path:
    exp = load_expectations()
    keys = [k for k, e in exp["samples"].items() if not e.get("duplicate_of")][:n]
    for k in keys:
        (tmp_path / k).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / k).write_bytes((SAMPLES_DIR / k).read_bytes())
    path = tmp_path / "expected.json"
    path.write_text(json.dumps(dict(exp, samples={k: exp["samples"][k] for k in keys})))
    return path


@pytest.mark.slow
def test_runs_from_a_hub_layout_cache_with_one_line_per_check(tmp_path):
    """Captioner and grounder under the default preset's hub ids (tiny random weights saved in the hub's
    layout, read offline), CLIP the tiny random one; text output: RANDOM WEIGHTS first, identity keys, one line
    per check with its value and bound."""
    from item.featurize import PRESETS
    from item.featurize.models import tiny
    from tests.fidelity_hub import save_transformers

    hf_home = tmp_path / "hf"
    save_transformers(hf_home, PRESETS["default"].captioner, *tiny.build_blip("tiny-random"))
    save_transformers(hf_home, PRESETS["default"].grounder, *tiny.build_grounding_dino("tiny-random"))
    expected = _small_expectations(tmp_path / "samples")
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    res = subprocess.run([sys.executable, "-m", "item", "check", "--models", "default", "--clip", tiny.TINY_CLIP_MODEL,
                          "--pretrained", "", "--device", "cpu", "--expectations", str(expected)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0].startswith("RANDOM WEIGHTS") and "expected to fail" in lines[0]
    assert any(ln.startswith("identity grounder=IDEA-Research/grounding-dino-tiny") for ln in lines)
    checks = [ln for ln in lines if ln.split(" ")[0] in ("PASS", "FAIL", "SKIP")]
    assert len(checks) == 6 + len(REFERENCE_CHECKS) + len(BF16_CHECKS)
    for name in REFERENCE_CHECKS:  # the hub checkpoints' own reference paths agree with ITEM's
        assert next(ln for ln in checks if f" {name}:" in ln).startswith("PASS"), checks
    for name in QUALITY_CHECKS:
        line = next(ln for ln in checks if f" {name}:" in ln)
        assert line.startswith("FAIL") and "bound >=" in line
    assert any(ln.startswith("SKIP") and "fp16_cosine" in ln and "CUDA" in ln for ln in checks)


def test_cpu_bf16_agreement_is_in_the_json_report_with_tiny_models(tmp_path):
    """RANDOM WEIGHTS: ``--precision bf16`` runs the checks under bfloat16 autocast and measures it against fp32
    on the same loaded models; each bf16 entry carries its measured value and bound in --json."""
    expected = _small_expectations(tmp_path / "samples", n=3)
    r = CliRunner().invoke(app, ["check", "--models", "tiny-random", "--device", "cpu", "--precision", "bf16",
                                 "--expectations", str(expected), "--json"])
    assert r.exit_code == 1, r.output  # random weights fail the quality checks
    report = assert_valid(json.loads(r.stdout), "cli_check")
    assert report["precision"] == report["identity"]["precision"] == "bf16-autocast"
    by_name = {c["name"]: c for c in report["checks"]}
    for name in BF16_CHECKS:
        c = by_name[name]
        assert c["skipped"] == "" and isinstance(c["value"], float) and isinstance(c["passed"], bool), c
    assert by_name["bf16_cosine"]["value"] >= 0.999 and by_name["bf16_cosine"]["passed"]
    assert by_name["bf16_captions"]["bound"] == by_name["bf16_grounding"]["bound"] == 0.95


def test_bad_expectations_file_is_one_line_before_any_model_loads(tmp_path):
    bad = tmp_path / "e.json"
    bad.write_text(json.dumps({"format": "item-sample-expectations", "samples": {"a.png": {"objects": []}}}))
    r = CliRunner().invoke(app, ["check", "--models", "tiny-random", "--expectations", str(bad)])
    assert r.exit_code == 1
    assert "a.png" in r.output and "loading models" not in r.output
