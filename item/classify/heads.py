"""Classification heads over feature rows: a small MLP (the default) and logistic regression.

Both follow the scikit-learn estimator contract: ``__init__`` only stores the config, ``fit``
returns ``self``, learned state ends in ``_``, ``predict_proba`` returns (n, 2) columns in
``classes_`` order (``classes_ == [0, 1]``, 1 = fake) and ``random_state`` is used inside ``fit``.

Heads are saved as ``head.safetensors`` (every tensor: weights, standardisation mean/scale) plus
``head.json`` (schema version, package version, config, feature size, tensor shapes, the caller's
metadata). Nothing is ever pickled or unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from item.errors import HeadError, IncompatibleError, InputError, SchemaError
from item.names import HEAD_CONFIG_FILE

SCHEMA_VERSION = 1
WEIGHTS_FILE = "head.safetensors"
CONFIG_FILE = HEAD_CONFIG_FILE  # featurize reads it too: it lives in item.names
CLASSES = np.array([0, 1])
_VAL_FRACTION = 0.1
_PREDICT_BATCH = 8192
#: Training plan of an MLP when batch_size / max_epochs are 0 (auto), see ``auto_plan``.
DEFAULT_LR = 1e-3
AUTO_BATCH = (32, 256)  # the batch is n_train / AUTO_STEPS_PER_EPOCH within these bounds
AUTO_STEPS_PER_EPOCH = 32
AUTO_ROW_VISITS = 1_500_000  # epochs = this many row visits / n_train within AUTO_EPOCHS
AUTO_EPOCHS = (4, 60)
_WARMUP_FRACTION = 0.05
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "float32", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class HeadConfig:
    """Hyperparameters of a head. ``kind`` picks the class from ``HEADS``; fields a kind does not use
    are ignored by it (``C`` is logistic-only; hidden .. patience are MLP-only)."""

    kind: str = "mlp"
    hidden: tuple[int, ...] = (256,)
    dropout: float = 0.2
    weight_decay: float = 1e-4
    lr: float = DEFAULT_LR  # the peak learning rate under the cosine schedule
    max_epochs: int = 0  # 0: auto, from the number of training rows (auto_plan)
    batch_size: int = 0  # 0: auto, from the number of training rows (auto_plan)
    patience: int = 10
    schedule: str = "cosine"  # cosine (warm-up, then cosine decay over max_epochs) or constant
    precision: str = "auto"  # auto (bfloat16 where the hardware computes it natively), float32, bfloat16
    device: str = "auto"  # auto (cuda when present), cpu, cuda
    C: float = 1.0
    random_state: int = 0


def _validate_config(cfg: HeadConfig, kind: str) -> HeadConfig:
    if not isinstance(cfg, HeadConfig):
        raise InputError(f"config must be a HeadConfig, got {type(cfg).__name__}")
    if cfg.kind != kind:
        raise InputError(f"a {kind!r} head was given a config of kind {cfg.kind!r}")
    problems = []
    if any(int(h) != h or h < 1 for h in cfg.hidden):
        problems.append(f"hidden sizes must be positive integers, got {cfg.hidden}")
    if not 0.0 <= cfg.dropout < 1.0:
        problems.append(f"dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.weight_decay < 0:
        problems.append(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.lr <= 0:
        problems.append(f"lr must be > 0, got {cfg.lr}")
    for name in ("max_epochs", "batch_size"):
        if getattr(cfg, name) < 0:
            problems.append(f"{name} must be >= 1, or 0 for auto, got {getattr(cfg, name)}")
    if cfg.patience < 1:
        problems.append(f"patience must be >= 1, got {cfg.patience}")
    for name, allowed in (("schedule", SCHEDULES), ("precision", PRECISIONS), ("device", DEVICES)):
        if getattr(cfg, name) not in allowed:
            problems.append(f"{name} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    if cfg.C <= 0:
        problems.append(f"C must be > 0, got {cfg.C}")
    if problems:
        raise InputError("bad head config: " + "; ".join(problems))
    return cfg


def _check_X(X, n_features: int | None = None, name: str = "X") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise InputError(f"{name} must be (n_rows, n_features), got shape {X.shape}")
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        raise InputError(f"{name} holds NaN or infinite values")
    if n_features is not None and X.shape[1] != n_features:
        raise IncompatibleError(
            f"{name} has {X.shape[1]} features but the head was trained on {n_features} "
            "(a different feature recipe or CLIP model?)"
        )
    return X


def _check_y(y, n: int, name: str = "y") -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if y.shape != (n,):
        raise InputError(f"{name} has {y.size} labels for {n} rows")
    if not np.isin(y, (0, 1)).all():
        raise InputError(f"{name} must hold 0 (real) or 1 (fake) only")
    y = y.astype(np.int64)
    if np.unique(y).size < 2:
        raise InputError(f"{name} must hold both classes (real and fake)")
    return y


def _check_weights(sample_weight, n: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise InputError("sample_weight must be (n_rows,) finite, non-negative and not all zero")
    return w


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    """(n,) float64 weights n / (2 * n_class), so each class carries half of the loss."""
    counts = np.bincount(y, minlength=2).astype(np.float64)
    return (y.size / (2.0 * counts))[y]


def stratified_holdout(y: np.ndarray, seed: int, fraction: float = _VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (train, val) with ~``fraction`` of each class in val (at least one row, never all), seeded."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        if idx.size < 2:
            raise InputError(
                "cannot hold out validation rows: each class needs at least 2 training rows; pass X_val/y_val"
            )
        idx = rng.permutation(idx)
        k = min(idx.size - 1, max(1, int(round(fraction * idx.size))))
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _standardiser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale (n_features,) float32 of the training rows; constant columns get scale 1."""
    mean = X.mean(axis=0, dtype=np.float64)
    std = X.std(axis=0, dtype=np.float64)
    std[std < 1e-12] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


