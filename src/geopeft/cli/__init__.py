"""``geopeft`` command line: the entry points Snakemake rules call (each usable on its own).

Job specs are passed as JSON (``--spec '{...}'`` or ``--spec @file.json``) so that a rule hands a
job exactly the part of the configuration it depends on: editing one study row changes one job's
spec, and Snakemake reruns only that job and the aggregates.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from geopeft.cli import data, results, study, training
from geopeft.cli.common import EXIT_PREEMPTED

__all__ = ["EXIT_PREEMPTED", "JOBSERVER_PRELOAD", "build_parser", "cmd_jobserver", "main"]


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


def _jobserver_command(sub: Any) -> None:
    """The job server's command, next to :func:`main`, which it runs for each job it forks (a
    module of the package importing ``main`` back would be an import cycle)."""
    s = sub.add_parser("jobserver", help="fork pretrain/train/evaluate jobs from one warm process")
    s.add_argument("--socket", required=True, help="Unix socket to serve on (in a private folder)")
    s.add_argument("--parent", type=int, help="exit when this process (Snakemake) is gone")
    s.set_defaults(func=cmd_jobserver)


def build_parser() -> argparse.ArgumentParser:
    """The ``geopeft`` argument parser, every sub-command with its options."""
    p = argparse.ArgumentParser(prog="geopeft", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    study.add_commands(sub)
    data.add_commands(sub)
    training.add_commands(sub)
    _jobserver_command(sub)
    results.add_commands(sub)
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
        from geopeft.process import note_snakemake

        note_snakemake()  # before any wait: a Snakemake killed meanwhile still stops the job
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
