"""Tracking and training commands: ``mlflow-init``, ``mlflow-server``, ``pretrain``, ``train``
and ``evaluate``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from geopeft.cli.common import EXIT_PREEMPTED, _claim_gpus, _opt_path, _resource_arguments, _spec, log
from geopeft.layout import RESULTS, TrackingLayout


def cmd_mlflow_init(args: argparse.Namespace) -> None:
    """``geopeft mlflow-init``: create the MLflow store and the study's experiment once.

    Args:
        args: ``tracking_uri``, ``experiment``, ``artifact_root``, ``out`` (the experiment file),
            ``datasets`` (the study's: its primary test metrics are the study view's columns).
    """
    from geopeft.config import view_columns
    from geopeft.tracking import init_experiment

    metrics, time_series = view_columns(args.datasets or [])
    info = init_experiment(args.tracking_uri, args.experiment, Path(args.artifact_root),
                           Path(args.out), metrics, time_series)
    log.info("MLflow experiment %s (id %s) at %s", args.experiment, info["experiment_id"],
             args.tracking_uri)


def cmd_mlflow_server(args: argparse.Namespace) -> None:
    """``geopeft mlflow-server``: run an MLflow tracking server for jobs that log over HTTP.

    Args:
        args: ``backend_store_uri``, ``artifacts_destination``, ``host``, ``port``, ``workers``.
    """
    from geopeft.tracking import serve

    raise SystemExit(serve(args.backend_store_uri, Path(args.artifacts_destination), args.host, args.port,
                           args.workers))


def cmd_pretrain(args: argparse.Namespace) -> None:
    """``geopeft pretrain``: pretrain the embedded backbone on the source set.

    Args:
        args: ``spec`` (the pretrain spec as JSON), ``store``, ``experiment``, ``out``, ``gpus``.
    """
    from geopeft.spec import PretrainSpec
    from geopeft.train.run import pretrain

    _claim_gpus("auto", args.gpus)
    pretrain(PretrainSpec.from_dict(_spec(args.spec), "--spec"), Path(args.store), Path(args.experiment),
             Path(args.out), args.mem_mb)


def _torchrun(args: argparse.Namespace, device: str) -> int | None:
    """Multi-process training: relaunch under torchrun (returns its exit code), or, inside
    torchrun, join the process group and return None."""
    import os

    from geopeft.train.distributed import join_process_group, relaunch

    if "LOCAL_RANK" in os.environ:
        from geopeft.train.resume import stop_when_orphaned

        join_process_group(device)
        stop_when_orphaned(EXIT_PREEMPTED)
        return None
    nproc = args.nproc or (args.gpus if device != "cpu" and args.gpus > 1 else 1)
    return relaunch(args.argv, nproc) if nproc > 1 else None


def cmd_train(args: argparse.Namespace) -> None:
    """``geopeft train``: train one study row (under torchrun with ``--nproc`` above 1).

    Args:
        args: ``spec`` (the job spec as JSON), ``store``, ``subset``, ``pretrain``, ``experiment``,
            ``out``, ``state``, ``attempt``, ``nproc``, ``gpus``, ``argv`` (this command line).
    """
    from geopeft.spec import JobSpec
    from geopeft.train.run import train_row

    spec = JobSpec.from_dict(_spec(args.spec), "--spec")
    device = spec.train_args().device
    if args.state and "LOCAL_RANK" not in os.environ:  # the launcher holds it for its workers
        from geopeft.train.resume import lock_run, stop_when_snakemake_is_gone

        lock_run(Path(args.state))
        stop_when_snakemake_is_gone()
    _claim_gpus(device, args.gpus)
    rc = _torchrun(args, device)
    if rc is not None:
        if rc == EXIT_PREEMPTED:
            from geopeft.train.resume import Preempted

            raise Preempted("a training process stopped on SIGTERM; rerun to resume")
        if rc:
            raise SystemExit(rc)
        return
    rec = train_row(spec, Path(args.store), _opt_path(args.subset), Path(args.experiment),
                    Path(args.out), _opt_path(args.pretrain), _opt_path(args.state), args.mem_mb,
                    args.attempt, _opt_path(args.features))
    from geopeft.train.distributed import leave_process_group

    leave_process_group()
    h = rec["history"][-1]
    log.info("%s: val score %.4f, %.1f s, %.0f img/s, peak %.0f MiB", spec.row.name,
             h.get("val_score", float("nan")), rec["wall_time_s"], rec["images_per_s"],
             rec["peak_memory_mb"])


def cmd_features(args: argparse.Namespace) -> None:
    """``geopeft features``: a frozen encoder's features of every sample of a store.

    Args:
        args: ``spec`` (the job spec of a row that uses them), ``store``, ``pretrain``, ``out``,
            ``gpus``.
    """
    from geopeft.spec import JobSpec
    from geopeft.train.run import make_features

    spec = JobSpec.from_dict(_spec(args.spec), "--spec")
    _claim_gpus(spec.train_args().device, args.gpus)
    a = make_features(spec, Path(args.store), Path(args.out), _opt_path(args.pretrain))
    log.info("%s: %d samples x %d views, dim %d, in %.1f s on %s", args.out, a["samples"],
             a["views"], a["dim"], a["seconds"], a["device"])


def cmd_evaluate(args: argparse.Namespace) -> None:
    """``geopeft evaluate``: test-split metrics of a saved model.

    Args:
        args: ``model``, ``store``, ``pretrain``, ``experiment``, ``metrics``, ``confusion``,
            ``threads``, ``gpus``, ``mem_mb``.
    """
    from geopeft.evaluate.run import evaluate

    _claim_gpus("auto", args.gpus)
    m = evaluate(Path(args.model), Path(args.store), _opt_path(args.experiment), Path(args.metrics),
                 Path(args.confusion), _opt_path(args.pretrain), args.threads, args.mem_mb)
    log.info("%s: test %s %.4f", m["run"], m["primary_metric"], m["primary"])


def add_commands(sub: Any) -> None:
    """Tracking and training commands: MLflow, pretraining, training, evaluation."""
    s = sub.add_parser("mlflow-init", help="create the MLflow DB and experiment once")
    s.add_argument("--tracking-uri", required=True)
    s.add_argument("--experiment", required=True)
    s.add_argument("--artifact-root", required=True)
    s.add_argument("--datasets", nargs="*", help="the study's datasets: the study view shows "
                   "their primary test metrics")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_mlflow_init)

    s = sub.add_parser("mlflow-server", help="run an MLflow tracking server (jobs log over HTTP)")
    s.add_argument("--backend-store-uri", default=TrackingLayout(RESULTS).uri,
                   help="sqlite:///path.db or postgresql://user@host/db")
    s.add_argument("--artifacts-destination", default=TrackingLayout(RESULTS).artifacts)
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=5000)
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=cmd_mlflow_server)

    s = sub.add_parser("pretrain", help="pretrain the embedded backbone on the source set")
    s.add_argument("--spec", required=True)
    s.add_argument("--store", required=True)
    s.add_argument("--experiment", required=True)
    s.add_argument("--out", required=True)
    _resource_arguments(s)
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("train", help="train one study row")
    s.add_argument("--spec", required=True)
    s.add_argument("--store", required=True)
    s.add_argument("--subset")
    s.add_argument("--pretrain")
    s.add_argument("--experiment", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--state", help="folder for resumable training state (checkpoints, MLflow run id)")
    s.add_argument("--attempt", type=int, default=1,
                   help="Snakemake's attempt of the job: a retry of settings whose training "
                        "diverged (recorded in --state) stops at once with the same error")
    s.add_argument("--nproc", type=int, default=0,
                   help="processes (DDP under torchrun); default: --gpus when above 1 on CUDA")
    s.add_argument("--features", help="the frozen encoder's features (geopeft features): the "
                                      "head trains on them")
    _resource_arguments(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("features", help="a frozen encoder's features of every sample of a "
                                        "store, read by the rows that probe it")
    s.add_argument("--spec", required=True, help="the job spec of a row that uses them")
    s.add_argument("--store", required=True)
    s.add_argument("--pretrain")
    s.add_argument("--out", required=True)
    _resource_arguments(s)
    s.set_defaults(func=cmd_features)

    s = sub.add_parser("evaluate", help="test-split metrics of a trained run")
    s.add_argument("--model", required=True)
    s.add_argument("--store", required=True)
    s.add_argument("--pretrain")
    s.add_argument("--experiment")
    s.add_argument("--metrics", required=True)
    s.add_argument("--confusion", required=True)
    s.add_argument("--threads", type=int, default=1)
    _resource_arguments(s)
    s.set_defaults(func=cmd_evaluate)
