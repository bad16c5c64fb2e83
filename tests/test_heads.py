"""Heads: learning a planted signal, not learning noise, determinism, safe save/load."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from sklearn.metrics import roc_auc_score

from item.classify import heads
from item.classify.heads import HEADS, HeadConfig, LogisticHead, MLPHead, load_head, make_head, save_head
from item.errors import HeadError, IncompatibleError, InputError, ItemError, SchemaError

N_FEATURES = 24
FAST = dict(hidden=(32,), max_epochs=60, batch_size=128, patience=5)


def _config(kind, **kw):
    return HeadConfig(kind=kind, **(FAST if kind == "mlp" else {}), **kw)


def _planted(n, seed, signal=True):
    """Rows with a planted signal: fakes are shifted along a few directions (plus a non-linear cue)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(np.int64)  # imbalanced on purpose
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    X[:, 5] *= 40.0  # a badly scaled column: standardisation must cope
    if signal:
        X[:, :3] += 1.6 * y[:, None]
        X[:, 3] += 0.8 * y * np.sign(X[:, 4])
    return X, y


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matrices: threads only add contention (other test processes share the 2 cores).
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    X, y = _planted(3000, 0)
    return X[:2000], y[:2000], X[2000:], y[2000:]


@pytest.fixture(scope="module")
def fitted(data):
    X, y, _, _ = data
    return {kind: make_head(_config(kind)).fit(X, y) for kind in HEADS}


@pytest.mark.parametrize("kind", ["mlp", "logistic"])
def test_learns_planted_signal(fitted, data, kind):
    _, _, Xt, yt = data
    head = fitted[kind]
    proba = head.predict_proba(Xt)
    assert proba.shape == (len(Xt), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert head.classes_.tolist() == [0, 1]
    assert roc_auc_score(yt, proba[:, 1]) > 0.95
    assert set(np.unique(head.predict(Xt))) <= {0, 1}
    assert head.n_features_in_ == N_FEATURES


@pytest.mark.parametrize("kind", ["mlp", "logistic"])
def test_noise_is_not_learned(kind):
    X, y = _planted(3000, 1, signal=False)
    head = make_head(_config(kind)).fit(X[:2000], y[:2000])
    assert roc_auc_score(y[2000:], head.predict_proba(X[2000:])[:, 1]) < 0.65


@pytest.mark.parametrize("kind", ["mlp", "logistic"])
def test_same_seed_identical_predictions(data, fitted, kind):
    X, y, Xt, _ = data
    again = make_head(_config(kind)).fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(Xt), fitted[kind].predict_proba(Xt))
    if kind == "mlp":
        other = make_head(_config(kind, random_state=1)).fit(X, y)
        assert not np.array_equal(other.predict_proba(Xt), fitted[kind].predict_proba(Xt))


def test_mlp_contract_and_validation_rows(data):
    X, y, Xt, yt = data
    head = MLPHead(_config("mlp"))
    assert not [k for k in vars(head) if k.endswith("_")]  # nothing learned before fit
    with pytest.raises(HeadError, match="not fitted"):
        head.predict_proba(Xt)
    assert head.fit(X, y, X_val=Xt, y_val=yt) is head
    assert 1 <= head.best_epoch_ <= head.n_epochs_ <= FAST["max_epochs"]
    assert len(head.val_loss_curve_) == head.n_epochs_
    assert head.best_val_loss_ == min(head.val_loss_curve_)
    # Standardisation comes from the training rows only.
    np.testing.assert_allclose(head.mean_, X.mean(axis=0), rtol=1e-4, atol=1e-4)
    with pytest.raises(IncompatibleError):
        head.predict_proba(Xt[:, :-1])
    with pytest.raises(InputError):
        MLPHead(_config("mlp")).fit(X, np.zeros(len(X)))
    with pytest.raises(InputError):
        MLPHead(_config("mlp")).fit(X, y, X_val=Xt)
    with pytest.raises(InputError):
        MLPHead(_config("logistic")).fit(X, y)


