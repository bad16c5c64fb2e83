"""`item serve` (issue 12): the JSON API through FastAPI's TestClient, the command through typer's
CliRunner, and the page in a real headless Chromium driving a running server.

One small tiny-random store is made for the whole module: a few shipped sample images featurized by
the real CLI, two heads trained on it, a flat index on image embeddings (misalignment neighbours then
go through exact search, so both paths run)."""

import csv
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import item
from item.classify.features import store_features
from item.classify.heads import load_head
from item.cli import app as cli_app
from item.misalignment import pair_scores
from item.store import StoreReader
from tests._schemas import assert_valid

pytest.importorskip("fastapi", reason="item serve needs the serve extra: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from item.serve import ServeConfig, Service  # noqa: E402
from item.serve.app import create_app  # noqa: E402

SAMPLES = Path(item.__file__).resolve().parent / "samples"
# (path under item/samples, label, generator, split): both labels in train and val, one of each in test.
PICKS = [
    ("real/000000458054.jpg", "real", "camera", "train"),
    ("real/000000361919.jpg", "real", "camera", "train"),
    ("real/000000553664.jpg", "real", "camera", "val"),
    ("real/coffee.png", "real", "camera", "test"),
    ("fake/000001.1863159593.png", "fake", "Stable Diffusion v1.4 (InvokeAI 2.x)", "train"),
    ("fake/000002.1151955949.png", "fake", "Stable Diffusion v1.4 (InvokeAI 2.x)", "train"),
    ("fake/000003.2736230502.png", "fake", "Stable Diffusion v1.4 (InvokeAI 2.x)", "val"),
    ("fake/sdturbo_sdxlturbo_example.png", "fake", "SDXL-Turbo", "test"),
]
N = len(PICKS)
LOCAL = "http://127.0.0.1:8000"  # what a browser on this machine sends as Host (TestClient's default is 'testserver')
ARTIFACTS = Path(os.environ.get("ITEM_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def ok(*args):
    r = CliRunner().invoke(cli_app, [str(a) for a in args])
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


def _tree(root: Path) -> dict:
    """Every file under root with its sha256: what 'the store was not written' is checked against."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    with open(base / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "generator", "split"])
        for p, label, gen, split in PICKS:
            w.writerow([str(SAMPLES / p), label, gen, split])
    store = base / "store"
    ok("featurize", base / "m.csv", "--store", store, "--models", "tiny-random", "--workers", "0")
    ok("train", store, "--out", base / "hier", "--kind", "logistic")
    ok("train", store, "--out", base / "visual", "--kind", "logistic", "--recipe", "visual")
    ok("store", "index", store, "--on", "image", "--kind", "flat")
    before = _tree(store)
    service = Service(ServeConfig(store=str(store), heads=(str(base / "hier"), str(base / "visual")), device="cpu"))
    client = TestClient(create_app(service), base_url=LOCAL)
    yield {"store": store, "heads": [base / "hier", base / "visual"], "service": service, "client": client,
           "base": base, "before": before}
    service.close()


def _png(size=(40, 30), seed=0, flat=False) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    pixels = np.full((size[1], size[0], 3), 90, np.uint8) if flat else \
        rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _brute(store, column, query, k, exclude=()):
    """Top-k (row, cosine) over the store's ok rows by numpy, for checking the server's neighbours."""
    with StoreReader(store) as r:
        rows = np.array([x for x in r.select() if x not in exclude])
        sims = _unit(r.read(column, rows)) @ _unit(query)
    order = np.argsort(-sims, kind="stable")[:k]
    return [(int(rows[i]), float(sims[i])) for i in order]


def _error(resp, status, reason=None):
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert body["error"], body
    if reason:
        assert body["reason"] == reason, body
    return body


# -- the API --------------------------------------------------------------------------------------
def test_health_says_what_was_loaded(served):
    h = assert_valid(served["client"].get("/api/health").json(), "api_health")
    assert h["status"] == "ok" and h["random_weights"] is True
    assert h["store"]["n_ok"] == N and h["store"]["random_weights"] is True
    assert [x["name"] for x in h["heads"]] == ["hier", "visual"]
    assert {x["recipe"] for x in h["heads"]} == {"hierarchical", "visual"}
    assert h["models"]["clip"]["random_weights"] is True and h["models"]["device"] == "cpu"
    assert h["indexes"] == [{"on": "image", "kind": "flat", "fresh": True, "problem": ""}]
    assert h["neighbors"] == {"image": "index flat", "misalignment": "exact"}
    assert h["limits"]["max_pixels"] > 0 and h["limits"]["max_upload_bytes"] == 20 * 1024 * 1024


def test_predict_scores_an_upload_as_the_store_scores_the_same_image(served):
    raw = (SAMPLES / "real/coffee.png").read_bytes()
    resp = served["client"].post("/api/predict", files={"file": ("coffee.png", raw, "image/png")}, data={"k": "5"})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["random_weights"] is True and out["path"] == "coffee.png" and out["in_store"] is True
    assert_valid(out, "api_predict")
    assert out["id"] == hashlib.sha256(raw).hexdigest() and (out["width"], out["height"]) == (600, 400)
    with StoreReader(served["store"]) as r:
        row = r.find_id(out["id"])
        meta = r.metadata(["caption"])
        by_head = {}
        for h in served["heads"]:
            model, info = load_head(h)
            by_head[h.name] = (float(model.predict_proba(store_features(r, info["recipe"], [row]))[0, 1]), info)
        objs = r.objects([row])
        img_emb, mis = r.read("image_emb", [row])[0], r.read("misalignment", [row])[0]
    assert [v["head"] for v in out["heads"]] == ["hier", "visual"]
    for v in out["heads"]:
        want, info = by_head[v["head"]]
        assert v["p_fake"] == pytest.approx(want, abs=1e-6)  # a new file scores as the stored row does
        assert v["threshold"] == info["threshold"] and v["threshold_from"] == info["threshold_from"]
        assert v["label"] == ("fake" if v["p_fake"] >= v["threshold"] else "real")
    assert (out["p_fake"], out["label"], out["head"]) == (out["heads"][0]["p_fake"], out["heads"][0]["label"], "hier")
    assert out["caption"] == meta["caption"][row]
    # objects: the stored nouns and boxes, each with cos(crop, noun); the lowest-scoring one is marked worst
    assert [o["noun"] for o in out["objects"]] == list(objs["noun"])
    grounded = [o for o in out["objects"] if o["grounded"]]
    assert grounded, "tiny-random grounds every noun (thresholds 0)"
    for o, box, crop, noun in zip(out["objects"], objs["box"], objs["crop_emb"], objs["noun_emb"]):
        np.testing.assert_allclose(o["box"], box, atol=0.06)
        assert 0 <= o["box"][0] <= o["box"][2] <= 600 and 0 <= o["box"][1] <= o["box"][3] <= 400
        assert o["alignment"] == pytest.approx(float(pair_scores(crop[None], noun[None])[0]), abs=3e-3)
    assert min(grounded, key=lambda o: o["alignment"])["worst"] is True
    assert sum(o["worst"] for o in grounded) == max(1, len(grounded) // 3)
    # neighbours on image (the flat index) and on misalignment (exact search) agree with numpy; the stored
    # file itself is left out of its own neighbours, as `item neighbors` and a stored row's view do
    for key, column, query in (("neighbors", "image_emb", img_emb), ("neighbors_misalignment", "misalignment", mis)):
        got = [(h["row"], h["similarity"]) for h in out[key]]
        want = _brute(served["store"], column, query, 5, exclude=(row,))
        assert row not in [g[0] for g in got]
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=2e-3)
        for h in out[key]:
            assert set(h) >= {"id", "path", "label", "generator", "split", "similarity"}
    # generators by vote of the neighbours, on both lookups
    assert [g["on"] for g in out["generators"]] == ["image", "misalignment"]
    for g, key in zip(out["generators"], ("neighbors", "neighbors_misalignment")):
        hits = out[key]
        assert sum(t["votes"] for t in g["table"]) == len(hits) == 5
        assert sum(t["share"] for t in g["table"]) == pytest.approx(1.0)
        want_real = sum(h["label"] == "real" for h in hits)
        assert next((t["votes"] for t in g["table"] if t["generator"] == "real"), 0) == want_real


def test_predict_uses_a_given_caption(served):
    raw = (SAMPLES / "real/chelsea.png").read_bytes()
    out = served["client"].post("/api/predict", files={"file": ("cat.png", raw)},
                                data={"caption": "a cat sleeping on a red blanket"}).json()
    assert out["caption"] == "a cat sleeping on a red blanket" and out["caption_source"] == "given"
    assert [o["noun"] for o in out["objects"]] == ["cat", "blanket"]
    assert out["in_store"] is False and len(out["neighbors"]) == N  # the default k (10) capped by the store
    assert_valid(out, "api_predict")


@pytest.mark.parametrize("name,data,status,reason", [
    ("note.png", b"this is not an image, whatever its name says", 415, "not-an-image"),
    ("empty.png", b"", 415, "empty-file"),
    ("cut.png", _png((64, 64))[:200], 415, "truncated"),
])
def test_a_non_image_is_a_4xx_naming_the_reason(served, name, data, status, reason):
    body = _error(served["client"].post("/api/predict", files={"file": (name, data)}), status, reason)
    assert reason in body["error"]


def test_uploads_are_bounded_in_bytes_and_pixels(served):
    small = Service(ServeConfig(store=str(served["store"]), heads=(str(served["heads"][0]),), max_upload_bytes=5000,
                                max_pixels=2000), models=served["service"].models)
    try:
        client = TestClient(create_app(small), base_url=LOCAL)
        _error(client.post("/api/predict", files={"file": ("big.png", _png((200, 200)))}), 413, "upload-too-large")
        # far over the limit: refused from Content-Length, or while streaming when there is none
        _error(client.post("/api/predict", files={"file": ("huge.png", b"\0" * 300_000)}), 413, "upload-too-large")

        def chunks():
            for _ in range(40):
                yield b"\0" * 10_000

        _error(client.post("/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}),
               413, "upload-too-large")
        body = _error(client.post("/api/predict", files={"file": ("wide.png", _png((100, 30), flat=True))}), 413, "too-large")
        assert "max_pixels" in body["error"] or "too-large" in body["error"]
        assert client.post("/api/predict", files={"file": ("ok.png", _png((40, 30), flat=True))}).status_code == 200
    finally:
        small.close()


def test_bad_parameters_are_json_errors(served):
    c = served["client"]
    png = _png()
    _error(c.post("/api/predict", files={"file": ("a.png", png)}, data={"k": "0"}), 400, "bad-k")
    _error(c.post("/api/predict", files={"file": ("a.png", png)}, data={"k": "many"}), 422, "invalid-request")
    _error(c.post("/api/predict", data={"caption": "no file"}), 422, "invalid-request")
    _error(c.post("/api/predict", files={"file": ("a.png", png)}, data={"caption": "x" * 1001}), 400,
           "caption-too-long")
    some_id = c.get("/api/rows").json()["rows"][0]["id"]
    _error(c.get(f"/api/neighbors?id={some_id}&on=pixels"), 400, "bad-on")
    _error(c.get(f"/api/neighbors?id={some_id}&k=101"), 400, "bad-k")
    _error(c.get("/api/nothing-here"), 404, "not-found")


def test_the_empty_page_has_the_stores_summary_and_the_servers_k(served):
    s = assert_valid(served["client"].get("/api/summary").json(), "api_summary")
    assert s["k"] == served["service"].config.k == 10 and s["random_weights"] is True
    st = s["store"]
    assert st["n_ok"] == N and st["generators"] == sorted({g for _, _, g, _ in PICKS})
    assert st["splits"] == ["test", "train", "val"] and sum(g["n"] for g in st["groups"]) == N
    assert [h["name"] for h in s["heads"]] == ["hier", "visual"]
    page = served["client"].get("/").text
    assert 'id="k" type="number" min="1" max="100" value=""' in page and "/api/summary" in page


def test_errors_fit_their_schema(served):
    c = served["client"]
    for resp in (c.get("/api/rows/" + "0" * 64), c.get("/api/nothing-here"), c.get("/api/neighbors?id=abcdef&k=0"),
                 c.post("/api/predict", files={"file": ("a.png", b"not an image")})):
        assert resp.status_code >= 400
        assert_valid(resp.json(), "api_error")


def test_an_object_the_cli_and_the_api_both_give_has_the_same_keys(served):
    """predict rows, objects, neighbours and generator votes: one name per thing on every surface."""
    from item import outputs

    sample = SAMPLES / "real/coffee.png"
    cli_pred = json.loads(ok("predict", sample, "--head", served["heads"][0], "--device", "cpu", "--json").stdout)
    assert_valid(cli_pred, "cli_predict")
    api_pred = served["client"].post("/api/predict", files={"file": ("coffee.png", sample.read_bytes())}).json()
    row = cli_pred["rows"][0]
    assert set(row) == set(outputs.PREDICTION_KEYS) and set(row) <= set(api_pred)
    for key in ("p_fake", "label", "threshold", "threshold_from", "head", "caption", "id", "width", "height"):
        assert row[key] == (pytest.approx(api_pred[key]) if isinstance(row[key], float) else api_pred[key]), key
    assert row["global_alignment"] == pytest.approx(api_pred["global_alignment"], abs=1e-6)
    assert [set(o) for o in row["objects"]] == [set(o) for o in api_pred["objects"]] != []
    assert [o["alignment"] for o in row["objects"]] == pytest.approx([o["alignment"] for o in api_pred["objects"]],
                                                                     abs=1e-6)
    cli_nb = json.loads(ok("neighbors", served["store"], sample, "-k", "3", "--json").stdout)
    assert_valid(cli_nb, "cli_neighbors")
    assert {frozenset(h) for h in cli_nb["neighbors"]} == {frozenset(h) for h in api_pred["neighbors"]} \
        == {frozenset(outputs.NEIGHBOUR_KEYS)}
    # the same stored file: both leave it out and find the same three
    assert [h["row"] for h in cli_nb["neighbors"]] == [h["row"] for h in api_pred["neighbors"][:3]]
    prof = json.loads(ok("neighbors", served["store"], "--generator", "SDXL-Turbo", "-k", "3", "--json").stdout)
    assert_valid(prof, "cli_generator_profile")
    api_votes = [t for g in api_pred["generators"] for t in g["table"]]
    assert {frozenset(t) for t in prof["table"]} == {frozenset(t) for t in api_votes} == {frozenset(outputs.VOTE_KEYS)}


def test_rows_browse_and_a_stored_view_without_reencoding(served):
    c = served["client"]
    all_rows = assert_valid(c.get("/api/rows").json(), "api_rows")
    assert all_rows["total"] == N
    assert all_rows["facets"]["label"] == ["fake", "real"] and all_rows["facets"]["split"] == ["test", "train", "val"]
    fakes = c.get("/api/rows", params={"label": "fake", "split": "train"}).json()
    assert fakes["total"] == 2 and {r["label"] for r in fakes["rows"]} == {"fake"}
    assert c.get("/api/rows", params={"offset": 7, "limit": 5}).json()["rows"] == all_rows["rows"][7:]
    target = next(r for r in all_rows["rows"] if r["generator"] == "SDXL-Turbo")
    n_calls = []
    models = served["service"].models
    original = models.featurize
    models.featurize = lambda *a, **k: n_calls.append(1) or original(*a, **k)
    try:
        view = c.get(f"/api/rows/{target['id'][:12]}", params={"k": 3}).json()  # a unique prefix is enough
    finally:
        models.featurize = original
    assert n_calls == []  # from the stored embeddings only
    assert_valid(view, "api_row_view")
    assert view["id"] == target["id"] and view["stored"]["generator"] == "SDXL-Turbo" and view["stored"]["label"] == "fake"
    with StoreReader(served["store"]) as r:
        row = r.find_id(target["id"])
        model, info = load_head(served["heads"][0])
        want = float(model.predict_proba(store_features(r, info["recipe"], [row]))[0, 1])
        emb = r.read("image_emb", [row])[0]
    assert view["p_fake"] == pytest.approx(want, abs=1e-9) and view["row"] == row
    assert [h["row"] for h in view["neighbors"]] == [w[0] for w in _brute(served["store"], "image_emb", emb, 3, {row})]
    nb = assert_valid(c.get("/api/neighbors", params={"id": target["id"], "k": 4, "on": "misalignment"}).json(),
                      "api_neighbors")
    assert nb["method"] == "exact" and row not in [h["row"] for h in nb["neighbors"]] and len(nb["neighbors"]) == 4
    with StoreReader(served["store"]) as r:
        mis = r.read("misalignment", [row])[0]
    assert [h["row"] for h in nb["neighbors"]] == [w[0] for w in _brute(served["store"], "misalignment", mis, 4, {row})]
    assert c.get("/api/neighbors", params={"id": target["id"], "k": 2}).json()["method"] == "index flat"
    _error(c.get("/api/rows/" + "0" * 64), 404, "unknown-id")


def test_thumbnails_only_for_stored_ids(served):
    c = served["client"]
    some = c.get("/api/rows").json()["rows"][0]
    r = c.get(f"/api/thumb/{some['id']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) == 160
    assert max(Image.open(io.BytesIO(c.get(f"/api/thumb/{some['id']}?size=large").content)).size) == 512
    _error(c.get(f"/api/thumb/{some['id']}?size=huge"), 400, "bad-size")
    stored_path = some["path"]
    for attempt in ("0" * 64, "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", stored_path.replace("/", "%2F"),
                    "deadbeef"):
        resp = c.get(f"/api/thumb/{attempt}")
        assert resp.status_code == 404 and resp.headers["content-type"].startswith("application/json"), attempt


def test_the_page_is_one_offline_file_with_a_strict_policy(served):
    r = served["client"].get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in r.text and "__CSP_NONCE__" not in r.text
    assert served["client"].get("/").headers["content-security-policy"] != csp  # a fresh nonce each time
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    # nothing fetched from elsewhere, and data never parsed as HTML
    assert "http://" not in r.text and "https://" not in r.text and "src=\"//" not in r.text
    assert "innerHTML" not in r.text and "insertAdjacentHTML" not in r.text and "document.write" not in r.text
    assert r.headers["x-content-type-options"] == "nosniff"
    assert served["client"].get("/openapi.json").json()["paths"].keys() >= {
        "/api/predict", "/api/rows/{image_id}", "/api/neighbors", "/api/thumb/{image_id}", "/api/health"}


def test_concurrent_uploads_are_safe_and_leave_nothing_behind(served):
    c = served["client"]
    files = [(SAMPLES / p).read_bytes() for p in ("real/coffee.png", "fake/000003.2736230502.png")] * 3
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda raw: c.post("/api/predict", files={"file": ("x", raw)}, data={"k": "3"}), files))
    assert all(o.status_code == 200 for o in outs), [o.text for o in outs]
    by_id = {}
    for o in outs:
        by_id.setdefault(o.json()["id"], set()).add(round(o.json()["p_fake"], 9))
    assert len(by_id) == 2 and all(len(v) == 1 for v in by_id.values())  # same bytes, same answer
    assert os.listdir(served["service"]._upload_dir) == []  # uploads are deleted once scored
    assert _tree(served["store"]) == served["before"]  # the store was only read


# -- issue 21: bounded decoding, other sites, token ------------------------------------------------
def _png_header_only(width, height) -> bytes:
    """A PNG whose header declares width x height RGBA and whose pixel data is cut short: 100 bytes that
    would be a multi-GB decode. Refused from the header, it never reaches the decoder."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))


def test_uploads_have_their_own_pixel_budget_checked_from_the_header(served):
    from item.featurize.inputs.decode import DEFAULT_MAX_PIXELS

    c = served["client"]
    limits = c.get("/api/health").json()["limits"]
    assert 0 < limits["max_pixels"] < DEFAULT_MAX_PIXELS  # lower than featurize's
    # 9400 x 9400 RGBA is just under featurize's limit: the server refuses it before decoding a pixel
    # (a decode would have found the data cut short and said 'truncated')
    body = _error(c.post("/api/predict", files={"file": ("bomb.png", _png_header_only(9400, 9400))}), 413, "too-large")
    assert f"{limits['max_pixels']:,}" in body["error"]
    assert os.listdir(served["service"]._upload_dir) == []
    # the page says the limit
    page = c.get("/").text
    assert 'id="limits"' in page and "megapixels" in page


class _Gated:
    """The served models, with featurize held until ``go`` is set (``inside`` says one is waiting there)."""

    def __init__(self, models):
        self._models, self.inside, self.go = models, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._models, name)

    def featurize(self, paths, captions=None):
        self.inside.set()
        assert self.go.wait(120)
        return self._models.featurize(paths, captions)


def test_uploads_beyond_the_queue_are_refused_503_and_the_queue_frees(served):
    gated = _Gated(served["service"].models)
    one = Service(ServeConfig(store=str(served["store"]), heads=(str(served["heads"][0]),), max_pending=1),
                  models=gated)
    try:
        client = TestClient(create_app(one), base_url=LOCAL)
        png = (SAMPLES / "real/coffee.png").read_bytes()
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/api/predict", files={"file": ("a.png", png)})
            assert gated.inside.wait(120)
            _error(client.post("/api/predict", files={"file": ("b.png", png)}), 503, "busy")
            gated.go.set()
            assert first.result().status_code == 200
        assert client.post("/api/predict", files={"file": ("c.png", png)}).status_code == 200  # the place came back
    finally:
        one.close()


def test_other_sites_cannot_read_or_post(served):
    c = served["client"]
    png = _png(flat=True)
    # DNS rebinding: another site's name pointed at 127.0.0.1 reaches the server with its own Host
    for path in ("/api/rows", "/", "/api/health"):
        _error(c.get(path, headers={"host": "evil.example"}), 421, "unknown-host")
    _error(c.get("/api/rows", headers={"host": "evil.example:8000"}), 421, "unknown-host")
    assert c.get("/api/rows", headers={"host": "localhost:8000"}).status_code == 200
    # a form or fetch posted from another site's page carries its Origin
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
        _error(c.post("/api/predict", files={"file": ("a.png", png)}, headers={"origin": origin}), 403, "cross-origin")
    assert c.post("/api/predict", files={"file": ("a.png", png)}, headers={"origin": LOCAL}).status_code == 200
    assert c.post("/api/predict", files={"file": ("a.png", png)}).status_code == 200  # curl sends no Origin
    # no CORS: a preflight gets no permission, and no answer names another origin
    pre = c.options("/api/predict", headers={"origin": "http://evil.example", "access-control-request-method": "POST"})
    assert pre.status_code >= 400 and not any(h.startswith("access-control-") for h in pre.headers)
    got = c.get("/api/rows", headers={"origin": "http://evil.example"})
    assert not any(h.startswith("access-control-") for h in got.headers)
    # --allow-host adds a name
    named = Service(ServeConfig(store=str(served["store"]), heads=(str(served["heads"][0]),),
                                allowed_hosts=("item.lab.example",)), models=served["service"].models)
    try:
        cn = TestClient(create_app(named), base_url="http://item.lab.example")
        assert cn.get("/api/rows").status_code == 200
        _error(cn.get("/api/rows", headers={"host": "evil.example"}), 421, "unknown-host")
    finally:
        named.close()


def test_a_token_is_required_on_every_request_when_set(served):
    token = "s3cret-token-for-tests-0123456789"
    guarded_service = Service(ServeConfig(store=str(served["store"]), heads=(str(served["heads"][0]),),
                                          host="0.0.0.0", token=token), models=served["service"].models)
    try:
        c = TestClient(create_app(guarded_service), base_url=LOCAL)
        for path in ("/", "/api/rows", "/api/health"):
            _error(c.get(path), 401, "token-required")
        _error(c.get("/api/rows", headers={"authorization": "Bearer wrong"}), 401, "token-required")
        _error(c.get("/api/rows?token=" + token), 401, "token-required")  # only the page takes it in the URL
        assert c.get("/api/rows", headers={"authorization": f"Bearer {token}"}).status_code == 200
        page = c.get("/", params={"token": token})
        assert page.status_code == 200 and "SameSite=Strict" in page.headers["set-cookie"]
        assert "HttpOnly" in page.headers["set-cookie"]
        assert c.get("/api/rows").status_code == 200  # the browser's cookie now carries it
    finally:
        guarded_service.close()


def test_serve_command_flags_for_hosts_token_and_queue(served, monkeypatch):
    import uvicorn

    seen = {}

    def run(app, host, port, **kw):
        client = TestClient(app, base_url="http://lab-box:8123")
        seen["anon"] = client.get("/api/health").status_code
        seen["health"] = client.get("/api/health", headers={"authorization": "Bearer " + "t" * 20}).json()
        seen["evil"] = client.get("/api/health", headers={"host": "evil.example",
                                                          "authorization": "Bearer " + "t" * 20}).status_code

    monkeypatch.setattr(uvicorn, "run", run)
    r = CliRunner().invoke(cli_app, ["serve", str(served["store"]), "--head", str(served["heads"][0]), "--host",
                                     "0.0.0.0", "--device", "cpu", "--token", "t" * 20, "--allow-host", "lab-box",
                                     "--max-pending", "2", "--max-pixels", "1000000"])
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    assert "NO authentication" not in r.stderr and "token" in r.stderr
    assert seen["anon"] == 401 and seen["evil"] == 421
    assert seen["health"]["limits"]["max_pending"] == 2 and seen["health"]["limits"]["max_pixels"] == 1_000_000
    r = CliRunner().invoke(cli_app, ["serve", str(served["store"]), "--head", str(served["heads"][0]), "--token", "short"])
    assert r.exit_code == 1 and "16 characters" in r.stderr


# -- the command ----------------------------------------------------------------------------------
def test_serve_without_the_extra_is_one_line_saying_what_to_install(served, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    r = CliRunner().invoke(cli_app, ["serve", str(served["store"]), "--head", str(served["heads"][0])])
    assert r.exit_code == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "item-detect[serve]" in lines[0] and lines[0].startswith("error: ")


def test_serve_command_loads_once_warns_off_localhost_and_answers(served, monkeypatch):
    import uvicorn

    seen = {}

    def run(app, host, port, **kw):  # instead of listening: drive the app the command built
        seen.update(host=host, port=port)
        client = TestClient(app, base_url=LOCAL)
        seen["health"] = client.get("/api/health").json()
        seen["page"] = client.get("/").status_code

    monkeypatch.setattr(uvicorn, "run", run)
    r = CliRunner().invoke(cli_app, ["serve", str(served["store"]), "--head", str(served["heads"][0]), "--host",
                                     "0.0.0.0", "--port", "8123", "--device", "cpu"])
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    assert "NO authentication" in r.stderr and "RANDOM WEIGHTS" in r.stderr and "loading models" in r.stderr
    assert r.stdout.splitlines()[0].startswith("RANDOM WEIGHTS")  # the first line, before anything loads
    assert "/docs" not in r.stderr and "curl -F file=@" in r.stderr  # no page that needs a CDN
    assert seen["host"] == "0.0.0.0" and seen["port"] == 8123 and seen["page"] == 200
    assert seen["health"]["store"]["n_ok"] == N and [h["name"] for h in seen["health"]["heads"]] == ["hier"]
    r = CliRunner().invoke(cli_app, ["serve", str(served["store"]), "--head", str(served["heads"][0]), "--device",
                                     "cpu"])
    assert r.exit_code == 0 and "authentication" not in r.stderr and seen["host"] == "127.0.0.1"
    r = CliRunner().invoke(cli_app, ["serve", str(served["store"]), "--head", str(served["base"] / "nope")])
    last = r.stderr.strip().splitlines()[-1]
    assert r.exit_code == 1 and last.startswith("error: ") and "nope" in last and "Traceback" not in r.stderr


# -- the page in a real browser -------------------------------------------------------------------
def _browser_paths():
    """(chromium, chromedriver) from the OS packages, or None. No browser is ever downloaded."""
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if os.path.exists(p)), None)
    return (browser, driver) if browser and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(served):
    """A running server (uvicorn in a thread, 127.0.0.1, a free port) and headless Chromium on its page."""
    paths = _browser_paths()
    if paths is None:
        msg = "Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("ITEM_REQUIRE_BROWSER"):
            pytest.fail(msg)
        pytest.skip(msg)
    pytest.importorskip("selenium")
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never reach the network
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(served["service"]), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    opts = webdriver.ChromeOptions()
    opts.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1360,1180", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=DriverService(executable_path=paths[1]), options=opts)
    try:
        yield {"driver": driver, "url": f"http://127.0.0.1:{port}/"}
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(10)


def _wait(driver, predicate, what, timeout=90):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: predicate(d), message=what)


