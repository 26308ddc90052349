"""A trained run as an MLflow model (pyfunc), logged by the evaluation job under the run's
``model`` name, so that ``mlflow models predict -m runs:/<run id>/model --env-manager local``
(in geopeft's environment) predicts with the code of ``geopeft predict``
(:class:`~geopeft.evaluate.predict.Predictor`).

Input, as MLflow parses it:

* a table (CSV, or JSON ``dataframe_split``) with a ``path`` column: files in the run's dataset
  format (and a ``dates`` column, YYYYMMDD separated by commas, for a time series);
* an array (JSON ``{"inputs": ...}``): samples already read, (N, bands, H, W) in the run's band
  order and raw values (DN, as the store holds them).

Output: one row per sample, ``prediction`` (the top class; multi-label: every class at or above
0.5, joined by ``;``; segmentation: the class of most pixels) and a column per class (its
probability; segmentation: its share of the map, with the map itself in ``map``).

The MLflow model holds the run's model folder and, for an encoder pretrained by the study, the
pretrained backbone: it needs nothing else of ``results/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from geopeft.layout import MODEL_ARTIFACT
from geopeft.tracking import global_tracking_uri

#: What the model's environment needs besides geopeft itself (``--env-manager local`` uses the
#: environment it runs in).
REQUIREMENTS = ["torch", "torchvision", "timm", "peft", "safetensors", "numpy", "pandas",
                "rasterio", "pillow", "xarray", "zarr"]


class GeopeftModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper of a saved run."""

    def load_context(self, context: Any) -> None:
        from geopeft.evaluate.predict import Predictor

        backbone = context.artifacts.get("backbone")
        self.predictor = Predictor(Path(context.artifacts["model"]),
                                   Path(backbone) if backbone else None)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        p = self.predictor
        if isinstance(model_input, pd.DataFrame) and "path" in model_input.columns:
            from geopeft.evaluate.predict import parse_dates

            dates = [parse_dates(v, f) if isinstance(v, str) and v.strip() else None
                     for f, v in zip(model_input["path"], model_input.get(
                         "dates", pd.Series([None] * len(model_input))), strict=True)]
            preds = p.predict_files([Path(f) for f in model_input["path"]], dates)
        else:
            x = np.asarray(model_input.to_numpy() if hasattr(model_input, "to_numpy")
                           else model_input)
            x = x[None] if x.ndim == 3 else x
            if x.ndim != 4:
                raise ValueError(f"an array input is (N, bands, H, W); got shape {x.shape} (time "
                                 f"series: give files with their dates in a table)")
            preds = p.predict_arrays(list(x))
        rows = []
        for q in preds:
            # independent class scores (multi-label): every label; else the first
            labels = q.labels if q.task.threshold is not None else q.labels[:1]
            row: dict[str, Any] = {"file": q.file, "prediction": ";".join(labels)}
            row.update({c: float(s) for c, s in zip(q.classes, q.scores, strict=True)})
            if q.label_map is not None:
                row["map"] = q.label_map.tolist()
            rows.append(row)
        return pd.DataFrame(rows)


def log_pyfunc(tracking_uri: str, run_id: str, model_dir: Path,
               pretrain_dir: Path | None = None) -> str:
    """Log the run's saved model as the MLflow model ``model`` of run ``run_id``; returns the
    logged model's URI."""
    import warnings

    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    before = client.get_run(run_id).info
    artifacts = {"model": str(Path(model_dir).resolve())}
    if pretrain_dir is not None:
        artifacts["backbone"] = str(Path(pretrain_dir).resolve())
    with (warnings.catch_warnings(), global_tracking_uri(tracking_uri),
          mlflow.start_run(run_id=run_id)):
        warnings.simplefilter("ignore", UserWarning)  # no type hints to infer a signature from
        info = mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, python_model=GeopeftModel(),
                                       artifacts=artifacts, pip_requirements=REQUIREMENTS)
    # start_run reopened the training's run: give it back its status and end time, so its
    # duration stays the training's
    client.set_terminated(run_id, before.status if before.status != "RUNNING" else "FINISHED",
                          end_time=before.end_time)
    return str(info.model_uri)


__all__ = ["GeopeftModel", "REQUIREMENTS", "log_pyfunc"]
