"""parse_perturb / Perturbation.apply through the public API."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from item.errors import InputError
from item.featurize.inputs.perturb import Perturbation, parse_perturb


def _img():
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))


def test_parse_forms_and_canonical_string():
    p = parse_perturb("jpeg:75+blur:1+resize:0.5")
    assert p.steps == (("jpeg", 75), ("blur", 1.0), ("resize", 0.5))
    assert str(p) == "jpeg:75+blur:1.0+resize:0.5"
    assert parse_perturb(["jpeg:75", "blur:1.0+resize:0.5"]) == p
    assert parse_perturb(str(p)) == p
    assert parse_perturb(" JPEG : 90 ").steps == (("jpeg", 90),)
    for empty in (None, "", [], "none"):
        e = parse_perturb(empty)
        assert e.steps == () and str(e) == "" and not e


@pytest.mark.parametrize("bad", ["jpeg", "jpeg:", "jpeg:0", "jpeg:101", "jpeg:75.5", "blur:0", "blur:-1",
                                 "resize:0", "resize:9", "resize:abc", "sharpen:2", "jpeg:75+", "blur:nan"])
def test_bad_specs_list_valid_kinds(bad):
    with pytest.raises(InputError) as ei:
        parse_perturb(bad)
    msg = str(ei.value)
    assert any(k in msg for k in ("jpeg", "blur", "resize"))
    if bad.startswith("sharpen"):
        assert "jpeg" in msg and "blur" in msg and "resize" in msg and "1..100" in msg


def test_direct_construction_is_validated():
    with pytest.raises(InputError):
        Perturbation((("jpeg", 500),))
    assert Perturbation((("blur", 2),)).steps == (("blur", 2.0),)


def test_apply_order_and_effects():
    img = _img()
    out = parse_perturb("resize:0.5").apply(img)
    assert out.size == (30, 20)
    assert np.array_equal(np.asarray(out), np.asarray(img.resize((30, 20), Image.Resampling.BICUBIC)))
    blurred = parse_perturb("blur:2.0").apply(img)
    assert np.array_equal(np.asarray(blurred), np.asarray(img.filter(ImageFilter.GaussianBlur(2.0))))
    assert np.asarray(blurred).std() < np.asarray(img).std()
    jp = parse_perturb("jpeg:10").apply(img)
    assert jp.size == img.size and jp.mode == "RGB"
    assert not np.array_equal(np.asarray(jp), np.asarray(img))
    # order matters: resize then jpeg differs from jpeg then resize
    a = parse_perturb("jpeg:30+resize:0.5").apply(img)
    b = parse_perturb("resize:0.5+jpeg:30").apply(img)
    assert a.size == b.size == (30, 20) and not np.array_equal(np.asarray(a), np.asarray(b))


def test_apply_deterministic_and_input_untouched():
    img = _img()
    before = np.asarray(img).copy()
    p = parse_perturb("jpeg:75+blur:1.0+resize:0.7")
    first, second = p.apply(img), p.apply(img)
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert np.array_equal(np.asarray(img), before)


def test_apply_converts_modes_and_keeps_one_pixel():
    grey = Image.new("L", (3, 3), 100)
    out = parse_perturb("resize:0.01").apply(grey)
    assert out.mode == "RGB" and out.size == (1, 1)
    assert parse_perturb(None).apply(grey).mode == "RGB"
