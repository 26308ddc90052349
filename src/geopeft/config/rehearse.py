"""The rehearsal of a study: the same DAG and code paths on fixtures, only smaller."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from geopeft.config.rows import _backbones, _fmt_fraction, study_datasets, uses_backbone
from geopeft.layout import FIXTURES, FixtureLayout, rehearsal_data
from geopeft.spec import ConfigError

#: Where ``geopeft rehearsal-server`` writes fixtures, their manifest and its address.
REHEARSAL_DIR = FIXTURES
#: The most a rehearsal trains: epochs, batch, evaluation batch.
REHEARSAL_LIMITS = {"epochs": 1, "batch_size": 8, "eval_batch_size": 16}
#: The longest series a rehearsal trains on (see :func:`_rehearsal_rows`).
REHEARSAL_MAX_DATES = 6


def rehearsal_dir(cfg: dict[str, Any]) -> Path:
    """The fixture folder of a rehearsal: ``rehearsal`` when it names one, else :data:`REHEARSAL_DIR`."""
    r = cfg["rehearsal"]
    return Path(r if isinstance(r, str) else REHEARSAL_DIR)


def rehearse(cfg: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """The rehearsal of a validated study: the same DAG and code paths, only smaller.

    Changes only sizes and sources: the study name gets ``_rehearsal`` (results, MLflow
    experiment), data live under ``<root>/rehearsal`` and are downloaded from the fixture server
    (checksums from the fixture manifest), timm weights load from the fixture file and url
    weights download from the fixture server (sha256 pinned); every strategy once, with the
    first and last value of each other grid axis (dataset, label fraction, sequence length: at
    most :data:`REHEARSAL_MAX_DATES`)
    alternating over the strategies, the first seed; at most :data:`REHEARSAL_LIMITS` of
    training; CPU jobs of one thread (``rehearsal_gpus``: that many GPUs per job instead).
    Fixtures: ``geopeft rehearsal-server``.

    Args:
        cfg: the validated study (left unchanged).
        source: the study file(s), for messages.

    Raises:
        ConfigError: the fixtures are not there, or lack a dataset or weights of the study, or
            the study does not download its data.
    """
    cfg = copy.deepcopy(cfg)
    folder = rehearsal_dir(cfg)
    manifest_path, server_path = FixtureLayout(folder).manifest, FixtureLayout(folder).server
    for p in (manifest_path, server_path):
        if not p.is_file():
            raise ConfigError(
                f"{source}: rehearsal: {p} not found: start the fixture server first "
                f"(uv run geopeft rehearsal-server --dir {folder} --study <this file>), or run "
                f"uv run geopeft rehearse <this file>")
    manifest = json.loads(manifest_path.read_text())
    url = json.loads(server_path.read_text())["url"].rstrip("/")
    cfg["study"] = f"{cfg['study']}_rehearsal"
    if cfg["mlflow"]["experiment"]:
        cfg["mlflow"]["experiment"] = f"{cfg['mlflow']['experiment']}_rehearsal"
    if cfg["data"]["source"] != "download":
        raise ConfigError(f"{source}: rehearsal: data.source is {cfg['data']['source']!r}; a "
                          f"rehearsal rehearses the download of a real study (data.source: "
                          f"download)")
    where = f"{source}: rehearsal: {manifest_path}"
    _rehearsal_data(cfg, manifest, url, where)
    _rehearsal_weights(cfg, manifest, url, folder, where)
    _rehearsal_rows(cfg)
    # CPU jobs, one thread each: as many run at once as there are cores; or, on a GPU machine,
    # the study's CUDA path with rehearsal_gpus per job
    cfg["resources"]["gpus"] = cfg["rehearsal_gpus"]
    if not cfg["rehearsal_gpus"]:
        cfg["threads"] = 1
    for part in [cfg["train"], *cfg["strategies"].values(), *cfg["runs"]]:
        for k, most in REHEARSAL_LIMITS.items():
            if k in part:
                part[k] = min(part[k], most)
    return cfg


def _rehearsal_data(cfg: dict[str, Any], manifest: dict[str, Any], url: str, where: str) -> None:
    """Every dataset of the study downloads from the fixture server, under ``<root>/rehearsal``."""
    data = cfg["data"]
    data["root"] = str(rehearsal_data(Path(data["root"])))
    data["mirrors"] = []
    data["remotes"] = []
    for _, ds in study_datasets(cfg):
        files = manifest["datasets"].get(ds)
        if files is None:
            raise ConfigError(f"{where} has no fixtures of {ds}; restart the fixture server "
                              f"with --study <this file>")
        data["remotes"] += [{"name": f["name"], "dataset": ds, "md5": f["md5"], "size": f["size"],
                             "urls": [f"{url}/{f['path']}"]} for f in files
                            if not any(r["name"] == f["name"] and r["dataset"] == ds
                                       for r in data["remotes"])]


def _rehearsal_weights(cfg: dict[str, Any], manifest: dict[str, Any], url: str, folder: Path,
                       where: str) -> None:
    """Every backbone the rows use loads its fixture weights (timm: a local file; url: the
    fixture server), sha256 pinned."""
    uses_study_backbone = any(s.get("backbone") is None and uses_backbone(s)
                              for s in cfg["strategies"].values())
    for key, bb in _backbones(cfg):
        if key == "backbone" and not uses_study_backbone:
            continue
        w = bb["weights"]
        fx = manifest["weights"].get(w)
        if w.startswith(("timm:", "url:")) and fx is None:
            raise ConfigError(f"{where} has no fixture of {key}.weights {w}; restart the fixture "
                              f"server with --study <this file>")
        if w.startswith("timm:"):
            bb["file"], bb["sha256"] = str(folder / fx["path"]), fx["sha256"]
        elif w.startswith("url:"):
            bb["weights"], bb["sha256"] = f"url:{url}/{fx['path']}", fx["sha256"]


def _rehearsal_rows(cfg: dict[str, Any]) -> None:
    """Every strategy once; the first and last value of each other axis alternate over them, so
    that each axis is rehearsed at both ends (two cells) with one run per strategy. Sequence
    lengths: the longest of at most :data:`REHEARSAL_MAX_DATES` dates and the shortest (a CPU
    cannot run a ViT-B encoder on 35 dates of 128 px patches in minutes)."""
    grid = cfg["grid"]
    lengths = sorted(grid["sequence_length"] or [], reverse=True)
    lengths = [x for x in lengths if x <= REHEARSAL_MAX_DATES] or lengths[-1:]
    ends = {"dataset": grid["dataset"] or [cfg["data"]["dataset"]],
            "label_fraction": sorted(grid["label_fraction"] or [1.0]),
            "sequence_length": lengths}
    ends = {k: [v[0], v[-1]] if len(v) > 1 else v for k, v in ends.items() if v}
    seed = grid["seed"][0]
    prefix = len(ends["dataset"]) > 1
    for i, strat in enumerate(grid["strategy"]):
        pick = {k: v[i % len(v)] for k, v in ends.items()}
        t = f"-t{pick['sequence_length']}" if "sequence_length" in pick else ""
        name = f"{strat}-f{_fmt_fraction(float(pick['label_fraction']))}{t}-s{seed}"
        cfg["runs"].append({"strategy": strat, "seed": seed, **pick,
                            "name": f"{pick['dataset']}-{name}" if prefix else name})
    cfg["grid"] = {"strategy": [], "label_fraction": [1.0], "seed": [seed]}

