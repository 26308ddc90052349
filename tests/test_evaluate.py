"""Evaluation and inference in-process: a saved model scored on the test split, image files
classified, and the shared inference path (batches, streamed segmentation confusion)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import backbone_cfg, full_spec

from geopeft.data.dataset import Split, load_split, store_info
from geopeft.evaluate.predict import Predictor, parse_dates
from geopeft.evaluate.run import evaluate
from geopeft.io import read_json
from geopeft.metrics.segmentation import pixel_confusion
from geopeft.models.classifier import build_classifier
from geopeft.models.inference import predict, predict_batches, segmentation_scores
from geopeft.models.saved import save_model
from geopeft.strategies import apply_strategy
from geopeft.tasks import confusion_csv, multilabel_confusion_csv, of_targets
from geopeft.train.losses import loss_fn
from geopeft.train.validation import dense_val_metrics, val_metrics, validate


@pytest.fixture(scope="module")
def saved(rgb_store, tmp_path_factory):
    """A linear-probe model of the RGB store, saved as the train rule saves it."""
    info = store_info(rgb_store)
    torch.manual_seed(0)
    m, minfo = build_classifier(backbone_cfg(), info, len(info.classes))
    m = apply_strategy(m, "linear")
    with torch.no_grad():  # a head that prefers a few classes, so predictions differ
        m.backbone.head.bias.copy_(torch.linspace(-1, 1, len(info.classes)))
    out = tmp_path_factory.mktemp("saved") / "model"
    spec = full_spec({"backbone": backbone_cfg(), "row": {"method": "linear", "name": "probe"},
                      "data": {"dataset": "eurosat_rgb"}})
    from dataclasses import asdict

    save_model(m, out, {"spec": spec, "model": minfo, "mlflow_run_id": None,
                        "store": {**asdict(info), "path": str(info.path)}})
    return out, m.eval(), info


def test_evaluate_writes_the_metrics_of_the_test_split(saved, rgb_store, tmp_path):
    model_dir, model, info = saved
    m = evaluate(model_dir, rgb_store, None, tmp_path / "metrics.json", tmp_path / "cm.csv")
    test = load_split(rgb_store, "test")
    pred = predict(model, test.x).argmax(1)
    assert m["task"] == "multiclass" and m["run"] == "probe" and m["test_samples"] == len(test)
    assert m["overall_accuracy"] == pytest.approx(float((pred == test.y).mean()))
    assert m["primary"] == m["overall_accuracy"]
    assert read_json(tmp_path / "metrics.json")["confusion_matrix"] == m["confusion_matrix"]
    rows = list(csv.reader((tmp_path / "cm.csv").open()))
    assert rows[0] == ["true\\pred", *info.classes]
    # rows are true classes: each row sums to that class's test count
    counts = np.bincount(test.y, minlength=len(info.classes))
    assert [sum(map(int, r[1:])) for r in rows[1:]] == counts.tolist()
    assert [int(rows[1 + c][1 + c]) for c in range(len(info.classes))] == [
        int(((pred == c) & (test.y == c)).sum()) for c in range(len(info.classes))]


def test_confusion_tables():
    assert confusion_csv([[2, 1], [0, 3]], ["a", "b"]) == "true\\pred,a,b\na,2,1\nb,0,3\n"
    y = np.array([[1, 0], [1, 1], [0, 0]])
    pred = np.array([[1, 1], [0, 1], [0, 0]])
    assert multilabel_confusion_csv(y, pred, ["a", "b"]) == (
        "class,tp,fp,fn,tn\na,1,0,1,1\nb,1,1,0,1\n")


def test_predict_files_classifies_the_world_images(saved, world):
    model_dir, model, info = saved
    files = sorted(Path(world["rgb"]).rglob("*.jpg"))[:5]
    out = Predictor(model_dir).predict_files(files)
    assert [r.file for r in out] == [str(f) for f in files]
    from geopeft.data.sources import get_source

    x = np.stack([get_source("eurosat_rgb").read_file(f).astype(np.float32) for f in files])
    logits = predict(model, x)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for r, p in zip(out, probs, strict=True):
        assert r.labels == [info.classes[int(p.argmax())]]
        assert r.top(1)[0][1] == pytest.approx(float(p.max()), abs=1e-5)
        assert len(r.top(2)) == 2 and r.top(2)[0][0] == r.labels[0]


def test_predict_files_names_a_bad_file(saved, tmp_path):
    from geopeft.data.sources import DataError

    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="x.jpg"):
        Predictor(saved[0]).predict_files([bad])


def test_dates_written_as_text():
    from geopeft.data.sources import DataError

    assert parse_dates("20190101, 20190105,", "s.npy") == [20190101, 20190105]
    with pytest.raises(DataError, match=r"s.npy: dates '2019-01-01' are not YYYYMMDD numbers"):
        parse_dates("2019-01-01", "s.npy")


class _Const(torch.nn.Module):
    """Segmentation logits that favour class ``(x + day) % k`` per pixel."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, days):
        cls = (x[:, 0, 0].long() + days[:, :1, None].long()) % self.k
        return torch.nn.functional.one_hot(cls, self.k).permute(0, 3, 1, 2).float() + self.w


def test_inference_batches_and_streamed_confusion_equal_the_whole():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, (7, 2, 1, 5, 5)).astype(np.float32)
    days = rng.integers(0, 3, (7, 2)).astype(np.int64)
    y = rng.integers(0, 5, (7, 5, 5)).astype(np.int64)  # 4 = void
    model = _Const(4)
    whole = predict(model, x, batch_size=100, dates=days)
    parts = list(predict_batches(model, x, batch_size=3, dates=days))
    assert [sl for _, sl in parts] == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert np.array_equal(np.concatenate([p for p, _ in parts]), whole)
    split = Split(x, y, days, 4)
    cm, loss = segmentation_scores(model, split, 3, torch.device("cpu"))
    assert np.array_equal(cm, pixel_confusion(y, whole.argmax(1), 4, 4))
    assert cm.sum() == int((y != 4).sum()) and loss == 0.0  # no loss asked for
    m = validate(model, split, 3, torch.device("cpu"), True)
    assert m["val_score"] == dense_val_metrics(of_targets(y), cm, 0.0)["val_score"] and "val_miou" not in m
    # the loss streamed batch by batch is the mean over every non-void pixel of the split
    whole_loss = float(loss_fn(torch.from_numpy(whole), torch.from_numpy(y), None, 4))
    assert m["val_loss"] == pytest.approx(whole_loss, rel=1e-6) and whole_loss > 0


def test_classification_validation_metrics():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]], dtype=np.float32)
    m = val_metrics(logits, np.array([0, 1, 1]))
    assert m["val_score"] == pytest.approx(2 / 3) and "val_acc" not in m
    ml = val_metrics(logits, np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32))
    assert ml["val_score"] == 1.0 and "val_map_macro" not in ml
