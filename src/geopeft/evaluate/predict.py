"""Inference on files: a trained run applied to samples as users hold them, no prepared data.

One path serves ``geopeft predict`` (CSV), the app (``geopeft app``) and the MLflow pyfunc model
(``mlflow models predict``): :class:`Predictor` reads a file with the reader of the dataset the
run was trained on (:meth:`~geopeft.data.sources.base.Source.read_input`: EuroSAT-MS GeoTIFF with
bands picked by name, B8A last in the file; EuroSAT-RGB JPEG or PNG; a BigEarthNet patch folder or
zip; a PASTIS ``.npy`` with its dates), checks it against what the model takes, cuts a time series
as the run's evaluation does, applies the model (normalisation is inside it) and returns a
:class:`Prediction`: class probabilities (softmax), every class above the threshold (multi-label,
sigmoid), or a class map (segmentation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.data.dataset import StoreInfo
from geopeft.data.sources import DataError, get_source
from geopeft.data.sources.base import check_side
from geopeft.data.temporal import PAD, ShortSeriesError, days_since, temporal_indices
from geopeft.io import read_json
from geopeft.layout import ModelLayout
from geopeft.limits import DEFAULT, Limits
from geopeft.models.inference import predict
from geopeft.models.saved import load_model
from geopeft.spec import JobSpec
from geopeft.tasks import Task
from geopeft.tasks import get as get_task


def parse_dates(text: str, where: str) -> list[int]:
    """A series' dates written as text, YYYYMMDD separated by commas (``geopeft predict
    --dates``, the app's dates box, the MLflow model's ``dates`` column); the source checks them.

    Raises:
        DataError: ``where``, and that the text is not such numbers.
    """
    try:
        return [int(d) for d in text.replace(" ", "").split(",") if d]
    except ValueError:
        raise DataError(f"{where}: dates {text!r} are not YYYYMMDD numbers separated by "
                        f"commas") from None


@dataclass
class Prediction:
    """What a run predicts for one sample."""

    file: str
    """The sample's file (or a name given to an array)."""
    task: Task
    """The task of the run's dataset (:data:`geopeft.tasks.TASKS`)."""
    classes: list[str]
    """The classes the model predicts."""
    scores: np.ndarray
    """Per class: the probability (multiclass: softmax; multi-label: sigmoid) or, for
    segmentation, the share of the map's pixels."""
    label_map: np.ndarray | None = None
    """Segmentation: the class index of each pixel (H, W)."""

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` classes of highest score, with their scores."""
        order = np.argsort(-self.scores, kind="stable")[:k]
        return [(self.classes[i], float(self.scores[i])) for i in order]

    @property
    def labels(self) -> list[str]:
        """The prediction (:meth:`geopeft.tasks.Task.labels`): the top class; multi-label: every
        class at or above the task's threshold, highest first; segmentation: the classes of the
        map, most pixels first."""
        return self.task.labels(self.top(len(self.classes)))


class Predictor:
    """A trained run, ready to predict on files or arrays (CPU, eval mode).

    Args:
        model_dir: the run's saved model folder (``results/<study>/runs/<run>/model``).
        pretrain_dir: the embedded pretrained backbone (default: the one the run recorded).
        limits: the limits on the files read (a file over them is refused from its header).
        merge: merge the run's peft adapter into the encoder (``geopeft predict --merge``).
    """

    def __init__(self, model_dir: Path, pretrain_dir: Path | None = None,
                 limits: Limits = DEFAULT, merge: bool = False):
        self.model_dir = Path(model_dir)
        self.limits = limits
        record_file = ModelLayout(self.model_dir).record
        self.record = read_json(record_file)
        spec = JobSpec.from_dict(self.record["spec"], f"{record_file}: spec")
        self.row = spec.row
        self.info = StoreInfo(**{**self.record["store"], "path": Path(self.record["store"]["path"])})
        self.info.register()  # a dataset of your own: known from the run's record
        # what a reader needs of the study's data.options: the side the store was prepared at
        self.options: dict[str, Any] = ({"size": int(self.info.image_size[0])}
                                        if self.info.image_size else {})
        self.source = get_source(self.info.dataset)
        self.task = get_task(self.source.task)
        void = self.info.void_class
        self.classes = [c for i, c in enumerate(self.info.classes) if i != void]
        self.model = load_model(self.model_dir, pretrain_dir=pretrain_dir, merge=merge)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        resized = getattr(base, "input_size", None)
        self.size = None if resized else tuple(self.info.image_size or ()) or None

    def read(self, path: Path, dates: list[int] | None = None,
             ) -> tuple[np.ndarray, list[int] | None]:
        """A file as the model takes it: the run's bands, in its order, checked for size (from
        its header, against the model's side and :attr:`limits`, before a pixel is read).

        Raises:
            DataError: naming the file and what is wrong with it.
        """
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: no such file")
        image, dates = self.source.read_input(path, list(self.info.bands), self.options, dates,
                                              limits=self.limits, size=self.size)
        check_side(path, image.shape[-2:], self.size, self.info.dataset)
        return image, dates

    def predict_files(self, files: list[Path],
                      dates: list[list[int] | None] | None = None) -> list[Prediction]:
        """Predictions of files (``dates``: each time series' acquisition dates)."""
        dates = dates or [None] * len(files)
        read = [self.read(Path(f), d) for f, d in zip(files, dates, strict=True)]
        return self.predict_arrays([x for x, _ in read], [d for _, d in read],
                                   [str(f) for f in files])

    def predict_arrays(self, images: list[np.ndarray], dates: list[list[int] | None] | None = None,
                       names: list[str] | None = None) -> list[Prediction]:
        """Predictions of samples already read: each (bands, H, W) in the run's band order, or
        (time, bands, H, W) with its dates (YYYYMMDD); a time series is cut to the run's
        sequence length as its evaluation cuts the test split."""
        if not images:
            return []
        names = names or [f"sample {i}" for i in range(len(images))]
        days = None
        if self.source.time_series:
            images, days = self.cut_series(images, dates or [None] * len(images), names)
        x = np.stack([np.asarray(im) for im in images]).astype(np.float32)
        logits = predict(self.model, x, dates=days)
        out = []
        for name, lg in zip(names, logits, strict=True):
            scores, label_map = self.task.scores(lg)
            out.append(Prediction(name, self.task, self.classes, scores, label_map))
        return out

    def cut_series(self, images: list[np.ndarray], dates: list[list[int] | None],
                   names: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """Time series (time, bands, H, W) with their dates (YYYYMMDD) cut to the run's sequence
        length as its evaluation cuts the test split, and their days since the run's reference
        date (the model's ``dates``); ``names`` name a series in an error (whole-scene maps cut
        each tile's series here too).

        Raises:
            DataError: a series without as many dates as images, or too short for the run.
        """
        temporal = self.row.temporal
        if temporal is None:
            raise DataError(f"{self.model_dir}: a time-series run without a sequence length")
        cut, kept = [], []
        for im, d, name in zip(images, dates, names, strict=True):
            if d is None or len(d) != len(im):
                raise DataError(f"{name}: {len(im)} images need as many dates (YYYYMMDD)")
            try:
                sel = temporal_indices(len(im), temporal.length, temporal.ladder, temporal.pad,
                                       where=name)
            except ShortSeriesError as err:
                raise DataError(str(err)) from None
            x = np.zeros((len(sel), *im.shape[1:]), im.dtype)
            x[sel != PAD] = np.asarray(im)[sel[sel != PAD]]
            cut.append(x)
            kept.append(np.where(sel == PAD, 0, np.asarray(d, np.int64)[np.maximum(sel, 0)]))
        return cut, days_since(np.stack(kept), temporal.reference)


__all__ = ["Prediction", "Predictor", "parse_dates"]
