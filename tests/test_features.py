"""Frozen encoders run once (issue 36): a linear probe's head trained on the features of its
frozen encoder, computed once, equals the same row trained on images: without augmentation, and
with it (the features of the 8 dihedral views, the view each step's augmentation draws). A
features store of another store, encoder or weights is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import backbone_cfg, job_spec
from safetensors.torch import load_file

from geopeft.data.dataset import open_store, store_info
from geopeft.models.build import build_model
from geopeft.models.runtime import seed_everything
from geopeft.tracking import init_experiment
from geopeft.train.features import FeaturesError, pooled
from geopeft.train.feed import dihedral
from geopeft.train.run import make_features, train_row


def _spec(augment: bool, seed: int = 0, method: str = "linear"):
    return job_spec({"backbone": backbone_cfg(),
                     "row": {"method": method, "name": f"lp-{augment}-{seed}", "seed": seed,
                             "train": {"epochs": 3, "batch_size": 16, "lr": 0.01,
                                       "augment": augment, "device": "cpu",
                                       "checkpoint_every": 0}}})


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("features-exp")
    exp = root / "exp.json"
    init_experiment(f"sqlite:///{root / 'mlflow.db'}", "features", root / "art", exp)
    return exp


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_a_probe_on_features_trains_as_on_images(rgb_store, experiment, tmp_path, augment):
    """Same head weights (within float32 reordering: the encoder's matrix products batch the
    samples otherwise), the same validation history, the same test split scores; the record
    says which features it read."""
    spec = _spec(augment)
    images = train_row(spec, rgb_store, None, experiment, tmp_path / "images")
    feats = tmp_path / "f.zarr"
    attrs = make_features(spec, rgb_store, feats)
    assert attrs["views"] == (8 if augment else 1) and attrs["samples"] == 100
    on_features = train_row(spec, rgb_store, None, experiment, tmp_path / "features",
                            features=feats)
    a = load_file(str(tmp_path / "images" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "features" / "trainable.safetensors"))
    # a random encoder is saved with its run (nothing rebuilds it): the same, untouched
    assert a.keys() == b.keys() and {"backbone.head.weight", "backbone.head.bias"} <= a.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
    for ha, hb in zip(images["history"], on_features["history"], strict=True):
        assert ha["val_score"] == pytest.approx(hb["val_score"], abs=1e-6)
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-4)
    assert on_features["model"]["features"]["key"] == spec.features_key()
    assert "features" not in images["model"]


def test_features_are_the_encoders_pooled_output_of_each_view(rgb_store, tmp_path):
    spec = _spec(True)
    feats = tmp_path / "f.zarr"
    make_features(spec, rgb_store, feats)
    info = store_info(rgb_store)
    seed_everything(0, 1)
    model, _ = build_model(spec, info)
    model.eval()
    ds = open_store(rgb_store)
    x = torch.from_numpy(ds["image"].values[:12]).float()
    train = ds["split"].values[:12] == "train"
    assert train.any() and not train.all()
    stored = zarr.open_group(str(feats), mode="r", zarr_format=3)["features"][:12]
    with torch.no_grad():
        for k in range(8):
            want = pooled(model, dihedral(x, k)).numpy()
            # every sample as it is; the other views of the train samples only (only training
            # augments), NaN for the others: never read
            got = stored[:, k] if k == 0 else stored[train, k]
            assert np.allclose(got, want if k == 0 else want[train], atol=1e-5), k
            assert k == 0 or np.isnan(stored[~train, k]).all()


def test_features_of_another_store_encoder_or_row_are_refused(rgb_store, ms_store, experiment,
                                                              tmp_path):
    spec = _spec(False)
    feats = tmp_path / "f.zarr"
    make_features(spec, rgb_store, feats)
    other_seed = _spec(False, seed=1)  # a random encoder is its seed's
    with pytest.raises(FeaturesError, match=r"f.zarr: features of key '[0-9a-f]{16}', the run's "
                                            r"is '[0-9a-f]{16}'; remake them"):
        train_row(other_seed, rgb_store, None, experiment, tmp_path / "o1", features=feats)
    augmented = _spec(True)
    with pytest.raises(FeaturesError, match="features of key"):
        train_row(augmented, rgb_store, None, experiment, tmp_path / "o2", features=feats)
    with pytest.raises(FeaturesError, match=r"cannot train on features: strategy full trains "
                                            r"the encoder"):
        train_row(_spec(False, method="full"), rgb_store, None, experiment, tmp_path / "o3",
                  features=feats)
    # the same row's features, made from another store: refused by its fingerprint
    moved = json.loads(json.dumps(zarr.open_group(str(feats), mode="r").attrs.asdict()))
    g = zarr.open_group(str(feats), mode="r+")
    g.attrs["store_fingerprint"] = "0" * 16
    with pytest.raises(FeaturesError, match=r"features of store_fingerprint '0{16}', the run's "
                                            rf"is '{moved['store_fingerprint']}'"):
        train_row(spec, rgb_store, None, experiment, tmp_path / "o4", features=feats)
    assert not (tmp_path / "o4").exists() and not Path(tmp_path / "o1").exists()


PROBE = {"k": 5, "temperature": 0.07, "l2": 1e-3, "max_iter": 5000}  # to convergence


def _probe_spec(method: str):
    return job_spec({"backbone": backbone_cfg(),
                     "row": {"method": method, "name": method, "probe": dict(PROBE),
                             "train": {"augment": True, "device": "cpu", "checkpoint_every": 0}}})


def _val_features(feats: Path, store: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                     np.ndarray]:
    ds = open_store(store)
    f = zarr.open_group(str(feats), mode="r", zarr_format=3)["features"][:, 0]
    split = ds["split"].values
    y = ds["label"].values.astype(int)
    return f[split == "train"], y[split == "train"], f[split == "val"], y[split == "val"]


def test_knn_probe_is_dinos_weighted_vote_and_saves_its_bank(rgb_store, experiment, tmp_path):
    """The kNN probe's validation accuracy is that of DINO's ``knn_classifier`` (written out
    here in numpy: cosine top-k, votes exp(sim / T)) on the same features; its run reloads with
    its train features and gives the same predictions; it reads one view even when the row
    augments."""
    from geopeft.models.saved import load_model

    spec = _probe_spec("knn")
    assert spec.features_request()["views"] == 1
    feats = tmp_path / "f.zarr"
    make_features(spec, rgb_store, feats)
    rec = train_row(spec, rgb_store, None, experiment, tmp_path / "knn", features=feats)
    assert rec["trainable_params"] == 0 and len(rec["history"]) == 1
    xt, yt, xv, yv = _val_features(feats, rgb_store)
    nt = xt / np.linalg.norm(xt, axis=1, keepdims=True)
    nv = xv / np.linalg.norm(xv, axis=1, keepdims=True)
    sim = nv @ nt.T
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :PROBE["k"]]
    votes = np.zeros((len(xv), 10))
    for i in range(len(xv)):
        for j in idx[i]:
            votes[i, yt[j]] += np.exp(sim[i, j] / PROBE["temperature"])
    want = float((votes.argmax(1) == yv).mean())
    assert rec["history"][0]["val_score"] == pytest.approx(want, abs=1e-9)
    model = load_model(tmp_path / "knn")
    head = model.backbone.get_classifier()
    assert head.bank.shape == (len(xt), xt.shape[1])
    with torch.no_grad():
        got = head(torch.from_numpy(xv)).numpy()
    assert (got.argmax(1) == votes.argmax(1)).all()
    probs = np.exp(got)
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert np.allclose(probs, votes / votes.sum(1, keepdims=True), atol=1e-4)


def test_logistic_probe_is_scikit_learns_logistic_regression(rgb_store, experiment, tmp_path):
    """The same objective as scikit-learn's ``LogisticRegression(C=1 / (l2 n))`` (multinomial,
    bias unpenalised), fit to convergence: the same probabilities on the val features."""
    from sklearn.linear_model import LogisticRegression

    spec = _probe_spec("logistic")
    feats = tmp_path / "f.zarr"
    make_features(spec, rgb_store, feats)
    rec = train_row(spec, rgb_store, None, experiment, tmp_path / "lr", features=feats)
    xt, yt, xv, yv = _val_features(feats, rgb_store)
    ref = LogisticRegression(C=1 / (PROBE["l2"] * len(xt)), max_iter=5000, tol=1e-10)
    ref.fit(xt.astype(np.float64), yt)
    from geopeft.models.saved import load_model

    head = load_model(tmp_path / "lr").backbone.get_classifier()
    with torch.no_grad():
        p = torch.softmax(head(torch.from_numpy(xv)), 1).numpy()
    want = np.zeros_like(p)
    want[:, ref.classes_] = ref.predict_proba(xv.astype(np.float64))
    assert np.abs(p - want).max() < 2e-3, np.abs(p - want).max()
    assert rec["history"][0]["val_score"] == pytest.approx(float((p.argmax(1) == yv).mean()))


def test_a_study_shares_one_features_job_per_encoder_and_views(tmp_path):
    """The default study with kNN and logistic probes added: the linear rows (which augment)
    share one job of 8 views, both probes (the samples as they are) one of 1 view, whatever the
    seeds and fractions; a probe that cannot read features is refused at validation."""
    import yaml

    from geopeft import config as gcfg
    from geopeft.plan.jobs import rule_jobs
    from geopeft.spec import ConfigError

    root = Path(__file__).resolve().parents[1]
    doc = yaml.safe_load((root / "config" / "config.yaml").read_text())
    doc["strategies"].update(knn={"strategy": "knn"}, logistic={"strategy": "logistic"})
    doc["grid"]["strategy"] = ["full", "linear", "knn", "logistic"]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = gcfg.resolve([path])
    jobs = rule_jobs(cfg)
    assert jobs["features"] == 2 and jobs["train"] == 16
    # their disk, said before anything runs (geopeft plan, validate --resolved)
    from geopeft.plan.jobs import features_lines

    lines = features_lines(cfg)
    assert lines[0] == "Features jobs (frozen encoders run once; train.features): 2"
    mb = {8: 1000 * 8 * 96 * 4 / 2**20, 1: 1000 * 96 * 4 / 2**20}
    for views, rows in ((8, 4), (1, 8)):
        assert any(f"(eurosat_rgb, read by {rows} row(s)): {mb[views]:,.1f} MB on disk (1,000 "
                   f"samples x {views} view(s) x 96 float32)" in line for line in lines), lines
    doc["strategies"]["knn"]["features"] = False
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"strategies.knn.strategy: knn fits its head on the "
                                          r"encoder's features, which row knn-f0.1-s0 cannot "
                                          r"use: train.features: false"):
        gcfg.resolve([path])


@pytest.mark.parametrize("method", ["knn", "logistic"])
def test_probes_take_multi_label_targets(tmp_path, experiment, method):
    """On a multi-label store the probes score each class on its own: kNN each class's weighted
    share of the neighbours carrying it (DINO's vote, per class), the logistic probe one binary
    regression per class; mAP on validation."""
    from geopeft.data.prepare import prepare
    from geopeft.data.synthetic_bigearthnet import generate_bigearthnet
    from geopeft.models.saved import load_model

    generate_bigearthnet(tmp_path / "raw", n_patches=24, seed=3, cloudy_share=0.0)
    store = tmp_path / "s.zarr"
    prepare("bigearthnet_s2", tmp_path / "raw", ["B04", "B03", "B02"], store,
            options={"size": 32, "resampling": "bilinear"})
    spec = job_spec({"backbone": backbone_cfg(),
                     "data": {"dataset": "bigearthnet_s2", "bands": ["B04", "B03", "B02"]},
                     "row": {"method": method, "name": method, "dataset": "bigearthnet_s2",
                             "probe": dict(PROBE),
                             "train": {"augment": False, "device": "cpu",
                                       "checkpoint_every": 0}}})
    feats = tmp_path / "f.zarr"
    make_features(spec, store, feats)
    rec = train_row(spec, store, None, experiment, tmp_path / "m", features=feats)
    h = rec["history"][0]
    assert {"val_map_micro", "val_score"} <= set(h) and 0 <= h["val_score"] <= 1
    ds = open_store(store)
    f = zarr.open_group(str(feats), mode="r", zarr_format=3)["features"][:, 0]
    split, y = ds["split"].values, ds["label"].values.astype(np.float64)
    head = load_model(tmp_path / "m").backbone.get_classifier()
    with torch.no_grad():
        p = torch.sigmoid(head(torch.from_numpy(f[split == "val"]))).numpy()
    assert p.shape == (int((split == "val").sum()), 19)
    if method == "knn":  # each class's weighted share of the k neighbours carrying it
        xt, yt = f[split == "train"], y[split == "train"]
        nt = xt / np.linalg.norm(xt, axis=1, keepdims=True)
        xv = f[split == "val"]
        sim = (xv / np.linalg.norm(xv, axis=1, keepdims=True)) @ nt.T
        idx = np.argsort(-sim, axis=1, kind="stable")[:, :PROBE["k"]]
        w = np.exp(np.take_along_axis(sim, idx, 1) / PROBE["temperature"])
        want = (yt[idx] * w[..., None]).sum(1) / w.sum(1, keepdims=True)
        assert np.allclose(p, np.clip(want, 1e-6, 1 - 1e-6), atol=1e-4)
