"""Inference app: classify image files with a trained run, no prepared data needed.

``geopeft predict --model results/<study>/runs/<run>/model scene1.tif scene2.tif`` reads each file
with the reader of the dataset the run was trained on (EuroSAT-MS GeoTIFF: bands picked by name,
B8A last in the file; EuroSAT-RGB JPEG), applies the model (normalisation is inside it) and
prints the top-k classes with their probabilities as CSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from geopeft.bands import band_indices
from geopeft.data.sources import DataError, get_source
from geopeft.io import read_json
from geopeft.models.inference import predict
from geopeft.models.saved import load_model


def _expected_size(model: Any) -> int | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.input_size:
        return None  # inputs are resized
    size = base.backbone.patch_embed.img_size
    return int(size[0])


def predict_files(model_dir: Path, files: list[Path], top_k: int = 3) -> list[dict[str, Any]]:
    """Top-k predictions for each file.

    Args:
        model_dir: the run's saved model.
        files: image files in the format of the run's dataset.
        top_k: classes reported per file.

    Raises:
        DataError: a file cannot be read, lacks a band, or has another size than the model takes.
    """
    record = read_json(Path(model_dir) / "run.json")
    store = record["store"]
    fmt = get_source(store["dataset"])
    if not hasattr(fmt, "read_file"):
        raise DataError(f"predict reads single-file scenes; {fmt.name} is not such a dataset")
    idx = band_indices(store["bands"], fmt.file_bands, where=fmt.name)
    model = load_model(Path(model_dir))
    size = _expected_size(model)
    images = []
    for f in files:
        arr = fmt.read_file(Path(f))
        if size is not None and arr.shape[1:] != (size, size):
            raise DataError(f"{f}: size {arr.shape[1]}x{arr.shape[2]}, the model takes {size}x{size}")
        images.append(arr[idx].astype(np.float32))
    if not images:
        return []
    logits = predict(model, np.stack(images))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    classes = store["classes"]
    out = []
    for f, p in zip(files, probs, strict=True):
        order = np.argsort(-p)[:top_k]
        out.append({"file": str(f), "prediction": classes[order[0]], "probability": float(p[order[0]]),
                    "top": [(classes[i], float(p[i])) for i in order]})
    return out
