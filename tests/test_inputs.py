"""discover(): folder layouts, manifests, precedence, problems."""

import json
import os

import pytest
from PIL import Image

from item.errors import InputError
from item.featurize.inputs.discover import LABELS, LAYOUTS, discover


def _touch(root, rel):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2)).save(p, format="PNG")
    return p


def _triples(d, root):
    return [(os.path.relpath(r.path, root), r.label, r.generator, r.split) for r in d.rows]


def test_forensynths_nested_categories(tmp_path):
    for rel in ["progan/car/0_real/a.png", "progan/car/1_fake/b.PNG", "progan/cat/1_fake/c.jpg",
                "stylegan/0_real/d.jpeg"]:
        _touch(tmp_path, rel)
    (tmp_path / "progan/car/notes.txt").write_text("x")
    d = discover([str(tmp_path)])
    assert d.layouts == {str(tmp_path): "forensynths"}
    assert _triples(d, tmp_path) == [
        ("progan/car/0_real/a.png", "real", "progan", ""),
        ("progan/car/1_fake/b.PNG", "fake", "progan", ""),
        ("progan/cat/1_fake/c.jpg", "fake", "progan", ""),
        ("stylegan/0_real/d.jpeg", "real", "stylegan", ""),
    ]
    assert all(os.path.isabs(r.path) and r.caption is None for r in d.rows)
    assert d.counts() == {("progan", "fake"): 2, ("progan", "real"): 1, ("stylegan", "real"): 1}
    assert d.problems == []


def test_split_folders_anywhere_and_genimage(tmp_path):
    for rel in ["test/progan/0_real/a.png", "sdv4/imagenet_ai_sdv4/train/ai/b.png",
                "sdv4/imagenet_ai_sdv4/val/nature/c.png", "validation/real/d.webp"]:
        _touch(tmp_path, rel)
    d = discover([str(tmp_path)])
    assert d.layouts[str(tmp_path)] == "mixed"
    assert _triples(d, tmp_path) == [
        ("sdv4/imagenet_ai_sdv4/train/ai/b.png", "fake", "sdv4", "train"),
        ("sdv4/imagenet_ai_sdv4/val/nature/c.png", "real", "sdv4", "val"),
        ("test/progan/0_real/a.png", "real", "progan", "test"),
        ("validation/real/d.webp", "real", "unknown", "val"),
    ]
    g = tmp_path / "g"
    _touch(g, "midjourney/train/ai/x.png")
    assert discover([str(g)]).layouts[str(g)] == "genimage"


def test_real_fake_and_flat_with_arguments(tmp_path):
    rf = tmp_path / "rf"
    _touch(rf, "Real/a.png")
    _touch(rf, "FAKE/b.png")
    d = discover([str(rf)])
    assert d.layouts[str(rf)] == "real-fake"
    assert [(r.label, r.generator) for r in d.rows] == [("fake", "unknown"), ("real", "unknown")]
    flat = tmp_path / "flat"
    _touch(flat, "b.png")
    _touch(flat, "a.gif")
    _touch(flat, "sub/c.tiff")
    d = discover([str(flat)])
    assert d.layouts[str(flat)] == "flat"
    assert [(os.path.basename(r.path), r.label, r.generator, r.split) for r in d.rows] == [
        ("a.gif", "unknown", "unknown", ""), ("b.png", "unknown", "unknown", ""), ("c.tiff", "unknown", "unknown", "")]
    d = discover([str(flat)], label="AI", generator="sdxl", split="test")
    assert {(r.label, r.generator, r.split) for r in d.rows} == {("fake", "sdxl", "test")}


def test_explicit_arguments_override_layout(tmp_path):
    _touch(tmp_path, "progan/0_real/a.png")
    d = discover([str(tmp_path)], generator="mine", split="train")
    assert [(r.label, r.generator, r.split) for r in d.rows] == [("real", "mine", "train")]
    d = discover([str(tmp_path)], label="fake")
    assert d.rows[0].label == "fake"
    with pytest.raises(InputError, match="real, fake, unknown"):
        discover([str(tmp_path)], label="maybe")


def test_only_image_files_not_dirs_nor_hidden(tmp_path):
    _touch(tmp_path, "a.png")
    (tmp_path / "dir.jpg").mkdir()
    _touch(tmp_path, "dir.jpg/inner.png")
    (tmp_path / "readme.md").write_text("x")
    (tmp_path / "._a.png").write_bytes(b"\0")
    _touch(tmp_path, ".cache/z.png")
    d = discover([str(tmp_path)])
    assert [os.path.relpath(r.path, tmp_path) for r in d.rows] == ["a.png", "dir.jpg/inner.png"]


