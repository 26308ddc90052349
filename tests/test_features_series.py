"""Frozen encoders run once on time series (issue 36): a decoder-only UPerNet + L-TAE row trains
its decoder on the tapped levels of every date, computed once, and equals the same row trained
on images; a time-series row that augments, or whose features do not fit its job's memory,
trains on images and says why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from conftest import job_spec
from safetensors.torch import load_file

from geopeft.data.dataset import open_store, store_info
from geopeft.data.prepare import prepare
from geopeft.data.synthetic_pastis import generate_pastis
from geopeft.models.build import build_model
from geopeft.models.runtime import seed_everything
from geopeft.tracking import init_experiment
from geopeft.train.features import flat_levels
from geopeft.train.run import make_features, train_row

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
TEMPORAL = {"length": 6, "ladder": [15, 6, 1], "pad": "mask", "reference": "2018-09-01"}


def _spec(augment: bool = False, length: int = 6):
    return job_spec({
        "backbone": {"name": "embedded", "weights": "none",
                     "kwargs": {"img_size": 32, "patch_size": 8}},
        "data": {"dataset": "pastis", "bands": BANDS},
        "row": {"method": "linear", "name": f"dec-t{length}", "seed": 0, "dataset": "pastis",
                "segmentation": {"channels": 16, "ltae": {"d_model": 16, "heads": 4}},
                "sequence_length": length, "temporal": {**TEMPORAL, "length": length},
                "train": {"epochs": 2, "batch_size": 4, "lr": 0.01, "augment": augment,
                          "device": "cpu", "checkpoint_every": 0}}})


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A prepared PASTIS-like store (16 patches of 32 px, 38-61 dates), an MLflow experiment,
    and the features of the decoder-only row's encoder."""
    root = tmp_path_factory.mktemp("series-features")
    generate_pastis(root / "PASTIS", n_patches=16, size=32, seed=4)
    store = root / "p.zarr"
    prepare("pastis", root / "PASTIS", BANDS, store)
    exp = root / "exp.json"
    init_experiment(f"sqlite:///{root / 'mlflow.db'}", "series", root / "art", exp)
    feats = root / "f.zarr"
    attrs = make_features(_spec(), store, feats)
    return store, exp, feats, attrs


def test_a_decoder_on_features_trains_as_on_images(series, tmp_path):
    """The same decoder weights and batch-norm statistics (float32 reordering allowed: the
    encoder batches other frames together), the same history; the record names the
    features."""
    store, exp, feats, attrs = series
    spec = _spec()
    assert spec.features_reason() is None and attrs["views"] == 1 and attrs["key"] == \
        spec.features_key()
    images = train_row(spec, store, None, exp, tmp_path / "images")
    on_features = train_row(spec, store, None, exp, tmp_path / "features", features=feats)
    a = load_file(str(tmp_path / "images" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "features" / "trainable.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("upernet.") for k in a)
    assert any(k.endswith("running_mean") for k in a)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), k
    for ha, hb in zip(images["history"], on_features["history"], strict=True):
        assert ha["val_score"] == pytest.approx(hb["val_score"], abs=1e-6)
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-4)
    assert on_features["model"]["features"]["key"] == spec.features_key()
    assert "features" not in images["model"]


def test_series_features_are_every_dates_tapped_levels(series):
    """One chunk per series: every date's four levels, flattened; the store's padding dates
    (past each series's end) are 0, which the decoder masks as on images."""
    store, _, feats, attrs = series
    arr = zarr.open_group(str(feats), mode="r", zarr_format=3)["features"]
    ds = open_store(store)
    n, t = int(ds.sizes["sample"]), int(ds.sizes["time"])
    assert arr.shape == (n, 1, t, 4 * 96 * 4 * 4) and arr.chunks == (1, 1, t, arr.shape[-1])
    assert attrs["levels"] == [[96, 4, 4]] * 4
    seed_everything(0, 1)
    model, _ = build_model(_spec(), store_info(store))
    model.eval()
    i = 3
    n_dates = int(ds["n_dates"].values[i])
    raw = torch.from_numpy(ds["image"].values[i : i + 1]).float()
    with torch.no_grad():
        levels, pad = model.encode_series(raw)
    want = flat_levels(levels)[0].numpy()
    got = arr[i, 0]
    assert np.allclose(got, want, atol=1e-5)
    if n_dates < t:
        assert pad is not None and bool(pad[0, n_dates:].all())
        assert not got[n_dates:].any() and got[:n_dates].any(axis=1).all()


def test_series_rows_that_augment_or_do_not_fit_train_on_images(series, tmp_path, caplog):
    """A time-series row that augments reads no features (said by the row's reason); one whose
    features exceed half of its job's memory trains on images, logged and recorded."""
    store, exp, feats, _ = series
    assert "train.augment" in _spec(augment=True).features_reason()
    # every sequence length of the row's encoder reads the same features
    assert _spec(length=1).features_key() == _spec(length=6).features_key()
    caplog.set_level("WARNING")
    rec = train_row(_spec(), store, None, exp, tmp_path / "small", mem_mb=1, features=feats)
    assert "more than the job's" in rec["model"]["features"]["not_used"]
    assert any("trains on images" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "small" / "trainable.safetensors").is_file()


def test_the_embedded_series_study_shares_one_features_job_without_augmentation(tmp_path):
    """shaping_ft_embedded as shipped (its rows augment) has no features job; with its
    decoder-only rows not augmenting, its 12 decoder-only rows (2 fractions x 3 lengths x 2
    seeds) share one, whose disk ``plan`` says before anything runs."""
    from geopeft import config as gcfg
    from geopeft.plan.jobs import features_lines, rule_jobs

    root = Path(__file__).resolve().parents[1]
    study = root / "config" / "studies" / "shaping_ft_embedded.yaml"
    assert rule_jobs(gcfg.resolve([study])).get("features", 0) == 0
    doc = yaml.safe_load(study.read_text())
    doc["strategies"]["decoder_only"]["augment"] = False
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = gcfg.resolve([path])
    assert rule_jobs(cfg)["features"] == 1
    lines = features_lines(cfg)
    dim = 4 * 96 * 8 * 8  # four taps of the embedded ViT (width 96), 8 x 8 tokens per date
    gb = 200 * 61 * dim * 4 / 2**30
    assert lines[1].endswith(f"(pastis, read by 12 row(s)): up to {gb:,.1f} GB on disk (200 "
                             f"series x 1 view(s) x 61 dates x {dim} float32)"), lines