def test_sample_weight_changes_fit(data):
    X, y, Xt, _ = data
    w = np.where(np.arange(len(y)) % 2 == 0, 1.0, 3.0)
    a = LogisticHead(_config("logistic")).fit(X, y).predict_proba(Xt)
    b = LogisticHead(_config("logistic")).fit(X, y, sample_weight=w).predict_proba(Xt)
    assert not np.allclose(a, b)


def test_unknown_kind_lists_valid():
    with pytest.raises(InputError, match="mlp") as err:
        make_head(HeadConfig(kind="forest"))
    assert "logistic" in str(err.value)


@pytest.mark.parametrize("kind", ["mlp", "logistic"])
def test_save_load_round_trip(tmp_path, fitted, data, kind):
    _, _, Xt, _ = data
    meta = {"recipe": "hierarchical", "clip_model": "ViT-L-14", "random_weights": True, "n_train": np.int64(2000)}
    save_head(fitted[kind], tmp_path / "head", meta)
    files = sorted(p.name for p in (tmp_path / "head").iterdir())
    assert files == ["head.json", "head.safetensors"]  # no pickle, no leftover temp files
    raw = (tmp_path / "head" / "head.safetensors").read_bytes()
    assert b"\x80\x04\x95" not in raw[:64] and not raw.startswith(b"PK")  # not a pickle / torch zip
    loaded, info = load_head(tmp_path / "head")
    assert type(loaded) is type(fitted[kind])
    np.testing.assert_array_equal(loaded.predict_proba(Xt), fitted[kind].predict_proba(Xt))
    assert info["recipe"] == "hierarchical" and info["random_weights"] is True and info["n_train"] == 2000
    assert info["kind"] == kind and info["feature_size"] == N_FEATURES and info["schema_version"] == 1
    assert info["config"]["kind"] == kind
    # Loading by file name works too.
    again, _ = load_head(tmp_path / "head" / "head.json")
    np.testing.assert_array_equal(again.predict_proba(Xt[:5]), loaded.predict_proba(Xt[:5]))


def test_load_never_unpickles(tmp_path, fitted, monkeypatch):
    save_head(fitted["mlp"], tmp_path, {})
    import pickle

    import torch

    def boom(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)
    head, _ = load_head(tmp_path)
    assert head.predict_proba(np.zeros((1, N_FEATURES))).shape == (1, 2)


def test_tampered_shapes_refused(tmp_path, fitted):
    save_head(fitted["mlp"], tmp_path, {})
    path = tmp_path / "head.safetensors"
    tensors = load_file(str(path))
    tensors["layers.0.weight"] = np.zeros((7, N_FEATURES), np.float32)
    save_file(tensors, str(path))
    with pytest.raises(HeadError, match="not the file head.json describes"):  # its checksum first (issue 21)
        load_head(tmp_path)
    cfg = json.loads((tmp_path / "head.json").read_text())
    del cfg["weights_sha256"]  # a head saved before the checksum: the shapes are still checked
    (tmp_path / "head.json").write_text(json.dumps(cfg))
    with pytest.raises(HeadError, match="layers.0.weight"):
        load_head(tmp_path)
    del tensors["layers.0.weight"]
    save_file(tensors, str(path))
    with pytest.raises(HeadError, match="missing"):
        load_head(tmp_path)


def test_tampered_json_refused(tmp_path, fitted):
    save_head(fitted["logistic"], tmp_path, {})
    cfg = tmp_path / "head.json"
    original = json.loads(cfg.read_text())

    def write(**changes):
        cfg.write_text(json.dumps({**original, **changes}))

    write(feature_size=N_FEATURES + 1)
    with pytest.raises(HeadError):
        load_head(tmp_path)
    write(schema_version=99)
    with pytest.raises(SchemaError, match="upgrade ITEM"):
        load_head(tmp_path)
    write(kind="forest")
    with pytest.raises(HeadError, match="mlp"):
        load_head(tmp_path)
    cfg.write_text("{not json")
    with pytest.raises(HeadError):
        load_head(tmp_path)
    (tmp_path / "head.safetensors").write_bytes(b"garbage")
    write()
    with pytest.raises(HeadError):
        load_head(tmp_path)