def test_non_utf8_name_is_listed(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"\xff\xfe.png")
    with open(raw, "wb") as f:
        f.write(b"x")
    d = discover([str(tmp_path)])
    assert [os.fsencode(r.path) for r in d.rows] == [raw]


def test_symlink_loop_is_not_followed_forever(tmp_path):
    _touch(tmp_path, "real/a.png")
    (tmp_path / "real" / "loop").symlink_to(tmp_path)
    d = discover([str(tmp_path)])
    assert len(d.rows) == 1


def test_missing_source_and_unknown_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        discover([str(tmp_path / "nope")])
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="neither"):
        discover([str(tmp_path / "x.txt")])
    img = _touch(tmp_path, "one.png")
    d = discover([str(img)], label="real")
    assert d.layouts[str(img)] == "file" and d.rows[0].label == "real"


def test_csv_manifest_bom_crlf_case_and_problems(tmp_path):
    _touch(tmp_path, "imgs/a.png")
    _touch(tmp_path, "imgs/b.png")
    _touch(tmp_path, "imgs/c.png")
    (tmp_path / "imgs/d.jpg").mkdir()
    text = ("\ufeff Path ,LABEL, Generator ,split,Caption,prompt\r\n"
            "imgs/a.png,real,camera,train,A dog on a couch,\r\n"
            "imgs/b.png,1,sdxl,test,  ,p\r\n"
            "imgs/missing.png,real,,,,\r\n"
            "imgs/c.png,true,,,,\r\n"
            "imgs/a.png,fake,,,,\r\n"
            f"{tmp_path / 'imgs/c.png'},AI,,,\"a caption, with comma\",\r\n"
            "imgs/d.jpg,real,,,,\r\n"
            ",real,,,,\r\n")
    m = tmp_path / "manifest.csv"
    m.write_bytes(text.encode("utf-8"))
    d = discover([str(m)])
    assert d.layouts[str(m)] == "manifest-csv"
    assert [(os.path.basename(r.path), r.label, r.generator, r.split, r.caption, r.origin) for r in d.rows] == [
        ("a.png", "real", "camera", "train", "A dog on a couch", f"{m}:2"),
        ("b.png", "fake", "sdxl", "test", None, f"{m}:3"),
        ("c.png", "fake", "unknown", "", "a caption, with comma", f"{m}:7"),
    ]
    probs = "\n".join(d.problems)
    assert len(d.problems) == 5
    assert f"{m}:4: missing file" in probs
    assert f"{m}:5: unknown label 'true'" in probs
    assert f"{m}:6: duplicate of {m}:2" in probs
    assert f"{m}:8:" in probs and "directory" in probs
    assert f"{m}:9: empty path" in probs


def test_csv_without_path_column(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("file,label\na.png,real\n")
    with pytest.raises(InputError) as ei:
        discover([str(m)])
    msg = str(ei.value)
    assert "'file'" in msg and "'label'" in msg and "path" in msg and "caption" in msg


def test_jsonl_manifest(tmp_path):
    _touch(tmp_path, "a.png")
    _touch(tmp_path, "b.png")
    lines = [json.dumps({"Path": "a.png", "label": 0, "caption": "a cat"}), "",
             "{not json", json.dumps({"path": "b.png", "label": "nature", "generator": "x"}),
             json.dumps([1, 2]), json.dumps({"path": "b.png", "label": True})]
    m = tmp_path / "m.jsonl"
    m.write_text("\r\n".join(lines) + "\r\n")
    d = discover([str(m)])
    assert d.layouts[str(m)] == "manifest-jsonl"
    assert [(os.path.basename(r.path), r.label, r.generator, r.caption, r.origin) for r in d.rows] == [
        ("a.png", "real", "unknown", "a cat", f"{m}:1"), ("b.png", "real", "x", None, f"{m}:4")]
    assert any(p.startswith(f"{m}:3: not valid JSON") for p in d.problems)
    assert any(p.startswith(f"{m}:5: expected a JSON object") for p in d.problems)
    assert any(p.startswith(f"{m}:6: unknown label True") for p in d.problems)
    arr = tmp_path / "m.json"
    arr.write_text(json.dumps([{"path": "a.png"}]))
    assert [r.label for r in discover([str(arr)]).rows] == ["unknown"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"file": "a.png"}) + "\n")
    with pytest.raises(InputError, match="no 'path' column.*'file'"):
        discover([str(bad)])


def test_duplicates_across_sources(tmp_path):
    a = _touch(tmp_path, "real/a.png")
    m = tmp_path / "m.csv"
    m.write_text(f"path,label\n{a},real\n")
    d = discover([str(tmp_path / "real"), str(m)])
    assert len(d.rows) == 1 and len(d.problems) == 1 and "duplicate" in d.problems[0]


