"""The code's layout (issue 18): no import circle in item/, the featurize and store stages import no later
stage, and item/featurize stays a handful of rooms a newcomer can find."""

from __future__ import annotations

import ast
import fnmatch
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ITEM = ROOT / "item"


def _module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _lazy_exports(tree: ast.Module) -> dict[str, str]:
    """A package's lazy re-exports: ``_EXPORTS = {"name": "module", ...}`` read by its ``__getattr__``."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            if isinstance(node.value, ast.Dict):
                for k, v in zip(node.value.keys, node.value.values):
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant):
                        out[str(k.value)] = str(v.value)
    return out


def import_graph(package_dir: Path) -> dict[str, dict[str, set[str]]]:
    """{module: {imported module: names}} over a package's modules, from every import statement (those
    inside functions too). A name imported from a package's __init__ counts as an import of the module
    that defines it when the __init__ re-exports it (by an import, or lazily through ``_EXPORTS``); the
    __init__ modules themselves are no nodes."""
    base = package_dir.parent
    files = {_module_name(p, base): p for p in package_dir.rglob("*.py")}
    trees = {m: ast.parse(p.read_text(encoding="utf-8")) for m, p in files.items()}
    packages = {m for m, p in files.items() if p.name == "__init__.py"}
    reexports: dict[tuple[str, str], str] = {}
    for pkg in packages:
        for name, target in _lazy_exports(trees[pkg]).items():
            reexports[(pkg, name)] = target
        for node in ast.walk(trees[pkg]):
            if isinstance(node, ast.ImportFrom):
                src = _absolute(pkg, True, node)
                for alias in node.names:
                    if f"{src}.{alias.name}" in files:
                        reexports[(pkg, alias.asname or alias.name)] = f"{src}.{alias.name}"
                    elif src in files:
                        reexports[(pkg, alias.asname or alias.name)] = src

    def follow(target: str, name: str | None) -> str:
        seen = set()
        while target in packages and name is not None and (target, name) in reexports and target not in seen:
            seen.add(target)
            target = reexports[(target, name)]
        return target

    graph: dict[str, dict[str, set[str]]] = {}
    for mod, tree in trees.items():
        if mod in packages:
            continue
        for node in ast.walk(tree):
            targets: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _absolute(mod, False, node)
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    targets.append((sub, None) if sub in files else (follow(src, a.name), a.name))
            for target, name in targets:
                if target in files and target not in packages and target != mod:
                    graph.setdefault(mod, {}).setdefault(target, set()).add(name or "*")
    return graph


def circles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    nodes = set(graph) | {t for ts in graph.values() for t in ts}
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _describe(graph, comp) -> str:
    members = set(comp)
    return "; ".join(f"{a} -> {b} ({', '.join(sorted(graph[a][b]))})"
                     for a in comp for b in sorted(graph.get(a, {})) if b in members)


def test_the_checker_finds_circles_through_functions_relative_imports_and_package_reexports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import helper\n_EXPORTS = {'lazy': 'pkg.c'}\n")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import helper\n    return helper\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\n\ndef helper():\n    return f\n")
    (pkg / "c.py").write_text("def g():\n    from pkg.d import x\n")
    (pkg / "d.py").write_text("from pkg.sub import lazy\nx = 1\n")
    (pkg / "e.py").write_text("import pkg.a\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b": {"helper"}}  # followed through the package's re-export
    assert sorted(map(tuple, circles(graph))) == [("pkg.a", "pkg.sub.b"), ("pkg.c", "pkg.d")]


def test_item_has_no_import_circle():
    graph = import_graph(ITEM)
    assert len(graph) > 50  # the whole package was read
    found = circles(graph)
    assert not found, "import circles in item/: " + " | ".join(_describe(graph, c) for c in found)


@pytest.mark.parametrize("stage", ["item.featurize", "item.store"])
def test_early_stages_import_no_later_stage(stage):
    later = ("item.classify", "item.serve", "item.protocols", "item.api")
    folder = ITEM.joinpath(*stage.split(".")[1:])
    bad = []
    for path in sorted(folder.rglob("*.py")):
        mod = _module_name(path, ITEM.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _absolute(mod, path.name == "__init__.py", node)
                names = [src] + [f"{src}.{a.name}" for a in node.names]
            else:
                continue
            bad += [f"{mod}:{node.lineno} imports {n}" for n in names
                    if any(n == p or n.startswith(p + ".") for p in later)]
    assert not bad, "\n".join(bad)


def test_featurize_is_a_few_rooms():
    top = sorted(p.name for p in (ITEM / "featurize").iterdir() if p.name != "__pycache__")
    assert len(top) <= 8, top
    for entry in top:
        path = ITEM / "featurize" / entry
        assert path.suffix == ".py" or (path / "__init__.py").is_file(), f"{entry}: not a module or a package"
    models = ITEM / "featurize" / "models"
    for family in ("clip", "blip", "grounding_dino", "owlv2"):
        assert (models / f"{family}.py").is_file(), family
    # the shared helpers and the shared grounder base import no model family
    graph = import_graph(ITEM)
    families = {f"item.featurize.models.{f}" for f in ("clip", "blip", "grounding_dino", "owlv2")}
    for shared in ("item.featurize.models.hub", "item.featurize.models.grounding"):
        assert not set(graph.get(shared, {})) & families, shared
    # neither engine imports the module that chooses between them
    for engine in ("item.featurize.run.local", "item.featurize.run.ray_engine"):
        assert "item.featurize.run.engine" not in graph.get(engine, {}), engine


def test_the_noun_lexicon_ships_as_package_data():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is Python 3.11+")
    import tomllib

    lexicon = ITEM / "featurize" / "text" / "nouns_lexicon.txt"
    assert lexicon.is_file() and (lexicon.parent / "__init__.py").is_file()
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]["item"]
    rel = lexicon.relative_to(ITEM).as_posix()
    assert any(fnmatch.fnmatchcase(rel, g) and g.count("/") == rel.count("/") for g in globs), globs

    from item.featurize.text.nouns import lexicon as load_lexicon

    singles, compounds = load_lexicon()
    assert singles and compounds


def test_the_store_imports_nothing_of_featurize_and_manifests_sit_below_the_stages():
    """issue 30: annotate read its CSV through featurize's discovery; manifests are read by item.manifests,
    which imports no stage, and the store imports nothing of featurize (functions' imports included)."""
    graph = import_graph(ITEM)
    store = [m for m in graph if m.startswith("item.store.")]
    assert "item.store.annotate" in store
    bad = [f"{m} -> {t}" for m in store for t in graph[m] if t.startswith("item.featurize")]
    assert not bad, bad
    assert "item.manifests" in graph.get("item.store.annotate", {})
    stages = ("item.featurize", "item.store", "item.classify", "item.serve", "item.protocols", "item.api")
    assert not [t for t in graph.get("item.manifests", {}) if t.startswith(stages)]
