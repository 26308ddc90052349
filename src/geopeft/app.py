"""The inference app (``geopeft app results/<study>``): a Gradio page over a study's runs.

Pick a run (default: the best on **validation** of the study's first dataset; test scores are
shown, never used to choose), upload a sample in the run's dataset format or click one of the
examples from the test split, and see a true-colour preview with the top classes and their
probabilities (multi-label: every class at or above 0.5; segmentation: the class map over the
image, with a legend). Prediction goes through :class:`geopeft.evaluate.predict.Predictor`, the
code of ``geopeft predict``. A file the run cannot take gives a message in the page naming the
file and what is wrong; the app keeps serving.

It serves on 127.0.0.1 (this machine) unless ``--host`` says otherwise; Gradio's analytics are
off and nothing is fetched from the internet.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geopeft.errors import GeopeftError
from geopeft.evaluate.predict import Predictor, parse_dates
from geopeft.io import read_json
from geopeft.layout import RUN_RECORDS, RUNS, DataLayout, ModelLayout, RunLayout

#: Examples offered per dataset, from its test split.
EXAMPLES = 6
#: The largest scene the app maps, in pixels (a GeoTIFF larger than the run's chips); a larger one
#: is for ``geopeft predict --out map.tif``, which has no such limit.
SCENE_PIXELS = 2048 * 2048
#: The side of a scene's preview at most, in pixels (the scene is shown subsampled).
PREVIEW_SIDE = 512


@dataclass
class Answer:
    """What the page shows for one upload."""

    preview: Any = None
    classes: Any = None
    map: Any = None
    message: str = ""
    map_file: Path | None = None
    """A scene's georeferenced map (GeoTIFF), offered for download."""


def _escape(text: str) -> str:
    """Text shown as is in Markdown (file names hold ``_``, messages ``<patch>``)."""
    import html
    import re

    return re.sub(r"([\\`*_\[\]#|])", r"\\\1", html.escape(text, quote=False))


@dataclass
class RunEntry:
    """One trained run of the results folder, as the run menu shows it."""

    name: str
    label: str
    model_dir: Path
    dataset: str
    val_score: float | None
    synthetic: bool


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def find_runs(results: Path) -> list[RunEntry]:
    """The trained runs under ``results/runs``, in name order.

    Raises:
        GeopeftError: the folder holds no trained run.
    """
    runs = []
    for record_file in sorted(Path(results).glob(RUN_RECORDS)):
        rec = read_json(record_file)
        row, data = rec["spec"]["row"], rec["spec"]["data"]
        val = rec["history"][-1].get("val_score") if rec.get("history") else None
        metrics_file = RunLayout(record_file.parent.parent).metrics
        test = read_json(metrics_file) if metrics_file.is_file() else {}
        parts = [row["strategy"], f"{100 * row['label_fraction']:g} % labels"]
        if row.get("sequence_length"):
            parts.append(f"T {row['sequence_length']}")
        parts.append(f"seed {row['seed']}")
        metric = test.get("primary_metric", "score").replace("_", " ")
        label = (f"{data['dataset']} · " + " · ".join(parts) + f" — val {_pct(val)}, test "
                 f"{metric} {_pct(test.get('primary'))}")
        runs.append(RunEntry(row["name"], label, record_file.parent, data["dataset"], val,
                             data.get("source") == "synthetic"))
        if rec["store"].get("generic") is not None:  # a dataset of your own: known from the run
            from geopeft.data.sources import register_generic

            register_generic(rec["store"]["dataset"], rec["store"]["generic"])
    if not runs:
        pattern = RunLayout(f"{RUNS}/<run>").record
        raise GeopeftError(f"{results}: no trained run ({pattern}); run the "
                           f"study first, or give its results folder (results/<study>)")
    return runs


def best_on_val(runs: list[RunEntry]) -> RunEntry:
    """The run of the first dataset with the highest validation score (ties: the first)."""
    first = [r for r in runs if r.dataset == runs[0].dataset]
    scored = [r for r in first if r.val_score is not None]
    return max(scored, key=lambda r: r.val_score) if scored else first[0]  # type: ignore[arg-type, return-value]