@pytest.mark.slow  # starts Chromium and a real server
def test_page_in_chromium_upload_verdict_boxes_neighbours_banner_rejection(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    d = browser["driver"]
    d.get(browser["url"])
    banner = _wait(d, lambda d: d.find_element(By.ID, "banner").is_displayed() and d.find_element(By.ID, "banner"),
                   "the RANDOM WEIGHTS banner")
    assert banner.text.startswith("RANDOM WEIGHTS")
    _wait(d, lambda d: "images" in d.find_element(By.ID, "storeinfo").text, "store info")
    # a sample image, with a caption given (so the nouns are known), and 8 neighbours asked for
    sample = SAMPLES / "real/chelsea.png"
    d.find_element(By.ID, "caption").send_keys("a cat lying on a blanket next to a basket")
    k_box = d.find_element(By.ID, "k")
    k_box.clear()
    k_box.send_keys("6")
    d.find_element(By.ID, "file").send_keys(str(sample))
    card = _wait(d, lambda d: (d.find_elements(By.CSS_SELECTOR, ".card.done") or [None])[0], "the verdict")
    want = served["client"].post("/api/predict", files={"file": ("chelsea.png", sample.read_bytes())},
                                 data={"caption": "a cat lying on a blanket next to a basket", "k": "6"}).json()
    # random weights: the verdict reads RANDOM, never a confident REAL or FAKE under the banner
    assert card.find_element(By.CSS_SELECTOR, ".badge").text == "RANDOM" and want["random_weights"] is True
    assert card.find_element(By.CSS_SELECTOR, ".pfake").text == f"P(fake) {want['p_fake']:.3f}"
    assert f"threshold {want['threshold']:.3f}" in card.find_element(By.CSS_SELECTOR, ".verdict").text
    assert want["caption"] in card.find_element(By.CSS_SELECTOR, ".caption").text
    # every grounded noun has a drawn box labelled with its score; the worst ones are highlighted
    boxes = card.find_elements(By.CSS_SELECTOR, ".figure .box")
    grounded = [o for o in want["objects"] if o["grounded"]]
    assert len(boxes) == len(grounded) == 3
    labels = sorted(b.find_element(By.CSS_SELECTOR, ".box-label").text for b in boxes)
    assert labels == sorted(f"{o['noun']} {o['alignment']:.2f}" for o in grounded)
    assert len(card.find_elements(By.CSS_SELECTOR, ".box.worst")) == sum(o["worst"] for o in grounded) >= 1
    img = card.find_element(By.CSS_SELECTOR, ".figure img")
    assert d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 451
    # the neighbours, with their thumbnails actually loaded, and both generator tables
    nbs = card.find_elements(By.CSS_SELECTOR, ".nb")
    assert len(nbs) == len(want["neighbors"]) == 6
    assert [n.find_element(By.CSS_SELECTOR, ".path").get_attribute("textContent").strip("\u200e") for n in nbs] == \
        [h["path"] for h in want["neighbors"]]
    assert [n.get_attribute("title").split("\n")[0] for n in nbs] == [h["path"] for h in want["neighbors"]]
    _wait(d, lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", n.find_element(
        By.TAG_NAME, "img")) for n in nbs), "neighbour thumbnails")
    gen_tables = card.find_elements(By.CSS_SELECTOR, ".gens table")
    assert len(gen_tables) == 2
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / "serve.png"))
    # a non-image is rejected with a visible message naming the reason
    bad = tmp_path / "not-a-picture.png"
    bad.write_bytes(b"just some text pretending to be a PNG")
    d.find_element(By.ID, "file").send_keys(str(bad))
    err = _wait(d, lambda d: (d.find_elements(By.CSS_SELECTOR, ".card.rejected .error") or [None])[0], "the rejection")
    assert err.is_displayed() and "not-an-image" in err.text
    d.save_screenshot(str(ARTIFACTS / "serve-rejected.png"))
    # user strings are shown as text, never run as HTML
    caption_box = d.find_element(By.ID, "caption")
    caption_box.clear()
    caption_box.send_keys('<img id="pwn" src="/x" onerror="document.title=1">a dog on a beach')
    hostile = tmp_path / '<i id="pwn2">name.png'
    hostile.write_bytes((SAMPLES / "fake/000004.42.png").read_bytes())
    d.find_element(By.ID, "file").send_keys(str(hostile))
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.done")) == 2, "the second verdict")
    top = d.find_elements(By.CSS_SELECTOR, ".card")[0]
    assert '<img id="pwn"' in top.find_element(By.CSS_SELECTOR, ".caption").text
    assert top.find_element(By.TAG_NAME, "h2").text == '<i id="pwn2">name.png'
    assert d.execute_script("return document.getElementById('pwn') === null && document.getElementById('pwn2') === null")
    # the store tab: filter, click a row, the same view from stored embeddings
    d.find_element(By.ID, "tab-browse").click()
    from selenium.webdriver.support.ui import Select

    Select(d.find_element(By.ID, "f-generator")).select_by_visible_text("SDXL-Turbo")
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#rows tbody tr")) == 1, "the filtered rows")
    d.find_element(By.CSS_SELECTOR, "#rows tbody tr").click()
    view = _wait(d, lambda d: (d.find_elements(By.CSS_SELECTOR, "#row-view .view") or [None])[0], "the stored view")
    assert "SDXL-Turbo" in d.find_element(By.ID, "row-view").text
    assert view.find_element(By.CSS_SELECTOR, ".badge").text == "RANDOM"
    _wait(d, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", view.find_element(
        By.CSS_SELECTOR, ".figure img")) == 512, "the stored image")
    d.save_screenshot(str(ARTIFACTS / "serve-browse.png"))
    assert Image.open(ARTIFACTS / "serve.png").size[0] >= 1000
