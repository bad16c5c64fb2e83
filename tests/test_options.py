"""Every numeric option of every command is checked before any work starts (item/options.py).

The test walks the real command tree, so an option added without a declared range fails here."""

import math

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from item import options
from item.cli import app

ROOT = get_command(app)
ALL = [(" ".join(words), p) for words, cmd in options.walk(ROOT) for p in cmd.params]
NUMERIC = [(cmd, p) for cmd, p in ALL if options.numeric(p)]
BAD = ["nan", "inf", "-inf", "-1", "0", "1e18"]


def test_every_numeric_option_declares_its_range():
    missing = [f"{cmd} {p.name}" for cmd, p in NUMERIC if f"{cmd} {p.name}" not in options.NUMBERS]
    assert not missing, f"numeric options without a range in item/options.py NUMBERS: {missing}"
    names = {f"{cmd} {p.name}" for cmd, p in ALL}
    stale = [k for k in list(options.NUMBERS) + list(options.PARSED) if k not in names]
    assert not stale, f"entries that name no option: {stale}"
    for key, bound in options.NUMBERS.items():  # every range is closed on both sides: a huge value is refused
        assert bound.lo is not None and bound.hi is not None and math.isfinite(bound.hi), key


def _args(cmd: str, param, value: str, tmp_path):
    flag = next(o for o in param.opts if o.startswith("--")) if any(o.startswith("--") for o in param.opts) \
        else param.opts[0]
    return cmd.split() + [flag, value]


@pytest.mark.parametrize("cmd,param", NUMERIC, ids=[f"{c}:{p.name}" for c, p in NUMERIC])
def test_bad_numbers_are_one_line_usage_errors(cmd, param, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bound = options.NUMBERS[f"{cmd} {param.name}"]
    runner = CliRunner()
    refused = 0
    for value in BAD:
        if bound.problem(float(value)) is None:
            continue  # a valid value ("0: auto", "-1: auto"): nothing to refuse
        refused += 1
        r = runner.invoke(app, _args(cmd, param, value, tmp_path))
        err = r.stderr if r.stderr_bytes is not None else r.output
        assert r.exit_code == 2, (cmd, param.name, value, r.output)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (cmd, param.name, value, err)
        flag = next(o for o in param.opts if o.startswith("-"))
        assert flag in lines[0] or param.name in lines[0], lines[0]
        assert "Traceback" not in r.output
        assert list(tmp_path.iterdir()) == [], "nothing is created"
    assert refused >= 3  # nan, inf and 1e18 at least


def test_valid_values_pass_and_ranges_show_in_help():
    b = options.NUMBERS["featurize batch_size"]
    assert b.problem(0) is None and b.problem(16) is None and b.problem(-1) and b.problem(5000)
    assert options.NUMBERS["train lr"].problem(0) and options.NUMBERS["train lr"].problem(1e-3) is None
    r = CliRunner().invoke(app, ["featurize", "--help"])
    assert "1..4096 or 0 (auto)" in " ".join(r.output.split())


@pytest.mark.parametrize("args,needle", [
    (["train", "s", "--out", "h", "--hidden", "100000000"], "--hidden"),
    (["train", "s", "--out", "h", "--hidden", "256,x"], "--hidden"),
    (["train", "s", "--out", "h", "--max-memory", "nanGB"], "--max-memory"),
    (["store", "index", "s", "--memory-budget", "nan"], "--memory-budget"),
    (["featurize", "x", "--store", "new", "--perturb", "jpeg:nan"], "--perturb"),
    (["featurize", "x", "--store", "new", "--augment", "blur:inf"], "--augment"),
    (["robustness", "x", "--head", "h", "--work", "w", "--perturb", "jpeg:500"], "--perturb"),
])
def test_numbers_inside_strings_are_checked_too(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_a_real_process_refuses_before_loading_anything(tmp_path):
    import subprocess
    import sys

    store = tmp_path / "store"
    r = subprocess.run([sys.executable, "-m", "item", "featurize", str(tmp_path), "--store", str(store),
                        "--models", "tiny-random", "--batch-size", "-3"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--batch-size" in r.stderr, r.stderr
    assert not store.exists()


def test_serve_k_range_is_the_services_own():
    pytest.importorskip("fastapi")
    from item.serve.service import MAX_K

    assert options.NUMBERS["serve k"].hi == MAX_K
