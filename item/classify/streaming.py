"""Training a head on more rows than memory holds: features streamed from the store, shard by shard.

``item train`` keeps the in-memory path (every feature row in one array) when it fits the memory
budget (``--max-memory``, default half of this machine's RAM) and streams otherwise:

- standardisation: mean and scale over the training rows in two passes, float64 sums (the in-memory
  ``X.mean`` / ``X.std`` to float rounding);
- each epoch visits the training chunks (a chunk: the training rows of one shard, split further to
  fit the budget) in a seeded random order and shuffles rows inside each chunk; minibatches never
  span chunks, so memory holds one chunk;
- the validation loss (early stopping) and the validation scores (threshold) are streamed too.

The logistic head streams the same way (``fit_logistic_streaming``: its objective minimised by minibatch
AdamW instead of lbfgs). The head that comes out is an ordinary MLPHead or LogisticHead; the shuffling differs from the in-memory path
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
#: Peak learning rate of the streamed logistic fit (a linear model on standardised rows takes larger steps
#: than the MLP's ``HeadConfig.lr``, which the logistic head does not use).
LOGISTIC_LR = 0.03
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
        from item.classify.features import store_feature_width

        self.reader, self.recipe = reader, recipe
        self.rows = np.asarray(rows, np.int64)
        if self.rows.size and (np.diff(self.rows) <= 0).any():
            raise InputError("StoreRows: rows must be sorted and unique")
        # the width store_features gives (read() calls it), as the in-memory path sees it
        self.n_features = store_feature_width(reader, recipe)
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


class JoinedRows(StoreRows):
    """Feature rows of joined stores (``item.classify.joined.Join``), read in chunks: ``rows`` are sorted
    first-store rows, chunked as :class:`StoreRows` chunks them on the first store; each chunk holds the
    stores in ``use`` side by side (``Join.features``)."""

    def __init__(self, join, recipe: str, rows: np.ndarray, max_chunk_rows: int, use=None):
        super().__init__(join.first, recipe, rows, max_chunk_rows)
        self.join, self.use = join, use
        self.n_features = join.feature_width(recipe, use)

    def read(self, k: int) -> np.ndarray:
        a, b = self.chunks[k]
        return self.join.features(self.recipe, self.rows[a:b], self.use)


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


def _fit_streaming(cfg, train: StoreRows, y: np.ndarray, val: StoreRows, y_val: np.ndarray, *, l2: float = 0.0,
                   keep_best: bool = True):
    """Train ``heads.Trainer``'s model on streamed rows; returns (trainer, mean, scale, history, stopper).

    ``keep_best``: early stopping, the epoch of lowest validation loss kept; else every planned epoch runs
    and the last one is kept (a convex objective solved to the end of its schedule)."""
    import torch

    from item.classify.heads import EarlyStopping, Trainer, _balanced_weights

    y = np.asarray(y, np.int64)
    y_val = np.asarray(y_val, np.int64)
    if len(set(y.tolist())) < 2 or len(set(y_val.tolist())) < 2:
        raise InputError("streamed training needs both classes in the training and in the validation rows")
    mean, scale = _mean_scale(train)
    wt_all = _balanced_weights(y).astype(np.float32)
    wv_all = _balanced_weights(y_val).astype(np.float32)

    def standardised(X, dtype):
        return torch.from_numpy((X - mean) / scale).to(dtype)

    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.random_state)
        trainer = Trainer(cfg, train.n_features, len(train), l2=l2)
        order_gen = torch.Generator().manual_seed(cfg.random_state)
        stopper = EarlyStopping(cfg.patience)
        for epoch in range(trainer.epochs):
            trainer.model.train()
            for k in torch.randperm(len(train.chunks), generator=order_gen).tolist():
                a, b = train.chunks[k]
                xt = standardised(train.read(k), trainer.input_dtype)
                yt = torch.from_numpy(y[a:b].astype(np.float32))
                wt = torch.from_numpy(wt_all[a:b])
                perm = torch.randperm(b - a, generator=order_gen)
                for start in range(0, b - a, trainer.batch_size):
                    idx = perm[start:start + trainer.batch_size]
                    trainer.step(xt[idx], yt[idx], wt[idx])
                del xt
            loss_v = trainer.val_loss(
                (standardised(X, torch.float32), torch.from_numpy(y_val[a:b].astype(np.float32)),
                 torch.from_numpy(wv_all[a:b])) for a, b, X in val)
            history.append(loss_v)
            if stopper.update(trainer.model, loss_v, epoch) and keep_best:
                break
        trainer.finish(stopper.best_state if keep_best else trainer.model.state_dict())
    return trainer, mean, scale, history, stopper


def fit_mlp_streaming(head, train: StoreRows, y: np.ndarray, val: StoreRows, y_val: np.ndarray):
    """Fit an unfitted MLPHead on streamed rows (labels ``y`` / ``y_val`` 0/1 in row order); returns it.

    The same model, loss, optimizer, schedule, class balance, early stopping and seeding as ``MLPHead.fit``
    (both use ``heads.Trainer``); only the order in which rows are visited differs (see the module docstring).
    """
    from item.classify.heads import CLASSES

    trainer, mean, scale, history, stopper = _fit_streaming(head._cfg(), train, y, val, y_val)
    head.model_ = trainer.model
    head.mean_, head.scale_ = mean, scale
    head.classes_ = CLASSES.copy()
    head.n_features_in_ = int(train.n_features)
    head.n_epochs_ = len(history)
    head.best_epoch_ = stopper.best_epoch
    head.best_val_loss_ = float(stopper.best_loss)
    head.val_loss_curve_ = history
    head.precision_, head.device_ = trainer.precision, trainer.device
    head.batch_size_, head.planned_epochs_ = trainer.batch_size, trainer.epochs
    return head


def fit_logistic_streaming(head, train: StoreRows, y: np.ndarray, val: StoreRows, y_val: np.ndarray):
    """Fit an unfitted LogisticHead on streamed rows; returns it.

    The objective is scikit-learn's for ``LogisticRegression(C, class_weight='balanced')`` on standardised
    rows (class-balanced log-loss plus ||coef||^2 / (2 C), scaled by 1 / n_train), minimised by minibatch
    Adam in float32 at LOGISTIC_LR over ``heads.auto_plan``'s epochs with the cosine schedule, memory
    holding one chunk; the last epoch is kept (no early stopping, as lbfgs has none). It is the same convex
    problem the in-memory lbfgs solves, solved to the end of a schedule instead of to a gradient tolerance:
    coefficients differ a little, decisions agree (tests/test_train_streaming.py, BENCHMARKS.md).
    """
    from item.classify.heads import CLASSES, HeadConfig

    cfg = head._cfg()
    linear = HeadConfig(kind="mlp", hidden=(), dropout=0.0, weight_decay=0.0, lr=LOGISTIC_LR,
                        max_epochs=cfg.max_epochs, batch_size=cfg.batch_size, patience=cfg.patience,
                        schedule=cfg.schedule, precision="float32", device=cfg.device, random_state=cfg.random_state)
    trainer, mean, scale, history, stopper = _fit_streaming(linear, train, y, val, y_val, keep_best=False,
                                                            l2=1.0 / (cfg.C * max(len(train), 1)))
    layer = trainer.model[0]
    head.mean_, head.scale_ = mean, scale
    head.coef_ = layer.weight.detach().numpy().astype(np.float64).reshape(1, -1)
    head.intercept_ = layer.bias.detach().numpy().astype(np.float64).reshape(1)
    head.classes_ = CLASSES.copy()
    head.n_features_in_ = int(train.n_features)
    head.n_iter_ = len(history)  # epochs
    return head


def predict_streaming(head, rows: StoreRows) -> np.ndarray:
    """(len(rows),) float64 P(fake) of streamed rows, chunk by chunk."""
    out = np.empty(len(rows), np.float64)
    for a, b, X in rows:
        out[a:b] = head.predict_proba(X)[:, 1]
    return out
