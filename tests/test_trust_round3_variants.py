"""Trust, round 3 (issue 30), hidden variants of its cases: URLs, changed files under serve, stalled uploads, detector input floors, C, outputs onto pipes and devices, a full stdout, Ray actor pools, serve addresses; through the real CLI."""

import csv
import os
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


def _store_and_head(base: Path):
    """(the images' folder, a store of its three images) and a logistic head at base / 'head'."""
    import shutil

    src = base / "src"
    (src / "real").mkdir(parents=True)
    (src / "fake").mkdir()
    shutil.copy(SAMPLES / "real/coffee.png", src / "real/coffee.png")
    shutil.copy(SAMPLES / "real/000000458054.jpg", src / "real/a.jpg")
    shutil.copy(SAMPLES / "fake/000001.1863159593.png", src / "fake/b.png")
    store = base / "store"
    assert run("featurize", src, "--store", store, "--models", "tiny-random", "--workers", "0").exit_code == 0
    assert run("store", "split", store, "--val", "0.3", "--test", "0").exit_code == 0
    assert run("train", store, "--out", base / "head", "--kind", "logistic", "--train-split", "all").exit_code == 0
    return src, store


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

    src, store = _store_and_head(tmp_path)
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


def test_a_stalled_upload_gives_its_place_back(tmp_path, monkeypatch):
    """--max-pending clients that declare a body and then send nothing held every place for as long as they
    kept the connection open (every other upload 503 'busy'); now each is answered 408 'upload-stalled'
    after BODY_IDLE_S and the next upload is scored. Over real sockets, to a real uvicorn server."""
    import json
    import socket
    import threading
    import time

    import pytest

    pytest.importorskip("fastapi", reason="item serve needs the serve extra")
    import uvicorn

    from item.serve import ServeConfig, Service
    from item.serve import app as serve_app

    monkeypatch.setattr(serve_app, "BODY_IDLE_S", 1.5)
    _, store = _store_and_head(tmp_path)
    service = Service(ServeConfig(store=str(store), heads=(str(tmp_path / "head"),), device="cpu", max_pending=1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(serve_app.create_app(service), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline
            time.sleep(0.05)
        png = (SAMPLES / "real/coffee.png").read_bytes()
        body = (b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--XyZ--\r\n")
        head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: multipart/form-data; "
                b"boundary=XyZ\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (port, len(body)))

        def answer(sock):
            sock.settimeout(30)
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except ConnectionResetError:  # answered before its body was read: the server then closes
                pass
            status = int(data.split(b" ", 2)[1])
            return status, json.loads(data.partition(b"\r\n\r\n")[2])

        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(head + body[:1000])  # then nothing more
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port)) as other:
            other.sendall(head + body)
            assert answer(other)[0] == 503  # the one place is held
        started = time.time()
        status, err = answer(stalled)
        assert status == 408 and err["reason"] == "upload-stalled" and set(err) == {"error", "reason"}, err
        assert time.time() - started < 10
        stalled.close()
        with socket.create_connection(("127.0.0.1", port)) as other:
            other.sendall(head + body)
            status, got = answer(other)
            assert status == 200 and got["status"] == "ok", got
    finally:
        server.should_exit = True
        thread.join(20)
        service.close()


def test_a_ground_size_too_small_for_the_detector_leaves_images_ungrounded_not_the_run_dead(tmp_path):
    """--ground-size 32 with tiny-random (and 512 with Grounding DINO's real shapes on a 19:1 image) ended
    the whole run in a torch traceback; such images are now stored with their nouns ungrounded and why."""
    import json

    r = run("featurize", SAMPLES / "real/coffee.png", SAMPLES / "fake/000001.1863159593.png", "--store", tmp_path / "s",
            "--models", "tiny-random", "--workers", "0", "--ground-size", "32")
    assert r.exit_code == 0 and "Traceback" not in r.stderr, (r.stderr, r.exception)
    assert "2 images the grounder cannot take" in r.stderr
    assert run("store", "export", tmp_path / "s", "--out", tmp_path / "rows.csv").exit_code == 0
    with open(tmp_path / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert all(row["reason"].startswith("not grounded: the grounder's") and "too few for its 30 queries" in row["reason"]
               and row["n_grounded"] == "0" for row in rows), rows
    info = json.loads(run("store", "info", tmp_path / "s", "--json").stdout)
    assert info["n_ok"] == 2


def test_feature_cells_are_the_detectors_own():
    """level_cells gives the shapes transformers' Grounding DINO makes (tiny config, run), and with the real
    config's 900 queries it refuses 853x45 (a 19:1 image at --ground-size 512) and takes 1333x67 (20:1 at 800)."""
    import torch

    from item.featurize.models import tiny
    from item.featurize.models.grounding import GroundImage, level_cells
    from item.featurize.models.grounding_dino import Grounder, _feature_levels

    model, processor = tiny.build_grounding_dino("tiny-random")
    levels = _feature_levels(model.config)
    for h, w in [(37, 61), (64, 1333), (9, 500), (129, 77), (33, 32), (1, 1)]:
        with torch.no_grad():
            maps = [f[0] for f in model.model.backbone(torch.zeros(1, 3, h, w), torch.ones(1, h, w, dtype=torch.long))[0]]
            maps.append(model.model.input_proj_vision[len(maps)][0](maps[-1]))
        assert level_cells(h, w, *levels[:3]) == [m.shape[-2] * m.shape[-1] for m in maps], (h, w)
    real = _feature_levels(tiny.grounding_dino_config("small-random"))
    assert real[3] == 900 and sum(level_cells(45, 853, *real[:3])) < 900 <= sum(level_cells(67, 1333, *real[:3]))
    g = Grounder.__new__(Grounder)
    g._levels = real
    assert "too few for its 900 queries" in g.input_problem(GroundImage(torch.zeros(3, 45, 853), (1900, 100), (1900, 100)))
    assert g.input_problem(GroundImage(torch.zeros(3, 67, 1333), (1900, 100), (1900, 100))) == ""


def test_a_vanishing_C_is_refused_before_lbfgs_overflows(tmp_path, monkeypatch):
    """--C 1e-300 was accepted (0 < C), and lbfgs overflowed on 1/C: sklearn's warnings over several lines
    and a head with all-zero weights and intercept saved as trained."""
    monkeypatch.chdir(tmp_path)
    for value in ("1e-300", "1e-13", "0"):
        r = run("train", "s", "--out", "h", "--kind", "logistic", "--C", value)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and "--C" in lines[0] and "1e-12" in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def _stored(tmp_path):
    s = tmp_path / "s"
    assert run("featurize", SAMPLES / "real/coffee.png", SAMPLES / "fake/000001.1863159593.png", "--store", s,
               "--models", "tiny-random", "--workers", "0").exit_code == 0
    return s


def test_an_export_or_report_to_a_pipe_a_device_or_a_symlink_writes_through_it(tmp_path):
    """`store export --out` and `report --out` wrote a temporary file and os.replace'd it onto the path: a
    named pipe, a device (/dev/null, /dev/full: as root, the node in /dev itself) or a symlink was replaced
    by a regular file. Now the pipe's reader gets the rows, the device stays a device, the link a link."""
    import stat
    import threading

    s = _stored(tmp_path)
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    got = {}
    reader = threading.Thread(target=lambda: got.setdefault("data", fifo.read_bytes()))
    reader.start()
    r = run("store", "export", s, "--out", fifo)
    reader.join(30)
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and got["data"].count(b"\n") == 3, got

    target = tmp_path / "real.csv"
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert run("store", "export", s, "--out", link).exit_code == 0
    assert link.is_symlink() and target.read_text().count("\n") == 3

    try:
        os.mknod(tmp_path / "null.html", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
        os.mknod(tmp_path / "full.csv", 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # /dev/full's
    except PermissionError:
        return  # not root: no device nodes to try
    _, split_store = _store_and_head(tmp_path / "b")
    r = run("report", split_store, "--head", tmp_path / "b" / "head", "--split", "val", "--out", tmp_path / "null.html")
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert stat.S_ISCHR(os.lstat(tmp_path / "null.html").st_mode)
    r = run("store", "export", s, "--out", tmp_path / "full.csv")
    assert r.exit_code == 1 and "No space left on device" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert stat.S_ISCHR(os.lstat(tmp_path / "full.csv").st_mode)


def test_help_and_version_onto_a_full_stdout_are_one_line(tmp_path):
    """`item --help > /dev/full` (and --version, a bare `item`, a command's --help) ended in a traceback."""
    import subprocess
    import sys

    import pytest

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    env = dict(os.environ, PYTHONPATH=str(Path(item.__file__).resolve().parents[1]))
    for args in (["--help"], ["--version"], [], ["store"], ["featurize", "--help"]):
        with open("/dev/full", "w") as full:
            p = subprocess.run([sys.executable, "-m", "item", *args], stdout=full, stderr=subprocess.PIPE, env=env,
                               cwd=tmp_path, timeout=120)
        lines = p.stderr.decode().splitlines()
        assert p.returncode == 1 and lines == ["error: cannot write to standard output: No space left on device"], \
            (args, p.returncode, p.stderr.decode()[-500:])


def test_more_ray_actors_than_the_local_ray_can_place_are_refused_before_the_store(tmp_path):
    """--engine ray --ray-actors 4096 on a small machine waited for actors Ray could never place (killed at
    300 s, a store folder left); the local instance's CPUs are checked first, in one line."""
    import pytest

    pytest.importorskip("ray")
    r = run("featurize", SAMPLES / "real/coffee.png", "--store", tmp_path / "s", "--models", "tiny-random",
            "--engine", "ray", "--ray-actors", "4096")
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error")]
    assert r.exit_code == 1 and len(err) == 1 and "--ray-actors 4096 need" in err[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "s").exists()


def test_serve_on_a_port_in_use_or_a_host_not_here_is_one_line_before_loading(tmp_path):
    """uvicorn's own bind failed after the store, heads and models had loaded: 'serving on ...' printed, then
    uvicorn's log lines and exit status 3. Now the socket is bound first. RANDOM WEIGHTS stays the first
    line, before the no-authentication warning of a non-loopback --host."""
    import socket

    import pytest

    pytest.importorskip("uvicorn", reason="item serve needs the serve extra")
    from item.console import RANDOM_WEIGHTS_LINE

    s = _stored(tmp_path)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for host in ("127.0.0.1", "0.0.0.0"):
            r = run("serve", s, "--head", tmp_path / "no-head", "--host", host, "--port", port, "--no-warm-up")
            lines = [ln for ln in r.output.splitlines() if ln.strip()]
            assert r.exit_code == 1 and lines[0] == RANDOM_WEIGHTS_LINE, r.output
            assert lines[-1] == f"error: --host {host} --port {port}: cannot listen there (Address already in use)"
            assert len(lines) == (3 if host == "0.0.0.0" else 2) and "serving on" not in r.output, lines
            if host == "0.0.0.0":
                assert lines[1].startswith("warning: --host 0.0.0.0: this server has NO authentication")
    r = run("serve", s, "--head", tmp_path / "no-head", "--host", "no-such-host.invalid", "--no-warm-up")
    assert r.exit_code == 1 and "error: --host no-such-host.invalid: not an address of this machine" in r.stderr
    assert "Traceback" not in r.output
