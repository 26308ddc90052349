"""Result commands: ``predict``, ``app``, ``aggregate``, ``protocol``, ``paper``, ``figures`` and
``table``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from geopeft.cli.common import _opt_path, log
from geopeft.io import read_json, write_json
from geopeft.layout import PAPER_PDF, RunLayout


def _series_dates(args: argparse.Namespace, source: Any) -> list[list[int] | None]:
    """Each file's dates: ``--dates`` (one comma-separated list per file, in order) or, from
    ``--metadata``, as the run's dataset source reads them there (``Source.input_dates``)."""
    from geopeft.data.sources import DataError
    from geopeft.evaluate.predict import parse_dates

    if args.dates:
        if len(args.dates) != len(args.files):
            raise DataError(f"--dates: {len(args.dates)} lists for {len(args.files)} files "
                            f"(one comma-separated list of YYYYMMDD per file)")
        return [parse_dates(text, f"--dates for {f}") for text, f in zip(args.dates, args.files,
                                                                          strict=True)]
    if args.metadata:
        return list(source.input_dates(Path(args.metadata), [Path(f) for f in args.files]))
    return [None] * len(args.files)


def cmd_predict(args: argparse.Namespace) -> None:
    """``geopeft predict``: a trained run applied to files in its dataset's format; CSV.

    Args:
        args: ``model``, ``files``, ``top_k``, ``out`` (default standard output), ``dates`` /
            ``metadata`` (time series), ``maps`` (segmentation: a folder for the class maps).
    """
    import csv

    import numpy as np

    from geopeft.evaluate.predict import Predictor
    from geopeft.evaluate.scene import SCENE_SUFFIXES
    from geopeft.io import atomic_file

    predictor = Predictor(Path(args.model), merge=args.merge)
    if args.out and Path(args.out).suffix.lower() in SCENE_SUFFIXES:
        _predict_scene(args, predictor)
        return
    preds = predictor.predict_files([Path(f) for f in args.files],
                                    _series_dates(args, predictor.source))
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    w = csv.writer(out, lineterminator="\n")
    w.writerow(predictor.task.csv_header(f"top{args.top_k}"))
    for p in preds:
        where = ""
        if p.label_map is not None and args.maps:
            Path(args.maps).mkdir(parents=True, exist_ok=True)
            where = str(Path(args.maps) / f"{Path(p.file).stem}.npy")
            with atomic_file(where, "wb") as fh:
                np.save(fh, p.label_map.astype(np.uint8))
        w.writerow(predictor.task.csv_row(p, args.top_k, where))
    if args.out:
        out.close()


def _predict_scene(args: argparse.Namespace, predictor: Any) -> None:
    """``geopeft predict --out map.tif``: the files are one scene (one raster, or one per date of
    a time series with ``--dates``), mapped whole into a georeferenced GeoTIFF
    (:func:`geopeft.evaluate.scene.map_scene`)."""
    from geopeft.data.sources import DataError
    from geopeft.evaluate.predict import parse_dates
    from geopeft.evaluate.scene import map_scene

    if args.metadata or args.maps:
        raise DataError(f"--out {args.out}: a scene map takes --dates, not --metadata or --maps")
    dates = ([d for text in args.dates for d in parse_dates(text, "--dates")]
             if args.dates else None)
    bands = [b for b in args.scene_bands.split(",") if b] if args.scene_bands else None
    done = map_scene(predictor, [Path(f) for f in args.files], Path(args.out), dates,
                     given_bands=bands, nodata=args.nodata, overlap=args.overlap,
                     batch_size=args.batch_size, block=args.block,
                     probabilities=args.probabilities, confidence=args.confidence)
    kind = "one class per tile" if done.per_tile else "one class per pixel"
    print(f"{done.out}: {done.shape[0]}x{done.shape[1]} map, {kind} ({done.tile[0]}x"
          f"{done.tile[1]} px tiles: {done.tiles} run, {done.empty} empty) in {done.seconds:.1f} s")


def cmd_app(args: argparse.Namespace) -> None:
    """``geopeft app``: the inference app (Gradio) of a study's results folder.

    Args:
        args: ``results``, ``host``, ``port``, ``raw`` (the raw dataset for examples).
    """
    from geopeft.app import serve

    serve(Path(args.results), host=args.host, port=args.port,
          raw=Path(args.raw) if args.raw else None)