def test_registry_and_labels():
    assert LABELS == ("real", "fake", "unknown")
    assert {"forensynths", "real-fake", "genimage", "flat", "manifest-csv", "manifest-jsonl"} <= set(LAYOUTS)
    assert all(isinstance(v, str) and v for v in LAYOUTS.values())


def test_a_huge_caption_is_refused_for_its_row_only(tmp_path):
    from item.featurize.inputs.discover import MAX_CAPTION_CHARS

    _touch(tmp_path, "a.png")
    _touch(tmp_path, "b.png")
    huge = "a cat " * (MAX_CAPTION_CHARS // 3)
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "a.png", "label": "real", "caption": huge}) + "\n"
                                      + json.dumps({"path": "b.png", "label": "fake", "caption": "a dog"}) + "\n")
    d = discover([str(tmp_path / "m.jsonl")])
    assert [os.path.basename(r.path) for r in d.rows] == ["b.png"]
    assert d.rows[0].caption == "a dog"
    assert len(d.problems) == 1 and "m.jsonl:1" in d.problems[0] and "longer than" in d.problems[0]


# -- issue 30 (10): repeated columns, over-long fields, URLs ---------------------------------------
@pytest.mark.parametrize("header", ["path,label,generator,label", "path,label,Label ", "PATH,label,path"])
def test_a_column_given_twice_refuses_the_manifest_naming_it(tmp_path, header):
    _touch(tmp_path, "a.png")
    (tmp_path / "m.csv").write_text(header + "\n" + "a.png,real,g,fake\n")
    with pytest.raises(InputError) as e:
        discover([str(tmp_path / "m.csv")])
    name = "path" if header.lower().count("path") == 2 else "label"
    assert f"column '{name}' is given twice" in str(e.value) and "\n" not in str(e.value)


def test_a_key_given_twice_in_a_json_line_is_that_rows_problem(tmp_path):
    _touch(tmp_path, "a.png")
    _touch(tmp_path, "b.png")
    (tmp_path / "m.jsonl").write_text('{"path": "a.png", "label": "real", "Label": "fake"}\n'
                                      '{"path": "b.png", "label": "fake"}\n')
    d = discover([str(tmp_path / "m.jsonl")])
    assert [os.path.basename(r.path) for r in d.rows] == ["b.png"]
    assert len(d.problems) == 1 and "m.jsonl:1" in d.problems[0] and "'label' is given twice" in d.problems[0]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_field_of_megabytes_is_its_rows_problem_not_the_files(tmp_path, fmt):
    import csv as _csv

    from item.manifests import MAX_FIELD_CHARS

    for n in ("a.png", "b.png", "c.png"):
        _touch(tmp_path, n)
    rows = [{"path": "a.png", "label": "real", "caption": "x" * 10_000_000},  # 10 MB: over csv's own limit too
            {"path": "b.png", "label": "fake", "caption": "a dog", "generator": "g" * (MAX_FIELD_CHARS + 1)},
            {"path": "c.png", "label": "fake", "caption": "a cat"}]
    m = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        with open(m, "w", newline="") as f:
            w = _csv.DictWriter(f, ["path", "label", "caption", "generator"])
            w.writeheader()
            w.writerows(rows)
    else:
        m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = discover([str(m)])
    assert [os.path.basename(r.path) for r in d.rows] == ["c.png"]
    assert len(d.problems) == 2 and all(len(p) < 400 for p in d.problems), [p[:200] for p in d.problems]
    assert "'caption' field has 10,000,000 characters" in d.problems[0] and "'generator' field has" in d.problems[1]
    import csv as _csv2

    assert _csv2.field_size_limit() == 131072  # the process-wide limit is left as it was


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/x.jpg", "https://example.org/a b.png", "s3://bucket/k.jpg",
                                 "HTTP://EXAMPLE.ORG/X.JPG", "file:///tmp/x.jpg"])
def test_a_url_in_a_manifest_says_urls_are_not_supported(tmp_path, url):
    _touch(tmp_path, "a.png")
    (tmp_path / "m.csv").write_text(f"path,label\n{url},fake\na.png,real\n")
    d = discover([str(tmp_path / "m.csv")])
    assert [os.path.basename(r.path) for r in d.rows] == ["a.png"]
    assert len(d.problems) == 1
    assert "URLs are not supported: download the files first" in d.problems[0] and url in d.problems[0]
    assert "missing file" not in d.problems[0]
    with pytest.raises(InputError, match="URLs are not supported"):
        discover([url])
