"""Data commands: ``synthesize``, ``prepare``, ``download``, ``fetch`` and ``subset``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from geopeft.cli.common import _opt_path, _spec, log
from geopeft.limits import DEFAULT as DEFAULT_LIMITS


def cmd_synthesize(args: argparse.Namespace) -> None:
    """``geopeft synthesize``: write the embedded synthetic Sentinel-2 world.

    Args:
        args: ``spec`` (``data.synthetic`` as JSON), ``ms``/``rgb`` (EuroSAT folders),
            ``ms_source``/``rgb_source`` (pretraining source sets), ``world`` (DATASET, FOLDER).
    """
    from geopeft.data.synthetic import WorldSpec, generate_eurosat, generate_source

    s = _spec(args.spec)
    spec = WorldSpec(**{k: s[k] for k in ("seed", "n_samples", "source_samples", "size",
                                          "cloud_fraction", "noise") if k in s})
    if args.world:
        from geopeft.data.synthetic import write_world

        log.info("%s world: %s", args.world[0], write_world(args.world[0], Path(args.world[1]), spec))
    if not (args.ms or args.rgb):
        return
    summary = generate_eurosat(spec, _opt_path(args.ms), _opt_path(args.rgb))
    log.info("target world: %s", summary)
    if args.ms_source or args.rgb_source:
        log.info("source set: %s", generate_source(spec, _opt_path(args.ms_source),
                                                   _opt_path(args.rgb_source)))


def cmd_prepare(args: argparse.Namespace) -> None:
    """``geopeft prepare``: a raw dataset folder to a zarr store.

    Args:
        args: ``dataset``, ``raw``, ``bands`` (comma-separated), ``out``, ``threads``, ``options``
            (source options as JSON), ``max_raster_values`` (the study's limit).
    """
    from geopeft.data.prepare import prepare
    from geopeft.limits import Limits

    opts = _spec(args.options) if args.options else {}
    limits = Limits(**({"max_raster_values": args.max_raster_values}
                       if args.max_raster_values is not None else {}))
    prepare(args.dataset, Path(args.raw), args.bands.split(","), Path(args.out), args.threads, opts,
            limits)


def cmd_download(args: argparse.Namespace) -> None:
    """``geopeft download``: one file of a real dataset, verified and resumable.

    Args:
        args: ``dataset``, ``file`` (the remote's name), ``out``, ``spec`` (mirrors and remotes as
            JSON), ``retries``.
    """
    from geopeft.data.fetch import download_file

    s = _spec(args.spec) if args.spec else {}
    download_file(args.dataset, args.file, Path(args.out), s.get("mirrors"), s.get("remotes"),
                  retries=args.retries)


def cmd_fetch(args: argparse.Namespace) -> None:
    """``geopeft fetch``: assemble a dataset's raw folder from its downloaded files.

    Args:
        args: ``dataset``, ``files``, ``out``, ``max_extract_bytes``.
    """
    from geopeft.data.fetch import assemble

    assemble(args.dataset, [Path(f) for f in args.files], Path(args.out), args.max_extract_bytes)


def cmd_subset(args: argparse.Namespace) -> None:
    """``geopeft subset``: the label-fraction subset of a store's train split.

    Args:
        args: ``store``, ``fraction``, ``seed``, ``method``, ``out``.
    """
    from geopeft.data.subsets import write_subset

    write_subset(Path(args.store), args.fraction, args.seed, args.method, Path(args.out))


def add_commands(sub: Any) -> None:
    """Data commands: the embedded world, downloads, raw folders, zarr stores, subsets."""
    s = sub.add_parser("synthesize", help="generate the embedded synthetic Sentinel-2 world")
    s.add_argument("--spec", required=True, help="data.synthetic as JSON")
    s.add_argument("--ms", help="output folder for EuroSAT-MS")
    s.add_argument("--rgb", help="output folder for EuroSAT-RGB")
    s.add_argument("--ms-source", help="output folder for the MS pretraining source set")
    s.add_argument("--rgb-source", help="output folder for the RGB pretraining source set")
    s.add_argument("--world", nargs=2, metavar=("DATASET", "FOLDER"),
                   help="write the embedded world of a dataset in its publisher's layout "
                        "(a dataset whose source names its world writer) into FOLDER")
    s.set_defaults(func=cmd_synthesize)

    s = sub.add_parser("prepare", help="raw dataset -> zarr store (bands, splits, norm stats)")
    s.add_argument("--dataset", required=True)
    s.add_argument("--raw", required=True)
    s.add_argument("--bands", required=True, help="comma-separated band names, e.g. B04,B03,B02")
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--options", help="source options as JSON (resampling, folds, skip_corrupt, ...)")
    s.add_argument("--max-raster-values", type=int, help="largest file read, in values (the "
                   "study's limits.max_raster_values; default: its default)")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("download", help="download one file of a real dataset (verified, resumable)")
    s.add_argument("--dataset", required=True)
    s.add_argument("--file", required=True, help="the remote's file name")
    s.add_argument("--out", required=True)
    s.add_argument("--spec", help="JSON with optional 'mirrors' and 'remotes'")
    s.add_argument("--retries", type=int, default=5)
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("fetch", help="assemble the raw folder from downloaded files")
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--max-extract-bytes", type=int, default=DEFAULT_LIMITS.max_extract_bytes,
                   help="the most one archive may unpack to (limits.max_extract_bytes)")
    s.add_argument("files", nargs="+")
    s.set_defaults(func=cmd_fetch)

    s = sub.add_parser("subset", help="label-fraction subset of the train split")
    s.add_argument("--store", required=True)
    s.add_argument("--fraction", type=float, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--method", default="stratified")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_subset)

