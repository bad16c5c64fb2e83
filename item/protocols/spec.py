"""A benchmark protocol as data: which folders hold which images, what trains, what tests, which reals
pair with which fakes, and the anchors' published numbers with their source.

One JSON file per benchmark sits beside this module (``ufd.json``, ``genimage.json`` ...). Paths in it
are patterns relative to the benchmark's root folder: '/'-separated, compared case-insensitively, each
segment an ``fnmatch`` pattern, ``**`` for any number of folders. A pattern names folders; the images
are those anywhere below a matched folder.

A test set has its own reals (``real`` patterns) or names a shared pool of reals (``pool``, a key of
``pools``): UniversalFakeDetect's diffusion sets share the LAION reals, ``guided`` the ImageNet ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from item.errors import InputError

FORMAT = "item-protocol"
VERSION = 1
SPLITS = ("train", "val", "test")
VERIFIED = ("read", "no")


@dataclass(frozen=True)
class Part:
    """One set of a split: a test set (a table row), or the training / validation images of a generator.

    name: the set's name (the row label; the ``generator`` of its rows in the store).
    real / fake: folder patterns of its own reals / its fakes (either may be empty).
    pool: the shared real pool its fakes are scored against ('' when it has its own reals).
    n_real / n_fake: published image counts (None when none were published).
    """

    name: str
    real: tuple[str, ...] = ()
    fake: tuple[str, ...] = ()
    pool: str = ""
    n_real: int | None = None
    n_fake: int | None = None


@dataclass(frozen=True)
class Pool:
    """Real images shared by several test sets (stored once, with the pool's name as generator)."""

    name: str
    real: tuple[str, ...]
    n_real: int | None = None


@dataclass(frozen=True)
class Anchor:
    """A published detector's numbers on this benchmark, and where they were read.

    results: test set -> {metric: percent} (metrics among acc, ap, real_acc, fake_acc).
    mean: the published mean row ({} when not published); mean_over: the sets it averages.
    verified: 'read' (the number was read in the cited source) or 'no' (cited, numbers left out).
    """

    method: str
    paper: str
    source: str
    verified: str
    results: dict = field(default_factory=dict)
    mean: dict = field(default_factory=dict)
    mean_over: tuple[str, ...] = ()
    trained_on: str = ""
    threshold: str = ""
    alignment: str = ""  # how the test fakes were re-encoded for these numbers ('' = as distributed), e.g. 'jpeg:96'


@dataclass(frozen=True)
class Layout:
    """One way the benchmark's folders are found on disk: as distributed, or a common rearrangement of it.

    rewrite: {prefix: replacement} applied to the start of every folder pattern of the protocol (the
    first matching prefix wins); {} is the layout the patterns spell out. what / source: how users get
    this layout and where that was read (verified 'read' or 'no').
    """

    name: str
    what: str
    source: str
    verified: str
    rewrite: dict = field(default_factory=dict)

    def apply(self, pattern: str) -> str:
        for prefix, repl in self.rewrite.items():
            if pattern.lower().startswith(prefix.lower()):
                return repl + pattern[len(prefix):]
        return pattern


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    reference: str
    description: str
    layout: str
    layout_sources: tuple[dict, ...]
    metric_convention: str
    mean_over: tuple[str, ...]
    pools: dict  # name -> Pool
    splits: dict  # split -> tuple[Part, ...]
    ignore: tuple[str, ...] = ()  # folders the protocol knows and does not use
    anchors: tuple[Anchor, ...] = ()
    aliases: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    path: str = ""
    layouts: tuple[Layout, ...] = ()  # the accepted layouts, in order of preference; () = the patterns as written
    #: Columns of the comparison table: ITEM heads' metrics and the anchors' (keys of tables.LABELS).
    columns: dict = field(default_factory=dict)

    def in_layout(self, layout: Layout) -> "Protocol":
        """This protocol with every folder pattern (parts, pools, ignore) rewritten for ``layout``."""
        from dataclasses import replace

        def rw(patterns):
            return tuple(layout.apply(p) for p in patterns)

        pools = {n: replace(p, real=rw(p.real)) for n, p in self.pools.items()}
        splits = {s: tuple(replace(p, real=rw(p.real), fake=rw(p.fake)) for p in parts)
                  for s, parts in self.splits.items()}
        return replace(self, pools=pools, splits=splits, ignore=rw(self.ignore))

    def parts(self, split: str) -> tuple[Part, ...]:
        return self.splits.get(split, ())

    @property
    def test_only(self) -> bool:
        return not self.parts("train")

    def pairing(self) -> dict[str, str]:
        """Test set -> the generator name of the reals it is scored against (its own name or its pool's)."""
        return {p.name: (p.pool or p.name) for p in self.parts("test")}

    def verified_anchors(self) -> list[Anchor]:
        return [a for a in self.anchors if a.verified == "read" and (a.results or a.mean)]


def _strs(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InputError(f"{where}: expected a list of non-empty strings")
    return tuple(value)


def _count(value, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(f"{where}: expected a count (integer >= 0)")
    return value


def protocol_from_dict(doc: dict, path: str = "") -> Protocol:
    """Build and check a Protocol from its JSON document. Raises InputError naming what is wrong."""
    where = path or doc.get("name", "protocol")
    if doc.get("format") != FORMAT:
        raise InputError(f"{where}: not an ITEM protocol file (format {doc.get('format')!r}, expected {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise InputError(f"{where}: protocol version {doc.get('version')!r}; this ITEM reads version {VERSION}")
    for key in ("name", "title", "reference", "description", "layout", "metric_convention"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise InputError(f"{where}: '{key}' must be a non-empty string")
    pools = {}
    for name, p in (doc.get("pools") or {}).items():
        pools[name] = Pool(name, _strs(p.get("real"), f"{where}: pools.{name}.real"),
                           _count(p.get("n_real"), f"{where}: pools.{name}.n_real"))
        if not pools[name].real:
            raise InputError(f"{where}: pool {name!r} names no folders")
    splits = {}
    unknown = set(doc.get("splits") or {}) - set(SPLITS)
    if unknown:
        raise InputError(f"{where}: unknown split(s) {', '.join(sorted(unknown))}; valid: {', '.join(SPLITS)}")
    for split in SPLITS:
        parts = []
        for i, p in enumerate((doc.get("splits") or {}).get(split) or []):
            at = f"{where}: splits.{split}[{i}]"
            part = Part(name=str(p.get("name") or ""), real=_strs(p.get("real"), at + ".real"),
                        fake=_strs(p.get("fake"), at + ".fake"), pool=str(p.get("pool") or ""),
                        n_real=_count(p.get("n_real"), at + ".n_real"), n_fake=_count(p.get("n_fake"), at + ".n_fake"))
            if not part.name:
                raise InputError(f"{at}: 'name' is missing")
            if part.pool and part.pool not in pools:
                raise InputError(f"{at}: pool {part.pool!r} is not defined; pools: {', '.join(pools) or '-'}")
            if part.pool and part.real:
                raise InputError(f"{at}: give either its own 'real' folders or a 'pool', not both")
            if split == "test" and not part.fake:
                raise InputError(f"{at}: a test set needs 'fake' folders")
            if split == "test" and not (part.real or part.pool):
                raise InputError(f"{at}: a test set needs 'real' folders or a 'pool'")
            parts.append(part)
        names = [p.name for p in parts]
        if split == "test" and len(set(names)) != len(names):
            raise InputError(f"{where}: test set names repeat")
        splits[split] = tuple(parts)
    clash = set(pools) & {p.name for p in splits["test"]}
    if clash:
        raise InputError(f"{where}: pool names clash with test set names: {', '.join(sorted(clash))}")
    anchors = []
    for i, a in enumerate(doc.get("anchors") or []):
        at = f"{where}: anchors[{i}]"
        if a.get("verified") not in VERIFIED:
            raise InputError(f"{at}: 'verified' must be one of {', '.join(VERIFIED)}")
        if a.get("verified") != "read" and (a.get("results") or a.get("mean")):
            raise InputError(f"{at}: numbers that were not read in their source must be left out")
        if not a.get("source") or not a.get("method"):
            raise InputError(f"{at}: every anchor needs 'method' and 'source'")
        tests = {p.name for p in splits["test"]}
        extra = set(a.get("results") or {}) - tests
        if extra:
            raise InputError(f"{at}: results for unknown test sets {', '.join(sorted(extra))}")
        anchors.append(Anchor(method=a["method"], paper=a.get("paper", ""), source=a["source"], verified=a["verified"],
                              results=dict(a.get("results") or {}), mean=dict(a.get("mean") or {}),
                              mean_over=tuple(a.get("mean_over") or ()), trained_on=a.get("trained_on", ""),
                              threshold=a.get("threshold", ""), alignment=a.get("alignment", "")))
    layouts = []
    for i, lay in enumerate(doc.get("layouts") or []):
        at = f"{where}: layouts[{i}]"
        if not lay.get("name") or not lay.get("what") or not lay.get("source"):
            raise InputError(f"{at}: every layout needs 'name', 'what' and 'source'")
        if lay.get("verified") not in VERIFIED:
            raise InputError(f"{at}: 'verified' must be one of {', '.join(VERIFIED)}")
        rewrite = lay.get("rewrite") or {}
        if not isinstance(rewrite, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in rewrite.items()):
            raise InputError(f"{at}: 'rewrite' must map folder prefixes to their replacements")
        layouts.append(Layout(lay["name"], lay["what"], lay["source"], lay["verified"], dict(rewrite)))
    if len({lay.name for lay in layouts}) != len(layouts):
        raise InputError(f"{where}: layout names repeat")
    columns = doc.get("columns") or {}
    if set(columns) - {"item", "anchors"}:
        raise InputError(f"{where}: 'columns' takes 'item' and 'anchors' lists")
    return Protocol(name=doc["name"], title=doc["title"], reference=doc["reference"], description=doc["description"],
                    layout=doc["layout"], layout_sources=tuple(doc.get("layout_sources") or ()),
                    metric_convention=doc["metric_convention"],
                    mean_over=tuple(doc.get("mean_over") or [p.name for p in splits["test"]]), pools=pools,
                    splits=splits, ignore=_strs(doc.get("ignore"), f"{where}: ignore"), anchors=tuple(anchors),
                    aliases=_strs(doc.get("aliases"), f"{where}: aliases"), notes=_strs(doc.get("notes"), f"{where}: notes"),
                    path=path, layouts=tuple(layouts),
                    columns={k: tuple(v) for k, v in columns.items()})


def load_protocol_file(path) -> Protocol:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read protocol file {path}: {exc}") from None
    return protocol_from_dict(doc, str(path))