def cmd_aggregate(args: argparse.Namespace) -> None:
    """``geopeft aggregate``: one CSV row per run of a study.

    Args:
        args: ``runs`` (run folders), ``out``, ``html``, ``experiment`` (the MLflow experiment
            file: its description gets the summary table), ``protocol`` (the protocol card,
            added to the description).
    """
    from geopeft.paper.aggregate import aggregate

    runs = [Path(r) for r in args.runs]
    rows = aggregate([RunLayout(r).model for r in runs], [RunLayout(r).metrics for r in runs],
                     Path(args.out))
    if args.experiment:
        from geopeft.paper.aggregate import summary_markdown
        from geopeft.tracking import describe_experiment

        summary = summary_markdown(rows)
        if args.protocol:
            from geopeft.config.protocol import card_markdown

            summary += "\n\n" + card_markdown(read_json(Path(args.protocol)))
        describe_experiment(Path(args.experiment), summary)
    if args.html:
        from geopeft.paper.tables import write_html_table

        write_html_table(Path(args.out), Path(args.html))


def cmd_protocol(args: argparse.Namespace) -> None:
    """``geopeft protocol``: write the study's protocol card (:mod:`geopeft.config.protocol`), as
    the rule computed it from the resolved study, after checking that it is one.

    Args:
        args: ``record`` (the card as JSON), ``out``.
    """
    from geopeft.config.protocol import check_record

    record = json.loads(args.record)
    check_record(record, "--record")
    write_json(Path(args.out), record)


def cmd_paper(args: argparse.Namespace) -> None:
    """``geopeft paper``: the paper of several studies, compiled with latexmk.

    Args:
        args: ``results`` (each study's results folder, in order), ``out`` (the PDF).
    """
    from geopeft.paper.document import build_paper

    out = build_paper([Path(r) for r in args.results], Path(args.out))
    log.info("%s: %d studies", out, len(args.results))


def cmd_figures(args: argparse.Namespace) -> None:
    """``geopeft figures``: the study's figures (PDF + PNG).

    Args:
        args: ``runs_csv``, ``runs_dir``, ``outdir``.
    """
    from geopeft.paper.figures import make_figures

    make_figures(Path(args.runs_csv), Path(args.outdir), _opt_path(args.runs_dir))


def cmd_table(args: argparse.Namespace) -> None:
    """``geopeft table``: the study's LaTeX booktabs table.

    Args:
        args: ``runs_csv``, ``study``, ``out``, ``ledger_csv`` (or None), and with ``runs_dir``
            the per-class report (``per_class_tex``, ``per_class_csv``).
    """
    from geopeft.paper.tables import make_table, write_per_class

    make_table(Path(args.runs_csv), Path(args.out), args.study, _opt_path(args.ledger_csv))
    if args.runs_dir:
        write_per_class(Path(args.runs_csv), Path(args.runs_dir), Path(args.per_class_tex),
                        Path(args.per_class_csv))


def predict_description() -> str:
    """``geopeft predict``'s description, made from the registries: the input format of each
    study dataset (``Source.input_format``), the CSV columns of each task (``Task.csv_header``;
    its ``threshold``, a dense task's class map) and the metadata files ``--metadata`` takes
    (``Source.input_metadata``)."""
    from geopeft.data.sources import REGISTRY, Source
    from geopeft.tasks import TASKS

    def plain(text: str) -> str:
        return text.replace("`", "")

    formats = dict.fromkeys(plain(s.input_format) for s in REGISTRY.values()
                            if s.study_dataset and s.input_format != Source.input_format)
    columns = []
    for task in TASKS.values():
        cols = f"{task.name}: {', '.join(task.csv_header('top-k'))}"
        if task.threshold is not None:
            cols += f" (every class with probability >= {task.threshold:g})"
        if task.dense:
            cols += " (each class's share of the map's pixels; the .npy written with --maps)"
        columns.append(cols)
    metadata = dict.fromkeys(plain(s.input_metadata) for s in REGISTRY.values()
                             if s.study_dataset and s.input_metadata)
    return (f"Apply a trained run to samples in its dataset's format ({'; '.join(formats)}). "
            f"CSV columns: {'; '.join(columns)}."
            + (f" --metadata: {'; '.join(metadata)}." if metadata else ""))


#: Stands for :func:`predict_description` until the help is shown.
_PREDICT_DESCRIPTION = "<geopeft predict: made from the registries when shown>"


class _PredictHelp(argparse.HelpFormatter):
    """``geopeft predict``'s help, its description made when shown (building the parser of every
    command imports no dataset source)."""

    def add_text(self, text: str | None) -> None:
        """The text, or :func:`predict_description` in place of its stand-in."""
        super().add_text(predict_description() if text == _PREDICT_DESCRIPTION else text)


