"""Validation: the JSON-Schema (generated from :mod:`geopeft.settings`) checks types and fills
defaults; the checks here say what the schema cannot (cross-references, what the data and
the zoo allow)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from geopeft.config.protocol import check_protocol, weight_bands
from geopeft.config.rows import (
    SYNTHETIC_DATASETS,
    TIME_SERIES_DATASETS,
    _backbones,
    is_series,
    job_spec,
    study_datasets,
    study_rows,
    trainable,
    uses_backbone,
)
from geopeft.data.sources import REGISTRY as SOURCES
from geopeft.layout import DataLayout
from geopeft.models.zoo import check_name, entry_for
from geopeft.spec import ConfigError
from geopeft.strategies import REGISTRY as STRATEGY_REGISTRY


def schema_path(name: str = "config.schema.yaml") -> Path:
    """Locate a schema file, in the installed package or in the source checkout."""
    here = Path(__file__).resolve().parents[1]  # the geopeft package
    for cand in (here / "schemas" / name, here.parents[1] / "workflow" / "schemas" / name):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"schema {name} not found next to the geopeft package")


def load_schema(name: str = "config.schema.yaml") -> dict[str, Any]:
    """The JSON-Schema of the configuration (or another schema file ``name``), parsed."""
    with open(schema_path(name)) as fh:
        return yaml.safe_load(fh)


#: What a ``--config`` string may stand for, by the schema's type (Snakemake parses a nested
#: value with YAML's base loader: every leaf a string).
_SCALARS = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None)}


def _types(schema: dict[str, Any], root: dict[str, Any]) -> tuple[dict[str, Any], set[str], set]:
    """A schema with its ``$ref`` followed, the JSON types it (or its alternatives) allow, and
    the strings it takes as constants (``enum``, ``const``)."""
    while "$ref" in schema:
        schema = {**root["$defs"][schema["$ref"].rsplit("/", 1)[1]],
                  **{k: v for k, v in schema.items() if k != "$ref"}}
    kind = schema.get("type")
    types = set(kind) if isinstance(kind, list) else {kind} if kind else set()
    consts = {v for v in [*schema.get("enum", []), schema.get("const")] if isinstance(v, str)}
    for alt in schema.get("oneOf", []) + schema.get("anyOf", []):
        _, more, strings = _types(alt, root)
        types |= more
        consts |= strings
    return schema, types, consts


def _scalar(text: str) -> Any:
    """The number, boolean or null a string spells (YAML's words, Python's numbers: 1e-4)."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return yaml.safe_load(text) if text.strip() else text


def coerce_overrides(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """``--config`` values as the schema types them: Snakemake hands a nested value's leaves
    (``train={epochs: 2}``) over as strings and a top-level one as int, float or bool when it
    looks like one; a string where the schema takes no such string becomes the scalar it spells
    (``"2"`` -> 2, ``"1e-4"`` -> 0.0001, ``"true"`` -> True, ``"null"`` -> None), a number where
    only a string fits becomes its text (``study=2024``). Anything else is left for the schema
    to judge."""
    root = root if root is not None else schema
    schema, types, consts = _types(schema, root)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: coerce_overrides(v, props[k], root) if k in props else
                coerce_overrides(v, extra, root) if isinstance(extra, dict) else v
                for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce_overrides(v, schema["items"], root) for v in value]
    if isinstance(value, str) and "string" not in types and value not in consts:
        parsed = _scalar(value)
        if any(isinstance(parsed, _SCALARS[t]) for t in types & set(_SCALARS)) and not (
                isinstance(parsed, bool) and "boolean" not in types):
            return parsed
    if isinstance(value, (int, float)) and not isinstance(value, bool) and types == {"string"}:
        return str(value)
    return value


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