class _Head:
    """Shared plumbing: config handling, standardisation, fitted checks, (de)serialisation hooks."""

    kind = ""

    def __init__(self, config: HeadConfig | None = None):
        self.config = config

    def _cfg(self) -> HeadConfig:
        cfg = HeadConfig(kind=self.kind) if self.config is None else self.config
        return _validate_config(cfg, self.kind)

    def _check_fitted(self) -> None:
        if not hasattr(self, "mean_"):
            raise HeadError(f"this {self.kind} head is not fitted yet: call fit first")

    def _standardise(self, X) -> np.ndarray:
        self._check_fitted()
        X = _check_X(X, self.n_features_in_)
        return (X - self.mean_) / self.scale_

    def predict_proba(self, X) -> np.ndarray:
        """X: (n, n_features) float -> (n, 2) float64, columns [P(real), P(fake)] (``classes_`` order)."""
        p = self._p_fake(self._standardise(X))
        return np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        """X: (n, n_features) float -> (n,) int64 labels (1 = fake) at P(fake) >= 0.5."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)

    # Subclasses: _p_fake(Xs) -> (n,) float64, _tensors() -> dict, _expected_shapes(cfg, n_features),
    # _set_state(tensors, cfg).


def auto_plan(cfg: HeadConfig, n_train: int) -> tuple[int, int]:
    """(batch size, epochs) of a fit on ``n_train`` rows: the config's values, or for 0 (auto) a batch of
    n_train / 32 rows within 32..256 (so small stores still take 32 steps an epoch; larger batches
    reached a worse best epoch on the benchmark store, BENCHMARKS.md §9) and 1.5M row visits
    within 4..60 epochs (more rows, fewer epochs: each epoch already holds more steps)."""
    batch = cfg.batch_size or int(np.clip(n_train // AUTO_STEPS_PER_EPOCH, *AUTO_BATCH))
    epochs = cfg.max_epochs or int(np.clip(math.ceil(AUTO_ROW_VISITS / max(n_train, 1)), *AUTO_EPOCHS))
    return batch, epochs


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (``item.hardware.native_bfloat16``)."""
    from item.hardware import native_bfloat16 as native

    return native()


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without one -> HeadError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise HeadError("device 'cuda' asked for, but torch sees no GPU; use device auto or cpu")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> 'bfloat16' on CUDA and on CPUs with native bfloat16 (native_bfloat16), else 'float32'."""
    if precision != "auto":
        return precision
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if native_bfloat16() else "float32"


class Trainer:
    """One fit's model, optimiser, learning-rate schedule, precision and device; used by ``MLPHead.fit`` and by
    the streamed fits (item.classify.streaming), so every path trains the same way.

    The optimiser is AdamW (fused: one pass over the parameters a step). Under ``schedule='cosine'`` the
    learning rate rises linearly over the first 5% of the planned steps and then falls along a cosine to 0 at
    the last planned step (``auto_plan``); ``constant`` keeps ``lr``. Under bfloat16 the forward and
    backward run in bfloat16 autocast while the weights, the optimiser state and the loss stay float32.
    ``l2``: an extra 0.5 * l2 * ||weights||^2 (not biases) in the loss, as logistic regression has.
    """

    def __init__(self, cfg: HeadConfig, n_features: int, n_train: int, *, l2: float = 0.0):
        import torch

        self.cfg = cfg
        self.batch_size, self.epochs = auto_plan(cfg, n_train)
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.l2 = float(l2)
        self.model = _build_mlp(n_features, cfg).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.total_steps = max(1, self.epochs * math.ceil(n_train / self.batch_size))
        self.steps = 0

    @property
    def input_dtype(self):
        """The dtype the training rows are best kept in (bfloat16 rows are cast once, not every batch)."""
        return _torch_dtype(self.precision)

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if cfg.schedule == "constant":
            return cfg.lr
        warm = max(1, int(_WARMUP_FRACTION * self.total_steps))
        if step < warm:
            return cfg.lr * (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, self.total_steps - warm))
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))

    def step(self, x, y, w) -> None:
        """One optimiser step on a batch: class-weighted binary cross-entropy of the logits (+ the l2 term)."""
        import torch
        import torch.nn.functional as F

        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.steps)
        x, y, w = x.to(self.device, non_blocking=True), y.to(self.device), w.to(self.device)
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            logits = self.model(x).squeeze(1)
        losses = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
        loss = (losses * w).sum() / w.sum().clamp_min(1e-12)
        if self.l2:
            loss = loss + 0.5 * self.l2 * sum((lin.weight.float() ** 2).sum() for lin in _linear_layers(self.model))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.steps += 1

    def val_loss(self, batches) -> float:
        """Class-weighted validation loss (float32, no dropout) over ``batches`` of (x, y, w) tensors."""
        import torch
        import torch.nn.functional as F

        self.model.eval()
        total = weight = 0.0
        with torch.inference_mode():
            for x, y, w in batches:
                logits = self.model(x.to(self.device).float()).squeeze(1)
                losses = F.binary_cross_entropy_with_logits(logits, y.to(self.device), reduction="none")
                total += float((losses.double() * w.to(self.device).double()).sum())
                weight += float(w.double().sum())
        self.model.train()
        return total / max(weight, 1e-300)

    def finish(self, state) -> None:
        """Load the kept (best) state and leave the model on the CPU in float32, in eval mode."""
        self.model.load_state_dict(state)
        self.model.to("cpu").eval()


class EarlyStopping:
    """Keeps the state of the epoch with the lowest validation loss; says stop after ``patience`` epochs
    without an improvement (of more than 1e-7)."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_loss, self.best_state, self.best_epoch, self.stale = math.inf, None, 0, 0

    def update(self, model, loss: float, epoch: int) -> bool:
        if loss < self.best_loss - 1e-7:
            self.best_loss, self.best_epoch, self.stale = loss, epoch + 1, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return False
        self.stale += 1
        return self.stale >= self.patience


