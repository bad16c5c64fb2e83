"""Training a head on more rows than memory holds: features streamed from the store, shard by shard.

``item train`` keeps the in-memory path (every feature row in one array) when it fits the memory
budget (``--max-memory``, default half of this machine's RAM) and streams otherwise:

- standardisation: mean and scale over the training rows in two passes, float64 sums (the in-memory
  ``X.mean`` / ``X.std`` to float rounding);
- each epoch visits the training chunks (a chunk: the training rows of one shard, split further to
  fit the budget) in a seeded random order and shuffles rows inside each chunk; minibatches never
  span chunks, so memory holds one chunk;
- the validation loss (early stopping) and the validation scores (threshold) are streamed too.

The head that comes out is an ordinary MLPHead; the shuffling differs from the in-memory path
(rows are shuffled within a chunk, not across the whole set), so the weights differ a little and
predictions agree within a tolerance (tests/test_train_streaming.py), not bit for bit.
"""

from __future__ import annotations

import os
import re

import numpy as np

from item.errors import InputError

#: Bytes the in-memory path needs per feature value: the float32 matrix, its standardised copy, and
#: the training / validation copies a hold-out makes.
IN_MEMORY_BYTES_PER_VALUE = 12
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def default_memory_budget() -> int:
    """Half of this machine's RAM (4 GB when it cannot be read)."""
    ram = physical_memory()
    return ram // 2 if ram else 4 * 1000**3


def parse_memory(text: str | None) -> int:
    """'auto' / None -> the default budget; '512MB', '2GB', '1.5GiB', '800000' (bytes) -> bytes."""
    if text is None or str(text).strip().lower() in ("", "auto"):
        return default_memory_budget()
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"--max-memory {text!r}: give bytes with a unit, e.g. 512MB, 8GB, 1.5GiB, or auto")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 1:
        raise InputError(f"--max-memory {text!r} must be more than 0 bytes")
    return value


def in_memory_bytes(n_rows: int, n_features: int) -> int:
    """Bytes the in-memory training path needs for ``n_rows`` feature rows."""
    return int(n_rows) * int(n_features) * IN_MEMORY_BYTES_PER_VALUE


class StoreRows:
    """Feature rows of a store, read in chunks: ``rows`` (sorted store rows), chunked by shard and budget."""

    def __init__(self, reader, recipe: str, rows: np.ndarray, max_chunk_rows: int):
        from item.misalignment import feature_size

        self.reader, self.recipe = reader, recipe
        self.rows = np.asarray(rows, np.int64)
        if self.rows.size and (np.diff(self.rows) <= 0).any():
            raise InputError("StoreRows: rows must be sorted and unique")
        self.n_features = feature_size(recipe, reader.embed_dim)
        shard_ends = np.cumsum([int(s["n_images"]) for s in reader.manifest["shards"]])
        cuts = np.searchsorted(self.rows, shard_ends)  # positions in rows where a shard ends
        bounds = sorted({0, self.rows.size, *[int(c) for c in cuts if 0 < c < self.rows.size]})
        step = max(1, int(max_chunk_rows))
        self.chunks: list[tuple[int, int]] = []  # (start, stop) positions in self.rows
        for a, b in zip(bounds[:-1], bounds[1:]):
            for s in range(a, b, step):
                self.chunks.append((s, min(b, s + step)))

    def __len__(self) -> int:
        return int(self.rows.size)

    def read(self, k: int) -> np.ndarray:
        """(chunk rows, n_features) float32 features of chunk ``k``."""
        from item.classify.features import store_features

        a, b = self.chunks[k]
        return store_features(self.reader, self.recipe, self.rows[a:b])

    def __iter__(self):
        """(start, stop, features) of every chunk, in order."""
        for k, (a, b) in enumerate(self.chunks):
            yield a, b, self.read(k)


def _mean_scale(rows: StoreRows) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale (n_features,) float32 as heads._standardiser computes them, in two streamed passes."""
    total = np.zeros(rows.n_features, np.float64)
    for _, _, X in rows:
        total += X.sum(axis=0, dtype=np.float64)
    mean = total / len(rows)
    sq = np.zeros(rows.n_features, np.float64)
    for _, _, X in rows:
        sq += ((X.astype(np.float64) - mean) ** 2).sum(axis=0)
    std = np.sqrt(sq / len(rows))
    std[std < 1e-12] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def fit_mlp_streaming(head, train: StoreRows, y: np.ndarray, val: StoreRows, y_val: np.ndarray):
    """Fit an unfitted MLPHead on streamed rows (labels ``y`` / ``y_val`` 0/1 in row order); returns it.

    The same model, loss, optimizer, class balance, early stopping and seeding as ``MLPHead.fit``;
    only the order in which rows are visited differs (see the module docstring).
    """
    import torch
    import torch.nn.functional as F

    from item.classify.heads import CLASSES, EarlyStopping, _balanced_weights, _build_mlp, _step

    cfg = head._cfg()
    y = np.asarray(y, np.int64)
    y_val = np.asarray(y_val, np.int64)
    if len(set(y.tolist())) < 2 or len(set(y_val.tolist())) < 2:
        raise InputError("streamed training needs both classes in the training and in the validation rows")
    mean, scale = _mean_scale(train)
    wt_all = _balanced_weights(y).astype(np.float32)
    wv_all = _balanced_weights(y_val).astype(np.float32)

    def standardised(X):
        return torch.from_numpy((X - mean) / scale)

    def val_loss(model) -> float:
        model.eval()
        total = 0.0
        with torch.inference_mode():
            for a, b, X in val:
                losses = F.binary_cross_entropy_with_logits(
                    model(standardised(X)).squeeze(1), torch.from_numpy(y_val[a:b].astype(np.float32)),
                    reduction="none")
                total += float((losses.double() * torch.from_numpy(wv_all[a:b]).double()).sum())
        return total / float(wv_all.astype(np.float64).sum())

    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.random_state)
        model = _build_mlp(train.n_features, cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        order_gen = torch.Generator().manual_seed(cfg.random_state)
        stopper = EarlyStopping(cfg.patience)
        for epoch in range(cfg.max_epochs):
            model.train()
            for k in torch.randperm(len(train.chunks), generator=order_gen).tolist():
                a, b = train.chunks[k]
                xt = standardised(train.read(k))
                yt = torch.from_numpy(y[a:b].astype(np.float32))
                wt = torch.from_numpy(wt_all[a:b])
                perm = torch.randperm(b - a, generator=order_gen)
                for start in range(0, b - a, cfg.batch_size):
                    idx = perm[start:start + cfg.batch_size]
                    _step(model, opt, xt[idx], yt[idx], wt[idx])
            loss_v = val_loss(model)
            history.append(loss_v)
            if stopper.update(model, loss_v, epoch):
                break
        model.load_state_dict(stopper.best_state)
        best_epoch = stopper.best_epoch
    model.eval()
    head.model_ = model
    head.mean_, head.scale_ = mean, scale
    head.classes_ = CLASSES.copy()
    head.n_features_in_ = int(train.n_features)
    head.n_epochs_ = len(history)
    head.best_epoch_ = best_epoch
    head.best_val_loss_ = float(stopper.best_loss)
    head.val_loss_curve_ = history
    return head


def predict_streaming(head, rows: StoreRows) -> np.ndarray:
    """(len(rows),) float64 P(fake) of streamed rows, chunk by chunk."""
    out = np.empty(len(rows), np.float64)
    for a, b, X in rows:
        out[a:b] = head.predict_proba(X)[:, 1]
    return out
