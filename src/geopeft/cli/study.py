"""Commands about a study: ``validate``, ``plan``, ``steptimes``, ``rehearse``,
``rehearsal-server`` and ``backbones``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from geopeft.cli.common import _config_overrides
from geopeft.layout import FIXTURES, RUN_RECORD, FixtureLayout


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
        from geopeft.config.protocol import card_lines, protocol_record
        from geopeft.models.summary import describe_spec, format_row
        from geopeft.plan import job_resources

        print("\n".join(job_resources(cfg)))
        for s in config.job_specs(cfg):
            print(format_row(describe_spec(s)))
        print("\n".join(card_lines(protocol_record(cfg))))
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
    switch = "rehearsal=true" if args.dir == FIXTURES else f"rehearsal={args.dir}"
    switches = [switch, f"rehearsal_gpus={args.gpus}"] if args.gpus else [switch]
    cmd = [sys.executable, "-m", "snakemake", "--cores", args.cores, "--configfile", args.study,
           "--config", *switches, *extra]
    # url weights download into a torch hub cache of the rehearsal's own, not the user's
    # and the jobs find this environment's geopeft, however this command was started
    env = dict(os.environ, TORCH_HOME=str(FixtureLayout(folder).torch_home.resolve()),
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


def add_commands(sub: Any) -> None:
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
                   help="overrides, read by snakemake's own --config parser")
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
                   help="overrides, read by snakemake's own --config parser")
    s.add_argument("--measured", nargs="+", action="extend", default=[], metavar="PATH",
                   help=f"measured step times: {RUN_RECORD} files, folders of runs (e.g. a "
                        "rehearsal's results/<study>_rehearsal/runs), step-time files "
                        "(geopeft steptimes)")
    s.add_argument("--measured-kind", help=f"the GPU kind the {RUN_RECORD} files among --measured "
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
                                   f"measured out of their {RUN_RECORD} and write a step-time file "
                                   "for geopeft plan --measured.")
    s.add_argument("runs", nargs="+", help=f"{RUN_RECORD} files or folders of runs")
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
    s.add_argument("--dir", default=FIXTURES, help=f"fixture folder (default {FIXTURES})")
    s.add_argument("--cores", default="all", help="snakemake --cores (default all)")
    s.add_argument("--gpus", type=int, default=0,
                   help="GPUs per training job (default 0: CPU jobs of one thread; 1 on a GPU "
                        "machine rehearses the CUDA path)")
    s.set_defaults(func=cmd_rehearse)

    s = sub.add_parser("rehearsal-server",
                       help="serve rehearsal fixtures on 127.0.0.1 until stopped")
    s.add_argument("--study", nargs="+", help="study files whose fixtures to write (default: "
                                              "the real studies in config/studies)")
    s.add_argument("--dir", default=FIXTURES, help=f"fixture folder (default {FIXTURES})")
    s.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    s.set_defaults(func=cmd_rehearsal_server)

    s = sub.add_parser("backbones", help="list the backbone zoo (grid, width, bands, normalisation)")
    s.add_argument("--long", action="store_true", help="add descriptions")
    s.set_defaults(func=cmd_backbones)

