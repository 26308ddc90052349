"""The typed job spec, and each default and enum written once: the schema's equal the code's."""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from pathlib import Path

import pytest

from geopeft import config as gcfg
from geopeft.config import load_schema
from geopeft.data.subsets import METHODS as SUBSET_METHODS
from geopeft.data.temporal import PAD_RULES
from geopeft.models.fusion import FusionConfig
from geopeft.models.segmentation import MODELS as SEGMENTATION_MODELS
from geopeft.models.segmentation import SegConfig
from geopeft.spec import (
    PEFT_METHODS,
    STRATEGIES,
    TRAIN_KEYS,
    ConfigError,
    JobSpec,
    LoraSpec,
    PretrainSpec,
    TrainArgs,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema()
DEFS = SCHEMA["$defs"]
STUDIES = sorted((ROOT / "config" / "studies").glob("*.yaml")) + [
    ROOT / "config" / "config.yaml", ROOT / "config" / ".test" / "config.yaml"]


def _defaults(props: dict) -> dict:
    return {k: v["default"] for k, v in props.items() if "default" in v}


def test_train_defaults_are_the_schemas():
    schema = _defaults(DEFS["train"]["properties"])
    code = {f.name: f.default for f in fields(TrainArgs)}
    assert set(schema) <= set(code)
    assert {k: code[k] for k in schema} == schema
    # what the code has beyond the schema is the job's, not the study's
    assert set(code) - set(schema) == {"seed", "threads", "progress"}


def test_lora_defaults_and_methods_are_the_schemas():
    lora = DEFS["strategy"]["properties"]["lora"]["properties"]
    assert {f.name: f.default for f in fields(LoraSpec)} == _defaults(lora)
    assert tuple(lora["method"]["enum"]) == PEFT_METHODS


def test_enums_are_the_codes():
    strategy = DEFS["strategy"]["properties"]
    assert tuple(strategy["strategy"]["enum"]) == STRATEGIES
    assert tuple(strategy["segmentation"]["properties"]["model"]["enum"]) == SEGMENTATION_MODELS
    assert tuple(DEFS["dataset"]["enum"]) == gcfg.TRAINABLE_DATASETS
    assert tuple(SCHEMA["properties"]["subsets"]["properties"]["method"]["enum"]) == SUBSET_METHODS
    assert tuple(SCHEMA["properties"]["temporal"]["properties"]["pad"]["enum"]) == PAD_RULES
    assert tuple(DEFS["train"]["properties"]["loss"]["enum"]) == ("ce", "weighted_ce")
    # every key a strategy or a row may override is a training setting of both
    for where in ("strategy", "row"):
        assert set(TRAIN_KEYS) <= set(DEFS[where]["properties"]), where
    assert set(TRAIN_KEYS) <= set(DEFS["train"]["properties"])


def test_model_settings_defaults_are_the_schemas():
    fusion = DEFS["strategy"]["properties"]["fusion"]["properties"]
    assert {f.name: f.default for f in fields(FusionConfig)} == _defaults(fusion)
    seg = DEFS["strategy"]["properties"]["segmentation"]["properties"]
    assert SegConfig().model == seg["model"]["default"]


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_every_row_of_every_study_types(study):
    cfg = gcfg.resolve([study])
    specs = gcfg.job_specs(cfg)
    rows = gcfg.study_rows(cfg)
    assert [s.row.name for s in specs] == [r["name"] for r in rows]
    for spec, row in zip(specs, rows, strict=True):
        assert spec.raw == gcfg.job_spec(cfg, row)  # the JSON it came from, unchanged
        assert json.loads(json.dumps(spec.raw)) == spec.raw
        args = spec.train_args()
        assert (args.seed, args.threads) == (row["seed"], cfg["threads"])
        assert args.lr == row["train"]["lr"] and args.epochs == row["train"]["epochs"]
        if row["method"] == "lora":
            assert spec.row.lora == LoraSpec.from_dict(row["lora"])
        else:
            assert spec.row.lora is None
        if spec.backbone is None:  # U-TAE
            assert row["segmentation"]["model"] == "utae" and spec.encoder is None
        elif row["method"] == "scratch":  # random initialisation, whatever the weights
            assert spec.encoder == dict(spec.backbone, weights="none")
        else:
            assert spec.encoder == spec.backbone
        if spec.row.temporal is not None:
            t = spec.row.temporal
            assert t.length == row["sequence_length"] and t.ladder == tuple(row["temporal"]["ladder"])
    PretrainSpec.from_dict(gcfg.pretrain_spec(cfg))


def test_a_missing_key_is_named_not_filled():
    cfg = gcfg.resolve([ROOT / "config" / "config.yaml"])
    spec = gcfg.job_spec(cfg, next(r for r in gcfg.study_rows(cfg) if r["method"] == "lora"))
    for path, message in ((("row", "seed"), "job spec.row: missing seed"),
                          (("row", "lora", "r"), "job spec.row.lora: missing r"),
                          (("data", "bands"), "job spec.data: missing bands"),
                          (("threads",), "job spec: missing threads")):
        broken = copy.deepcopy(spec)
        d = broken
        for key in path[:-1]:
            d = d[key]
        del d[path[-1]]
        with pytest.raises(ConfigError, match=message):
            JobSpec.from_dict(broken)
    broken = copy.deepcopy(spec)
    broken["row"]["method"] = "qlora"
    with pytest.raises(ConfigError, match="job spec.row.method: 'qlora' is not one of"):
        JobSpec.from_dict(broken)


def test_a_spec_saved_before_the_execution_settings_loads_with_them_off():
    """``train.compile`` and ``train.channels_last`` came later: a run.json spec without them
    (every older run) loads with both off, as it trained; a result-changing setting missing is
    still an error."""
    cfg = gcfg.resolve([ROOT / "config" / "config.yaml"])
    spec = gcfg.job_spec(cfg, gcfg.study_rows(cfg)[0])
    assert {"compile", "channels_last"} <= set(spec["row"]["train"])
    old = copy.deepcopy(spec)
    for key in ("compile", "channels_last"):
        del old["row"]["train"][key]
    args = JobSpec.from_dict(old).train_args()
    assert (args.compile, args.channels_last) == (False, False)
    del old["row"]["train"]["lr"]
    with pytest.raises(ConfigError, match="job spec.row.train: missing lr"):
        JobSpec.from_dict(old)


def test_the_cli_names_a_bad_spec(tmp_path, capsys):
    from geopeft.cli import main

    cfg = gcfg.resolve([ROOT / "config" / "config.yaml"])
    spec = gcfg.job_spec(cfg, gcfg.study_rows(cfg)[0])
    del spec["row"]["train"]
    rc = main(["train", "--spec", json.dumps(spec), "--store", "s.zarr", "--experiment", "e.json",
               "--out", str(tmp_path / "m")])
    assert rc == 2
    assert "geopeft train: error: --spec.row: missing train" in capsys.readouterr().err


def test_a_missing_training_setting_is_named():
    cfg = gcfg.resolve([ROOT / "config" / "config.yaml"])
    spec = gcfg.job_spec(cfg, gcfg.study_rows(cfg)[0])
    del spec["row"]["train"]["loss"]
    with pytest.raises(ConfigError, match="job spec.row.train: missing loss"):
        JobSpec.from_dict(spec)


def test_utae_in_an_image_study_is_refused(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("study: s\ndata: {dataset: eurosat_rgb, bands: [B04, B03, B02]}\n"
                     "backbone: {name: embedded}\n"
                     "strategies: {u: {strategy: full, segmentation: {model: utae}}}\n"
                     "grid: {strategy: [u]}\n")
    with pytest.raises(ConfigError, match="strategies.u.segmentation.model: U-TAE segments image "
                                          "time series"):
        gcfg.resolve([study])
