"""Reliability through the real CLI and the real store: hostile files and manifests, write failures,
non-finite embeddings, safe loading. Kill-and-resume and two-writer checks with real processes are in
tests/test_reliability_processes.py.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.store import StoreReader, validate

TINY = ["--models", "tiny-random", "--workers", "0", "--batch-size", "8"]


def cli(*args, env=None):
    r = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return r


def noise(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).convert(mode)


def png_header_only(w, h) -> bytes:
    """A PNG declaring w x h pixels in a few bytes: a decompression bomb by its header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# -- 2. hostile files -----------------------------------------------------------------------------
def make_hostile(folder: Path) -> dict[str, tuple[str, tuple | None]]:
    """Write every hostile file; returns name -> (expected status or skip reason, expected (w, h) or None)."""
    folder.mkdir(parents=True)
    exp: dict[str, tuple[str, tuple | None]] = {}

    def put(name, data: bytes, want, size=None):
        (folder / name).write_bytes(data)
        exp[name] = (want, size)

    put("zero.jpg", b"", "empty-file")
    jpg = encoded(noise(200, 200, 1), "JPEG")
    put("truncated.jpg", jpg[: len(jpg) // 2], "truncated")
    png = encoded(noise(200, 200, 2), "PNG")
    put("truncated.png", png[: len(png) // 2], "truncated")
    put("page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not-an-image")
    put("notes.jpg", "just some text, ni\u00f1o".encode(), "not-an-image")
    put("bomb.png", png_header_only(100_000, 100_000), "too-large")
    put("cmyk.jpg", encoded(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG"), "ok", (30, 20))
    put("sixteen.png", encoded(Image.fromarray(np.arange(24 * 16, dtype=np.uint16).reshape(16, 24) * 100), "PNG"),
        "ok", (24, 16))
    pal = noise(20, 12, 3).convert("P")
    put("palette.png", encoded(pal, "PNG", transparency=0), "ok", (20, 12))
    put("onebit.png", encoded(noise(17, 9, 4).convert("1"), "PNG"), "ok", (17, 9))
    frames = [Image.new("RGB", (16, 12), c) for c in ((250, 0, 0), (0, 0, 250), (0, 250, 0))]
    put("anim.gif", encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "ok", (16, 12))
    put("anim.webp", encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0,
                             lossless=True), "ok", (16, 12))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: 40x20 stored, 20x40 shown
    put("rotated.jpg", encoded(noise(40, 20, 5), "JPEG", exif=exif), "ok", (20, 40))
    put("one.png", encoded(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG"), "ok", (1, 1))
    put("thin.png", encoded(Image.new("RGB", (10000, 10), (1, 2, 3)), "PNG"), "ok", (10000, 10))
    put("locked.png", encoded(noise(8, 8, 6), "PNG"), "unreadable", (8, 8))
    os.chmod(folder / "locked.png", 0)
    if os.access(folder / "locked.png", os.R_OK):  # root reads a chmod-000 file anyway
        exp["locked.png"] = ("ok", (8, 8))
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    exp["dangling.png"] = ("broken-symlink", None)
    os.mkfifo(folder / "pipe.png")
    exp["pipe.png"] = ("not-a-file", None)
    raw_name = os.path.join(os.fsencode(folder), b"caf\xe9-\xff.png")
    with open(raw_name, "wb") as fh:
        fh.write(encoded(noise(12, 10, 7), "PNG"))
    exp[os.fsdecode(b"caf\xe9-\xff.png")] = ("ok", (12, 10))
    (folder / "folder.jpg").mkdir()  # a directory named like an image: not an input at all
    (folder / "folder.jpg" / "inside.png").write_bytes(encoded(noise(9, 9, 8), "PNG"))
    exp["folder.jpg/inside.png"] = ("ok", (9, 9))
    return exp


def test_hostile_files_through_cli(tmp_path):
    exp = make_hostile(tmp_path / "in")
    store = tmp_path / "s"
    try:
        r = cli("featurize", tmp_path / "in", "--store", store, *TINY, "--json")
    finally:
        os.chmod(tmp_path / "in" / "locked.png", 0o644)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    want_reasons: dict[str, int] = {}
    for want, _ in exp.values():
        if want != "ok":
            want_reasons[want] = want_reasons.get(want, 0) + 1
    n_ok = sum(want == "ok" for want, _ in exp.values())
    assert summary["skipped_by_reason"] == want_reasons
    assert summary["n_written"] == n_ok and summary["n_skipped"] == sum(want_reasons.values())
    assert validate(store).ok
    info = json.loads(cli("store", "info", store, "--json").stdout)
    assert info["skipped_by_reason"] == want_reasons
    assert info["n_ok"] == n_ok and info["n_images"] == len(exp)
    text = cli("store", "info", store).stdout
    for reason, n in want_reasons.items():
        assert f"skipped: {reason}" in text and text.split(f"skipped: {reason}")[1].split()[0] == str(n)
    with StoreReader(store) as rd:
        meta = rd.metadata()
        emb = rd.read("image_emb")
    by_name = {}
    for i, p in enumerate(meta["path"]):
        rel = os.path.relpath(p, tmp_path / "in")
        by_name[rel] = i
    # the non-UTF-8 name is stored in its documented escaped form and is still recognisable
    assert "caf\\xe9-\\xff.png" in by_name
    by_name[os.fsdecode(b"caf\xe9-\xff.png")] = by_name.pop("caf\\xe9-\\xff.png")
    assert set(by_name) == set(exp)
    for name, (want, size) in exp.items():
        i = by_name[name]
        if want == "ok":
            assert meta["status"][i] == "ok", name
            assert (meta["width"][i], meta["height"][i]) == size, name
            assert abs(np.linalg.norm(emb[i]) - 1) < 1e-2, name
        else:
            assert (meta["status"][i], meta["reason"][i]) == ("skipped", want), name
            assert not emb[i].any()
    # resuming over the same folder adds nothing: hostile rows (and the escaped name) are recognised
    r = cli("featurize", tmp_path / "in", "--store", store, *TINY, "--json")
    again = json.loads(r.stdout)
    assert again["n_written"] == 0 and again["n_skipped"] == 0 and again["n_duplicates"] == 0, again
    with StoreReader(store) as rd:
        assert rd.n_images == len(exp) and len(rd.aliases()["path"]) == 0


# -- 3. hostile manifests -------------------------------------------------------------------------
LONG_CAPTION = " ".join(["a red bicycle leaning on a green wall near a small blue door"] * 12)  # > 77 tokens
FOREIGN = {"zh": "一只猫坐在红色的沙发上", "ar": "قطة تجلس على أريكة حمراء", "emoji": "a cat 🐱 on a sofa 🛋️",
           "de": "Eine Katze sitzt auf einem roten Sofa, schön"}


def test_hostile_manifest(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    for i in range(7):
        noise(32 + i, 24, seed=100 + i).save(d / f"{i}.png")
    lines = ["path,label,generator,split,caption,prompt",
             "0.png,real,,train,a plain caption,",  # line 2
             "missing.png,real,,train,,",  # line 3: missing file
             "1.png,fake,sd,train,,",  # line 4: captioned by the tiny captioner
             "0.png,fake,,train,duplicate row,",  # line 5: duplicate path
             "2.png,maybe,,train,,",  # line 6: unknown label
             ",real,,train,,",  # line 7: empty path
             f'3.png,fake,sd,test,"{LONG_CAPTION}",',  # line 8
             f"4.png,real,,test,{FOREIGN['zh']},",  # line 9
             f"5.png,1,,test,{FOREIGN['ar']},",  # line 10: label alias
             f'6.png,nature,,test,"{FOREIGN["emoji"]}, {FOREIGN["de"]}",ignored prompt']  # line 11
    (d / "manifest.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    store = tmp_path / "s"
    r = cli("featurize", d / "manifest.csv", "--store", store, *TINY, "--json")
    assert r.exit_code == 0, r.output
    man = str(d / "manifest.csv")
    for line, what in ((3, "missing file"), (5, "duplicate of"), (6, "unknown label 'maybe'"), (7, "empty path")):
        assert f"{man}:{line}: {what}" in r.output, (line, r.output)
    assert "Traceback" not in r.output
    summary = json.loads(r.stdout)
    assert summary["n_written"] == 6 and summary["n_skipped"] == 0
    assert validate(store).ok
    with StoreReader(store) as rd:
        meta = rd.metadata()
    rows = {os.path.basename(p): i for i, p in enumerate(meta["path"])}
    assert sorted(rows) == ["0.png", "1.png", "3.png", "4.png", "5.png", "6.png"]
    assert meta["caption"][rows["0.png"]] == "a plain caption" and meta["label"][rows["0.png"]] == "real"
    assert meta["caption_source"][rows["1.png"]] == "tiny-random"
    assert meta["caption"][rows["3.png"]] == LONG_CAPTION and bool(meta["caption_truncated"][rows["3.png"]])
    assert not bool(meta["caption_truncated"][rows["0.png"]])
    assert meta["caption"][rows["4.png"]] == FOREIGN["zh"]
    assert meta["caption"][rows["5.png"]] == FOREIGN["ar"] and meta["label"][rows["5.png"]] == "fake"
    assert meta["caption"][rows["6.png"]] == f"{FOREIGN['emoji']}, {FOREIGN['de']}"
    assert meta["label"][rows["6.png"]] == "real" and meta["generator"][rows["3.png"]] == "sd"


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"\xef\xbb\xbffile,kind\r\n0.png,real\r\n", "has no 'path' column; found columns: 'file', 'kind'"),
    (b"path,label\n\xff\xfe.png,real\n", "is not UTF-8 text"),
])
def test_unusable_manifest_is_one_clear_line(tmp_path, content, message):
    (tmp_path / "m.csv").write_bytes(content)
    r = cli("featurize", tmp_path / "m.csv", "--store", tmp_path / "s", *TINY)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("error:")]) == 1


# -- 5. write failures ----------------------------------------------------------------------------
def make_folder(folder: Path, n: int, seed: int = 0) -> None:
    for i in range(n):
        lab = "0_real" if i % 2 else "1_fake"
        (folder / lab).mkdir(parents=True, exist_ok=True)
        noise(24 + (i * 7) % 41, 24 + (i * 5) % 25, seed=seed + i).save(folder / lab / f"{i:04d}.png")


@pytest.mark.parametrize("fault,committed", [("shard-written:2:raise=ENOSPC", 16),  # disk full writing shard 2
                                             ("manifest-tmp:3:raise=EIO", 16)])  # I/O error committing shard 2
def test_write_failure_is_one_line_and_resumable(tmp_path, monkeypatch, fault, committed):
    from item import faults

    make_folder(tmp_path / "in", 40)
    store = tmp_path / "s"
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv("ITEM_FAULT", fault)
    r = cli("featurize", tmp_path / "in", "--store", store, *TINY, "--shard-size", "16")
    assert r.exit_code == 1, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    assert ("No space left on device" if "ENOSPC" in fault else "Input/output error") in errors[0]
    assert f"holds its {committed} committed image rows" in errors[0] and "run the same command again" in errors[0]
    rep = validate(store)
    assert rep.ok, rep.problems
    assert not list((store / "shards").glob("*.partial"))
    with StoreReader(store) as rd:
        assert rd.n_images == committed
        done = set(rd.metadata()["id"])
    monkeypatch.delenv("ITEM_FAULT")
    r = cli("featurize", tmp_path / "in", "--store", store, *TINY, "--shard-size", "16", "--json")
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert again["n_already_done"] >= committed and again["n_written"] + again["n_already_done"] == 40
    assert validate(store).ok
    with StoreReader(store) as rd:
        ids = list(rd.metadata()["id"])
    assert len(ids) == len(set(ids)) == 40 and done <= set(ids)


# -- 6. non-finite embeddings ---------------------------------------------------------------------
def test_non_finite_embedding_skips_that_image(tmp_path, monkeypatch):
    from item.featurize.models.clip import ClipEncoder

    make_folder(tmp_path / "in", 10)
    Image.new("RGB", (30, 20), (0, 0, 0)).save(tmp_path / "in" / "1_fake" / "black.png")
    original = ClipEncoder.encode_images

    def overflowing(self, pixels):
        out = original(self, pixels)
        flat = pixels.flatten(2)  # (n, 3, H*W)
        flat_colour = (flat.amax(2) == flat.amin(2)).all(1).numpy()
        out[flat_colour] = np.nan  # the all-black image (and any crop of it) "overflows"
        return out

    monkeypatch.setattr(ClipEncoder, "encode_images", overflowing)
    store = tmp_path / "s"
    r = cli("featurize", tmp_path / "in", "--store", store, *TINY, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["skipped_by_reason"] == {"non-finite": 1} and summary["n_written"] == 10
    assert validate(store).ok
    with StoreReader(store) as rd:
        meta = rd.metadata()
        i = [k for k, p in enumerate(meta["path"]) if p.endswith("black.png")][0]
        assert (meta["status"][i], meta["reason"][i]) == ("skipped", "non-finite")
        assert np.isfinite(rd.read("image_emb")).all() and np.isfinite(rd.read("misalignment")).all()
        assert rd.counts["skipped_by_reason"] == {"non-finite": 1}


# -- 6. loading is safe ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small store with train/val/test splits, a flat index and a logistic head."""
    base = tmp_path_factory.mktemp("trained")
    for split in ("train", "val", "test"):
        make_folder(base / "in" / split, 12, seed={"train": 0, "val": 100, "test": 200}[split])
    store, head = base / "s", base / "head"
    r = cli("featurize", base / "in", "--store", store, *TINY)
    assert r.exit_code == 0, r.output
    assert cli("store", "index", store).exit_code == 0
    r = cli("train", store, "--out", head, "--kind", "logistic", "--recipe", "global")
    assert r.exit_code == 0, r.output
    return store, head


def test_loading_never_unpickles(trained, monkeypatch):
    import pickle

    import torch

    from item.classify.heads import load_head
    from item.store import StoreIndex, store_info

    store, head = trained

    def refuse(*a, **k):
        raise AssertionError("something tried to unpickle while loading")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(mod, name, refuse)
    with StoreReader(store) as rd:
        rd.metadata(), rd.read("image_emb"), rd.objects(), rd.aliases()
    assert validate(store).ok and store_info(store)["n_images"] == 36
    ix = StoreIndex(store, on="image")
    ix.search(np.ones((1, ix.dim), np.float32), k=3)
    ix.close()
    h, info = load_head(head)
    assert h.predict_proba(np.zeros((2, info["feature_size"]), np.float32)).shape == (2, 2)
    r = cli("eval", store, "--head", head, "--split", "test")
    assert r.exit_code == 0, r.output


def _edit_json(path: Path, **changes):
    d = json.loads(path.read_text())
    for k, v in changes.items():
        if isinstance(v, dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    path.write_text(json.dumps(d))


def test_refusals_say_which_and_why(trained, tmp_path):
    import shutil

    import h5py
    from safetensors.numpy import load_file, save_file

    from item.classify.heads import load_head
    from item.errors import HeadError, IncompatibleError, SchemaError
    from item.store import StoreIndex, StoreWriter

    src_store, src_head = trained
    store, head = tmp_path / "s", tmp_path / "h"

    def fresh():
        for p in (store, head):
            shutil.rmtree(p, ignore_errors=True)
        shutil.copytree(src_store, store)
        shutil.copytree(src_head, head)

    # a store manifest from a newer schema: refused, by every reader and by the CLI in one line
    fresh()
    _edit_json(store / "manifest.json", schema_version=99)
    from item.store.schema import SCHEMA_VERSION

    with pytest.raises(SchemaError, match=f"schema 99, newer than the {SCHEMA_VERSION}.*upgrade"):
        StoreReader(store)
    r = cli("store", "info", store)
    assert r.exit_code == 1 and "newer" in r.output and "Traceback" not in r.output
    # a shard from a newer schema
    fresh()
    shard = sorted((store / "shards").glob("shard-*.h5"))[0]
    with h5py.File(shard, "r+") as f:
        f.attrs["schema_version"] = 7
    with StoreReader(store) as rd, pytest.raises(SchemaError, match=f"{shard.name}.*schema 7"):
        rd.read("image_emb")
    assert any("schema 7" in p for p in validate(store).problems)
    # an index sidecar from a newer schema
    fresh()
    _edit_json(store / "index" / "image-flat.json", schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(SchemaError, match=f"image-flat.json.*schema {SCHEMA_VERSION + 1}"):
        StoreIndex(store, on="image")
    # new rows from another CLIP model are refused by the store, naming the difference
    fresh()
    compat = dict(json.loads((store / "manifest.json").read_text())["compat"], clip_model="ViT-L-14")
    with pytest.raises(IncompatibleError, match="clip_model: store has 'item-tiny-clip'.*'ViT-L-14'"):
        StoreWriter(store, compat=compat, models={}, recipe="global")
    # a head from a newer schema
    _edit_json(head / "head.json", schema_version=42)
    with pytest.raises(SchemaError, match="newer ITEM.*head schema 42"):
        load_head(head)
    # weights that do not match head.json: the tensor and both shapes are named
    fresh()
    tensors = load_file(str(head / "head.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = np.zeros(tuple(s + 1 for s in tensors[name].shape), tensors[name].dtype)
    save_file(tensors, str(head / "head.safetensors"))
    with pytest.raises(HeadError, match="not the file head.json describes"):  # its checksum first (issue 21)
        load_head(head)
    _edit_json(head / "head.json", weights_sha256=None)  # a head saved before the checksum: shapes checked
    with pytest.raises(HeadError, match=f"tensor '{name}' has shape"):
        load_head(head)
    # a head trained on another CLIP model is refused for this store, saying which model
    fresh()
    _edit_json(head / "head.json", compat={"clip_model": "ViT-L-14"})
    r = cli("eval", store, "--head", head, "--split", "test")
    assert r.exit_code == 1 and "clip_model" in r.output and "ViT-L-14" in r.output, r.output
    assert "Traceback" not in r.output
