"""What the ``geopeft`` commands share: job-spec and path arguments, ``--config`` overrides, the
GPU claim and the ``--gpus``/``--mem-mb`` options of the commands that run a model."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

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
    """``--config KEY=VALUE`` pairs exactly as Snakemake reads them (its own parser: a key is an
    identifier, a value a number, True/False, or YAML whose leaves stay strings); the study's
    resolution then types the values as the schema does (geopeft.config.coerce_overrides)."""
    if not items:
        return {}
    from snakemake.cli import parse_config

    try:
        return parse_config(items)
    except ValueError as err:
        raise SystemExit(f"geopeft: error: --config {' '.join(items)}: {err}") from None


def _claim_gpus(device: str, gpus: int) -> None:
    """Give this job its own GPU(s) before CUDA starts (workstations; SLURM sets them itself)."""
    if device != "cpu" and gpus > 0:
        from geopeft.gpus import claim

        claim(gpus)


def _resource_arguments(s: argparse.ArgumentParser) -> None:
    """Add ``--gpus`` and ``--mem-mb``, the options of the commands that run a model (pretrain,
    train, evaluate): the GPUs to claim and the job's memory."""
    s.add_argument("--gpus", type=int, default=1, help="GPUs to claim when CUDA is used (0: none)")
    s.add_argument("--mem-mb", type=float,
                   help="the job's memory (resources.mem_mb): splits that would take over half "
                        "of it (or of the cgroup/SLURM limit, or available memory) stream")
