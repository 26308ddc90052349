"""The typed job spec, and each default and enum written once: the schema is generated from the
code's settings."""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from geopeft import config as gcfg
from geopeft import settings
from geopeft.settings import schema as settings_schema
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
STUDIES = sorted((ROOT / "config" / "studies").glob("*.yaml")) + [
    ROOT / "config" / "config.yaml", ROOT / "config" / ".test" / "config.yaml"]


def test_the_schema_and_the_defaults_file_are_generated():
    """Each default, constraint, enum and description is written once, in geopeft.settings (and
    the job's dataclasses it reuses); the committed schema and defaults file are generated."""
    fix = f"regenerate them: {settings_schema.COMMAND}"
    committed = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert committed == yaml.safe_load(settings_schema.schema_yaml()), f"schema is stale; {fix}"
    assert committed == settings_schema.json_schema()
    defaults = (ROOT / "config" / "defaults.yaml").read_text()
    assert defaults == settings_schema.defaults_yaml(), f"config/defaults.yaml is stale; {fix}"


def test_the_defaults_file_holds_what_validation_fills_in():
    defaults = yaml.safe_load((ROOT / "config" / "defaults.yaml").read_text())
    cfg = gcfg.validate({"study": "s", "data": {"dataset": "eurosat_rgb", "bands": ["B04"]},
                         "backbone": {"name": "embedded"},
                         "strategies": {"f": {"strategy": "full"}}, "runs": [{"strategy": "f"}]})
    assert defaults.pop("strategies") is None and defaults.pop("runs") == []
    defaults["backbone"]["weights"] = cfg["backbone"]["weights"]  # the zoo entry's
    assert {k: cfg[k] for k in defaults} == dict(defaults, data=dict(
        defaults["data"], dataset="eurosat_rgb", bands=["B04"]), backbone=dict(
        defaults["backbone"], name="embedded"))


def test_what_strategies_and_rows_override_are_training_settings():
    for cls in (settings.Strategy, settings.Row, TrainArgs):
        assert set(TRAIN_KEYS) <= {f.name for f in fields(cls)}, cls
    # what the code's training settings have beyond the study's are the job's
    job = {f.name for f in fields(TrainArgs) if f.metadata.get("job")}
    assert job == {"seed", "threads", "progress"}
    assert set(settings_schema.json_schema()["$defs"]["train"]["properties"]) == (
        {f.name for f in fields(TrainArgs)} - job)


def test_the_study_takes_the_registries_strategies_and_peft_methods_and_no_other():
    """The schema the study is validated with (the committed file) lists the registries': a
    registered strategy and peft method validate, a name outside them is refused by name."""
    base = {"study": "s", "data": {"dataset": "eurosat_rgb", "bands": ["B04", "B03", "B02"]},
            "backbone": {"name": "vit_tiny_patch16_224"}, "grid": {"strategy": ["x"]}}
    for strategy in STRATEGIES:
        for method in PEFT_METHODS:
            cfg = {**base, "strategies": {"x": {"strategy": strategy, "lora": {"method": method}}}}
            assert gcfg.validate(cfg)["strategies"]["x"]["strategy"] == strategy
    for bad, key in (({"strategy": "prompt"}, "strategy"),
                     ({"strategy": "lora", "lora": {"method": "ia3x"}}, "lora.method")):
        with pytest.raises(gcfg.ConfigError, match=rf"strategies\.x\.{key}: '(prompt|ia3x)' is not one"):
            gcfg.validate({**base, "strategies": {"x": bad}})


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