class MLPHead(_Head):
    """Multi-layer perceptron (Linear-ReLU-Dropout blocks, one logit) trained with AdamW.

    Inputs are standardised with mean/scale from the training rows only. The loss is binary
    cross-entropy with class-balanced weights (times ``sample_weight`` if given). Training stops
    when the validation loss (class-balanced, unweighted by ``sample_weight``) has not improved for
    ``patience`` epochs, and the best epoch's weights are kept. Without X_val/y_val, 10% of the
    training rows (stratified, seeded by ``random_state``) are held out for this. ``Trainer`` sets the
    batch size, the number of epochs and the learning-rate schedule (``auto_plan``: large batches and a
    warm-up + cosine decay, so few epochs), and the precision and device (bfloat16 autocast where the
    hardware has it, a GPU when present). Seeded: the same data, config and machine give identical
    predictions. Predictions always run on the CPU in float32.
    """

    kind = "mlp"

    def fit(self, X, y, X_val=None, y_val=None, sample_weight=None) -> "MLPHead":
        """X: (n, n_features) float; y: (n,) 0/1; X_val/y_val: optional validation rows; sample_weight: (n,)."""
        import torch

        cfg = self._cfg()
        X = _check_X(X)
        y = _check_y(y, X.shape[0])
        w = _check_weights(sample_weight, X.shape[0])
        if (X_val is None) != (y_val is None):
            raise InputError("give both X_val and y_val, or neither")
        if X_val is None:
            tr, va = stratified_holdout(y, cfg.random_state)
            X, X_val, y, y_val, w = X[tr], X[va], y[tr], y[va], w[tr]
        else:
            X_val = _check_X(X_val, X.shape[1], "X_val")
            y_val = _check_y(y_val, X_val.shape[0], "y_val")
        if w[y == 0].sum() <= 0 or w[y == 1].sum() <= 0:
            raise InputError("sample_weight leaves one class with zero total weight")

        mean, scale = _standardiser(X)
        precision = resolve_precision(cfg.precision, resolve_device(cfg.device))
        xt = _standardised_tensor(X, mean, scale, _torch_dtype(precision))
        del X  # the hold-out's copy (if any) is no longer needed
        yt = torch.from_numpy(y.astype(np.float32))
        wt = torch.from_numpy((_balanced_weights(y) * w).astype(np.float32))
        xv = _standardised_tensor(X_val, mean, scale, torch.float32)
        yv = torch.from_numpy(y_val.astype(np.float32))
        wv = torch.from_numpy(_balanced_weights(y_val).astype(np.float32))
        val_batches = [(xv[i:i + _PREDICT_BATCH], yv[i:i + _PREDICT_BATCH], wv[i:i + _PREDICT_BATCH])
                       for i in range(0, xv.shape[0], _PREDICT_BATCH)]
        n = xt.shape[0]
        history = []
        # fork_rng keeps the caller's global torch RNG untouched; init and dropout draw from it here.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.random_state)
            trainer = Trainer(cfg, xt.shape[1], n)
            model = trainer.model
            if trainer.device != "cpu":  # the whole training set moves once, not a batch at a time
                xt, yt, wt = xt.to(trainer.device), yt.to(trainer.device), wt.to(trainer.device)
            order_gen = torch.Generator().manual_seed(cfg.random_state)
            stopper = EarlyStopping(cfg.patience)
            for epoch in range(trainer.epochs):
                model.train()
                perm = torch.randperm(n, generator=order_gen).to(xt.device)
                for start in range(0, n, trainer.batch_size):
                    idx = perm[start : start + trainer.batch_size]
                    trainer.step(xt[idx], yt[idx], wt[idx])
                val_loss = trainer.val_loss(val_batches)
                history.append(val_loss)
                if stopper.update(model, val_loss, epoch):
                    break
            trainer.finish(stopper.best_state)
            best_epoch = stopper.best_epoch
        self.precision_, self.device_ = trainer.precision, trainer.device
        self.batch_size_, self.planned_epochs_ = trainer.batch_size, trainer.epochs

        self.model_ = model
        self.mean_, self.scale_ = mean, scale
        self.classes_ = CLASSES.copy()
        self.n_features_in_ = int(xt.shape[1])
        self.n_epochs_ = len(history)
        self.best_epoch_ = best_epoch
        self.best_val_loss_ = float(stopper.best_loss)
        self.val_loss_curve_ = history
        return self

    def _p_fake(self, Xs: np.ndarray) -> np.ndarray:
        import torch

        out = np.empty(Xs.shape[0], dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, Xs.shape[0], _PREDICT_BATCH):
                chunk = torch.from_numpy(np.ascontiguousarray(Xs[start : start + _PREDICT_BATCH]))
                out[start : start + chunk.shape[0]] = torch.sigmoid(self.model_(chunk).squeeze(1)).double().numpy()
        return out

    def _tensors(self) -> dict[str, np.ndarray]:
        tensors = {"mean": self.mean_, "scale": self.scale_}
        for i, layer in enumerate(_linear_layers(self.model_)):
            tensors[f"layers.{i}.weight"] = layer.weight.detach().numpy()
            tensors[f"layers.{i}.bias"] = layer.bias.detach().numpy()
        return tensors

    @staticmethod
    def _expected_shapes(cfg: HeadConfig, n_features: int) -> dict[str, tuple[int, ...]]:
        dims = [n_features, *cfg.hidden, 1]
        shapes = {"mean": (n_features,), "scale": (n_features,)}
        for i in range(len(dims) - 1):
            shapes[f"layers.{i}.weight"] = (dims[i + 1], dims[i])
            shapes[f"layers.{i}.bias"] = (dims[i + 1],)
        return shapes

    def _set_state(self, tensors: dict[str, np.ndarray], cfg: HeadConfig) -> None:
        import torch

        n_features = tensors["mean"].shape[0]
        model = _build_mlp(n_features, cfg)
        with torch.no_grad():
            for i, layer in enumerate(_linear_layers(model)):
                layer.weight.copy_(torch.from_numpy(tensors[f"layers.{i}.weight"].astype(np.float32)))
                layer.bias.copy_(torch.from_numpy(tensors[f"layers.{i}.bias"].astype(np.float32)))
        model.eval()
        self.model_ = model
        self.mean_ = tensors["mean"].astype(np.float32)
        self.scale_ = tensors["scale"].astype(np.float32)
        self.classes_ = CLASSES.copy()
        self.n_features_in_ = int(n_features)