def _check_backbones(cfg: dict[str, Any], source: str) -> None:
    """Known names; weights filled in from the zoo; checksums where files are named."""
    for key, bb in _backbones(cfg):
        try:
            check_name(bb["name"])
        except ValueError as err:
            raise ConfigError(f"{source}: {key}.name: {err}") from None
    for key, bb in _backbones(cfg):
        family = entry_for(bb["name"]).family
        if bb.get("drop_qkv_bias") and family != "vit":
            raise ConfigError(f"{source}: {key}.drop_qkv_bias: ViT encoders only (q/k/v biases "
                              f"of one fused layer); {bb['name']!r} is a {family} encoder")
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
    series = any(is_series(ds) for _, ds in study_datasets(cfg))
    for key, strat in cfg["strategies"].items():
        if not uses_backbone(strat) and not series:
            raise ConfigError(f"{source}: strategies.{key}.segmentation.model: U-TAE segments "
                              f"image time series ({', '.join(TIME_SERIES_DATASETS)}, or a "
                              f"dataset of your own with task segmentation); the study's "
                              f"datasets are images")
        if not uses_backbone(strat) and not STRATEGY_REGISTRY[strat["strategy"]].without_encoder:
            allowed = " or ".join(n for n, s in STRATEGY_REGISTRY.items() if s.without_encoder)
            raise ConfigError(f"{source}: strategies.{key}.strategy: U-TAE is trained from scratch "
                              f"(strategy {allowed}), not {strat['strategy']!r}")
        if strat.get("lr_sweep") and "lr" in strat:
            raise ConfigError(f"{source}: strategies.{key}: lr {strat['lr']:g} and lr_sweep "
                              f"{strat['lr_sweep']}: the sweep chooses the rate on validation; "
                              f"drop one")
        strategy = STRATEGY_REGISTRY[strat["strategy"]]
        bb = strat.get("backbone") or cfg["backbone"]
        if uses_backbone(strat) and strategy.families is not None:
            family = entry_for(bb["name"]).family
            if family not in strategy.families:
                raise ConfigError(f"{source}: strategies.{key}.strategy: {strategy.name} works on "
                                  f"{' or '.join(strategy.families)} encoders; backbone "
                                  f"{bb['name']!r} is a {family} encoder")
        fusion = strat.get("fusion")
        if uses_backbone(strat) and fusion is None and bb.get("normalize") == "backbone":
            e = entry_for(bb["name"])
            carried = weight_bands(bb) if (e.norm or bb["weights"].startswith("timm:")) else None
            lacking = [b for b in cfg["data"]["bands"] if carried and b not in carried]
            if lacking:
                where = f"strategies.{key}.backbone" if strat.get("backbone") else "backbone"
                raise ConfigError(f"{source}: {where}.normalize: 'backbone' uses the weights' own "
                                  f"mean and sd, known for {' '.join(carried)} only, not "
                                  f"{' '.join(lacking)} of data.bands; set normalize: auto (the "
                                  f"train split's statistics then)")
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
    kinds = {is_series(ds) for where, ds in study_datasets(cfg)
             if not (where == "data.dataset" and cfg["grid"]["dataset"])}
    if len(kinds) > 1:
        raise ConfigError(f"{source}: grid.dataset: a study is either time-series segmentation "
                          f"({', '.join(TIME_SERIES_DATASETS)}) or image classification; split it")
    if data["source"] == "local" and len({ds for _, ds in study_datasets(cfg)}) > 1:
        raise ConfigError(f"{source}: grid.dataset: with data.source local the study takes one "
                          f"dataset (data.raw_dir); run one study per dataset")
    if data["source"] == "local" and not data.get("raw_dir"):
        data["raw_dir"] = str(DataLayout(Path(data["root"]), "local").raw(data["dataset"]))


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
    _check_probes(cfg, source)


def _check_probes(cfg: dict[str, Any], source: str) -> None:
    """A probe (``knn``, ``logistic``) fits its head on the encoder's features: its rows must
    be able to train on them."""
    from geopeft.spec import JobSpec

    for r in study_rows(cfg):
        strategy = STRATEGY_REGISTRY[cfg["strategies"][r["strategy"]]["strategy"]]
        if not strategy.closed_form or not trainable(r["dataset"]):
            continue
        reason = JobSpec.from_dict(job_spec(cfg, r)).features_reason()
        if reason is not None:
            raise ConfigError(f"{source}: strategies.{r['strategy']}.strategy: {strategy.name} "
                              f"fits its head on the encoder's features, which row {r['name']} "
                              f"cannot use: {reason}")


def _check_generic(cfg: dict[str, Any], source: str) -> None:
    """A dataset of your own (``data.generic``) is registered under ``data.dataset``, read
    from ``data.raw_dir``; every dataset the study names is a built-in one or that one."""
    from geopeft.data.sources import BUILTIN, DataError, register_generic

    data = cfg["data"]
    generic = data.get("generic")
    if generic is not None:
        if data["source"] != "local":
            raise ConfigError(f"{source}: data.generic: a dataset of your own is read from "
                              f"data.raw_dir: set data.source to local (it is "
                              f"{data['source']!r})")
        try:
            own = register_generic(data["dataset"], generic)
        except DataError as err:
            raise ConfigError(f"{source}: {err}") from None
        own.raw = Path(data.get("raw_dir") or DataLayout(Path(data["root"]), "local").raw(  # type: ignore[attr-defined]
            data["dataset"]))
    for where, ds in study_datasets(cfg):
        if ds not in SOURCES or (ds not in BUILTIN and (generic is None
                                                        or ds != data["dataset"])):
            builtin = ", ".join(n for n in sorted(BUILTIN) if SOURCES[n].study_dataset)
            raise ConfigError(f"{source}: {where}: {ds!r} is not one of {builtin}, nor a dataset "
                              f"of your own declared in data.generic (data.dataset)")


def _check_semantics(cfg: dict[str, Any], source: str) -> None:
    """What the schema cannot say: cross-references and what the data and zoo allow."""
    _check_generic(cfg, source)
    _check_backbones(cfg, source)
    _check_strategies(cfg, source)
    _check_datasets(cfg, source)
    _check_rows(cfg, source)
    check_protocol(cfg, source)
