"""Issue 15: surfaces through the real CLI (usage errors, flags, --json, RANDOM WEIGHTS, the demo's
errors, the report's colours), heads that remember their rows and captions, lookups by image that
load CLIP only, and the Python API as docs/python-api.md shows it."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.store import StoreReader

PYTHON_API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
FAST = ["--hidden", "16", "--max-epochs", "30", "--patience", "5", "--batch-size", "16"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    r = cli(*args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


def error_line(r, *words, code=1):
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr, r.exception)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def image(path: Path, seed: int, size=(48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def refuse(monkeypatch, *names):
    """Make the named model loaders fail loudly (captioner, grounder, clip)."""
    import item.featurize.models.blip as captioner
    import item.featurize.models.clip as encoder
    import item.featurize.models.grounders as grounder

    where = {"captioner": (captioner, "load_captioner"), "grounder": (grounder, "load_grounder"),
             "clip": (encoder, "load_clip")}
    for n in names:
        mod, attr = where[n]

        def fail(*a, _n=n, **k):
            raise AssertionError(f"the {_n} was loaded")

        monkeypatch.setattr(mod, attr, fail)


@pytest.fixture(scope="module")
def feat(tmp_path_factory):
    """16 made-up images (2 generators x real/fake x train 2 / val 1 / test 1); reals carry given
    captions, fakes are captioned by the (tiny) captioner: the caption source differs by label."""
    base = tmp_path_factory.mktemp("surf")
    rows, k = [], 0
    for gen in ("gen_a", "gen_b"):
        for split, n in (("train", 2), ("val", 1), ("test", 1)):
            for label in ("real", "fake"):
                for _ in range(n):
                    p = image(base / "img" / f"{k}.png", k)
                    rows.append({"path": str(p), "label": label, "generator": gen, "split": split,
                                 "caption": "a dog sitting on a red couch" if label == "real" else ""})
                    k += 1
    manifest = write_csv(base / "m.csv", rows)
    store = base / "store"
    ok("featurize", manifest, "--store", store, "--models", "tiny-random", "--workers", "0")
    head = base / "head"
    ok("train", store, "--out", head, *FAST)
    return {"base": base, "store": store, "head": head, "rows": rows, "manifest": manifest}


# -- usage errors, help, flags ------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["train"], ["Missing argument", "item train --help"]),
    (["train", "S", "--out", "h", "--bogus"], ["--bogus", "item train --help"]),
    (["train", "S", "--out", "h", "--max-epochs", "many"], ["--max-epochs"]),
    (["eval", "S", "--head", "h", "--json", "out.json"], ["out.json"]),
    (["store", "split"], ["Missing argument", "item store split --help"]),
    (["store", "annotate", "S"], ["Missing argument"]),
    (["predict", "x.png"], ["--head"]),
    (["nosuchcommand"], ["nosuchcommand"]),
])
def test_usage_errors_are_one_line_with_exit_status_2(args, words):
    line = error_line(cli(*args), *words, code=2)
    assert "╭" not in line and "Usage:" not in line


def test_usage_error_through_the_installed_command_is_one_line():
    r = subprocess.run([sys.executable, "-m", "item", "train"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: Missing argument")


COMMANDS_WITH_JSON = ["featurize", "train", "eval", "predict", "neighbors", "store info", "store validate",
                      "store split", "store annotate"]


def test_help_shows_flags_as_flags_and_json_is_a_flag_everywhere():
    top = ok("--help").stdout
    assert re.search(r"^\s+--version\s+Print the version", top, re.M), top
    for cmd in COMMANDS_WITH_JSON + ["report", "demo", "store export", "store index"]:
        text = ok(*cmd.split(), "--help").stdout
        assert "<bool>" not in text and "╭" not in text, (cmd, text)
        if cmd in COMMANDS_WITH_JSON:
            assert re.search(r"^\s+--json\s{2,}\S", text, re.M), (cmd, text)  # no value after --json
    assert ok("--version").stdout.startswith("item ")


def test_import_item_stays_light_and_exposes_the_api():
    code = ("import sys, item; heavy = [m for m in ('torch', 'faiss', 'h5py', 'open_clip', 'transformers', "
            "'sklearn', 'pandas') if m in sys.modules]; print(','.join(heavy)); "
            "print(all(callable(getattr(item, n)) for n in ('open_store', 'train_head', 'load_head', 'evaluate', "
            "'predict')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "" and out[1] == "True"


def test_captioner_none_without_captions_is_refused_before_models_load(tmp_path, monkeypatch):
    paths = [image(tmp_path / f"{k}.png", k) for k in range(3)]
    manifest = write_csv(tmp_path / "m.csv", [{"path": str(p), "label": "real", "caption": "a cat" if k else ""}
                                              for k, p in enumerate(paths)])
    refuse(monkeypatch, "clip", "captioner", "grounder")
    store = tmp_path / "store"
    r = cli("featurize", manifest, "--store", store, "--models", "tiny-random", "--captioner", "none")
    assert r.exit_code == 1 and r.exception is not None and not isinstance(r.exception, AssertionError)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error")]  # after the inputs table
    assert len(errors) == 1 and "--captioner none: 1 of 3 inputs have no caption" in errors[0] and "m.csv:2" in errors[0]
    assert not store.exists()


def test_demo_errors_name_the_demos_own_options(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = cli("demo", "--out", tmp_path / "d", "--device", "cpu")
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error")]  # after the progress lines
    assert r.exit_code == 1 and len(errors) == 1, r.stderr
    line = errors[0]
    assert "item demo --models tiny-random" in line and "ViT-L-14" in line
    assert "--pretrained" not in line and "--clip" not in line and "--captioner" not in line


# -- eval: --json flag, --out FILE, warnings first ----------------------------------------------------
def test_eval_json_flag_out_file_and_caption_source_warning_first(feat, tmp_path):
    info = json.loads((feat["head"] / "head.json").read_text())
    assert info["caption_sources"] == {"real": {"given": 6, "model": 0}, "fake": {"given": 0, "model": 6}}
    assert "different sources by label" in info["caption_source_warning"]
    r = ok("eval", feat["store"], "--head", feat["head"], "--json", "--out", tmp_path / "e.json")
    doc = json.loads(r.stdout)
    assert list(doc)[:2] == ["random_weights", "warnings"]
    assert "different sources by label" in doc["warnings"][0]
    assert json.loads((tmp_path / "e.json").read_text()) == doc
    ok("eval", feat["store"], "--head", feat["head"], "--out", tmp_path / "e.csv")
    assert next(csv.reader(open(tmp_path / "e.csv")))[:3] == ["head", "generator", "reals"]
    error_line(cli("eval", feat["store"], "--head", feat["head"], "--out", tmp_path / "e.txt"), ".json or .csv")
    text = ok("eval", feat["store"], "--head", feat["head"])
    assert text.stdout.splitlines()[0].startswith("RANDOM WEIGHTS") and "different sources" in text.stderr


def test_report_warns_first_and_uses_one_colour_per_class(feat, tmp_path):
    out = tmp_path / "r.html"
    ok("report", feat["store"], "--head", feat["head"], "--out", out)
    html = out.read_text()
    body = html[html.index("<body>"):]
    first = body.split("\n")[1:4]
    assert "RANDOM WEIGHTS" in first[0] and "different sources by label" in first[1]
    keys = re.findall(r'<p class="note colours">(.*?)</p>', html)
    assert len(keys) == 2
    colours = [dict((n.strip(), c) for c, n in re.findall(r'data-colour="([^"]+)"[^>]*>&#9632; ([^<]+)<', k))
               for k in keys]
    hist = next(c for c in colours if set(c) == {"real", "fake"})
    pca = next(c for c in colours if "gen_a" in c)
    assert pca["real"] == hist["real"]
    assert not ({pca["gen_a"], pca["gen_b"]} & {hist["real"], hist["fake"]})  # red never means real


def test_predict_on_a_manifest_uses_its_captions_and_matches_eval(feat, tmp_path):
    from item.classify.train import score_rows

    picks = [0, 2, 14]  # a real with a given caption, a fake captioned by the model, a test real
    manifest = write_csv(tmp_path / "p.csv", [{"path": feat["rows"][k]["path"], "caption": feat["rows"][k]["caption"]}
                                              for k in picks])
    doc = json.loads(ok("predict", manifest, "--head", feat["head"], "--json").stdout)
    scores, _, _ = score_rows(feat["store"], feat["head"], picks)
    with StoreReader(feat["store"]) as reader:
        captions = reader.metadata(["caption"])["caption"]
    assert [r["status"] for r in doc["rows"]] == ["ok"] * 3
    assert [r["caption_source"] for r in doc["rows"]] == ["given", "tiny-random", "given"]
    for r, k, s in zip(doc["rows"], picks, scores):
        assert r["caption"] == captions[k] and r["p_fake"] == pytest.approx(float(s), abs=1e-6)
    # the head's own caption-source warning travels into predict
    assert any("different sources by label" in w for w in doc["warnings"])


# -- heads remember the rows that fitted them ---------------------------------------------------------
def test_eval_on_another_store_with_the_same_images_warns_with_the_count(feat, tmp_path):
    rows = feat["rows"]
    seen = [r for r in rows if r["split"] in ("train", "val")][:5]
    unseen = [r for r in rows if r["split"] == "test"][:3]
    other = tmp_path / "other"
    ok("featurize", write_csv(tmp_path / "o.csv", [{**r, "split": "x"} for r in seen + unseen]), "--store", other,
       "--models", "tiny-random", "--workers", "0")
    doc = json.loads(ok("eval", other, "--head", feat["head"], "--split", "all", "--json").stdout)
    hits = [w for w in doc["warnings"] if "evaluated images were used" in w]
    assert len(hits) == 1 and hits[0].startswith(f"{feat['head'].name}: 5 of the 8 evaluated images"), hits
    info = json.loads((feat["head"] / "head.json").read_text())
    # 8 ids are kept as an exact set (a Bloom filter only for large heads): no false positive but a 64-bit
    # prefix collision
    seen = info["seen_ids"]["train"]
    assert seen["kind"].startswith("exact") and seen["n_ids"] == 8 and seen["false_positive_rate"] < 1e-15
    # on its own store's test split, nothing it saw is evaluated
    doc = json.loads(ok("eval", feat["store"], "--head", feat["head"], "--json").stdout)
    assert not [w for w in doc["warnings"] if "were used" in w]


# -- neighbours by image: CLIP only -------------------------------------------------------------------
def test_neighbors_on_image_loads_no_captioner_and_no_grounder(feat, tmp_path, monkeypatch):
    from item.featurize import featurize_images

    new = image(tmp_path / "new.png", 999)
    want = featurize_images([str(new)], models="tiny-random")[0].image_emb  # the full featurize path
    with StoreReader(feat["store"]) as reader:
        emb = reader.read("image_emb").astype(np.float64)
    refuse(monkeypatch, "captioner", "grounder")
    res = json.loads(ok("neighbors", feat["store"], new, "-k", "3", "--on", "image", "--json").stdout)
    assert res["models_loaded"] == ["clip"] and "stored_row" not in res
    q = want.astype(np.float16).astype(np.float64)
    sims = emb @ (q / np.linalg.norm(q)) / np.linalg.norm(emb, axis=1)
    assert [h["row"] for h in res["neighbors"]] == np.argsort(-sims, kind="stable")[:3].tolist()
    np.testing.assert_allclose([h["similarity"] for h in res["neighbors"]], np.sort(sims)[::-1][:3], atol=2e-3)
    # --on misalignment needs captions, nouns and boxes: the full path, which reaches the captioner
    r = cli("neighbors", feat["store"], new, "--on", "misalignment")
    assert isinstance(r.exception, AssertionError) and "captioner" in str(r.exception)


def test_neighbors_of_a_stored_file_load_no_model(feat, monkeypatch):
    refuse(monkeypatch, "clip", "captioner", "grounder")
    path = feat["rows"][3]["path"]
    for on in ("image", "misalignment"):
        res = json.loads(ok("neighbors", feat["store"], path, "-k", "2", "--on", on, "--json").stdout)
        assert res["stored_row"] == 3 and res["models_loaded"] == [] and res["excluded"] == [3]
        assert 3 not in [h["row"] for h in res["neighbors"]]
    r = ok("neighbors", feat["store"], path, "-k", "2")
    assert "no model loaded" in r.stderr


# -- the Python API ---------------------------------------------------------------------------------------
def test_python_api_matches_the_cli(feat, tmp_path):
    import item

    store = item.open_store(feat["store"])
    X, y, rows = store.features("hierarchical", split="train")
    with StoreReader(feat["store"]) as reader:
        want = reader.select(label=["real", "fake"], split="train")
        labels = reader.metadata(["label"])["label"][want]
    assert rows.tolist() == want.tolist() and y.tolist() == [int(v == "fake") for v in labels]
    assert X.shape == (8, 2 * 32 + 5)
    Xg, _, rows_g = store.features("visual", generators="gen_a")
    assert Xg.shape == (8, 32) and len(rows_g) == 8
    assert len(store.table()) == 16
    head = item.train_head(store, recipe="hierarchical", kind="logistic")
    p = head.predict_proba(X)
    assert p.shape == (8, 2) and np.allclose(p.sum(1), 1)
    head.save(tmp_path / "h")
    again = item.load_head(tmp_path / "h")
    np.testing.assert_array_equal(again.predict_proba(X), p)
    df = item.evaluate(store, again, split="test")
    cli_doc = json.loads(ok("eval", feat["store"], "--head", tmp_path / "h", "--json").stdout)
    assert df["auroc"].tolist() == pytest.approx([r["auroc"] for r in cli_doc["rows"]], nan_ok=True)
    assert df.attrs["random_weights"] is True
    path = feat["rows"][12]["path"]
    pred = item.predict([path, Image.open(path)], again, captions={path: "a dog sitting on a red couch"})
    assert pred["status"].tolist() == ["ok", "ok"] and pred.attrs["random_weights"] is True
    cli_pred = json.loads(ok("predict", write_csv(tmp_path / "p.csv", [{"path": path, "caption":
                                                                        "a dog sitting on a red couch"}]),
                             "--head", tmp_path / "h", "--json").stdout)
    assert pred["p_fake"][0] == pytest.approx(cli_pred["rows"][0]["p_fake"], abs=1e-9)
    assert pred["caption_source"].tolist()[0] == "given"


def _readme_python_block() -> str:
    """The first Python example of the Python API page (moved there from the README)."""
    text = PYTHON_API_PAGE.read_text()
    section = text[text.index("# Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_as_written(feat, tmp_path, monkeypatch):
    (tmp_path / "stores").mkdir()
    shutil.copytree(feat["store"], tmp_path / "stores" / "mine")
    monkeypatch.chdir(tmp_path)  # the example makes its own image to score
    code = _readme_python_block()
    assert "item.open_store" in code and "item.predict" in code
    scope: dict = {}
    from item.outputs import RandomWeightsWarning

    with pytest.warns(RandomWeightsWarning, match="RANDOM WEIGHTS"):
        exec(compile(code, "docs/python-api.md", "exec"), scope)
    assert (tmp_path / "heads" / "hier" / "head.json").is_file() and (tmp_path / "example.png").is_file()
    assert scope["scores"].attrs["random_weights"] is True and scope["scores"]["status"].tolist() == ["ok"]
