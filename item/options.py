"""Every ``item`` command's options, checked in one place before any work starts.

A command's body runs only after click has parsed and checked all of its parameters, so a value refused
here is refused before a model loads, a store folder is created or a file is read. Each numeric option
of each command has one entry in :data:`NUMBERS` (its range, whether its ends are open, and the values
outside the range that mean something: ``0`` for "auto", ``-1`` for "one per core"); options that carry
numbers inside a string (``--hidden 512,128``, ``--max-memory 8GB``, ``--perturb jpeg:75``) have one entry
in :data:`PARSED`, a check that runs the library's own parser. NaN and infinities are refused for every
number. The root command (:mod:`item.cli`) applies both tables to the whole command tree when it is built;
``tests/test_options.py`` walks the tree and fails when a numeric option has no entry, or an entry names
an option that no longer exists.

Upper ends are not cosmetic where the value sizes a native allocation (``--hidden``, ``--hnsw-m``,
``--batch-size``): they keep one mistyped digit from asking for more memory than a machine has.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Number:
    """A numeric option's valid values: ``lo <= x <= hi`` (``<`` where an end is open), or one of
    ``special`` (each with what it means). ``None`` (an optional option left out) is always valid."""

    lo: float | None
    hi: float | None
    lo_open: bool = False
    hi_open: bool = False
    special: tuple[tuple[float, str], ...] = ()

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None and not (self.lo_open or self.hi_open):
            text = f"{_num(self.lo)}..{_num(self.hi)}"
            return text + "".join(f" or {_num(v)} ({why})" for v, why in self.special)
        lo = "" if self.lo is None else f"{_num(self.lo)}{' <' if self.lo_open else ' <='} "
        hi = "" if self.hi is None else f"{' <' if self.hi_open else ' <='} {_num(self.hi)}"
        text = f"{lo}x{hi}".strip()
        if self.special:
            text += ", or " + ", ".join(f"{_num(v)} ({why})" for v, why in self.special)
        return text

    def problem(self, value) -> str | None:
        """Why ``value`` is refused, or None."""
        if value is None:
            return None
        x = float(value)
        if math.isnan(x) or math.isinf(x):
            return f"{value} is not a finite number; give {self.describe()}"
        if any(x == v for v, _ in self.special):
            return None
        low = self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo)
        high = self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi)
        if low or high:
            return f"{_num(value)} is out of range; give {self.describe()}"
        return None


def _num(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    return f"{v:,}" if isinstance(v, int) and abs(v) >= 100_000 else str(v)


#: Seeds: numpy's generators take 0 .. 2**32 - 1.
_SEED = Number(0, 2**32 - 1)
#: Images a batch: 4096 full-size images are already ~7 GB of decoded pixels.
_BATCH = Number(1, 4096)
_BATCH_AUTO = Number(1, 4096, special=((0, "auto"),))
_WORKERS_AUTO = Number(0, 256, special=((-1, "auto"),))
_FRACTION_OPEN = Number(0, 1, lo_open=True, hi_open=True)
_SCORE = Number(0, 1)
#: Pixel limits: 0 removes the limit; 2**40 (a 1-megapixel-squared image) is past any real file.
_PIXELS = Number(1, 2**40, special=((0, "no limit"),))

#: ``"command option"`` -> valid values. Commands are written as on the command line (``store index``).
NUMBERS: dict[str, Number] = {
    # featurize
    "featurize ground_size": Number(32, 4096),
    "featurize ground_batch_size": Number(1, 256, special=((0, "auto"),)),
    "featurize box_threshold": _SCORE,
    "featurize text_threshold": _SCORE,
    "featurize max_objects": Number(0, 256),
    "featurize batch_size": _BATCH_AUTO,
    "featurize caption_batch_size": _BATCH,
    "featurize clip_batch_size": _BATCH,
    "featurize workers": _WORKERS_AUTO,
    "featurize shard_size": Number(1, 1_000_000),
    "featurize max_pixels": _PIXELS,
    "featurize ray_actors": Number(1, 4096),
    "featurize gpus_per_actor": Number(0, 64),
    # train
    "train dropout": Number(0, 1, hi_open=True),
    "train weight_decay": Number(0, 10),
    "train lr": Number(0, 10, lo_open=True),
    "train max_epochs": Number(1, 100_000, special=((0, "auto"),)),
    "train patience": Number(1, 100_000),
    "train batch_size": Number(1, 1_000_000, special=((0, "auto"),)),
    # 1/C is the L2 strength: below ~1e-100 it overflows in lbfgs (a page of warnings, a head never fitted)
    "train c": Number(1e-12, 1e12),
    "train val_fraction": _FRACTION_OPEN,
    "train seed": _SEED,
    # scoring and lookup
    "predict batch_size": _BATCH,
    "neighbors k": Number(1, 10_000),
    "serve port": Number(1, 65535),
    "serve k": Number(1, 100),  # item.serve.service.MAX_K (tests check they agree)
    "serve max_upload_mb": Number(0, 4096, lo_open=True),
    "serve max_pixels": _PIXELS,
    "serve max_pending": Number(1, 10_000),
    # protocols
    "reproduce batch_size": _BATCH,
    "reproduce workers": Number(0, 256),
    "robustness batch_size": _BATCH,
    "robustness workers": Number(0, 256),
    # store
    "store index hnsw_m": Number(2, 256),  # faiss HNSW: M links a node on the base level, 2*M a level below
    "store index ef_search": Number(1, 65_536),
    "store index nlist": Number(1, 1 << 20),  # and at most the row count: checked where the rows are known
    "store index pq_m": Number(1, 4096),
    "store index nprobe": Number(1, 1 << 20),
    "store index target_recall": Number(0, 1, lo_open=True),
    "store split val": Number(0, 1, hi_open=True),
    "store split test": Number(0, 1, hi_open=True),
    "store split seed": _SEED,
}


class Precision(str, enum.Enum):
    """``--precision``: a choice, so click refuses anything else in one line listing the valid values
    (``item.featurize.models.hub.PRECISIONS``, of which these are the members; a test checks they agree)."""

    fp32 = "fp32"
    bf16 = "bf16"
    auto = "auto"


#: The help of every command's ``--precision``; ``default`` says what leaving it out means for that command.
PRECISION_HELP = ("Arithmetic of the models on the CPU: fp32, bf16 (bfloat16 autocast: CLIP, captioner and grounder), "
                  "or auto (bf16 where torch says the CPU computes bfloat16 natively, else fp32). Default: fp32 on the "
                  "CPU; CUDA runs fp16 autocast (there only auto is accepted). Recorded in a store's identity.")


def precision_value(choice) -> str | None:
    """The library's value of a ``--precision`` choice (None when the option is left out)."""
    return None if choice is None else Precision(choice).value