def _build_mlp(n_features: int, cfg: HeadConfig):
    import torch.nn as nn

    layers, width = [], n_features
    for h in cfg.hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU(), nn.Dropout(cfg.dropout)]
        width = int(h)
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def _linear_layers(model) -> list:
    import torch.nn as nn

    return [m for m in model if isinstance(m, nn.Linear)]


def _torch_dtype(precision: str):
    import torch

    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def _standardised_tensor(X: np.ndarray, mean: np.ndarray, scale: np.ndarray, dtype):
    """(X - mean) / scale as a torch tensor of ``dtype``, computed in slices so no float32 copy of all of X
    is made when ``dtype`` is narrower."""
    import torch

    out = torch.empty((X.shape[0], X.shape[1]), dtype=dtype)
    for start in range(0, X.shape[0], _PREDICT_BATCH * 4):
        sl = slice(start, start + _PREDICT_BATCH * 4)
        out[sl] = torch.from_numpy((X[sl] - mean) / scale)
    return out


class LogisticHead(_Head):
    """scikit-learn ``LogisticRegression(class_weight='balanced')`` on standardised inputs.

    Standardisation uses the training rows only. X_val/y_val are accepted for a uniform API and
    not used (there is no early stopping). ``predict_proba`` is computed in numpy from ``coef_`` and
    ``intercept_`` (the same formula scikit-learn uses for two classes), so a loaded head needs no
    pickled estimator.
    """

    kind = "logistic"

    def fit(self, X, y, X_val=None, y_val=None, sample_weight=None) -> "LogisticHead":
        """X: (n, n_features) float; y: (n,) 0/1; sample_weight: optional (n,)."""
        from sklearn.linear_model import LogisticRegression

        cfg = self._cfg()
        X = _check_X(X)
        y = _check_y(y, X.shape[0])
        w = _check_weights(sample_weight, X.shape[0])
        mean, scale = _standardiser(X)
        model = LogisticRegression(C=cfg.C, class_weight="balanced", max_iter=2000, random_state=cfg.random_state)
        model.fit((X - mean) / scale, y, sample_weight=w)
        self.mean_, self.scale_ = mean, scale
        self.coef_ = model.coef_.astype(np.float64)  # (1, n_features)
        self.intercept_ = model.intercept_.astype(np.float64)  # (1,)
        self.classes_ = CLASSES.copy()
        self.n_features_in_ = int(X.shape[1])
        self.n_iter_ = int(np.max(model.n_iter_))
        return self

    def _p_fake(self, Xs: np.ndarray) -> np.ndarray:
        z = Xs.astype(np.float64) @ self.coef_[0] + self.intercept_[0]
        # Numerically stable sigmoid.
        out = np.empty_like(z)
        pos = z >= 0
        out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
        ez = np.exp(z[~pos])
        out[~pos] = ez / (1.0 + ez)
        return out

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "scale": self.scale_, "coef": self.coef_, "intercept": self.intercept_}

    @staticmethod
    def _expected_shapes(cfg: HeadConfig, n_features: int) -> dict[str, tuple[int, ...]]:
        return {"mean": (n_features,), "scale": (n_features,), "coef": (1, n_features), "intercept": (1,)}

    def _set_state(self, tensors: dict[str, np.ndarray], cfg: HeadConfig) -> None:
        self.mean_ = tensors["mean"].astype(np.float32)
        self.scale_ = tensors["scale"].astype(np.float32)
        self.coef_ = tensors["coef"].astype(np.float64)
        self.intercept_ = tensors["intercept"].astype(np.float64)
        self.classes_ = CLASSES.copy()
        self.n_features_in_ = int(self.mean_.shape[0])


