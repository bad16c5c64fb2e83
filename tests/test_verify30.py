"""Issue 30, independent re-check: variants of its cases through the real CLI."""

import csv
from pathlib import Path

from typer.testing import CliRunner

import item
from item.cli import app

SAMPLES = Path(item.__file__).resolve().parent / "samples"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _manifest(path: Path, rows, header=("path", "label")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_a_data_url_in_a_manifest_or_on_the_command_line_is_refused_as_a_url(tmp_path):
    m = _manifest(tmp_path / "m.csv", [["data:image/png;base64,iVBORw0KGgo=", "real"],
                                       ["DATA:image/png;base64,iVBORw0KGgo=", "fake"],
                                       [str(SAMPLES / "real/coffee.png"), "real"]])
    r = run("featurize", m, "--store", tmp_path / "s", "--models", "tiny-random", "--workers", "0")
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert "m.csv:2: data:image/png;base64,iVBORw0KGgo=: URLs are not supported" in r.stderr
    assert "m.csv:3: DATA:image" in r.stderr and "missing file" not in r.stderr
    r = run("featurize", "data:image/png;base64,iVBORw0KGgo=", "--store", tmp_path / "t", "--models", "tiny-random")
    assert r.exit_code == 1 and "URLs are not supported" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "t").exists()


def test_a_stored_file_replaced_by_another_picture_is_no_thumbnail_of_its_row(tmp_path):
    """An image id is the file's sha256: after the file at a row's path became another picture, the row's
    thumbnail is 404 'file-changed' (it showed the other picture beside this row's features), also where
    the thumbnail was served (and cached) before the file changed."""
    import shutil

    import pytest

    pytest.importorskip("fastapi", reason="item serve needs the serve extra")
    from fastapi.testclient import TestClient

    from item.serve import ServeConfig, Service
    from item.serve.app import create_app

    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    (src / "fake").mkdir()
    shutil.copy(SAMPLES / "real/coffee.png", src / "real/coffee.png")
    shutil.copy(SAMPLES / "real/000000458054.jpg", src / "real/a.jpg")
    shutil.copy(SAMPLES / "fake/000001.1863159593.png", src / "fake/b.png")
    store = tmp_path / "store"
    assert run("featurize", src, "--store", store, "--models", "tiny-random", "--workers", "0").exit_code == 0
    assert run("store", "split", store, "--val", "0.3", "--test", "0").exit_code == 0
    assert run("train", store, "--out", tmp_path / "head", "--kind", "logistic", "--train-split", "all").exit_code == 0
    service = Service(ServeConfig(store=str(store), heads=(str(tmp_path / "head"),), device="cpu"))
    try:
        c = TestClient(create_app(service), base_url="http://127.0.0.1:8000")
        rows = {Path(r["path"]).name: r["id"] for r in c.get("/api/rows").json()["rows"]}
        assert c.get(f"/api/thumb/{rows['coffee.png']}").status_code == 200  # cached from here on
        shutil.copy(SAMPLES / "fake/000001.1863159593.png", src / "real/coffee.png")  # another picture, same name
        for size in ("small", "large"):
            r = c.get(f"/api/thumb/{rows['coffee.png']}", params={"size": size})
            assert r.status_code == 404 and r.json() == {"error": r.json()["error"], "reason": "file-changed"}, r.text
        (src / "real/a.jpg").unlink()
        r = c.get(f"/api/thumb/{rows['a.jpg']}")
        assert r.status_code == 404 and r.json()["reason"] == "missing", r.text
        assert c.get(f"/api/thumb/{rows['b.png']}").status_code == 200  # the untouched one still is
    finally:
        service.close()