def _hidden(text: str) -> None:
    sizes = [h.strip() for h in str(text).split(",")]
    if not sizes or any(not h.isdigit() for h in sizes):
        raise ValueError("give comma-separated whole numbers, e.g. 512,128")
    if len(sizes) > 8:
        raise ValueError(f"{len(sizes)} hidden layers: give at most 8")
    for h in sizes:
        if not 1 <= int(h) <= 8192:
            raise ValueError(f"hidden size {h}: give 1..8192 (an MLP of 8192-wide layers already takes GBs "
                             "with its optimiser state)")


def _memory(text) -> None:
    if text is None:
        return
    from item.classify.streaming import parse_memory

    parse_memory(text)


def _budget(text) -> None:
    if text is None:
        return
    from item.store.index import parse_bytes

    parse_bytes(text)


def _perturb(specs) -> None:
    if not specs:
        return
    from item.featurize.inputs.perturb import parse_perturb

    parse_perturb(list(specs) if not isinstance(specs, str) else specs.split(","))


def _augment(specs) -> None:
    if not specs:
        return
    from item.featurize.inputs.perturb import parse_perturb

    for spec in specs:
        if not parse_perturb(spec).steps:
            raise ValueError(f"{spec!r} is no perturbation; give e.g. jpeg:75")


#: ``"command option"`` -> a check of a string option that carries numbers (raises ValueError or an
#: ItemError with the reason). It runs the same parser as the command, only earlier.
PARSED: dict[str, Callable] = {
    "train hidden": _hidden,
    "train max_memory": _memory,
    "store index memory_budget": _budget,
    "featurize perturb": _perturb,
    "featurize augment": _augment,
    "robustness perturb": _perturb,
    "reproduce augment": _augment,
}


def numeric(param) -> bool:
    """Whether a click parameter takes numbers (int or float, optional or repeated)."""
    bare = param.bare_type() if hasattr(param, "bare_type") else ""
    return any(t in bare for t in ("int", "float")) and not getattr(param, "is_flag", False)


def walk(group, path: tuple[str, ...] = ()):
    """``(command words, command)`` for every leaf command under ``group``."""
    for name, cmd in getattr(group, "commands", {}).items():
        if getattr(cmd, "commands", None) is not None and hasattr(cmd, "list_commands"):
            yield from walk(cmd, path + (name,))
        else:
            yield path + (name,), cmd


def apply(group) -> None:
    """Attach the checks of :data:`NUMBERS` and :data:`PARSED` to every command under ``group`` and say
    each number's range in its help. Idempotent. A numeric option without an entry still gets the
    finiteness check (the test of this module fails on it, so it does not stay that way)."""
    for words, cmd in walk(group):
        for param in getattr(cmd, "params", []):
            if getattr(param, "_item_checked", False):
                continue
            key = " ".join(words + (param.name,))
            check = None
            if key in NUMBERS:
                check = _number_check(NUMBERS[key])
                param.help = ((param.help or "").rstrip() + f" [{NUMBERS[key].describe()}]").strip()
            elif key in PARSED:
                check = _parsed_check(PARSED[key])
            elif numeric(param):
                check = _number_check(Number(None, None))
            if check is not None:
                param.callback = _chain(check, param.callback)
            param._item_checked = True


def _chain(check, original):
    def callback(ctx, param, value):
        check(ctx, param, value)
        return original(ctx, param, value) if original is not None else value

    return callback


def _bad(ctx, param, reason: str):
    from typer._click.exceptions import BadParameter

    raise BadParameter(reason, ctx=ctx, param=param)


def _number_check(bound: Number):
    def check(ctx, param, value):
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            why = bound.problem(v)
            if why:
                _bad(ctx, param, why)

    return check


def _parsed_check(parse):
    def check(ctx, param, value):
        from item.errors import ItemError

        try:
            parse(value)
        except (ValueError, ItemError) as exc:
            _bad(ctx, param, f"{value if not isinstance(value, (list, tuple)) else ' '.join(value)!r}: {exc}")

    return check
