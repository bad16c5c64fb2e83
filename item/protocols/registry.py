"""The registry of benchmark protocols: every ``*.json`` file beside this module is one benchmark."""

from __future__ import annotations

import functools
from pathlib import Path

from item.errors import InputError
from item.protocols.spec import Protocol, load_protocol_file

_HERE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def _all() -> dict[str, Protocol]:
    out = {}
    for path in sorted(_HERE.glob("*.json")):
        p = load_protocol_file(path)
        if p.name in out:
            raise InputError(f"two protocol files are named {p.name!r}")
        out[p.name] = p
    return out


def protocol_names() -> list[str]:
    """Registered benchmark names, sorted."""
    return sorted(_all())


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name`` (or one of its aliases, case-insensitive); a JSON file path also works.

    An unknown name raises InputError listing the valid ones.
    """
    if name.endswith(".json") and Path(name).is_file():
        return load_protocol_file(name)
    key = name.strip().lower()
    for p in _all().values():
        if key == p.name or key in p.aliases:
            return p
    raise InputError(f"unknown benchmark {name!r}. Available: "
                     + ", ".join(f"{p.name} ({p.title})" for p in _all().values()))
