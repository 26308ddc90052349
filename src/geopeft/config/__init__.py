"""Configuration: load, validate once against the JSON-Schema, fill defaults, resolve study rows.

The schema lives in ``workflow/schemas/config.schema.yaml`` (shipped inside the wheel as
``geopeft/schemas``). The Snakefile and every CLI entry point go through :func:`validate`, so a
bad key or value fails early with one message naming the file, the key path and the value.

The package's parts: :mod:`~geopeft.config.checks` (schema and semantic checks),
:mod:`~geopeft.config.rows` (rows and job specs), :mod:`~geopeft.config.rehearse` (the rehearsal
rewrite); this module reads and resolves the study files and re-exports their public names.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from geopeft.config.checks import coerce_overrides, load_schema, schema_path, validate
from geopeft.config.protocol import protocol_record
from geopeft.config.rehearse import (
    REHEARSAL_DIR,
    REHEARSAL_LIMITS,
    REHEARSAL_MAX_DATES,
    rehearsal_dir,
    rehearse,
)
from geopeft.config.rows import (
    SYNTHETIC_DATASETS,
    TIME_SERIES_DATASETS,
    TRAINABLE_DATASETS,
    WORLD_DATASETS,
    bands_id,
    base_spec,
    data_layout,
    features_rows,
    is_series,
    job_spec,
    job_specs,
    pretrain_source,
    pretrain_spec,
    report_task,
    row_backbone,
    study_datasets,
    study_rows,
    tracking_uri,
    trainable,
    uses_backbone,
    view_columns,
)
from geopeft.data.sources.generic import ENV as GENERIC_ENV
from geopeft.spec import ConfigError

#: The default study: what ``snakemake`` runs when no study file is given.
DEFAULT_STUDY = "config/config.yaml"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """One config file as a mapping; errors name the file."""
    path = Path(path)
    try:
        with open(path) as fh:
            cfg = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping, got {type(cfg).__name__}")
    return cfg


def resolve(configfiles: list[str | Path] | tuple[str | Path, ...] = (),
            overrides: dict[str, Any] | None = None,
            default: str | Path = DEFAULT_STUDY) -> dict[str, Any]:
    """The whole study, resolved exactly as ``snakemake [--configfile F ...] [--config k=v ...]``.

    The layering rule: **a study file plus the schema's defaults is the whole study.** The
    default study (``config/config.yaml``) is read only when no study file is given; several
    study files are deep-merged in order; ``--config`` overrides come last; then the schema fills
    every key left out. The Snakefile and ``geopeft validate`` both call this function.

    Args:
        configfiles: the ``--configfile`` files, in order (empty: the default study).
        overrides: the ``--config`` mapping, applied after the files.
        default: the default study's path.

    Returns:
        The validated configuration with defaults filled in.

    Raises:
        ConfigError: naming the file(s), the key path and the value.
    """
    files = [Path(f) for f in configfiles] or [Path(default)]
    cfg: dict[str, Any] = {}
    for f in files:
        _merge(cfg, read_yaml(f))
    if overrides:  # as the schema types them: Snakemake passes nested values as strings
        _merge(cfg, coerce_overrides(copy.deepcopy(dict(overrides)), load_schema()))
    where = ", ".join(map(str, files))
    for key in ("rehearsal", "jobserver"):  # rehearsal=true: the flag, not a folder "true"
        flag = cfg.get(key)
        if isinstance(flag, str) and flag.lower() in ("true", "false", "yes", "no"):
            cfg[key] = flag.lower() in ("true", "yes")
    cfg = validate(cfg, where)
    if cfg["rehearsal"]:
        cfg = validate(rehearse(cfg, where), where)
    return cfg


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read one study file, apply ``overrides`` (recursive), validate and return it.

    Args:
        path: the study file.
        overrides: ``--config``-style overrides, applied after the file.
    """
    return resolve([path], overrides)


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> None:
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v




__all__ = ["DEFAULT_STUDY", "REHEARSAL_DIR", "REHEARSAL_LIMITS", "REHEARSAL_MAX_DATES",
           "SYNTHETIC_DATASETS", "TIME_SERIES_DATASETS", "TRAINABLE_DATASETS", "WORLD_DATASETS",
           "features_rows", "is_series",
           "GENERIC_ENV", "trainable",
           "ConfigError", "bands_id", "base_spec", "data_layout", "job_spec", "job_specs", "load",
           "load_schema",
           "pretrain_source", "pretrain_spec", "protocol_record", "read_yaml", "rehearsal_dir", "rehearse",
           "report_task", "resolve", "row_backbone", "schema_path", "study_datasets", "study_rows",
           "tracking_uri", "uses_backbone", "validate", "view_columns"]