def true_colour(image: np.ndarray, bands: list[str], value_scale: float) -> np.ndarray:
    """A uint8 (H, W, 3) preview: B04, B03, B02 (else the first band as grey), each stretched
    between its 2nd and 98th percentile. A time series shows its middle date."""
    x = np.asarray(image, np.float32)
    if x.ndim == 4:
        x = x[(len(x) - 1) // 2]
    idx = [bands.index(b) for b in ("B04", "B03", "B02") if b in bands]
    rgb = x[idx] if len(idx) == 3 else np.repeat(x[:1], 3, 0)
    rgb = rgb * value_scale
    lo, hi = np.percentile(rgb, 2), np.percentile(rgb, 98)
    out = np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)
    return (out.transpose(1, 2, 0) * 255).astype(np.uint8)


def upscale(img: np.ndarray, side: int = 256) -> np.ndarray:
    """Nearest-neighbour enlargement of a small image (EuroSAT is 64 px), so pixels stay pixels."""
    k = max(1, side // max(img.shape[:2]))
    return np.repeat(np.repeat(img, k, 0), k, 1)


def colour(i: int) -> str:
    """A distinct colour per class index (matplotlib's tab20)."""
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["tab20"](i % 20)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def examples(runs: list[RunEntry], raw_root: Path, cache: Path,
             n: int = EXAMPLES) -> tuple[list[list[Any]], list[str]]:
    """Example rows ``[run label, file, dates]`` from each dataset's test split (one per class
    first), and notes on the datasets whose raw folder could not be read."""
    from geopeft.data.sources import DataError, get_source

    rows: list[list[Any]] = []
    notes: list[str] = []
    for dataset in dict.fromkeys(r.dataset for r in runs):
        source = get_source(dataset)
        best = best_on_val([r for r in runs if r.dataset == dataset])
        raw = _raw_folder(best, raw_root)
        try:
            items = [i for i in source.scan(raw, {}) if i.split == "test"]
        except (DataError, OSError) as err:
            notes.append(f"No examples of {dataset}: {err}")
            continue
        picked, seen = [], set()
        for item in items:  # one per class first (multi-label: per first class)
            key = str(np.asarray(item.label).tolist())
            if key not in seen:
                seen.add(key)
                picked.append(item)
            if len(picked) == n:
                break
        picked += [i for i in items if i not in picked][: n - len(picked)]
        for item in picked:  # as a user would upload it: the source says how
            path, dates = source.example_input(item, cache)
            rows.append([best.label, str(path), ",".join(map(str, dates or []))])
    return rows, notes


def _raw_folder(run: RunEntry, raw_root: Path) -> Path:
    """The raw folder of a run's dataset: under ``raw_root`` (the embedded world, a download,
    ``--raw``), or for a dataset of your own the folder its store was prepared from
    (``data.raw_dir``), as the store records it."""
    from geopeft.data.prepare import open_store
    from geopeft.data.sources import BUILTIN

    raw = raw_root / run.dataset
    if run.dataset in BUILTIN or raw.exists():
        return raw

    try:
        store = read_json(ModelLayout(run.model_dir).record)["store"]["path"]
        return Path(open_store(Path(store)).attrs["raw_dir"])
    except (OSError, KeyError, ValueError):
        return raw


class App:
    """The app's state: the runs of a results folder and their loaded predictors (cached)."""

    def __init__(self, results: Path, raw: Path | None = None, maps: Path | None = None):
        self.results = Path(results)
        self._maps = maps
        self.runs = find_runs(self.results)
        self.by_label = {r.label: r for r in self.runs}
        self.default = best_on_val(self.runs)
        rec = read_json(ModelLayout(self.default.model_dir).record)
        # the raw world the default run's store was prepared from (its examples)
        self.raw = raw if raw is not None else DataLayout.raw_root_of_store(
            Path(rec["store"]["path"]))
        self._predictors: dict[str, Predictor] = {}
        self._lock = threading.Lock()

    def predictor(self, label: str) -> Predictor:
        run = self.by_label.get(label)
        if run is None:
            raise GeopeftError(f"no run {label!r} in {self.results}")
        with self._lock:  # one model load at a time; the two last used stay loaded
            if run.name not in self._predictors:
                if len(self._predictors) >= 2:
                    self._predictors.pop(next(iter(self._predictors)))
                self._predictors[run.name] = Predictor(run.model_dir)
            return self._predictors[run.name]

    def describe(self, label: str) -> str:
        """The markdown under the run menu: what the run is and what it takes."""
        from geopeft.data.sources import get_source

        run = self.by_label[label]
        rec = read_json(ModelLayout(run.model_dir).record)
        row = rec["spec"]["row"]
        size = rec["store"].get("image_size")
        text = (f"**{run.name}**: {row['strategy']} ({row['method']}), "
                f"{rec['trainable_params']:,} of {rec['total_params']:,} parameters trained; "
                f"bands {' '.join(rec['store']['bands'])}. Upload "
                f"{get_source(run.dataset).input_format}"
                + (f", {size[0]}x{size[1]} px" if size else "") + ".")
        if run.synthetic:
            text += ("\n\n*Synthetic data: this run was trained on the embedded synthetic "
                     "Sentinel-2 world, not on the real dataset.*")
        return text

    def predict(self, label: str, file: str | None, dates_text: str, top_k: int,
                ) -> tuple[Any, Any, Any, str]:
        """(preview, classes, map, message) for the page; every failure becomes the message."""
        a = self.answer(label, file, dates_text, top_k)
        return a.preview, a.classes, a.map, a.message

    def answer(self, label: str, file: str | None, dates_text: str, top_k: int) -> Answer:
        """What the page shows for ``file``: a sample in the run's format, or a GeoTIFF scene
        larger than its chips (up to :data:`SCENE_PIXELS`), mapped as ``geopeft predict --out``
        maps it; every failure becomes the message."""
        if not file:
            return Answer(message="Upload a file or click an example first.")
        name = Path(file).name
        try:
            predictor = self.predictor(label)
            side = self._scene_side(predictor, Path(file))
            if side is not None:
                return self._scene(predictor, Path(file), side, top_k)
            dates = parse_dates(dates_text, name) if (dates_text or "").strip() else None
            image, dates = predictor.read(Path(file), dates)
            (pred,) = predictor.predict_arrays([image], [dates], [name])
        except Exception as err:  # in the page, whatever it is: the app keeps serving
            msg = str(err).replace(str(Path(file).parent) + os.sep, "").removeprefix(f"{name}: ")
            if not isinstance(err, (GeopeftError, ValueError, OSError)):  # not a known input error
                import logging

                logging.getLogger(__name__).exception("predicting %s", file)
                msg = f"{type(err).__name__}: {msg} (the app's console has the traceback)"
            return Answer(message=f"**Cannot use {_escape(name)}**: {_escape(msg)}")
        return Answer(*self._sample(predictor, pred, image, name, top_k))

    @staticmethod
    def _scene_side(predictor: Predictor, path: Path) -> tuple[int, int] | None:
        """A GeoTIFF upload's (height, width) when it is a scene to map: larger than the run's
        chips on a side, for a run of single images; else None (read as a sample)."""
        from geopeft.evaluate.scene import SCENE_SUFFIXES, scene_side

        size = predictor.info.image_size
        if (path.suffix.lower() not in SCENE_SUFFIXES or predictor.source.time_series
                or not size):
            return None
        side = scene_side(path)
        if side is None or (side[0] <= size[0] and side[1] <= size[1]):
            return None
        return side

    def _scene(self, predictor: Predictor, path: Path, side: tuple[int, int],
               top_k: int) -> Answer:
        """A scene mapped (:func:`geopeft.evaluate.scene.map_scene`): its preview (subsampled to
        :data:`PREVIEW_SIDE`), the map over it, each class's share of the map and the GeoTIFF.

        Raises:
            DataError: the scene is over :data:`SCENE_PIXELS`, or cannot be mapped (named)."""
        import tempfile

        import rasterio

        from geopeft.data.sources import DataError
        from geopeft.evaluate.scene import NODATA, Scene, map_scene

        h, w = side
        if h * w > SCENE_PIXELS:
            raise DataError(f"{path}: a scene of {h}x{w} px, over the app's limit of "
                            f"{SCENE_PIXELS:,} px; map it with geopeft predict --model "
                            f"<run>/model {path.name} --out map.tif")
        if self._maps is None:
            self._maps = Path(tempfile.mkdtemp(prefix="geopeft-maps-"))
        out = Path(self._maps) / f"{path.stem}.map.tif"
        done = map_scene(predictor, [path], out)
        info = predictor.info
        k = max(1, -(-max(h, w) // PREVIEW_SIDE))
        with Scene([path], list(info.bands), predictor.source.dtype,
                   tuple(predictor.source.file_bands),
                   aliases=predictor.source.band_aliases) as scene:
            preview = true_colour(scene.thumbnail(k), list(info.bands), info.value_scale)
        with rasterio.open(out) as f:
            cells = f.read(1)
        th, tw = done.tile
        full = np.repeat(np.repeat(cells, th, 0), tw, 1)[:h, :w] if done.per_tile else cells
        shown = full[::k, ::k]
        names = predictor.classes
        masks = [((shown == i).astype(np.float32), names[i]) for i in range(len(names))
                 if (shown == i).any()]
        valid = cells[cells != NODATA].astype(np.int64)
        share = np.bincount(valid, minlength=len(names)) / max(valid.size, 1)
        order = [i for i in np.argsort(-share, kind="stable")[:top_k] if share[i] > 0]
        kind = (f"one class per {th}x{tw} px tile ({done.shape[0]}x{done.shape[1]} cells)"
                if done.per_tile else "one class per pixel")
        message = (f"{_escape(path.name)}: a {h}x{w} px scene, mapped {kind}: {done.tiles} tiles "
                   f"run, {done.empty} without data. The list gives each class's share of the "
                   f"map; the georeferenced map (GeoTIFF) is below.")
        return Answer(preview, {names[i]: float(share[i]) for i in order}, (preview, masks),
                      message, out)

    def _sample(self, predictor: Predictor, pred: Any, image: np.ndarray, name: str,
                top_k: int) -> tuple[Any, Any, Any, str]:
        """(preview, classes, map, message) of one sample's prediction."""
        info = predictor.info
        preview = upscale(true_colour(image, list(info.bands), info.value_scale))
        if pred.task.dense:
            shown = [(float(s), i) for i, s in enumerate(pred.scores) if s > 0]
            k = preview.shape[0] // pred.label_map.shape[0]
            big = np.repeat(np.repeat(pred.label_map, k, 0), k, 1)
            masks = [((big == i).astype(np.float32), pred.classes[i]) for _, i in sorted(shown,
                                                                                         reverse=True)]
            classes = {c: s for c, s in pred.top(top_k) if s > 0}
            return preview, classes, (preview, masks), (
                f"{_escape(name)}: class map of {pred.label_map.shape[0]}x{pred.label_map.shape[1]} "
                f"pixels; the list gives each class's share of them.")
        if pred.task.threshold is not None:
            above = {c: s for c, s in pred.top(len(pred.labels))}
            t = pred.task.threshold
            msg = (f"{_escape(name)}: {len(above)} classes at or above {t}." if above else
                   f"{_escape(name)}: no class at or above {t}; the most likely: "
                   + ", ".join(f"{c} ({s:.2f})" for c, s in pred.top(3)))
            return preview, above or dict(pred.top(top_k)), None, msg
        return preview, dict(pred.top(top_k)), None, f"{_escape(name)}: {pred.labels[0]}."


def build(app: App, cache: Path) -> Any:
    """The Gradio page of ``app`` (``cache``: where zipped example patches go)."""
    import gradio as gr

    from geopeft.data.sources import get_source
    from geopeft.tasks import get as get_task

    rows, notes = examples(app.runs, app.raw, cache)
    # what the page shows follows the tasks and inputs of the runs' datasets
    sources = [get_source(d) for d in dict.fromkeys(r.dataset for r in app.runs)]
    tasks = [get_task(s.task) for s in sources]
    threshold = next((t.threshold for t in tasks if t.threshold is not None), None)
    series = any(s.input_needs_dates for s in sources)
    maps = any(t.dense for t in tasks)
    study = app.results.name
    with gr.Blocks(title=f"geopeft · {study}") as page:
        gr.Markdown(f"# geopeft · {study}\nA trained run of this study applied to a sample you "
                    f"upload. The menu lists every run; it starts at the best on validation.")
        with gr.Row():
            with gr.Column():
                run = gr.Dropdown([r.label for r in app.runs], value=app.default.label,
                                  label="Run", elem_id="run")
                about = gr.Markdown(app.describe(app.default.label), elem_id="about")
                file = gr.File(label="Sample", elem_id="upload")
                dates = gr.Textbox(label="Dates (YYYYMMDD, comma-separated; time series)",
                                   visible=series, elem_id="dates")
                top_k = gr.Slider(1, 10, value=3, step=1, label="Classes shown (top k)")
                go = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column():
                message = gr.Markdown(elem_id="message")
                preview = gr.Image(label="True colour (B04 B03 B02, 2-98 % stretch)",
                                   elem_id="preview", interactive=False)
                classes = gr.Label(label=f"Classes at or above {threshold}" if threshold is not None
                                   else "Classes",
                                   elem_id="classes", show_heading=threshold is None)
                seg = gr.AnnotatedImage(label="Predicted map", visible=maps, elem_id="map", height=320,
                                        color_map={c: colour(i) for i, c in enumerate(
                                            _all_classes(app))})
                map_file = gr.File(label="Map (GeoTIFF, georeferenced)", visible=False,
                                   elem_id="mapfile")
        outputs = [preview, classes, seg, message, map_file]

        def on_predict(label: str, file: str | None, dates_text: str, top_k: int) -> tuple:
            a = app.answer(label, file, dates_text, top_k)
            return (a.preview, a.classes, gr.update(value=a.map, visible=maps or a.map is not None),
                    a.message, gr.update(value=None if a.map_file is None else str(a.map_file),
                                         visible=a.map_file is not None))

        if rows:
            inputs = [run, file, dates] if series else [run, file]
            gr.Examples([r[: len(inputs)] for r in rows], inputs,
                        label="Examples from the test split: click one, then Predict",
                        elem_id="examples")
        for note in notes:
            gr.Markdown(f"*{note}*")
        run.change(app.describe, run, about)
        go.click(on_predict, [run, file, dates, top_k], outputs)
    return page


def _all_classes(app: App) -> list[str]:
    seen: dict[str, None] = {}
    for r in app.runs:
        rec = read_json(ModelLayout(r.model_dir).record)
        void = rec["store"].get("void_class")
        seen.update(dict.fromkeys(c for i, c in enumerate(rec["store"]["classes"]) if i != void))
    return list(seen)


def serve(results: Path, host: str = "127.0.0.1", port: int | None = None,
          raw: Path | None = None) -> None:
    """Serve the app of ``results`` until interrupted (``port``: default $GRADIO_SERVER_PORT,
    else 7860)."""
    import tempfile

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    with tempfile.TemporaryDirectory(prefix="geopeft-app-") as tmp:
        app = App(results, raw, maps=Path(tmp) / "maps")
        page = build(app, Path(tmp))
        port = port or int(os.environ.get("GRADIO_SERVER_PORT", 7860))
        print(f"geopeft app: {len(app.runs)} runs of {results}; serving on http://{host}:{port}",
              flush=True)
        page.launch(server_name=host, server_port=port, ssr_mode=False, show_error=True,
                    allowed_paths=[str(Path(app.raw).resolve()), tmp], footer_links=[],
                    theme=gr.themes.Default(font=["sans-serif"], font_mono=["monospace"]))


__all__ = ["PREVIEW_SIDE", "SCENE_PIXELS", "Answer", "App", "best_on_val", "build", "examples",
           "find_runs", "serve", "true_colour"]
