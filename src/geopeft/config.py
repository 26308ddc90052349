"""Configuration: load, validate once against the JSON-Schema, fill defaults, resolve study rows.

The schema lives in ``workflow/schemas/config.schema.yaml`` (shipped inside the wheel as
``geopeft/schemas``). The Snakefile and every CLI entry point go through :func:`validate`, so a
bad key or value fails early with one message naming the file, the key path and the value.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from geopeft.data.sources import REGISTRY as SOURCES
from geopeft.models.zoo import check_name, entry_for
from geopeft.spec import TRAIN_KEYS, ConfigError, JobSpec
from geopeft.strategies import REGISTRY as STRATEGY_REGISTRY
from geopeft.tasks import TASKS

# What the study may use of each dataset, asked of its source (geopeft.data.sources).
#: Datasets a study may train on (the schema's ``dataset`` enum, checked by tests/test_spec.py).
TRAINABLE_DATASETS = tuple(n for n, s in SOURCES.items() if s.study_dataset)
#: Datasets the embedded synthetic world holds (``data.source: synthetic``).
SYNTHETIC_DATASETS = tuple(n for n in TRAINABLE_DATASETS if SOURCES[n].embedded)
#: Datasets of image time series: rows get a sequence length and a segmentation model.
TIME_SERIES_DATASETS = tuple(n for n in TRAINABLE_DATASETS if SOURCES[n].time_series)
#: Datasets whose embedded world one rule writes alone (``geopeft synthesize --world``).
WORLD_DATASETS = tuple(n for n in SYNTHETIC_DATASETS if SOURCES[n].world)


def schema_path(name: str = "config.schema.yaml") -> Path:
    """Locate a schema file, in the installed package or in the source checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "schemas" / name, here.parents[1] / "workflow" / "schemas" / name):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"schema {name} not found next to the geopeft package")


def load_schema(name: str = "config.schema.yaml") -> dict[str, Any]:
    """The JSON-Schema of the configuration (or another schema file ``name``), parsed."""
    with open(schema_path(name)) as fh:
        return yaml.safe_load(fh)


def _with_defaults(validator_cls: Any) -> Any:
    """A jsonschema validator class that fills ``default`` values while validating."""
    from jsonschema import validators

    validate_props = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: dict, instance: Any, schema: dict) -> Any:
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" not in sub and "$ref" in sub:
                    sub = validator._resolver.lookup(sub["$ref"]).contents
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return validators.extend(validator_cls, {"properties": set_defaults})


