"""Entry point behind the ``evaluate`` rule: test-split metrics of a saved model."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.data.dataset import load_splits, store_info
from geopeft.data.stream import memory_budget_mb
from geopeft.io import atomic_file, read_json, write_json
from geopeft.metrics.classification import classification_metrics
from geopeft.metrics.multilabel import multilabel_metrics, sigmoid
from geopeft.metrics.segmentation import segmentation_metrics
from geopeft.models.build import num_outputs
from geopeft.models.inference import predict, segmentation_scores
from geopeft.models.runtime import resolve_device, seed_everything
from geopeft.models.saved import load_model
from geopeft.spec import JobSpec
from geopeft.tracking import RunLogger, store_name

#: The primary test metric of each task (``primary_metric`` in metrics.json; MLflow logs it as
#: ``test_<name>``).
PRIMARY_METRIC = {"multiclass": "overall_accuracy", "multilabel": "map_macro",
                  "segmentation": "miou"}


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


def evaluate(model_dir: Path, store: Path, experiment: Path | None, out_metrics: Path,
             out_confusion: Path, pretrain_dir: Path | None = None, threads: int = 1,
             mem_mb: float | None = None) -> dict[str, Any]:
    """Predict the test split with the saved model in ``model_dir``; write and log the metrics.

    Args:
        model_dir: the run's saved model.
        store: the prepared store of the run's dataset.
        experiment: the MLflow experiment file (None: no logging).
        out_metrics: the metrics JSON to write.
        out_confusion: the confusion table (CSV) to write.
        pretrain_dir: the embedded pretrained backbone, when the run used it.
        threads: CPU threads.
        mem_mb: the job's memory (``resources.mem_mb``): a test split larger than half of it
            (or of a smaller cgroup/SLURM limit or the available memory) streams from the store.
    """
    seed_everything(0, threads)
    record = read_json(Path(model_dir) / "run.json")
    row = JobSpec.from_dict(record["spec"], f"{Path(model_dir) / 'run.json'}: spec").row
    info = store_info(store)
    args = row.train_args(threads)
    # whole, or streamed when large (one decision, logged; reader processes start before the
    # model is loaded)
    (test,) = load_splits(store, [("test", None)], row.temporal, memory_budget_mb(mem_mb),
                          args.workers)
    model = load_model(model_dir, store, pretrain_dir)
    device = resolve_device(args.device)
    model.to(device)
    batch = args.eval_batch_size
    outputs = (row.name, record["mlflow_run_id"], len(test), out_metrics, out_confusion, experiment,
               Path(model_dir), pretrain_dir)
    if test.y.ndim == 3:  # segmentation: whole patches, confusion streamed batch by batch
        classes = info.classes[: num_outputs(info)]
        cm, _ = segmentation_scores(model, test, batch, device)
        m = segmentation_metrics(cm)
        m.update(task="segmentation", primary_metric=PRIMARY_METRIC["segmentation"],
                 primary=m["miou"],
                 void_class=info.void_class, sequence_length=row.sequence_length,
                 classes=classes)
        table = confusion_csv(m["confusion_matrix"], classes)
        flat = {f"test_{k}": m[k] for k in ("miou", "mf1", "overall_accuracy")}
        flat.update({f"test_iou_{c}": v for c, v in zip(classes, m["per_class_iou"], strict=True)
                     if v is not None})
        return _finish(m, table, flat, info, *outputs)
    logits = predict(model, test.x, batch, device)
    if test.y.ndim == 2:  # multi-label: sigmoid scores, mAP, F1 at 0.5
        scores = sigmoid(logits)
        m = multilabel_metrics(test.y, scores)
        m.update(task="multilabel", primary_metric=PRIMARY_METRIC["multilabel"],
                 primary=m["map_macro"])
        table = multilabel_confusion_csv(test.y, scores >= m["threshold"], info.classes)
        flat = {f"test_{k}": m[k] for k in ("map_macro", "map_micro", "f1_macro", "f1_micro")}
        flat.update({f"test_ap_{c}": a for c, a in zip(info.classes, m["per_class_ap"], strict=True)
                     if a is not None})
    else:
        m = classification_metrics(test.y, logits.argmax(1), len(info.classes))
        m.update(task="multiclass", primary_metric=PRIMARY_METRIC["multiclass"],
                 primary=m["overall_accuracy"])
        table = confusion_csv(m["confusion_matrix"], info.classes)
        flat = {"test_overall_accuracy": m["overall_accuracy"], "test_macro_f1": m["macro_f1"]}
        flat.update({f"test_f1_{c}": f for c, f in zip(info.classes, m["per_class_f1"], strict=True)})
    return _finish(m, table, flat, info, *outputs)


def _finish(m: dict[str, Any], table: str, flat: dict[str, float], info: Any,
            run: str, run_id: str | None, n_test: int, out_metrics: Path, out_confusion: Path,
            experiment: Path | None, model_dir: Path, pretrain_dir: Path | None,
            ) -> dict[str, Any]:
    """Write the metrics and the confusion table atomically and log them to the run, with the
    confusion matrix as an image, the test store as its dataset and the model as an MLflow
    model."""
    m.setdefault("classes", info.classes)
    m.update({"run": run, "test_samples": n_test})
    with atomic_file(out_confusion) as fh:
        fh.write(table)
    write_json(out_metrics, m)
    if experiment is not None:
        import tempfile

        from geopeft.evaluate.plots import confusion_image
        from geopeft.evaluate.pyfunc import log_pyfunc

        # the training run; a new run of this name if the store lost it (said in the log)
        logger = RunLogger(experiment, run_name=run, run_id=run_id)
        logger.log_metrics(flat)
        logger.log_artifact(out_confusion, "evaluation")
        logger.log_artifact(out_metrics, "evaluation")
        logger.log_dataset(store_name(info), info.fingerprint, info.path, "test",
                           {"samples": n_test, "bands": info.bands})
        title = f"{run}: test {m['primary_metric'].replace('_', ' ')} {100 * m['primary']:.1f} %"
        with tempfile.TemporaryDirectory() as tmp:
            if "confusion_matrix" in m:
                png = confusion_image(Path(tmp) / "confusion.png", np.asarray(m["confusion_matrix"]),
                                      m["classes"], title)
            else:  # multi-label: the per-class tp, fp, fn, tn of the CSV
                rows = list(csv.reader(io.StringIO(table)))[1:]
                png = confusion_image(Path(tmp) / "confusion.png",
                                      np.array([[int(v) for v in r[1:]] for r in rows]),
                                      [r[0] for r in rows], title, ["tp", "fp", "fn", "tn"])
            logger.log_artifact(png, "evaluation")
        record = read_json(model_dir / "run.json")
        if pretrain_dir is None and record.get("pretrain_dir"):
            pretrain_dir = model_dir / record["pretrain_dir"]
        log_pyfunc(logger.tracking_uri, logger.run_id, model_dir, pretrain_dir)
    return m


__all__ = ["confusion_csv", "evaluate"]