def add_commands(sub: Any) -> None:
    """Result commands: inference, the runs table, figures and the LaTeX table."""
    s = sub.add_parser(
        "predict", help="a trained run on files in its dataset's format: CSV of the predictions",
        description=_PREDICT_DESCRIPTION, formatter_class=_PredictHelp)
    s.add_argument("--model", required=True, help="a run's model folder (results/<study>/runs/"
                   "<run>/model)")
    s.add_argument("--top-k", type=int, default=3, help="classes listed per file with their "
                   "probabilities (default 3)")
    s.add_argument("--out", help="CSV file (default: standard output); a .tif or .tiff maps the "
                   "files as one scene (one raster, or one per date with --dates) of any size "
                   "into a georeferenced GeoTIFF: band 1 the class (uint8, nodata 255; one per "
                   "tile for classification, per pixel for segmentation)")
    s.add_argument("--merge", action="store_true", help="merge the run's peft adapter into the "
                   "encoder first (one plain model; same predictions within float rounding)")
    s.add_argument("--dates", action="append", help="time series: the file's acquisition dates, "
                   "YYYYMMDD separated by commas; once per file, in order (a scene map: one date "
                   "per raster, all in one list or one per raster; default: each raster's "
                   "TIFFTAG_DATETIME tag)")
    s.add_argument("--metadata", help="time series: the dataset's metadata file, whose dates give "
                   "each file's dates (which file: see above)")
    s.add_argument("--maps", help="segmentation: write each file's class map (uint8 class "
                   "indices, H x W) as <name>.npy into this folder")
    g = s.add_argument_group("scene maps (--out map.tif)")
    g.add_argument("--scene-bands", help="the scene's band names in file order, comma-separated "
                   "(default: its band descriptions, else its dataset's file order when the count "
                   "matches)")
    g.add_argument("--nodata", type=float, help="the input value of no data (default: the "
                   "raster's nodata value)")
    g.add_argument("--overlap", type=int, help="segmentation: pixels by which tiles overlap, "
                   "blended (default: a quarter of the tile)")
    g.add_argument("--batch-size", type=int, default=16, help="tiles per forward pass "
                   "(default 16; on the GPU when there is one)")
    g.add_argument("--block", type=int, default=1024, help="output block side made at a time, in "
                   "scene pixels; bounds memory (default 1024)")
    g.add_argument("--probabilities", action="store_true", help="add one band per class: its "
                   "probability in percent")
    g.add_argument("--confidence", action="store_true", help="add a band: the top class's "
                   "probability in percent")
    s.add_argument("files", nargs="+", help="samples in the run's dataset format, or one scene "
                   "(--out map.tif)")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("app", help="the inference app (Gradio) of a study's results folder",
                       description="Serve the inference app of a study's results folder: pick a "
                       "run (default: the best on validation), upload a sample in the dataset's "
                       "format, see its preview and the predicted classes or map.")
    s.add_argument("results", help="the study's results folder (results/<study>)")
    s.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1, "
                   "this machine only; 0.0.0.0 opens it to the network, with no login)")
    s.add_argument("--port", type=int, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    s.add_argument("--raw", help="the study's raw dataset folder, for the example images of its "
                   "test split (default: found from the runs' job specs under data/raw)")
    s.set_defaults(func=cmd_app)

    s = sub.add_parser("aggregate", help="one CSV of all runs")
    s.add_argument("--runs", nargs="+", required=True, help="run folders")
    s.add_argument("--out", required=True)
    s.add_argument("--html", help="also write the table as an HTML page (the Snakemake report)")
    s.add_argument("--experiment", help="the study's MLflow experiment file: write the summary "
                   "table into the experiment's description")
    s.add_argument("--protocol", help="the study's protocol card (protocol.json): add it to the "
                   "experiment's description")
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("protocol", help="the study's protocol card as JSON (protocol.json)")
    s.add_argument("--record", required=True, help="the card, as JSON (the protocol rule's "
                   "params: geopeft.config.protocol.protocol_record of the resolved study)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_protocol)

    s = sub.add_parser("paper", help="the paper: a section per study from its results (latexmk)")
    s.add_argument("--results", nargs="+", required=True,
                   help="each study's results folder (results/<study>), in paper order")
    s.add_argument("--out", required=True, help=f"the PDF to write ({PAPER_PDF})")
    s.set_defaults(func=cmd_paper)

    s = sub.add_parser("figures", help="paper figures (PDF + PNG)")
    s.add_argument("--runs-csv", required=True)
    s.add_argument("--runs-dir")
    s.add_argument("--outdir", required=True)
    s.set_defaults(func=cmd_figures)

    s = sub.add_parser("table", help="LaTeX booktabs table")
    s.add_argument("--runs-csv", required=True)
    s.add_argument("--study", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--runs-dir", help="the runs folder: also write the per-class report")
    s.add_argument("--per-class-tex", help="the per-class report as LaTeX")
    s.add_argument("--per-class-csv", help="the per-class report as CSV")
    s.add_argument("--ledger-csv", help="the cost ledger per dataset and strategy as CSV")
    s.set_defaults(func=cmd_table)

