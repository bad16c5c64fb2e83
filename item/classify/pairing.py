"""Which reals a generator's fakes are scored against, when a store's folders do not say it.

UniversalFakeDetect's diffusion sets have no reals of their own: LAION photographs pair with the
``ldm_*``, ``glide_*`` and ``dalle`` fakes, ImageNet ones with ``guided``. Featurized as their own
folders, those reals carry a generator name of their own (``laion``); ``--reals ldm_*=laion`` on
``item eval`` (or a benchmark protocol) names the pairing.
"""

from __future__ import annotations

import fnmatch

import numpy as np

from item.errors import InputError


def parse_reals(text: str | None) -> dict[str, str]:
    """'GEN=REALGEN,GEN2=REALGEN2' -> {GEN: REALGEN}. GEN may be an fnmatch pattern ('ldm_*=laion')."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        gen, sep, real = item.partition("=")
        if not sep or not gen.strip() or not real.strip():
            raise InputError(f"--reals {item!r}: give GEN=REALGEN pairs, comma-separated, e.g. "
                             "'ldm_*=laion,guided=imagenet'")
        if gen.strip() in out:
            raise InputError(f"--reals names {gen.strip()!r} twice")
        out[gen.strip()] = real.strip()
    return out


def real_pools(labels, generators, reals: dict[str, str]) -> tuple[dict, dict]:
    """Resolve a pairing on scored rows: ({fake generator: row indices of its reals}, {generator: REALGEN}).

    labels: (n,) 0/1; generators: (n,) str. Exact names win over patterns. An entry that matches no
    generator with fakes, or names a REALGEN with no real rows, is an InputError listing the valid names.
    """
    labels = np.asarray(labels)
    gens = np.asarray(generators).astype(str)
    fake_gens = sorted(set(gens[labels == 1].tolist()))
    real_gens = sorted(set(gens[labels == 0].tolist()))
    chosen: dict[str, str] = {}
    for exact in (False, True):  # patterns first, exact names override them
        for pat, real in reals.items():
            is_pattern = any(ch in pat for ch in "*?[")
            if is_pattern == exact:
                continue
            matched = [g for g in fake_gens if fnmatch.fnmatchcase(g, pat)]
            if not matched:
                raise InputError(f"--reals {pat}={real}: no fake rows of generator {pat!r}; generators with fakes: "
                                 f"{', '.join(fake_gens) or '-'}")
            if real not in real_gens:
                raise InputError(f"--reals {pat}={real}: no real rows of generator {real!r}; generators with reals: "
                                 f"{', '.join(g or repr('') for g in real_gens) or '-'}")
            for g in matched:
                chosen[g] = real
    pools = {g: np.flatnonzero((labels == 0) & (gens == real)) for g, real in chosen.items()}
    return pools, dict(chosen)