HEADS: dict[str, type[_Head]] = {"mlp": MLPHead, "logistic": LogisticHead}


def make_head(config: HeadConfig):
    """An unfitted head of ``config.kind``."""
    if config.kind not in HEADS:
        raise InputError(f"unknown head {config.kind!r}. Available: {', '.join(HEADS)}")
    return HEADS[config.kind](config)


_RESERVED = ("schema_version", "package_version", "kind", "config", "feature_size", "classes", "tensors",
             "weights_sha256")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def save_head(head, out_dir, meta: dict, *, overwrite: bool = False) -> None:
    """Write ``out_dir/head.safetensors`` and ``out_dir/head.json``.

    head.json holds schema_version, package_version, kind, config, feature_size, classes, the shape
    and dtype of every tensor, the sha256 of the weights file (``weights_sha256``), and the keys of
    ``meta`` as given, at top level (meta may not use those reserved names). Each file is written
    under a temporary name and moved into place with ``os.replace``; the JSON goes last. The two
    files are one unit: :func:`load_head` refuses weights whose checksum is not the one head.json
    records, so a save killed between them leaves a head that is refused (with the command that
    replaces it), never new weights used with the old threshold and fingerprint.

    An existing head in ``out_dir`` is refused (HeadError) unless ``overwrite``.
    """
    import item

    if not isinstance(head, _Head):
        raise InputError(f"cannot save a {type(head).__name__}: expected one of {', '.join(HEADS)}")
    head._check_fitted()
    meta = dict(meta or {})
    clash = sorted(set(meta) & set(_RESERVED))
    if clash:
        raise InputError(f"meta may not use the reserved keys {', '.join(clash)}")
    cfg = head._cfg()
    tensors = {k: np.ascontiguousarray(v) for k, v in head._tensors().items()}
    info = {
        "schema_version": SCHEMA_VERSION,
        "package_version": item.__version__,
        "kind": head.kind,
        "config": dataclasses.asdict(cfg),
        "feature_size": int(head.n_features_in_),
        "classes": [int(c) for c in head.classes_],
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()},
        **meta,
    }
    try:
        text = json.dumps(info, indent=2, default=_json_default, allow_nan=True)
    except TypeError as err:
        raise InputError(f"head metadata is not JSON serialisable: {err}") from None
    import hashlib

    from safetensors.numpy import save

    from item.faults import fault
    from item.store.files import atomic_write_bytes

    out_dir = Path(out_dir)
    if not overwrite and any((out_dir / f).exists() for f in (WEIGHTS_FILE, CONFIG_FILE)):
        raise HeadError(f"{out_dir}: a head is saved there already; choose another folder or pass overwrite=True "
                        "to replace it")
    # One metadata key only: safetensors writes its metadata map in hash order, so with two keys
    # the same head gave different bytes from run to run. The schema version lives in head.json.
    weights = save(tensors, metadata={"format": "np"})
    info["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    text = json.dumps(info, indent=2, default=_json_default, allow_nan=True)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_dir / WEIGHTS_FILE, weights)
        fault("head-weights-written")
        atomic_write_bytes(out_dir / CONFIG_FILE, (text + "\n").encode("utf-8"))
    except OSError as exc:
        raise HeadError(f"{out_dir}: cannot write the head ({exc.strerror or exc}); nothing usable was "
                        "written there") from None


def load_head(path) -> tuple:
    """Read a head saved by ``save_head``. path: the head directory (or either file in it).

    Returns (fitted head, the head.json dict). Refuses (HeadError) missing or unreadable files, an
    unknown kind, and tensors whose names or shapes do not match head.json; refuses a newer
    schema_version with SchemaError. Reads safetensors and JSON only; never unpickles.
    """
    import hashlib

    from safetensors.numpy import load as load_bytes

    path = Path(path)
    head_dir = path.parent if path.name in (WEIGHTS_FILE, CONFIG_FILE) and not path.is_dir() else path
    config_path, weights_path = head_dir / CONFIG_FILE, head_dir / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if not p.is_file():
            raise HeadError(f"not a saved head: {p} is missing")
    try:
        info = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HeadError(f"cannot read {config_path}: {err}") from None
    if not isinstance(info, dict):
        raise HeadError(f"{config_path} is not a JSON object")
    version = info.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise HeadError(f"{config_path} has no valid schema_version")
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{config_path} was written by a newer ITEM (head schema {version}; this version reads up to "
            f"{SCHEMA_VERSION}): upgrade ITEM (pip install -U item-detect)"
        )
    kind = info.get("kind")
    if kind not in HEADS:
        raise HeadError(f"{config_path}: unknown head kind {kind!r}. Available: {', '.join(HEADS)}")
    raw_cfg = info.get("config")
    try:
        raw_cfg = dict(raw_cfg)
        raw_cfg["hidden"] = tuple(int(h) for h in raw_cfg.get("hidden", ()))
        cfg = _validate_config(HeadConfig(**raw_cfg), kind)
        n_features = int(info["feature_size"])
        listed = {k: tuple(int(s) for s in v["shape"]) for k, v in dict(info["tensors"]).items()}
    except (TypeError, ValueError, KeyError, InputError) as err:
        raise HeadError(f"{config_path} is malformed: {err}") from None
    if "threshold" in info:
        t = info["threshold"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 <= t <= 1.0:
            raise HeadError(f"{config_path}: threshold {t!r} is not a number between 0 and 1")
    expected = HEADS[kind]._expected_shapes(cfg, n_features)
    if listed != expected:
        raise HeadError(f"{config_path}: its tensor list does not fit its own config and feature_size {n_features}")
    try:
        raw = weights_path.read_bytes()
    except OSError as err:
        raise HeadError(f"cannot read {weights_path}: {err.strerror or err}") from None
    recorded = info.get("weights_sha256")
    if recorded is not None and hashlib.sha256(raw).hexdigest() != recorded:
        store = info.get("store") or "STORE"
        raise HeadError(f"{head_dir}: head.safetensors is not the file head.json describes (a save interrupted "
                        f"between its two files, or files mixed from two heads); it is not used. Train it again: "
                        f"`item train {store} --out {head_dir}`")
    try:
        tensors = load_bytes(raw)
    except Exception as err:  # safetensors raises its own SafetensorError for a corrupt header
        raise HeadError(f"cannot read {weights_path}: {err}") from None
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise HeadError(f"{weights_path}: tensors missing {missing or '[]'}, unexpected {extra or '[]'}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise HeadError(
                f"{weights_path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, head.json says {shape}"
            )
        if not np.issubdtype(tensors[name].dtype, np.floating) or not np.isfinite(tensors[name]).all():
            raise HeadError(f"{weights_path}: tensor {name!r} is not finite floating point")
    head = HEADS[kind](cfg)
    head._set_state(tensors, cfg)
    return head, info
