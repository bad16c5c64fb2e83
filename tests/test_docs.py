"""The documentation (issue 32): the pages generated from the code equal what the code generates now, the
command reference names every command and option, the commands the hand-written pages show use options
that exist, the README stays short, its links resolve, and it agrees with CI on the install and the tests."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from item import docs_gen

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

#: Pages written by hand (the generated ones under docs/reference/ are checked against the code instead).
HAND_PAGES = sorted(p for p in DOCS.rglob("*.md") if "reference" not in p.relative_to(DOCS).parts)


@pytest.mark.parametrize("page", sorted(docs_gen.PAGES))
def test_generated_page_equals_what_the_code_generates(page):
    if page.endswith("serve-api.md") and importlib.util.find_spec("fastapi") is None:
        pytest.skip("the serve API page is built from item serve's app: needs the serve extra "
                    "(pip install -e '.[serve]')")
    committed = ROOT / page
    assert committed.is_file(), f"{page} is missing: run `{docs_gen.REGENERATE}` and commit it"
    assert committed.read_text(encoding="utf-8") == docs_gen.PAGES[page](), (
        f"{page} differs from what the code generates (a command, option, protocol, route or output object "
        f"changed): run `{docs_gen.REGENERATE}` and commit the page")


def _tree():
    from typer.core import _click

    root = docs_gen._root_command()
    return list(docs_gen._commands(root, _click.Context(root, info_name="item"), ("item",)))


def test_cli_reference_names_every_command_argument_option_and_default():
    text = docs_gen.cli_reference()
    for words, cmd, _ in _tree():
        assert f"{{#{docs_gen.anchor(words)}}}" in text, words
        section = text[text.index(f"{{#{docs_gen.anchor(words)}}}"):]
        nxt = re.search(r"\n#{2,4} `item", section[1:])
        section = section[: nxt.start() + 1] if nxt else section
        for p in cmd.params:
            if p.name == "help":
                continue
            if p.param_type_name == "argument":
                assert f"`{p.metavar}`" in section, (words, p.name)
                continue
            for opt in [*p.opts, *getattr(p, "secondary_opts", [])]:
                assert f"`{opt}`" in section, (words, opt)
            if p.default not in (None, False, (), []) and not callable(p.default) and not p.is_flag:
                assert "default" in section.split(f"`{p.opts[0]}`", 1)[1].split("\n", 1)[0], (words, p.opts)
    # what the tree holds is what --help shows: e.g. the store group's commands and a range from item.options
    assert "`item store annotate`" in text and "[1..65535]" in text.replace("\\[", "[").replace("\\]", "]")


def test_markdown_escaping_keeps_code_and_shows_the_rest_as_written():
    assert docs_gen.md_text("id <sha256>+SPEC, ldm_*=laion") == r"id &lt;sha256&gt;+SPEC, ldm\_\*=laion"
    assert docs_gen.md_text("see `item backbones` (a|b)") == r"see `item backbones` (a\|b)"
    assert docs_gen.md_text("one ` tick") == r"one \` tick"
    assert docs_gen.code("a`b") == "``a`b``"


def _command_lines(text: str):
    """Every `item ...` command in the ```bash blocks of a Markdown text (continuation lines joined)."""
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|\|", line.split("#", 1)[0]):
                part = part.strip()
                if part.startswith("item "):
                    yield part


def test_documented_commands_use_commands_and_options_that_exist():
    tree = {words[1:]: cmd for words, cmd, _ in _tree()}
    seen = 0
    for page in [README, *HAND_PAGES]:
        for line in _command_lines(page.read_text(encoding="utf-8")):
            words = shlex.split(line)[1:]
            path: tuple = ()
            while words and path + (words[0],) in tree:
                path += (words.pop(0),)
            assert path and path in tree, f"{page.name}: `{line}` names no item command"
            cmd = tree[path]
            names = {o for p in cmd.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}
            for w in words:
                if w.startswith("-") and not re.fullmatch(r"-\d.*", w):
                    assert w.split("=", 1)[0] in names, f"{page.name}: `{line}`: item {' '.join(path)} has no {w}"
            seen += 1
    assert seen >= 25  # the README's session and benchmark lines, the guides' examples


def test_readme_is_short_links_resolve_and_agrees_with_ci():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
    for page in ("install", "featurize", "stores", "train-eval", "protocols", "models", "backbones",
                 "misalignment", "store-format", "serve", "python-api", "commands", "development"):
        assert f"(docs/{page}.md)" in text, page  # every moved section is linked
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    quick = re.search(r"## Quick start\n.*?```bash\n(.*?)```", text, re.S).group(1).splitlines()
    install, tests = quick[0], quick[1]
    assert "pip install torch==2.14.1 torchvision==0.29.1" in install and "pip install -q torch==2.14.1 " \
        "torchvision==0.29.1" in ci
    assert tests == "python -m pytest -q" and ci.rstrip().endswith(tests)
    every = 'pip install -e ".[dev,ray,serve,serve-dev]"'
    assert every in text and every.replace("pip install", "pip install -q") in ci
    assert "chromium chromium-driver" in text and "chromium chromium-driver" in ci
    assert 'pip install -q -e ".[docs]"' in ci and "mkdocs build --strict" in ci
    assert "--quiet" not in ci.split("mkdocs build", 1)[1].split("\n", 1)[0].split("#", 1)[0]


def test_site_builds_with_warnings_as_errors(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("needs the docs extra (pip install -e '.[docs]')")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ,
                                                                   "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
