"""Issue 23: one voice. Every command run on tiny-random says RANDOM WEIGHTS in its first line (text) or
``random_weights: true`` (JSON); every ``--json`` output fits its published schema (docs/schemas, from
item/outputs.py); one name per thing; neighbours of a stored image leave it out; a label flipped without
its generator is warned about; the demo without weights leaves nothing behind."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from item.cli import app
from item.console import RANDOM_WEIGHTS_LINE
from item.outputs import schema, schema_names
from tests._schemas import assert_valid

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--hidden", "16", "--max-epochs", "20", "--patience", "5", "--batch-size", "16"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    r = cli(*args)
    assert r.exit_code == 0, (args, r.stdout, r.stderr, r.exception)
    return r


def first_line(r) -> str:
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    return lines[0] if lines else ""


def image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(40, 48, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """12 made-up images: reals of 'camera', fakes of gen_a and gen_b; no splits until `store split`."""
    base = tmp_path_factory.mktemp("voice")
    rows = []
    for k in range(12):
        label, gen = ("real", "camera") if k < 6 else ("fake", "gen_a" if k < 9 else "gen_b")
        rows.append({"path": str(image(base / "img" / f"{k}.png", k)), "label": label, "generator": gen})
    with open(base / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    store = base / "store"
    text = {"featurize": ok("featurize", base / "m.csv", "--store", store, "--models", "tiny-random", "--workers",
                            "0")}
    text["store split"] = ok("store", "split", store, "--val", "0.25", "--test", "0.25")
    head = base / "head"
    text["train"] = ok("train", store, "--out", head, *FAST)
    text["store index"] = ok("store", "index", store, "--on", "image", "--kind", "flat")
    return {"base": base, "store": store, "head": head, "rows": rows, "text": text}


def test_published_schemas_are_the_definitions():
    folder = ROOT / "docs" / "schemas"
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(schema_names()), \
        "run `python -m item.outputs docs/schemas`"
    for name in schema_names():
        assert json.loads((folder / f"{name}.json").read_text()) == schema(name), \
            f"docs/schemas/{name}.json is stale: run `python -m item.outputs docs/schemas`"


def test_every_command_says_random_weights_in_its_first_line(made, tmp_path):
    store, head = made["store"], made["head"]
    query = made["rows"][0]["path"]
    fixes = tmp_path / "fix.csv"
    fixes.write_text(f"path,split\n{made['rows'][1]['path']},train\n")
    runs = dict(made["text"])
    runs.update({
        "store info": ok("store", "info", store),
        "store validate": ok("store", "validate", store, "--quick"),
        "store export": ok("store", "export", store, "--out", tmp_path / "meta.csv"),
        "store annotate": ok("store", "annotate", store, fixes),
        "eval": ok("eval", store, "--head", head),
        "predict": ok("predict", query, "--head", head, "--device", "cpu"),
        "neighbors": ok("neighbors", store, query, "-k", "3"),
        "neighbors --generator": ok("neighbors", store, "--generator", "gen_a", "-k", "3"),
        "report": ok("report", store, "--head", head, "--out", tmp_path / "r.html"),
    })
    wrong = {cmd: first_line(r) for cmd, r in runs.items() if first_line(r) != RANDOM_WEIGHTS_LINE}
    assert not wrong, wrong


def test_every_json_output_fits_its_schema_and_says_random_weights(made, tmp_path):
    store, head = made["store"], made["head"]
    query = made["rows"][7]["path"]
    fixes = tmp_path / "fix.csv"
    fixes.write_text(f"path,split\n{made['rows'][2]['path']},train\n")
    docs = {
        "cli_featurize": ok("featurize", made["base"] / "m.csv", "--store", store, "--models", "tiny-random",
                            "--workers", "0", "--json"),
        "cli_store_info": ok("store", "info", store, "--json"),
        "cli_store_validate": ok("store", "validate", store, "--quick", "--json"),
        "cli_store_annotate": ok("store", "annotate", store, fixes, "--json"),
        "cli_store_split": ok("store", "split", store, "--overwrite", "--val", "0.25", "--test", "0.25", "--json"),
        "cli_train": ok("train", store, "--out", tmp_path / "h2", *FAST, "--json"),
        "cli_eval": ok("eval", store, "--head", head, "--json"),
        "cli_predict": ok("predict", query, "--head", head,
                          "--device", "cpu", "--json"),
        "cli_neighbors": ok("neighbors", store, query, "-k", "3", "--json"),
        "cli_generator_profile": ok("neighbors", store, "--generator", "gen_b", "-k", "3", "--json"),
    }
    for name, r in docs.items():
        doc = assert_valid(json.loads(r.stdout), name)
        assert doc["random_weights"] is True, name
    pred = json.loads(docs["cli_predict"].stdout)["rows"][0]
    assert pred["objects"] and all("alignment" in o and "score" not in o for o in pred["objects"])
    assert -1 <= pred["global_alignment"] <= 1 and pred["head"] == head.name


def test_neighbours_of_a_stored_file_leave_it_out_and_stay_within_minus_one_to_one(made):
    store = made["store"]
    query = made["rows"][3]["path"]
    r = ok("neighbors", store, query, "-k", "20", "--json")
    doc = json.loads(r.stdout)
    own = doc["stored_row"]
    assert doc["excluded"] == [own] and own not in [h["row"] for h in doc["neighbors"]]
    assert all(-1.0 <= h["similarity"] <= 1.0 for h in doc["neighbors"])
    assert len(doc["neighbors"]) == 11  # every other stored row
    text = ok("neighbors", store, query, "-k", "3")
    assert "left out of its own neighbours" in text.stderr


def test_train_takes_kind_and_head_is_a_deprecated_alias(made, tmp_path):
    assert re.search(r"^\s+--kind mlp\|logistic", ok("train", "--help").stdout, re.M)
    ok("train", made["store"], "--out", tmp_path / "a", "--kind", "logistic")
    assert json.loads((tmp_path / "a" / "head.json").read_text())["kind"] == "logistic"
    r = ok("train", made["store"], "--out", tmp_path / "b", "--head", "logistic")
    assert "deprecated" in r.stderr and "--kind logistic" in r.stderr
    assert json.loads((tmp_path / "b" / "head.json").read_text())["kind"] == "logistic"


def test_a_label_flipped_without_its_generator_is_warned_by_annotate_and_eval(made, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(made["store"], store)
    flipped = [r for r in made["rows"] if r["label"] == "real"][:4]
    fixes = tmp_path / "fix.csv"
    fixes.write_text("path,label\n" + "".join(f"{r['path']},fake\n" for r in flipped))
    r = ok("store", "annotate", store, fixes)
    assert "relabelled fake keep the generator 'camera'" in r.stderr and "generator column" in r.stderr
    doc = json.loads(ok("eval", store, "--head", made["head"], "--split", "all", "--json").stdout)
    assert any("generator 'camera'" in w and "item store annotate" in w for w in doc["warnings"]), doc["warnings"]
    # giving the generator silences both
    fixes.write_text("path,label,generator\n" + "".join(f"{r['path']},fake,gen_c\n" for r in flipped))
    r = ok("store", "annotate", store, fixes)
    assert "keep the generator" not in r.stderr
    doc = json.loads(ok("eval", store, "--head", made["head"], "--split", "all", "--json").stdout)
    assert not any("generator 'camera'" in w for w in doc["warnings"])


def test_several_heads_are_one_table_with_a_column_group_each(made, tmp_path):
    other = tmp_path / "logistic"
    ok("train", made["store"], "--out", other, "--kind", "logistic")
    r = ok("eval", made["store"], "--head", made["head"], "--head", other)
    lines = r.stdout.splitlines()
    assert lines[0] == RANDOM_WEIGHTS_LINE
    header = next(ln for ln in lines if ln.startswith("generator"))
    assert header.split().count("acc") == 2 and header.split().count("auroc") == 2
    group = lines[lines.index(header) - 1]
    assert "head (threshold" in group and "logistic (threshold" in group
    assert sum(ln.startswith("mean") for ln in lines) == 1  # one table


def test_demo_offline_without_weights_fails_and_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "X"
    r = cli("demo", "--out", out, "--device", "cpu")
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert not out.exists()


def test_help_shows_real_metavariables_and_the_store_group_names_every_subcommand():
    from item.cli import app as root
    from typer.main import get_command

    group = get_command(root)
    commands = [[name] for name in group.commands if name != "store"]
    commands += [["store", name] for name in group.commands["store"].commands]
    for cmd in commands:
        text = ok(*cmd, "--help").stdout
        usage = text.splitlines()[0]
        assert "{" not in usage and not re.search(r"<(path|str|int|float|bool|list\[)", text), (cmd, text)
    top = ok("--help").stdout
    line = next(ln for ln in top.splitlines() if ln.strip().startswith("store "))
    for sub in group.commands["store"].commands:
        assert sub in line, (sub, line)


def test_report_has_the_model_spec_as_a_table_distinct_map_colours_and_index_sizes_are_true(made, tmp_path):
    from item.classify.report import map_colours

    ok("report", made["store"], "--head", made["head"], "--out", tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    spec = html[html.index("model spec"):]
    assert spec.index('<table class="inner">') < spec.index("clip_model") < spec.index("</table>")
    colours = map_colours(["real"] + [f"g{i}" for i in range(12)])
    assert len(set(colours.values())) == 13
    assert not {"#1f77b4", "#d62728", "#e41a1c", "#377eb8"} & {c for n, c in colours.items() if n != "real"}
    line = made["text"]["store index"].stderr
    size = sum(f.stat().st_size for f in (made["store"] / "index").glob("*.faiss"))
    assert "about 0 MiB" not in line and re.search(r"\(\d+(\.\d)? (bytes|KiB) on disk", line), line
    assert size < 2**20  # a small store's index: its size is said in bytes or KiB, not rounded to 0 MiB
