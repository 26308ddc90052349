"""``geopeft`` command line: the entry points Snakemake rules call (each usable on its own).

Job specs are passed as JSON (``--spec '{...}'`` or ``--spec @file.json``) so that a rule hands a
job exactly the part of the configuration it depends on: editing one study row changes one job's
spec, and Snakemake reruns only that job and the aggregates.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("geopeft")
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on SIGTERM with a checkpoint; rerun to resume


def _spec(text: str) -> dict[str, Any]:
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"geopeft: error: --spec is not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise SystemExit("geopeft: error: --spec must be a JSON object")
    return obj


def _opt_path(p: str | None) -> Path | None:
    return Path(p) if p else None


def _config_overrides(items: list[str]) -> dict[str, Any]:
    """``--config KEY=VALUE`` pairs as Snakemake reads them (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"geopeft validate: error: --config {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def cmd_validate(args: argparse.Namespace) -> None:
    """``geopeft validate``: resolve a study as Snakemake does and print its rows.

    Args:
        args: ``configfile`` (study files), ``config`` (KEY=VALUE overrides), ``resolved`` (print what
            each row really runs), ``json`` (the same as JSON).
    """
    from geopeft import config

    cfg = config.resolve(args.configfile, _config_overrides(args.config))
    rows = config.study_rows(cfg)
    where = ", ".join(args.configfile) or config.DEFAULT_STUDY
    if args.json:
        from geopeft.models.summary import describe_spec

        print(json.dumps([describe_spec(s) for s in config.job_specs(cfg)], indent=1))
        return
    print(f"{where}: valid; study {cfg['study']!r} with {len(rows)} runs")
    if args.resolved:
        from geopeft.models.summary import describe_spec, format_row
        from geopeft.plan import job_resources

        print("\n".join(job_resources(cfg)))
        for s in config.job_specs(cfg):
            print(format_row(describe_spec(s)))
        return
    for r in rows:
        print(f"  {r['name']}: {r['method']}, fraction {r['label_fraction']:g}, seed {r['seed']}")


def cmd_plan(args: argparse.Namespace) -> None:
    """``geopeft plan``: jobs per rule, GPU-hours, wall time, runtime flags and SLURM overhead of
    a study, from measured step times (:mod:`geopeft.plan`).

    Args:
        args: ``configfile``, ``config``, ``measured``, ``measured_kind``, ``gpu_kind``, ``gpus``,
            ``profile``, ``slurm_overhead``.
    """
    from geopeft.plan import format_plan, make_plan

    plan = make_plan(args.configfile, _config_overrides(args.config), args.measured,
                     args.measured_kind, args.gpu_kind, args.gpus,
                     None if args.profile == "none" else args.profile, args.slurm_overhead)
    print(format_plan(plan))


def cmd_steptimes(args: argparse.Namespace) -> None:
    """``geopeft steptimes``: the step times finished runs measured, as a step-time file for
    ``geopeft plan --measured``.

    Args:
        args: ``runs`` (run.json files or folders), ``kind``, ``note``, ``out``.
    """
    from geopeft.plan import load_measurements, write_steptimes

    steps = load_measurements(args.runs, args.kind)
    write_steptimes(steps, args.out, args.note)
    print(f"{args.out}: {len(steps)} step times measured on {', '.join(sorted({s.kind for s in steps}))}")


def cmd_rehearsal_server(args: argparse.Namespace) -> None:
    """``geopeft rehearsal-server``: write the fixtures of studies and serve them on 127.0.0.1.

    Args:
        args: ``study`` (study files; default the real studies), ``dir``, ``port``.
    """
    import signal
    import threading

    from geopeft.rehearsal import FixtureServer, prepare_study

    studies = args.study or [str(p) for p in sorted(Path("config/studies").glob("*.yaml"))
                          if "embedded" not in p.name]
    prepare_study(studies, Path(args.dir))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FixtureServer(Path(args.dir), args.port) as srv:
        print(f"rehearsal fixtures of {', '.join(studies)} served at {srv.url} (from {args.dir}/); "
              f"run: snakemake --cores all --configfile <study> --config rehearsal=true", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


def cmd_rehearse(args: argparse.Namespace) -> None:
    """``geopeft rehearse``: a real study's rehearsal, fixtures served for the run's duration.

    Args:
        args: ``study``, ``dir`` (fixture folder), ``cores``, ``snakemake_args``.
    """
    import os
    import subprocess

    from geopeft.rehearsal import FixtureServer, prepare_study

    folder = Path(args.dir)
    extra = args.snakemake_args
    prepare_study([args.study], folder)
    switch = "rehearsal=true" if args.dir == ".rehearsal" else f"rehearsal={args.dir}"
    switches = [switch, f"rehearsal_gpus={args.gpus}"] if args.gpus else [switch]
    cmd = [sys.executable, "-m", "snakemake", "--cores", args.cores, "--configfile", args.study,
           "--config", *switches, *extra]
    # url weights download into a torch hub cache of the rehearsal's own, not the user's
    # and the jobs find this environment's geopeft, however this command was started
    env = dict(os.environ, TORCH_HOME=str((folder / "torch").resolve()),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    with FixtureServer(folder):
        print("rehearsal:", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, env=env)
    if rc != 0:
        raise SystemExit(rc)


def cmd_backbones(args: argparse.Namespace) -> None:
    """``geopeft backbones``: print the backbone zoo as a table.

    Args:
        args: ``long`` (add descriptions).
    """
    from geopeft.models.backbones import describe

    rows = describe()
    cols = ["name", "family", "input", "grid", "width", "bands", "normalisation", "lora_targets",
            "weights"]
    if args.long:
        cols.append("description")
    table = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    for line in [cols, *table]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


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
            (source options as JSON).
    """
    from geopeft.data.prepare import prepare

    opts = _spec(args.options) if args.options else {}
    prepare(args.dataset, Path(args.raw), args.bands.split(","), Path(args.out), args.threads, opts)


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
        args: ``dataset``, ``files``, ``out``.
    """
    from geopeft.data.fetch import assemble

    assemble(args.dataset, [Path(f) for f in args.files], Path(args.out))


def cmd_subset(args: argparse.Namespace) -> None:
    """``geopeft subset``: the label-fraction subset of a store's train split.

    Args:
        args: ``store``, ``fraction``, ``seed``, ``method``, ``out``.
    """
    from geopeft.data.subsets import write_subset

    write_subset(Path(args.store), args.fraction, args.seed, args.method, Path(args.out))


def cmd_mlflow_init(args: argparse.Namespace) -> None:
    """``geopeft mlflow-init``: create the MLflow store and the study's experiment once.

    Args:
        args: ``tracking_uri``, ``experiment``, ``artifact_root``, ``out`` (the experiment file),
            ``datasets`` (the study's: its primary test metrics are the study view's columns).
    """
    from geopeft.data.sources import get_source
    from geopeft.tasks import TASKS
    from geopeft.tracking import init_experiment

    sources = [get_source(d) for d in args.datasets or []]
    metrics = list(dict.fromkeys(f"test_{TASKS[s.task].primary_metric}" for s in sources))
    info = init_experiment(args.tracking_uri, args.experiment, Path(args.artifact_root),
                           Path(args.out), metrics, any(s.time_series for s in sources))
    log.info("MLflow experiment %s (id %s) at %s", args.experiment, info["experiment_id"],
             args.tracking_uri)


def _claim_gpus(device: str, gpus: int) -> None:
    """Give this job its own GPU(s) before CUDA starts (workstations; SLURM sets them itself)."""
    if device != "cpu" and gpus > 0:
        from geopeft.gpus import claim

        claim(gpus)


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
            ``out``, ``state``, ``nproc``, ``gpus``, ``argv`` (this command line).
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
                    Path(args.out), _opt_path(args.pretrain), _opt_path(args.state), args.mem_mb)
    from geopeft.train.distributed import leave_process_group

    leave_process_group()
    h = rec["history"][-1]
    log.info("%s: val score %.4f, %.1f s, %.0f img/s, peak %.0f MiB", spec.row.name,
             h.get("val_score", float("nan")), rec["wall_time_s"], rec["images_per_s"],
             rec["peak_memory_mb"])


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


#: What the job server imports once for the jobs it forks (pretrain, train, evaluate).
JOBSERVER_PRELOAD = (
    "torch", "timm", "peft", "mlflow", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store",
    "zarr", "xarray", "geopeft.train.run", "geopeft.evaluate.run", "mlflow.pyfunc",
    "geopeft.evaluate.pyfunc",
)


def cmd_jobserver(args: argparse.Namespace) -> None:
    """``geopeft jobserver``: fork the training jobs of a local run from one warm process.

    Args:
        args: ``socket`` (the Unix socket to serve on), ``parent`` (exit when this PID is gone).
    """
    from geopeft.jobserver import serve

    serve(args.socket, args.parent, run=main, warm=JOBSERVER_PRELOAD)


def _series_dates(args: argparse.Namespace) -> list[list[int] | None]:
    """Each file's dates: ``--dates`` (one comma-separated list per file, in order) or, for a
    PASTIS ``S2_<ID>.npy``, its ``dates-S2`` in ``--metadata``."""
    from geopeft.data.sources import DataError
    from geopeft.data.sources.pastis import read_geojson
    from geopeft.evaluate.predict import parse_dates

    if args.dates:
        if len(args.dates) != len(args.files):
            raise DataError(f"--dates: {len(args.dates)} lists for {len(args.files)} files "
                            f"(one comma-separated list of YYYYMMDD per file)")
        return [parse_dates(text, f"--dates for {f}") for text, f in zip(args.dates, args.files,
                                                                          strict=True)]
    if args.metadata:
        by_id = {str(m["id"]): m["dates"] for m in read_geojson(Path(args.metadata))}
        out = []
        for f in args.files:
            pid = Path(f).stem.removeprefix("S2_")
            if pid not in by_id:
                raise DataError(f"{f}: patch {pid} is not in {args.metadata}")
            out.append(by_id[pid])
        return out
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
    from geopeft.io import atomic_file

    predictor = Predictor(Path(args.model))
    preds = predictor.predict_files([Path(f) for f in args.files], _series_dates(args))
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
            file: its description gets the summary table).
    """
    from geopeft.paper.aggregate import aggregate

    runs = [Path(r) for r in args.runs]
    rows = aggregate([r / "model" for r in runs], [r / "metrics.json" for r in runs],
                     Path(args.out))
    if args.experiment:
        from geopeft.paper.aggregate import summary_markdown
        from geopeft.tracking import describe_experiment

        describe_experiment(Path(args.experiment), summary_markdown(rows))
    if args.html:
        from geopeft.paper.tables import write_html_table

        write_html_table(Path(args.out), Path(args.html))


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
        args: ``runs_csv``, ``study``, ``out``, and with ``runs_dir`` the per-class report
            (``per_class_tex``, ``per_class_csv``).
    """
    from geopeft.paper.tables import make_table, write_per_class

    make_table(Path(args.runs_csv), Path(args.out), args.study)
    if args.runs_dir:
        write_per_class(Path(args.runs_csv), Path(args.runs_dir), Path(args.per_class_tex),
                        Path(args.per_class_csv))


def _study_commands(sub: Any) -> None:
    """Commands about a study: validate it, plan it, rehearse it, serve rehearsal fixtures, list
    the zoo."""
    s = sub.add_parser(
        "validate", help="resolve a study exactly as snakemake --configfile does; list its rows",
        description="Resolve and validate a study as `snakemake --configfile FILE [--config K=V]` "
                    "does: the study file(s) alone, or config/config.yaml without one, then the "
                    "overrides, then the schema's defaults.")
    s.add_argument("configfile", nargs="*", help="study file(s), merged in order "
                                                 "(none: config/config.yaml)")
    s.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides, as snakemake --config (values read as YAML)")
    s.add_argument("--resolved", action="store_true",
                   help="print what each row really runs: backbone (built by timm, on the meta "
                        "device) and size, weights, strategy, adapter, epochs, batch, lr, "
                        "dataset, bands, label fraction, sequence length")
    s.add_argument("--json", action="store_true", help="the resolved rows as JSON")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser(
        "plan", help="jobs, GPU-hours and wall time of a study before it is launched",
        description="Plan a study before launching it: jobs per rule (as Snakemake expands the "
                    "study), GPU-hours from measured step times x the datasets' real split sizes "
                    "x label fraction x epochs x dates, the wall time on --gpus GPUs of "
                    "--gpu-kind, the jobs that exceed the study's runtime per GPU job, and the "
                    "SLURM overhead one by one vs as job arrays. Without a measurement on the GPU "
                    "kind it gives no hours and says so.")
    s.add_argument("--configfile", nargs="+", action="extend", default=[],
                   help="study file(s), as snakemake --configfile (none: config/config.yaml)")
    s.add_argument("--config", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides, as snakemake --config (values read as YAML)")
    s.add_argument("--measured", nargs="+", action="extend", default=[], metavar="PATH",
                   help="measured step times: run.json files, folders of runs (e.g. a "
                        "rehearsal's results/<study>_rehearsal/runs), step-time files "
                        "(geopeft steptimes)")
    s.add_argument("--measured-kind", help="the GPU kind the run.json files among --measured "
                                           "ran on (CPU runs are cpu)")
    s.add_argument("--gpu-kind", help="the GPU kind to plan for (default: the one measured)")
    s.add_argument("--gpus", type=int, default=1, help="GPUs of that kind (default 1)")
    s.add_argument("--profile", default="profiles/slurm",
                   help="Snakemake cluster profile: retries, job arrays (default profiles/slurm; "
                        "none: no profile)")
    s.add_argument("--slurm-overhead", help="per-job SLURM overhead measured by "
                                            "bench/slurm_overhead.py (default "
                                            "config/measurements/slurm_overhead.json)")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("steptimes", help="step times of finished runs, for geopeft plan",
                       description="Read the step times that finished runs (or a rehearsal) "
                                   "measured out of their run.json and write a step-time file "
                                   "for geopeft plan --measured.")
    s.add_argument("runs", nargs="+", help="run.json files or folders of runs")
    s.add_argument("--kind", help="the GPU kind they ran on (CPU runs: cpu)")
    s.add_argument("--note", required=True, help="how they were measured: machine, threads, date")
    s.add_argument("--out", required=True, help="the step-time file (YAML) to write")
    s.set_defaults(func=cmd_steptimes)

    s = sub.add_parser(
        "rehearse", help="rehearse a real study on this CPU before spending GPU hours",
        description="Write the study's fixtures (its datasets in the publishers' layouts, a few "
                    "dozen samples; its weights as random values in the publishers' checkpoint "
                    "formats) into --dir, serve them on 127.0.0.1 and run `snakemake --cores all "
                    "--configfile STUDY --config rehearsal=true`: the whole DAG through the real "
                    "download and weight-loading paths, 1 epoch, a couple of cells per grid axis. "
                    "Results go to results/<study>_rehearsal; every output says rehearsal. "
                    "Further Snakemake arguments follow `--` (e.g. `-- -n`).")
    s.add_argument("study", help="the study file, e.g. config/studies/eurosat_lora.yaml")
    s.add_argument("--dir", default=".rehearsal", help="fixture folder (default .rehearsal)")
    s.add_argument("--cores", default="all", help="snakemake --cores (default all)")
    s.add_argument("--gpus", type=int, default=0,
                   help="GPUs per training job (default 0: CPU jobs of one thread; 1 on a GPU "
                        "machine rehearses the CUDA path)")
    s.set_defaults(func=cmd_rehearse)

    s = sub.add_parser("rehearsal-server",
                       help="serve rehearsal fixtures on 127.0.0.1 until stopped")
    s.add_argument("--study", nargs="+", help="study files whose fixtures to write (default: "
                                              "the real studies in config/studies)")
    s.add_argument("--dir", default=".rehearsal", help="fixture folder (default .rehearsal)")
    s.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    s.set_defaults(func=cmd_rehearsal_server)

    s = sub.add_parser("backbones", help="list the backbone zoo (grid, width, bands, normalisation)")
    s.add_argument("--long", action="store_true", help="add descriptions")
    s.set_defaults(func=cmd_backbones)


def _data_commands(sub: Any) -> None:
    """Data commands: the embedded world, downloads, raw folders, zarr stores, subsets."""
    s = sub.add_parser("synthesize", help="generate the embedded synthetic Sentinel-2 world")
    s.add_argument("--spec", required=True, help="data.synthetic as JSON")
    s.add_argument("--ms", help="output folder for EuroSAT-MS")
    s.add_argument("--rgb", help="output folder for EuroSAT-RGB")
    s.add_argument("--ms-source", help="output folder for the MS pretraining source set")
    s.add_argument("--rgb-source", help="output folder for the RGB pretraining source set")
    s.add_argument("--world", nargs=2, metavar=("DATASET", "FOLDER"),
                   help="write the embedded world of a dataset in its publisher's layout "
                        "(bigearthnet_s2, pastis) into FOLDER")
    s.set_defaults(func=cmd_synthesize)

    s = sub.add_parser("prepare", help="raw dataset -> zarr store (bands, splits, norm stats)")
    s.add_argument("--dataset", required=True)
    s.add_argument("--raw", required=True)
    s.add_argument("--bands", required=True, help="comma-separated band names, e.g. B04,B03,B02")
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--options", help="source options as JSON (resampling, folds, skip_corrupt, ...)")
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
    s.add_argument("files", nargs="+")
    s.set_defaults(func=cmd_fetch)

    s = sub.add_parser("subset", help="label-fraction subset of the train split")
    s.add_argument("--store", required=True)
    s.add_argument("--fraction", type=float, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--method", default="stratified")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_subset)


def _training_commands(sub: Any) -> None:
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
    s.add_argument("--backend-store-uri", default="sqlite:///results/mlflow.db",
                   help="sqlite:///path.db or postgresql://user@host/db")
    s.add_argument("--artifacts-destination", default="results/mlartifacts")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=5000)
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=cmd_mlflow_server)

    s = sub.add_parser("pretrain", help="pretrain the embedded backbone on the source set")
    s.add_argument("--spec", required=True)
    s.add_argument("--store", required=True)
    s.add_argument("--experiment", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--gpus", type=int, default=1, help="GPUs to claim when CUDA is used (0: none)")
    s.add_argument("--mem-mb", type=float,
                   help="the job's memory (resources.mem_mb): splits that would take over half "
                        "of it (or of the cgroup/SLURM limit, or available memory) stream")
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("train", help="train one study row")
    s.add_argument("--spec", required=True)
    s.add_argument("--store", required=True)
    s.add_argument("--subset")
    s.add_argument("--pretrain")
    s.add_argument("--experiment", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--state", help="folder for resumable training state (checkpoints, MLflow run id)")
    s.add_argument("--nproc", type=int, default=0,
                   help="processes (DDP under torchrun); default: --gpus when above 1 on CUDA")
    s.add_argument("--gpus", type=int, default=1, help="GPUs to claim when CUDA is used (0: none)")
    s.add_argument("--mem-mb", type=float,
                   help="the job's memory (resources.mem_mb): splits that would take over half "
                        "of it (or of the cgroup/SLURM limit, or available memory) stream")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="test-split metrics of a trained run")
    s.add_argument("--model", required=True)
    s.add_argument("--store", required=True)
    s.add_argument("--pretrain")
    s.add_argument("--experiment")
    s.add_argument("--metrics", required=True)
    s.add_argument("--confusion", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--gpus", type=int, default=1, help="GPUs to claim when CUDA is used (0: none)")
    s.add_argument("--mem-mb", type=float,
                   help="the job's memory (resources.mem_mb): splits that would take over half "
                        "of it (or of the cgroup/SLURM limit, or available memory) stream")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("jobserver", help="fork pretrain/train/evaluate jobs from one warm process")
    s.add_argument("--socket", required=True, help="Unix socket to serve on (in a private folder)")
    s.add_argument("--parent", type=int, help="exit when this process (Snakemake) is gone")
    s.set_defaults(func=cmd_jobserver)


def _results_commands(sub: Any) -> None:
    """Result commands: inference, the runs table, figures and the LaTeX table."""
    s = sub.add_parser(
        "predict", help="a trained run on files in its dataset's format: CSV of the predictions",
        description="Apply a trained run to samples in its dataset's format (EuroSAT-MS 13-band "
        "GeoTIFF; EuroSAT-RGB JPEG/PNG; a BigEarthNet patch folder or .zip; a PASTIS S2_<ID>.npy "
        "with its dates). CSV columns: multi-class file, prediction, probability, top-k; "
        "multi-label file, labels (every class with probability >= 0.5), top-k; segmentation "
        "file, classes (share of the map's pixels), map (the .npy written with --maps).")
    s.add_argument("--model", required=True, help="a run's model folder (results/<study>/runs/"
                   "<run>/model)")
    s.add_argument("--top-k", type=int, default=3, help="classes listed per file with their "
                   "probabilities (default 3)")
    s.add_argument("--out", help="CSV file (default: standard output)")
    s.add_argument("--dates", action="append", help="time series: the file's acquisition dates, "
                   "YYYYMMDD separated by commas; once per file, in order")
    s.add_argument("--metadata", help="time series: PASTIS metadata.geojson, whose dates-S2 give "
                   "each S2_<ID>.npy's dates")
    s.add_argument("--maps", help="segmentation: write each file's class map (uint8 class "
                   "indices, H x W) as <name>.npy into this folder")
    s.add_argument("files", nargs="+", help="samples in the run's dataset format")
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
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("paper", help="the paper: a section per study from its results (latexmk)")
    s.add_argument("--results", nargs="+", required=True,
                   help="each study's results folder (results/<study>), in paper order")
    s.add_argument("--out", required=True, help="the PDF to write (paper/main.pdf)")
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
    s.set_defaults(func=cmd_table)


def build_parser() -> argparse.ArgumentParser:
    """The ``geopeft`` argument parser, every sub-command with its options."""
    p = argparse.ArgumentParser(prog="geopeft", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    _study_commands(sub)
    _data_commands(sub)
    _training_commands(sub)
    _results_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one ``geopeft`` command.

    Args:
        argv: the arguments (default: this process's).

    Returns:
        The exit status: 0, 2 for an error geopeft names (config, data, weights, download,
        archive, tracking, a NaN loss, a missing file), 75 when training stopped on SIGTERM.
    """
    # the base classes only: a command imports what it uses (torch for the training commands)
    from geopeft.errors import GeopeftError
    from geopeft.train.resume import Preempted

    given = list(sys.argv[1:] if argv is None else argv)
    # what follows `--` goes to Snakemake (geopeft rehearse), whatever the options' order
    cut = given.index("--") if "--" in given else len(given)
    parser = build_parser()
    args = parser.parse_args(given[:cut])
    args.snakemake_args = given[cut + 1 :]
    if args.snakemake_args and args.command != "rehearse":
        parser.error(f"geopeft {args.command} takes no arguments after --")
    args.argv = given
    if argv is None:  # a process of its own: a local run's job server may run it warm
        from geopeft.jobserver import run_remote

        status = run_remote(args.command, args.argv)
        if status is not None:
            return status
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except (GeopeftError, FileNotFoundError) as err:
        print(f"geopeft {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Preempted as err:
        print(f"geopeft {args.command}: preempted: {err}", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