def test_missing_files_refused(tmp_path, fitted):
    with pytest.raises(HeadError, match="missing"):
        load_head(tmp_path / "nowhere")
    save_head(fitted["logistic"], tmp_path, {})
    (tmp_path / "head.safetensors").unlink()
    with pytest.raises(HeadError, match="head.safetensors"):
        load_head(tmp_path)


def test_save_refuses_reserved_meta_and_unfitted(tmp_path, fitted):
    with pytest.raises(InputError, match="schema_version"):
        save_head(fitted["mlp"], tmp_path, {"schema_version": 5})
    with pytest.raises(HeadError):
        save_head(MLPHead(), tmp_path, {})
    assert not list(Path(tmp_path).iterdir())
    assert issubclass(SchemaError, ItemError) and heads.SCHEMA_VERSION == 1


# issue 24: the training plan (auto batch and epochs, warm-up + cosine schedule), bfloat16, devices.


def test_auto_plan_scales_with_rows():
    from item.classify.heads import auto_plan

    cfg = HeadConfig()
    assert cfg.batch_size == 0 and cfg.max_epochs == 0  # auto by default
    small, large, huge = auto_plan(cfg, 600), auto_plan(cfg, 100_000), auto_plan(cfg, 1_000_000)
    assert small[0] < large[0] == huge[0] == 256  # small stores keep many steps an epoch
    assert 600 // small[0] >= 16
    assert small[1] > large[1] > huge[1] >= 4  # more rows, fewer epochs
    assert auto_plan(HeadConfig(batch_size=77, max_epochs=9), 10**6) == (77, 9)  # explicit values are kept


def test_default_mlp_learns_small_data(data):
    """The defaults (auto plan, cosine, auto precision) must still train a few thousand rows well."""
    X, y, Xt, yt = data
    head = MLPHead(HeadConfig()).fit(X, y)
    assert roc_auc_score(yt, head.predict_proba(Xt)[:, 1]) > 0.95
    assert head.precision_ in ("float32", "bfloat16") and head.device_ in ("cpu", "cuda")
    assert head.n_epochs_ <= head.planned_epochs_


@pytest.mark.parametrize("precision,schedule", [("bfloat16", "cosine"), ("float32", "constant")])
def test_precisions_and_schedules_learn(data, precision, schedule):
    X, y, Xt, yt = data
    head = MLPHead(_config("mlp", precision=precision, schedule=schedule, device="cpu")).fit(X, y)
    assert head.precision_ == precision
    assert roc_auc_score(yt, head.predict_proba(Xt)[:, 1]) > 0.95
    # the weights stay float32 whatever the training arithmetic
    assert all(t.dtype == np.float32 for t in head._tensors().values())


def test_cosine_schedule_warms_up_and_decays():
    from item.classify.heads import Trainer

    t = Trainer(HeadConfig(max_epochs=10, batch_size=10, device="cpu", precision="float32"), 4, 1000)
    lrs = [t.lr_at(s) for s in range(t.total_steps)]
    peak = int(np.argmax(lrs))
    assert 0 < peak < t.total_steps // 10 and max(lrs) == pytest.approx(t.cfg.lr)
    assert lrs[0] < lrs[peak] and lrs[-1] < 0.01 * lrs[peak]
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # decays monotonically after the warm-up
    const = Trainer(HeadConfig(schedule="constant", device="cpu"), 4, 1000)
    assert {const.lr_at(s) for s in (0, 5, 500)} == {const.cfg.lr}


@pytest.mark.parametrize("bad", [dict(schedule="step"), dict(precision="fp8"), dict(device="tpu"),
                                 dict(batch_size=-1), dict(max_epochs=-2)])
def test_bad_training_settings_refused(data, bad):
    X, y, _, _ = data
    with pytest.raises(InputError):
        MLPHead(HeadConfig(**bad)).fit(X, y)


def test_cuda_without_a_gpu_is_a_clear_error(data):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    X, y, _, _ = data
    with pytest.raises(HeadError, match="no GPU"):
        MLPHead(_config("mlp", device="cuda")).fit(X, y)
