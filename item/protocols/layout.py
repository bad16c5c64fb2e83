"""Check a benchmark's data folder against its protocol and list its images as labelled rows.

The folder is walked once (sorted, hidden names skipped, symlinked folders followed once). Each
part of the protocol (a test set, a training generator, a real pool) takes the images below the
folders its patterns match. What the check reports:

- missing: a part whose patterns match no folder with images (it names the patterns it tried);
- unexpected: folders holding images that no pattern of the protocol covers (nor its ``ignore``
  list of known, unused folders), with their image counts; a folder whose name is close to a
  missing part's is offered as "did you mean" (a misspelt folder is both missing and unexpected);
- counts: parts whose image count differs from the published one.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from dataclasses import dataclass, field

from item.featurize.inputs.discover import IMAGE_EXTENSIONS
from item.protocols.spec import SPLITS, Protocol


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def scan(root: str) -> dict[str, list[str]]:
    """Every folder below ``root`` (relative, '/'-separated, '' for root) -> image files directly in it."""
    root = os.path.abspath(root)
    out: dict[str, list[str]] = {}
    visited = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == os.curdir else rel.replace(os.sep, "/")
        out[rel] = [os.path.join(dirpath, f) for f in sorted(filenames)
                    if not f.startswith(".") and _is_image(f) and os.path.isfile(os.path.join(dirpath, f))]
    return out


def match(pattern: str, rel: str) -> bool:
    """Whether folder ``rel`` matches ``pattern`` (case-insensitive segments, fnmatch, '**' = any depth)."""
    pat = [s for s in pattern.lower().strip("/").split("/") if s]
    path = [s for s in rel.lower().split("/") if s]

    def go(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(path)
        if pat[i] == "**":
            return any(go(i + 1, k) for k in range(j, len(path) + 1))
        return j < len(path) and fnmatch.fnmatchcase(path[j], pat[i]) and go(i + 1, j + 1)

    return go(0, 0)


def _below(folders: dict[str, list[str]], tops: list[str]) -> list[str]:
    """Images in and below the folders ``tops``, each once, in walk order."""
    seen, out = set(), []
    for rel, files in folders.items():
        if any(rel == t or rel.startswith(t + "/") or t == "" for t in tops):
            for f in files:
                if f not in seen:
                    seen.add(f)
                    out.append(f)
    return out


@dataclass
class FoundPart:
    split: str
    name: str
    pool: str
    real: list[str] = field(default_factory=list)
    fake: list[str] = field(default_factory=list)
    real_dirs: list[str] = field(default_factory=list)
    fake_dirs: list[str] = field(default_factory=list)


@dataclass
class LayoutReport:
    """What ``check_layout`` found. ``missing`` / ``unexpected`` / ``counts`` are message lines."""

    protocol: str
    root: str
    splits: tuple[str, ...]
    parts: dict = field(default_factory=dict)  # (split, name) -> FoundPart
    pools: dict = field(default_factory=dict)  # pool name -> (images, folders)
    missing: list[str] = field(default_factory=list)
    missing_parts: list[tuple[str, str]] = field(default_factory=list)  # (split, name)
    unexpected: list[tuple[str, int]] = field(default_factory=list)  # (folder, n images below it)
    hints: list[str] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)
    n_unused: int = 0  # images in folders the protocol knows and does not use
    layout: str = ""  # the name of the protocol's layout this report is against ('' when it lists none)
    layout_rule: str = ""  # why that layout: what it is, its source, what it found against the others

    @property
    def ok(self) -> bool:
        return not self.missing

    def summary(self) -> dict:
        return {"protocol": self.protocol, "root": self.root, "splits": list(self.splits), "layout": self.layout,
                "layout_rule": self.layout_rule,
                "sets": {f"{s}/{n}": {"real": len(p.real) if not p.pool else len(self.pools[p.pool][0]),
                                      "fake": len(p.fake), "reals_from": p.pool or "own"}
                         for (s, n), p in self.parts.items()},
                "missing": self.missing, "unexpected": [{"folder": f, "images": n} for f, n in self.unexpected],
                "hints": self.hints, "counts": self.counts, "unused_images": self.n_unused}

    def lines(self) -> list[str]:
        out = [f"layout of {self.root} against {self.protocol} ({', '.join(self.splits)}):"]
        if self.layout and self.layout_rule.startswith("no layout"):
            out.append(f"  layout: none recognised ({self.layout_rule.replace('the first listed', repr(self.layout))})")
        elif self.layout:
            out.append(f"  layout recognised: {self.layout}: {self.layout_rule}")
        n_ok = sum(1 for k in self.parts if k not in set(self.missing_parts))
        pools = [m for m in self.missing if m.startswith("real pool ")]
        out.append(f"  {n_ok} of {len(self.parts)} sets found, {len(self.missing_parts)} missing"
                   + (f" (and {len(pools)} real pool(s) missing)" if pools else "")
                   + f", {len(self.unexpected)} unexpected folder(s)")
        out += [f"  missing: {m}" for m in self.missing]
        out += [f"  unexpected: {f} ({n} images)" for f, n in self.unexpected]
        out += [f"  hint: {h}" for h in self.hints]
        out += [f"  count: {c}" for c in self.counts[:6]]
        if len(self.counts) > 6:
            out.append(f"  count: ... and {len(self.counts) - 6} more sets whose counts differ from the published ones")
        if self.n_unused:
            out.append(f"  ({self.n_unused} images in folders this benchmark does not use)")
        return out

    def rows(self, split: str) -> list[dict]:
        """Manifest rows (path, label, generator, split) of one split; a pool's reals carry the pool's name."""
        out, seen = [], set()

        def add(path, label, gen):
            if path not in seen:
                seen.add(path)
                out.append({"path": path, "label": label, "generator": gen, "split": split})

        used_pools = []
        for (s, name), p in self.parts.items():
            if s != split or (s, name) in self.missing_parts:
                continue
            for f in p.real:
                add(f, "real", name)
            for f in p.fake:
                add(f, "fake", name)
            if p.pool and p.pool not in used_pools:
                used_pools.append(p.pool)
        for pool in used_pools:
            for f in self.pools[pool][0]:
                add(f, "real", pool)
        return out


def check_layout(protocol: Protocol, root, splits=SPLITS) -> LayoutReport:
    """Compare the folder ``root`` with ``protocol`` for the given splits. Never raises for a mismatch.

    A protocol that lists several layouts (as distributed, as its archives unpack, a common
    rearrangement) is checked against each; the rule: the layout that finds the most of the needed sets
    wins, then the one that finds the most images. Two layouts that tie while finding different images
    are an InputError naming both (the folder holds both arrangements). With no set found by any
    layout, the report is against the first (as distributed). The report names the layout it used.
    """
    from item.errors import InputError

    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise InputError(f"--root {root}: no such folder")
    folders = scan(root)
    if not protocol.layouts:
        return _check_one(protocol, root, splits, folders)
    scored = []
    for lay in protocol.layouts:
        rep = _check_one(protocol.in_layout(lay), root, splits, folders)
        found = [k for k in rep.parts if k not in set(rep.missing_parts)]
        files = frozenset(f for k in found for f in rep.parts[k].real + rep.parts[k].fake)
        scored.append(((len(found), len(files)), lay, rep, files))
    best = max(scored, key=lambda t: t[0])
    if best[0][0] == 0:
        _, lay, rep, _ = scored[0]
        rep.layout, rep.layout_rule = lay.name, "no layout found any set; checked against the first listed"
        return rep
    rivals = [t for t in scored if t[0] == best[0] and t[1] is not best[1] and t[3] != best[3]]
    if rivals:
        raise InputError(f"{root} holds the {protocol.name} data in two layouts at once ({best[1].name}: "
                         f"{best[1].what}; {rivals[0][1].name}: {rivals[0][1].what}): keep one of them")
    _, lay, rep, _ = best
    others = ", ".join(f"{t[1].name} {t[0][0]}" for t in scored if t[1] is not lay)
    rep.layout = lay.name
    rep.layout_rule = (f"{lay.what} [{lay.source}]; it found {best[0][0]} of {len(rep.parts)} sets "
                       f"(other layouts: {others})")
    return rep


_SPLIT_WORDS = {"train": "train", "training": "train", "trainset": "train", "val": "val", "valid": "val",
                "validation": "val", "valset": "val", "test": "test", "testing": "test", "testset": "test"}


def _split_words(rel: str) -> set[str]:
    """The splits a folder path names in its words ('progan_val/car' -> {'val'})."""
    return {_SPLIT_WORDS[w] for w in re.split(r"[/_\-. ]+", rel.lower()) if w in _SPLIT_WORDS}


def _check_one(protocol: Protocol, root: str, splits, folders: dict) -> LayoutReport:
    rels = list(folders)
    rep = LayoutReport(protocol.name, root, tuple(splits))

    def resolve(patterns):
        dirs = [r for r in rels if r and any(match(p, r) for p in patterns)]
        # Keep the outermost matches: images below a matched folder belong to it.
        dirs = [d for d in dirs if not any(d != o and d.startswith(o + "/") for o in dirs)]
        return dirs, _below(folders, dirs)

    needed_pools = {p.pool for s in splits for p in protocol.parts(s) if p.pool}
    for name, pool in protocol.pools.items():
        dirs, files = resolve(pool.real)
        rep.pools[name] = (files, dirs)
        if name in needed_pools:
            if not files:
                rep.missing.append(f"real pool {name!r}: no images (looked for {', '.join(pool.real)})")
            elif pool.n_real is not None and len(files) != pool.n_real:
                rep.counts.append(f"real pool {name!r}: {len(files)} images, {pool.n_real} published")
    for split in splits:
        for part in protocol.parts(split):
            fp = FoundPart(split, part.name, part.pool)
            fp.real_dirs, fp.real = resolve(part.real) if part.real else ([], [])
            fp.fake_dirs, fp.fake = resolve(part.fake) if part.fake else ([], [])
            rep.parts[(split, part.name)] = fp
            what = f"{split} set {part.name!r}"
            gone = []
            if part.fake and not fp.fake:
                gone.append(f"no fake images (looked for {', '.join(part.fake)})")
            if part.real and not fp.real:
                gone.append(f"no real images (looked for {', '.join(part.real)})")
            if part.pool and not rep.pools[part.pool][0]:
                gone.append(f"its real pool {part.pool!r} is missing")
            if gone:
                rep.missing.append(f"{what}: " + "; ".join(gone))
                rep.missing_parts.append((split, part.name))
                continue
            for kind, want, got in (("real", part.n_real, fp.real), ("fake", part.n_fake, fp.fake)):
                if want is not None and len(got) != want:
                    rep.counts.append(f"{what}: {len(got)} {kind} images, {want} published")
    # Folders no pattern of the protocol covers (any split, so that train folders are not "unexpected"
    # when only the test split is checked).
    covered = []
    for split in SPLITS:
        for part in protocol.parts(split):
            covered += resolve(part.real)[0] + resolve(part.fake)[0]
    for pool in protocol.pools.values():
        covered += resolve(pool.real)[0]
    ignored = [r for r in rels if r and any(match(p, r) for p in protocol.ignore)]

    def under(rel, tops):
        return any(rel == t or rel.startswith(t + "/") for t in tops)

    stray = {}
    for rel, files in folders.items():
        if not files or under(rel, covered):
            continue
        if under(rel, ignored):
            rep.n_unused += len(files)
            continue
        stray[rel] = len(files)
    # Report the outermost uncovered folder of each stray branch, with the images below it.
    tops = []
    for rel in sorted(stray):
        parts = rel.split("/") if rel else []
        top = rel
        for k in range(1, len(parts)):
            cand = "/".join(parts[:k])
            if not under(cand, covered) and not any(under(c, [cand]) for c in covered) and not under(cand, ignored):
                top = cand
                break
        if top not in tops:
            tops.append(top)
    for top in tops:
        n = sum(v for r, v in stray.items() if r == top or r.startswith(top + "/") or top == "")
        rep.unexpected.append((top or ".", n))
    # A misspelt folder is both missing and unexpected: offer the near names. Every folder name on the
    # way to a stray image folder is compared with the names the missing set's patterns spell out.
    for split, name in rep.missing_parts:
        part = next(p for p in protocol.parts(split) if p.name == name)
        wanted = {name.lower()} | {seg.lower() for pat in part.real + part.fake for seg in pat.split("/")
                                   if seg and not any(ch in seg for ch in "*?[")}
        offered = set()
        # The splits the missing set's own folders name (GenImage tests on folders called 'val').
        own = set().union(*(_split_words(pat) for pat in part.real + part.fake)) or {split}
        for rel in stray:
            named = _split_words(rel)
            if named and not named & own:
                continue  # a folder of another split ('progan_val' is never offered for the training set)
            segs = rel.split("/")
            for k, seg in enumerate(segs):
                if seg.lower() in wanted:
                    continue
                close = difflib.get_close_matches(seg.lower(), sorted(wanted), n=1, cutoff=0.75)
                folder = "/".join(segs[:k + 1])
                if close and folder not in offered:
                    offered.add(folder)
                    rep.hints.append(f"{split} set {name!r} is missing and {folder!r} is unexpected: "
                                     f"is {folder!r} a misspelling of {close[0]!r}?")
    return rep
