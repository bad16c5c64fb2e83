"""A compact, exact-or-over digest of the image ids a head was trained and calibrated on.

A head must be able to say "these evaluated rows were used to fit me" on any store holding the
same images, not only the store it was trained on. Image ids are the sha256 of the file's bytes,
so they identify an image across stores. The head keeps a Bloom filter of them: about 1.8 bytes
an id at a false-positive rate of 0.1%, no false negatives. ``head.json`` states the rate, and
the count it gives is an upper bound (each unseen row has at most that chance to be counted).
"""

from __future__ import annotations

import base64
import hashlib
import math

import numpy as np

from item.errors import HeadError

KIND = "bloom-sha256"
DEFAULT_FP_RATE = 0.001


def _positions(ids, n_bits: int, n_hashes: int) -> np.ndarray:
    """(len(ids), n_hashes) bit positions by double hashing of each id's sha256."""
    h = np.empty((len(ids), 2), np.uint64)
    for i, key in enumerate(ids):
        d = hashlib.sha256(str(key).encode("utf-8")).digest()
        h[i, 0] = int.from_bytes(d[:8], "little")
        h[i, 1] = int.from_bytes(d[8:16], "little") | 1
    k = np.arange(n_hashes, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return (h[:, :1] + k[None, :] * h[:, 1:2]) % np.uint64(n_bits)


def build(ids, fp_rate: float = DEFAULT_FP_RATE) -> dict:
    """A JSON-able digest of ``ids`` (iterable of str) with the given false-positive rate."""
    ids = list(dict.fromkeys(str(i) for i in ids))
    n = max(len(ids), 1)
    n_bits = max(64, int(math.ceil(-n * math.log(fp_rate) / math.log(2) ** 2)))
    n_bits = (n_bits + 7) // 8 * 8
    n_hashes = max(1, int(round(n_bits / n * math.log(2))))
    bits = np.zeros(n_bits, bool)
    if ids:
        bits[_positions(ids, n_bits, n_hashes).reshape(-1).astype(np.int64)] = True
    return {"kind": KIND, "n_ids": len(ids), "n_bits": n_bits, "n_hashes": n_hashes,
            "false_positive_rate": fp_rate,
            "bits": base64.b64encode(np.packbits(bits, bitorder="little").tobytes()).decode("ascii")}


def contains(dig: dict, ids) -> np.ndarray:
    """(len(ids),) bool: True for ids in the digest (and, at the stated rate, for some that are not)."""
    ids = [str(i) for i in ids]
    if dig.get("kind") != KIND:
        raise HeadError(f"unknown id digest kind {dig.get('kind')!r}; this ITEM reads {KIND}")
    try:
        n_bits, n_hashes = int(dig["n_bits"]), int(dig["n_hashes"])
        bits = np.unpackbits(np.frombuffer(base64.b64decode(dig["bits"]), np.uint8), bitorder="little")[:n_bits]
    except (KeyError, ValueError, TypeError) as exc:
        raise HeadError(f"malformed id digest in head.json ({exc})") from None
    if bits.size != n_bits or not ids:
        return np.zeros(len(ids), bool) if bits.size == n_bits else _bad()
    pos = _positions(ids, n_bits, n_hashes).astype(np.int64)
    return bits[pos].all(axis=1)


def _bad():
    raise HeadError("malformed id digest in head.json (its bit array is shorter than n_bits)")
