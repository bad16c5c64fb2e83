"""A compact, exact-or-over digest of the image ids a head was trained and calibrated on.

A head must be able to say "these evaluated rows were used to fit me" on any store holding the
same images, not only the store it was trained on. Image ids are the sha256 of the file's bytes,
so they identify an image across stores.

Up to ``EXACT_MAX_IDS`` ids the head keeps them exactly (kind ``exact-sha256-64``: the first 8
bytes of each id's sha256, sorted; at most 8 KiB, and a false match needs a 64-bit collision, a
rate of about n / 2**64). A Bloom filter that small cannot reach its stated rate (64 bits for 4
ids gave 0.9% instead of 0.1%). Above it the head keeps a Bloom filter (kind ``bloom-sha256``):
about 2 bytes an id, sized with a margin so the measured rate stays under the stated
``DEFAULT_FP_RATE`` (0.1%) despite double hashing; no false negatives either way. ``head.json``
states the rate, and the count it gives is an upper bound (each unseen row has at most that chance
to be counted).
"""

from __future__ import annotations

import base64
import hashlib
import math

import numpy as np

from item.errors import HeadError

KIND = "bloom-sha256"
EXACT_KIND = "exact-sha256-64"
DEFAULT_FP_RATE = 0.001
#: Up to this many ids the digest is an exact set of 64-bit id hashes.
EXACT_MAX_IDS = 1024
#: The Bloom filter is designed for the stated rate divided by this: double hashing and rounding the
#: number of hashes cost about 10% over the textbook rate.
_BLOOM_MARGIN = 1.5


def _key64(ids) -> np.ndarray:
    """(len(ids),) uint64: the first 8 bytes of each id's sha256 (little-endian)."""
    return np.array([int.from_bytes(hashlib.sha256(str(i).encode("utf-8")).digest()[:8], "little") for i in ids],
                    np.uint64)


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
    if len(ids) <= EXACT_MAX_IDS:
        keys = np.unique(_key64(ids)).astype("<u8")
        return {"kind": EXACT_KIND, "n_ids": len(ids), "false_positive_rate": len(ids) / 2.0 ** 64,
                "keys": base64.b64encode(keys.tobytes()).decode("ascii")}
    n = max(len(ids), 1)
    design = fp_rate / _BLOOM_MARGIN
    n_bits = max(64, int(math.ceil(-n * math.log(design) / math.log(2) ** 2)))
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
    if dig.get("kind") == EXACT_KIND:
        try:
            keys = np.frombuffer(base64.b64decode(dig["keys"]), "<u8")
        except (KeyError, ValueError, TypeError) as exc:
            raise HeadError(f"malformed id digest in head.json ({exc})") from None
        return np.isin(_key64(ids), keys) if ids else np.zeros(0, bool)
    if dig.get("kind") != KIND:
        raise HeadError(f"unknown id digest kind {dig.get('kind')!r}; this ITEM reads {KIND} and {EXACT_KIND}")
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
