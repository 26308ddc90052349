"""Entry point behind the ``evaluate`` rule: test-split metrics of a saved model."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.data.dataset import load_splits, store_info
from geopeft.data.sources import get_source
from geopeft.data.stream import memory_budget_mb
from geopeft.io import atomic_file, read_json, write_json
from geopeft.layout import ModelLayout
from geopeft.models.build import num_outputs
from geopeft.models.inference import predict, segmentation_scores
from geopeft.models.runtime import resolve_device, seed_everything
from geopeft.models.saved import load_model
from geopeft.spec import JobSpec
from geopeft.tasks import get as get_task
from geopeft.tracking import RunLogger, store_name


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
    record_file = ModelLayout(Path(model_dir)).record
    record = read_json(record_file)
    row = JobSpec.from_dict(record["spec"], f"{record_file}: spec").row
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
    task = get_task(get_source(info.dataset).task)
    if task.dense:  # whole patches, the confusion streamed batch by batch
        classes = info.classes[: num_outputs(info)]
        cm, _ = segmentation_scores(model, test, batch, device)
        m, table, flat = task.test_metrics(None, cm, classes)
        m.update(void_class=info.void_class, sequence_length=row.sequence_length, classes=classes)
    else:
        m, table, flat = task.test_metrics(test.y, predict(model, test.x, batch, device),
                                           info.classes)
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
        record = read_json(ModelLayout(model_dir).record)
        if pretrain_dir is None and record.get("pretrain_dir"):
            pretrain_dir = model_dir / record["pretrain_dir"]
        log_pyfunc(logger.tracking_uri, logger.run_id, model_dir, pretrain_dir)
    return m


__all__ = ["evaluate"]
