"""The HTML report: self-contained, banner first when weights are random, escaped, complete."""

import re

import numpy as np
import pytest

from item.classify import metrics
from item.classify.report import RANDOM_WEIGHTS_BANNER, project_2d, render_report
from item.errors import InputError


def _inputs(rng):
    n = 240
    gens = np.array(["progan", "sd<v1.4>", "real"] * (n // 3))
    labels = (gens != "real").astype(int)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.15), 0, 1)
    table = metrics.per_generator_table(scores, labels, gens, 0.5)
    curves = {
        g: (np.r_[scores[labels == 0], scores[gens == g]], np.r_[np.zeros((labels == 0).sum()), np.ones((gens == g).sum())])
        for g in ("progan", "sd<v1.4>")
    }
    feats = rng.normal(size=(n, 9)) + labels[:, None]
    return dict(
        eval_tables={"mlp": table},
        curves={"mlp": curves},
        histograms={"mlp": (scores, labels)},
        embedding_2d=(project_2d(feats), gens.tolist()),
        provenance={"clip": "ViT-L-14 / openai", "store": "/data/store", "head": "runs/h1", "note": "<script>x</script>"},
    )


def _body_lines(text):
    body = text.split("<body>", 1)[1]
    return [line for line in body.splitlines() if line.strip()]


def test_random_weights_banner_first_and_self_contained(tmp_path):
    out = tmp_path / "sub" / "report.html"
    render_report(out, title="Eval <on> & test", random_weights=True, **_inputs(np.random.default_rng(0)))
    text = out.read_text(encoding="utf-8")
    assert RANDOM_WEIGHTS_BANNER in re.search(r"<title>(.*?)</title>", text).group(1)
    first = _body_lines(text)[0]
    assert RANDOM_WEIGHTS_BANNER in first
    # Self-contained: no external resources of any kind.
    # (base64 payloads are cut out first: by chance they may spell "http".)
    assert "http" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text).lower()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", text)
    assert "<link" not in text and "<script" not in text
    # Escaped user strings.
    assert "&lt;script&gt;x&lt;/script&gt;" in text
    assert "Eval &lt;on&gt; &amp; test" in text and "sd&lt;v1.4&gt;" in text
    # Table, curves, histograms, map and provenance are all there.
    assert text.count("data:image/png;base64,") == 3
    assert "ViT-L-14 / openai" in text and "/data/store" in text and "UTC" in text
    assert "<td class=\"name\">mean</td>" in text and "pooled" in text
    assert list(tmp_path.joinpath("sub").iterdir()) == [out]  # no temp file left


def test_no_banner_with_real_weights(tmp_path):
    out = tmp_path / "r.html"
    inputs = _inputs(np.random.default_rng(1))
    inputs["embedding_2d"] = None
    inputs["provenance"]["date"] = "2026-01-01"
    render_report(out, title="Real run", random_weights=False, **inputs)
    text = out.read_text(encoding="utf-8")
    assert RANDOM_WEIGHTS_BANNER not in text
    assert "<title>Real run</title>" in text
    assert "<h1>Real run</h1>" in _body_lines(text)[0]
    assert text.count("data:image/png;base64,") == 2 and "2026-01-01" in text


def test_project_2d_deterministic_and_shaped():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, 30)) * np.r_[5.0, 3.0, np.ones(28)]
    a, b = project_2d(X, seed=0), project_2d(X, seed=0)
    assert a.shape == (500, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    # The two leading directions carry the most variance, in order.
    assert a[:, 0].var() > a[:, 1].var() > X[:, 2:].var(axis=0).max()
    assert project_2d(X[:1]).tolist() == [[0.0, 0.0]]
    assert project_2d(X[:, :1]).shape == (500, 2)
    with pytest.raises(InputError):
        project_2d(np.full((3, 3), np.nan))


def test_bad_map_input_refused(tmp_path):
    inputs = _inputs(np.random.default_rng(3))
    inputs["embedding_2d"] = (np.zeros((5, 2)), ["a"] * 4)
    with pytest.raises(InputError):
        render_report(tmp_path / "x.html", title="t", random_weights=False, **inputs)
    assert not (tmp_path / "x.html").exists()