def _path(err: Any) -> str:
    out = ""
    for part in err.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def validate(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate ``config`` in place (filling defaults) and check cross-references.

    Args:
        config: the parsed configuration mapping; it is modified in place.
        source: the file it came from, for error messages.

    Returns:
        The same mapping, validated and with defaults.

    Raises:
        ConfigError: with ``<source>: <key path>: <problem>``.
    """
    from jsonschema import Draft202012Validator

    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping, got {type(config).__name__}")
    cls = _with_defaults(Draft202012Validator)
    validator = cls(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), e.message))
    if errors:
        lines = [f"{_path(e)}: {e.message}" for e in errors[:5]]
        more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(lines) + more)
    _check_semantics(config, source)
    return config


def _backbones(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(config key, backbone config) of the study's backbone and every strategy's own."""
    return [("backbone", cfg["backbone"])] + [
        (f"strategies.{k}.backbone", s["backbone"]) for k, s in cfg["strategies"].items()
        if s.get("backbone") is not None]


def uses_backbone(strategy: dict[str, Any]) -> bool:
    """Whether a strategy's rows have an encoder: every model but U-TAE, which has none."""
    return strategy["segmentation"]["model"] != "utae"


def _check_backbones(cfg: dict[str, Any], source: str) -> None:
    """Known names; weights filled in from the zoo; checksums where files are named."""
    for key, bb in _backbones(cfg):
        try:
            check_name(bb["name"])
        except ValueError as err:
            raise ConfigError(f"{source}: {key}.name: {err}") from None
    for key, bb in _backbones(cfg):
        bb["weights"] = bb["weights"] or entry_for(bb["name"]).weights
        if key != "backbone" and bb["weights"] == "pretrain" and bb != cfg["backbone"]:
            raise ConfigError(f"{source}: {key}.weights: only the study's backbone is pretrained "
                              f"(weights: pretrain); name other weights")
        if bb.get("file") and not (bb["weights"].startswith("timm:") and bb["sha256"]):
            raise ConfigError(f"{source}: {key}.file: a local copy of timm:<tag> weights; set "
                              f"{key}.weights to timm:<tag> and {key}.sha256")
    w = cfg["backbone"]["weights"]
    if w.startswith("file:") and not cfg["backbone"]["sha256"]:
        raise ConfigError(f"{source}: backbone.sha256: required when backbone.weights is {w!r}")
    if w == "pretrain" and cfg["data"]["source"] != "synthetic":
        raise ConfigError(
            f"{source}: backbone.weights: 'pretrain' needs the embedded source set "
            f"(data.source: synthetic); use timm:<tag> or file:<path> with real data"
        )


def _check_strategies(cfg: dict[str, Any], source: str) -> None:
    """U-TAE trains from scratch on time series; Fusion-LoRA's flags fit together and it has RGB
    bands."""
    series = any(ds in TIME_SERIES_DATASETS for _, ds in study_datasets(cfg))
    for key, strat in cfg["strategies"].items():
        if not uses_backbone(strat) and not series:
            raise ConfigError(f"{source}: strategies.{key}.segmentation.model: U-TAE segments "
                              f"image time series ({', '.join(TIME_SERIES_DATASETS)}); the study's "
                              f"datasets are images")
        if not uses_backbone(strat) and not STRATEGY_REGISTRY[strat["strategy"]].without_encoder:
            allowed = " or ".join(n for n, s in STRATEGY_REGISTRY.items() if s.without_encoder)
            raise ConfigError(f"{source}: strategies.{key}.strategy: U-TAE is trained from scratch "
                              f"(strategy {allowed}), not {strat['strategy']!r}")
        fusion = strat.get("fusion")
        if fusion is not None and fusion["glf"] and not fusion["caf"]:
            raise ConfigError(f"{source}: strategies.{key}.fusion.glf: gated late fusion mixes the "
                              f"cross-attention output with the visual tokens; set caf: true")
        if fusion is not None and not {"B04", "B03", "B02"} <= set(cfg["data"]["bands"]):
            raise ConfigError(f"{source}: strategies.{key}.fusion: Fusion-LoRA feeds a pseudo-RGB "
                              f"image to the encoder and needs B04, B03, B02 in data.bands")


def _check_datasets(cfg: dict[str, Any], source: str) -> None:
    """Each dataset is one the source can give, with the study's bands; one kind of task."""
    data = cfg["data"]
    for where, ds in study_datasets(cfg):
        if data["source"] == "synthetic" and ds not in SYNTHETIC_DATASETS:
            raise ConfigError(
                f"{source}: {where}: the embedded world writes {', '.join(SYNTHETIC_DATASETS)}; "
                f"for {ds!r} set data.source to download or local"
            )
        if where == "data.dataset" and cfg["grid"]["dataset"]:
            continue  # grid.dataset names the datasets the rows train on
        held = SOURCES[ds].file_bands
        bad = [b for b in data["bands"] if b not in held]
        if bad:
            raise ConfigError(
                f"{source}: data.bands: {bad[0]!r} is not in {ds} (it holds {', '.join(held)})"
            )
    kinds = {ds in TIME_SERIES_DATASETS for where, ds in study_datasets(cfg)
             if not (where == "data.dataset" and cfg["grid"]["dataset"])}
    if len(kinds) > 1:
        raise ConfigError(f"{source}: grid.dataset: a study is either time-series segmentation "
                          f"({', '.join(TIME_SERIES_DATASETS)}) or image classification; split it")
    if data["source"] == "local" and len({ds for _, ds in study_datasets(cfg)}) > 1:
        raise ConfigError(f"{source}: grid.dataset: with data.source local the study takes one "
                          f"dataset (data.raw_dir); run one study per dataset")
    if data["source"] == "local" and not data.get("raw_dir"):
        data["raw_dir"] = str(Path(data["root"]) / "raw" / "local" / data["dataset"])


def _check_rows(cfg: dict[str, Any], source: str) -> None:
    """Rows name strategies of the study; run names are unique; there is a row."""
    strategies = cfg["strategies"]
    for key, names in (("grid.strategy", cfg["grid"]["strategy"]),
                       ("runs", [r["strategy"] for r in cfg["runs"]])):
        for i, name in enumerate(names):
            if name not in strategies:
                where = f"{key}[{i}]" if key == "grid.strategy" else f"runs[{i}].strategy"
                raise ConfigError(f"{source}: {where}: {name!r} is not a key of strategies "
                                  f"({', '.join(strategies)})")
    names = [r["name"] for r in study_rows(cfg)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{source}: study rows: duplicate run name(s) {', '.join(dup)}")
    if not names:
        raise ConfigError(f"{source}: the study has no rows: set grid.strategy or runs")


def _check_semantics(cfg: dict[str, Any], source: str) -> None:
    """What the schema cannot say: cross-references and what the data and zoo allow."""
    _check_backbones(cfg, source)
    _check_strategies(cfg, source)
    _check_datasets(cfg, source)
    _check_rows(cfg, source)


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
    if overrides:
        _merge(cfg, copy.deepcopy(dict(overrides)))
    where = ", ".join(map(str, files))
    for key in ("rehearsal", "jobserver"):  # snakemake --config may pass the flags as strings
        flag = cfg.get(key)
        if isinstance(flag, str) and flag.lower() in ("true", "false", "yes", "no"):
            cfg[key] = flag.lower() in ("true", "yes")
    cfg = validate(cfg, where)
    if cfg["rehearsal"]:
        cfg = validate(rehearse(cfg, where), where)
    return cfg


#: Where ``geopeft rehearsal-server`` writes fixtures, their manifest and its address.
REHEARSAL_DIR = ".rehearsal"
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
    manifest_path, server_path = folder / "manifest.json", folder / "server.json"
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
    data["root"] = str(Path(data["root"]) / "rehearsal")
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


def _fmt_fraction(f: float) -> str:
    return f"{f:g}"


def study_datasets(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(config key, dataset) of every dataset the study uses."""
    out = [("data.dataset", cfg["data"]["dataset"])]
    out += [(f"grid.dataset[{i}]", d) for i, d in enumerate(cfg["grid"]["dataset"])]
    out += [(f"runs[{i}].dataset", r["dataset"]) for i, r in enumerate(cfg["runs"])
            if "dataset" in r]
    return out


def report_task(rows: Any) -> tuple[str, str]:
    """The task of a study's rows (``multiclass``, ``multilabel``, ``segmentation``, or the
    tasks joined by ``+``) and its primary metric in words (per dataset when they differ).

    Args:
        rows: the study's rows (each with its ``dataset``).
    """
    by_ds = {r["dataset"]: SOURCES[r["dataset"]].task for r in rows}
    tasks = sorted(set(by_ds.values()))
    if len(tasks) == 1:
        return tasks[0], TASKS[tasks[0]].metric_words
    return "+".join(tasks), ", ".join(f"{TASKS[t].metric_words} ({ds})" for ds, t in by_ds.items())


def study_rows(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand the grid and explicit rows into resolved run configurations, one per job.

    Each row holds everything a training job needs: ``name``, ``dataset``, ``strategy`` (the
    key), ``method`` (a strategy of :data:`geopeft.strategies.REGISTRY`), ``label_fraction``,
    ``seed``, ``train`` (defaults <- strategy <- row overrides), ``lora`` for LoRA rows, ``fusion`` for
    Fusion-LoRA rows, ``backbone`` when the strategy names its own encoder, and for time-series
    datasets ``sequence_length``, ``temporal`` (length, the study's ladder of lengths, pad rule,
    reference date) and ``segmentation`` (the model). With several datasets in ``grid.dataset``,
    grid run names start with the dataset; time-series run names hold ``-t<length>``.
    """
    grid = cfg["grid"]
    datasets = grid["dataset"] or [cfg["data"]["dataset"]]
    prefix = len(datasets) > 1
    temporal = cfg["temporal"]
    grid_lengths = list(grid["sequence_length"])
    rows: list[dict[str, Any]] = []
    for ds in datasets:
        lengths = (grid_lengths or [None]) if ds in TIME_SERIES_DATASETS else [None]
        for s in grid["strategy"]:
            for f in grid["label_fraction"]:
                for length in lengths:
                    for seed in grid["seed"]:
                        t = f"-t{length}" if length else ""
                        name = f"{s}-f{_fmt_fraction(float(f))}{t}-s{seed}"
                        rows.append({"strategy": s, "label_fraction": f, "seed": seed, "dataset": ds,
                                     "name": f"{ds}-{name}" if prefix else name,
                                     **({"sequence_length": length} if length else {})})
    rows += [dict(r) for r in cfg["runs"]]
    # the study's ladder of lengths: shorter selections are drawn from longer ones (nested)
    ladder = sorted({int(r.get("sequence_length") or temporal["length"]) for r in rows
                     if (r.get("dataset") or cfg["data"]["dataset"]) in TIME_SERIES_DATASETS},
                    reverse=True)
    out = []
    for r in rows:
        strat = cfg["strategies"][r["strategy"]]
        fraction = float(r["label_fraction"])
        seed = int(r["seed"])
        series = (r.get("dataset") or cfg["data"]["dataset"]) in TIME_SERIES_DATASETS
        length = int(r.get("sequence_length") or temporal["length"])
        train = {k: v for k, v in cfg["train"].items()}
        train.update({k: strat[k] for k in TRAIN_KEYS if k in strat})
        strategy = STRATEGY_REGISTRY[strat["strategy"]]
        if strategy.encoder_lr_factor is not None:
            train["encoder_lr_factor"] = strat.get("encoder_lr_factor", strategy.encoder_lr_factor)
        train.update({k: r[k] for k in TRAIN_KEYS if k in r})
        t = f"-t{length}" if series else ""
        row = {
            "name": r.get("name") or f"{r['strategy']}-f{_fmt_fraction(fraction)}{t}-s{seed}",
            "dataset": r.get("dataset") or cfg["data"]["dataset"],
            "strategy": r["strategy"],
            "method": strat["strategy"],
            "label_fraction": fraction,
            "seed": seed,
            "train": train,
        }
        if strategy.uses_adapter:
            row["lora"] = dict(strat["lora"])
        if strat.get("fusion") is not None:
            row["fusion"] = dict(strat["fusion"])
        if strat.get("backbone") is not None:
            row["backbone"] = dict(strat["backbone"])
        if series:
            row["sequence_length"] = length
            row["temporal"] = {"length": length, "ladder": ladder, "pad": temporal["pad"],
                               "reference": temporal["reference_date"]}
            row["segmentation"] = dict(strat["segmentation"])
        out.append(row)
    return out


def row_backbone(cfg: dict[str, Any], row: dict[str, Any]) -> dict[str, Any] | None:
    """The backbone config of a row: its strategy's own, else the study's; None for U-TAE,
    which has no backbone.

    Args:
        cfg: the validated study.
        row: one of its rows (:func:`study_rows`).
    """
    strategy = cfg["strategies"][row["strategy"]]
    if not uses_backbone(strategy):
        return None
    return strategy.get("backbone") or cfg["backbone"]


def base_spec(cfg: dict[str, Any], dataset: str | None = None) -> dict[str, Any]:
    """The part of every job spec that comes from the study, not from the row.

    Args:
        cfg: the validated study.
        dataset: the row's dataset (default ``data.dataset``).
    """
    data = cfg["data"]
    return {"study": cfg["study"],
            "data": {"dataset": dataset or data["dataset"], "bands": data["bands"],
                     "source": data["source"]},
            "backbone": cfg["backbone"], "threads": cfg["threads"],
            **({"rehearsal": True} if cfg.get("rehearsal") else {})}


def job_spec(cfg: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """Everything one training job receives (the ``--spec`` of the train rule): editing another
    row leaves it unchanged.

    Args:
        cfg: the validated study.
        row: one of its rows (:func:`study_rows`).
    """
    return dict(base_spec(cfg, row["dataset"]), row=row, backbone=row_backbone(cfg, row))


def pretrain_source(cfg: dict[str, Any]) -> str:
    """The embedded pretraining source set of a study: its dataset's own
    (``<dataset>_source``, in the same format) when there is one, else EuroSAT-MS's."""
    own = f"{cfg['data']['dataset']}_source"
    return own if own in SOURCES else "eurosat_ms_source"


def job_specs(cfg: dict[str, Any]) -> list[JobSpec]:
    """The typed job spec of every row of a validated study, in row order."""
    return [JobSpec.from_dict(job_spec(cfg, row), f"study {cfg['study']}: row {row['name']}")
            for row in study_rows(cfg)]


def pretrain_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    """The spec of the pretrain rule (the embedded backbone on the synthetic source set)."""
    return dict(base_spec(cfg), pretrain=cfg["pretrain"])


def bands_id(bands: list[str]) -> str:
    """File-name token of a band selection, e.g. ``B04-B03-B02``."""
    return "-".join(bands)


def tracking_uri(cfg: dict[str, Any]) -> str:
    """The study's MLflow tracking URI: ``mlflow.tracking_uri``, else SQLite in ``results_dir``."""
    uri = cfg["mlflow"]["tracking_uri"]
    if uri:
        return str(uri)
    return f"sqlite:///{Path(cfg['results_dir']) / 'mlflow.db'}"
