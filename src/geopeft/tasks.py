"""The learning tasks, one object each: what a model's outputs mean and how they are scored,
tabulated, predicted and described.

A dataset's source names its task (``Source.task``: ``multiclass``, ``multilabel`` or
``segmentation``; time series are a property of the source, not a task); evaluation, ``geopeft
predict``, the app, the report and the paper ask the :class:`Task` of :data:`TASKS`, never the
dataset's name. Adding a task is one :class:`Task` subclass registered here.
"""

from __future__ import annotations

import csv
import io
from typing import Any, ClassVar

import numpy as np

from geopeft.metrics.classification import classification_metrics
from geopeft.metrics.multilabel import multilabel_metrics, sigmoid
from geopeft.metrics.segmentation import segmentation_metrics


def confusion_csv(cm: list[list[int]], classes: list[str]) -> str:
    """A confusion matrix as CSV: a header of predicted classes, a row per true class."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["true\\pred", *classes])
    for name, row in zip(classes, cm, strict=True):
        w.writerow([name, *row])
    return buf.getvalue()


def multilabel_confusion_csv(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> str:
    """Per-class binary confusion (tp, fp, fn, tn) of a multi-label prediction.

    Args:
        y: multi-hot targets (N, C).
        pred: multi-hot predictions (N, C).
        classes: the class names.
    """
    y, pred = y.astype(bool), pred.astype(bool)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "tp", "fp", "fn", "tn"])
    for c, name in enumerate(classes):
        a, b = y[:, c], pred[:, c]
        w.writerow([name, int((a & b).sum()), int((~a & b).sum()), int((a & ~b).sum()),
                    int((~a & ~b).sum())])
    return buf.getvalue()


class Task:
    """One task. Subclasses set the class attributes and the scoring methods."""

    name: ClassVar[str]
    """The value of a source's ``task``."""
    primary_metric: ClassVar[str]
    """The key of the primary test metric in ``metrics.json`` (MLflow: ``test_<key>``)."""
    metric_words: ClassVar[str]
    """The primary metric as the report and the paper word it."""
    per_class: ClassVar[tuple[str, str]]
    """The per-class score the paper's per-class table shows: its column and its heading."""
    per_class_how: ClassVar[str] = "from the test confusion matrices summed over"
    """How the per-class table combines the seeds, in words (before "<n> seeds")."""
    support: ClassVar[str] = "samples"
    """What the per-class support counts."""
    dense: ClassVar[bool] = False
    """Whether the model predicts every pixel (a class map per sample)."""
    threshold: ClassVar[float | None] = None
    """The decision threshold of independent class scores (multi-label); None: the classes
    compete."""
    short: ClassVar[str]
    """The primary metric's short name (table headings, figure titles)."""
    noun: ClassVar[str]
    """The primary metric as a figure's title words it ("<noun> vs label fraction")."""
    metric_label: ClassVar[str]
    """The axis label of the primary test metric (in %)."""
    val_label: ClassVar[str]
    """The axis label of the validation score (``val_score`` of the per-epoch history, in %)."""
    secondary: ClassVar[tuple[tuple[str, str], ...]]
    """The secondary test metrics the study's table shows at the largest label fraction:
    (runs.csv column, LaTeX heading)."""
    run_columns: ClassVar[dict[str, str]]
    """The test metrics runs.csv keeps: column ``test_<key>`` <- ``metrics.json`` key."""
    series_figures: ClassVar[bool] = False
    """Whether a time-series study of this task is shown by label fraction x sequence length
    (its figures, and its table a row per strategy and sequence length)."""
    per_class_bars: ClassVar[str | None] = None
    """What the confusion figure draws instead of a confusion matrix (its test metrics hold
    none), in words; None: the test confusion matrices."""
    loss: ClassVar[str] = "cross_entropy"
    """The training loss (a key of :data:`geopeft.train.losses.LOSSES`)."""

    def fits(self, y: Any) -> bool:
        """Whether ``y`` (numpy or torch) has the form of this task's targets."""
        raise NotImplementedError

    def val_scores(self, y: np.ndarray | None, out: np.ndarray) -> dict[str, float]:
        """The validation score (``val_score``) and secondary validation metrics, from the
        targets ``y`` and logits ``out`` (dense tasks: ``y`` None and ``out`` the pixel
        confusion matrix)."""
        raise NotImplementedError

    def scores(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One sample's class scores from its logits (C,) or (C, H, W), and its class map
        (dense tasks)."""
        raise NotImplementedError

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Class probabilities of a batch of logits (N, C) or, dense tasks, (N, C, H, W), along
        the class axis (1): softmax where the classes exclude each other, sigmoid where they do
        not (whole-scene maps, :mod:`geopeft.evaluate.scene`)."""
        return softmax(logits, axis=1)

    def labels(self, ranked: list[tuple[str, float]]) -> list[str]:
        """The prediction from the classes ranked by score, highest first."""
        raise NotImplementedError

    def test_metrics(self, y: np.ndarray | None, out: np.ndarray, classes: list[str],
                     ) -> tuple[dict[str, Any], str, dict[str, float]]:
        """The test split's metrics (``metrics.json``), its confusion table (CSV) and what MLflow
        logs, from the targets ``y`` and the logits ``out`` (dense tasks: ``y`` None and ``out``
        the pixel confusion matrix, accumulated batch by batch)."""
        raise NotImplementedError

    def csv_header(self, top: str) -> list[str]:
        """The columns of ``geopeft predict``'s CSV (``top``: the top-k column's name)."""
        raise NotImplementedError

    def csv_row(self, pred: Any, k: int, map_file: str) -> list[str]:
        """One sample's row of ``geopeft predict``'s CSV (``map_file``: where its class map
        went, dense tasks)."""
        raise NotImplementedError

    def _metrics(self, m: dict[str, Any]) -> dict[str, Any]:
        m.update(task=self.name, primary_metric=self.primary_metric, primary=m[self.primary_metric])
        return m

    def __repr__(self) -> str:
        return f"<task {self.name}>"


def _floating(y: Any) -> bool:
    """Whether targets (numpy or torch) are floats."""
    floating = getattr(y, "is_floating_point", None)
    return bool(floating()) if callable(floating) else np.asarray(y).dtype.kind == "f"


def _shown(pred: Any, k: int) -> str:
    return " ".join(f"{c}:{s:.3f}" for c, s in pred.top(k))


class Multiclass(Task):
    name = "multiclass"
    primary_metric = "overall_accuracy"
    metric_words = "overall accuracy"
    per_class = ("f1", "F1")
    short = "OA"
    noun = "accuracy"
    metric_label = "test overall accuracy (%)"
    val_label = "val accuracy (%)"
    secondary = (("test_macro_f1", "F1$_{M}$"),)
    run_columns = {"overall_accuracy": "overall_accuracy", "macro_f1": "macro_f1"}

    def fits(self, y: Any) -> bool:
        return y.ndim == 1

    def val_scores(self, y: np.ndarray | None, out: np.ndarray) -> dict[str, float]:
        return {"val_score": float((out.argmax(1) == y).mean())}

    def scores(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        p = np.exp(logits - logits.max())
        return p / p.sum(), None

    def labels(self, ranked: list[tuple[str, float]]) -> list[str]:
        return [ranked[0][0]]

    def test_metrics(self, y: np.ndarray | None, out: np.ndarray, classes: list[str],
                     ) -> tuple[dict[str, Any], str, dict[str, float]]:
        assert y is not None
        m = self._metrics(classification_metrics(y, out.argmax(1), len(classes)))
        flat = {"test_overall_accuracy": m["overall_accuracy"], "test_macro_f1": m["macro_f1"]}
        flat.update({f"test_f1_{c}": f for c, f in zip(classes, m["per_class_f1"], strict=True)})
        return m, confusion_csv(m["confusion_matrix"], classes), flat

    def csv_header(self, top: str) -> list[str]:
        return ["file", "prediction", "probability", top]

    def csv_row(self, pred: Any, k: int, map_file: str) -> list[str]:
        return [pred.file, pred.labels[0], f"{pred.top(1)[0][1]:.4f}", _shown(pred, k)]


class Multilabel(Task):
    name = "multilabel"
    primary_metric = "map_macro"
    metric_words = "macro mAP"
    per_class = ("ap", "AP")
    per_class_how = "mean over"
    threshold = 0.5
    short = "mAP"
    noun = "mAP"
    metric_label = "test macro mAP (%)"
    val_label = "val macro mAP (%)"
    secondary = (("test_macro_f1", "F1$_{M}$"), ("test_map_micro", "mAP$_{\\mu}$"))
    run_columns = {"macro_f1": "f1_macro", "map_macro": "map_macro", "map_micro": "map_micro",
                   "f1_micro": "f1_micro"}
    per_class_bars = "per-class test AP, mean ± sd over seeds"
    loss = "bce"

    def fits(self, y: Any) -> bool:
        return y.ndim == 2 and _floating(y)

    def val_scores(self, y: np.ndarray | None, out: np.ndarray) -> dict[str, float]:
        assert y is not None
        m = multilabel_metrics(y, sigmoid(out))
        return {"val_score": m["map_macro"], "val_map_micro": m["map_micro"]}

    def scores(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return sigmoid(logits), None

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    def labels(self, ranked: list[tuple[str, float]]) -> list[str]:
        assert self.threshold is not None
        return [c for c, p in ranked if p >= self.threshold]

    def test_metrics(self, y: np.ndarray | None, out: np.ndarray, classes: list[str],
                     ) -> tuple[dict[str, Any], str, dict[str, float]]:
        assert y is not None and self.threshold is not None
        scores = sigmoid(out)
        m = self._metrics(multilabel_metrics(y, scores, self.threshold))
        table = multilabel_confusion_csv(y, scores >= m["threshold"], classes)
        flat = {f"test_{k}": m[k] for k in ("map_macro", "map_micro", "f1_macro", "f1_micro")}
        flat.update({f"test_ap_{c}": a for c, a in zip(classes, m["per_class_ap"], strict=True)
                     if a is not None})
        return m, table, flat

    def csv_header(self, top: str) -> list[str]:
        return ["file", "labels", top]

    def csv_row(self, pred: Any, k: int, map_file: str) -> list[str]:
        return [pred.file, ";".join(pred.labels), _shown(pred, k)]


class Segmentation(Task):
    name = "segmentation"
    primary_metric = "miou"
    metric_words = "mIoU (void excluded)"
    per_class = ("iou", "IoU")
    support = "pixels"
    dense = True
    short = "mIoU"
    noun = "mIoU"
    metric_label = "test mIoU (%, void excluded)"
    val_label = "val mIoU (%, void excluded)"
    secondary = (("test_mf1", "mF1"), ("test_overall_accuracy", "OA"))
    run_columns = {"overall_accuracy": "overall_accuracy", "macro_f1": "mf1", "miou": "miou",
                   "mf1": "mf1"}
    series_figures = True

    def fits(self, y: Any) -> bool:
        return y.ndim == 3

    def val_scores(self, y: np.ndarray | None, out: np.ndarray) -> dict[str, float]:
        m = segmentation_metrics(out)
        return {"val_score": m["miou"], "val_oa": m["overall_accuracy"]}

    def scores(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        label_map = logits.argmax(0).astype(np.int64)
        share = np.bincount(label_map.ravel(), minlength=logits.shape[0]) / label_map.size
        return share, label_map

    def labels(self, ranked: list[tuple[str, float]]) -> list[str]:
        return [c for c, p in ranked if p > 0]

    def test_metrics(self, y: np.ndarray | None, out: np.ndarray, classes: list[str],
                     ) -> tuple[dict[str, Any], str, dict[str, float]]:
        m = self._metrics(segmentation_metrics(out))
        flat = {f"test_{k}": m[k] for k in ("miou", "mf1", "overall_accuracy")}
        flat.update({f"test_iou_{c}": v for c, v in zip(classes, m["per_class_iou"], strict=True)
                     if v is not None})
        return m, confusion_csv(m["confusion_matrix"], classes), flat

    def csv_header(self, top: str) -> list[str]:
        return ["file", "classes", "map"]

    def csv_row(self, pred: Any, k: int, map_file: str) -> list[str]:
        shares = " ".join(f"{c}:{s:.3f}" for c, s in pred.top(len(pred.classes)) if s > 0)
        return [pred.file, shares, map_file]


def softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    """Softmax of ``logits`` along ``axis`` (float32, shifted by the maximum: no overflow)."""
    z = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return (z / z.sum(axis=axis, keepdims=True)).astype(np.float32)


#: The tasks, by name.
TASKS: dict[str, Task] = {t.name: t for t in (Multiclass(), Multilabel(), Segmentation())}


def get(name: str) -> Task:
    """The task called ``name``.

    Raises:
        ValueError: no task has that name (the message lists them).
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task {name!r} is not one of {tuple(TASKS)}") from None


def of_metrics(m: dict[str, Any]) -> Task:
    """The task of a run's test metrics (``metrics.json``): its ``task``, or for metrics written
    before they named it, the task whose metrics they hold."""
    if "task" in m:
        return get(m["task"])
    return TASKS["segmentation" if "per_class_iou" in m else
                 "multilabel" if "per_class_ap" in m else "multiclass"]


def of_targets(y: Any) -> Task:
    """The task whose targets have the form of ``y`` (numpy or torch; :meth:`Task.fits`):
    class indices (N,), multi-hot floats (N, C) or label maps (N, H, W).

    Raises:
        ValueError: no task takes such targets.
    """
    for task in TASKS.values():
        if task.fits(y):
            return task
    raise ValueError(f"targets of shape {tuple(y.shape)} fit no task of {tuple(TASKS)}")


#: The runs.csv columns of the test metrics (``test_<key>``), every task's in registry order.
RUN_COLUMNS = tuple(dict.fromkeys(f"test_{c}" for t in TASKS.values() for c in t.run_columns))


__all__ = ["RUN_COLUMNS", "TASKS", "Multiclass", "Multilabel", "Segmentation", "Task", "confusion_csv", "get",
           "multilabel_confusion_csv", "of_metrics", "of_targets"]
