import copy
from pathlib import Path

import pytest
import yaml

from geopeft import config as gcfg
from geopeft.io import canonical_json

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    with open(ROOT / "config" / "config.yaml") as fh:
        return yaml.safe_load(fh)


def test_shipped_configs_are_valid():
    for path in [ROOT / "config" / "config.yaml", ROOT / "config" / ".test" / "config.yaml",
                 *sorted((ROOT / "config" / "studies").glob("*.yaml"))]:
        c = gcfg.load(path)
        assert gcfg.study_rows(c), path


def test_defaults_filled(cfg):
    del cfg["train"]
    out = gcfg.validate(cfg)
    assert out["train"]["warmup_epochs"] == 1 and out["backbone"]["normalize"] == "auto"
    assert out["mlflow"]["tracking_uri"] is None
    assert gcfg.tracking_uri(out) == "sqlite:///results/mlflow.db"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["data"].update(bands=["B04", "B13"]),
         r"data\.bands: 'B13' is not in eurosat_rgb \(it holds B04, B03, B02\)"),
        (lambda c: c["data"].update(bands=["B04", "B 8"]), r"data\.bands\[1\]: 'B 8' does not match"),
        (lambda c: c["train"].update(lr=-1), r"train\.lr: -1 is less than or equal to"),
        (lambda c: c["grid"].update(label_fraction=[0.1, 1.5]), r"grid\.label_fraction\[1\]: 1\.5"),
        (lambda c: c.update(epochs=3), r"<top level>: Additional properties .*'epochs'"),
        (lambda c: c["strategies"]["lora"].update(strategy="lorra"),
         r"strategies\.lora\.strategy: 'lorra' is not one of"),
        (lambda c: c["grid"].update(strategy=["full", "dora"]),
         r"grid\.strategy\[1\]: 'dora' is not a key of strategies"),
        (lambda c: c["data"].update(bands=["B04", "B08"]), r"data\.bands: 'B08' is not in eurosat_rgb"),
        (lambda c: c["backbone"].update(weights="file:/x.pth"), r"backbone\.sha256: required"),
        (lambda c: c["backbone"].update(name="not_a_model"),
         r"backbone\.name: 'not_a_model' is neither a zoo backbone .* nor a timm architecture "
         r"of an encoder family \(vit, swin, swin1, eva, convnext, resnet\)"),
        (lambda c: c["strategies"]["full"].update(backbone={"name": "regnety_032"}),
         r"strategies\.full\.backbone\.name: 'regnety_032' is neither"),
        (lambda c: c.update(runs=[{"strategy": "full", "name": "full-f1-s0"}]),
         r"duplicate run name\(s\) full-f1-s0"),
    ],
)
def test_errors_name_key_and_value(cfg, edit, message):
    edit(cfg)
    with pytest.raises(gcfg.ConfigError, match=message) as err:
        gcfg.validate(cfg, source="my.yaml")
    assert str(err.value).startswith("my.yaml: ")


def test_study_rows_merge_defaults_strategy_and_row(cfg):
    cfg["runs"] = [{"name": "lora-long", "strategy": "lora", "epochs": 20, "seed": 4}]
    gcfg.validate(cfg)
    rows = {r["name"]: r for r in gcfg.study_rows(cfg)}
    assert len(rows) == 13
    r = rows["lora-long"]
    assert r["train"]["epochs"] == 20 and r["train"]["lr"] == 0.003 and r["train"]["batch_size"] == 32
    assert r["lora"] == {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.1,
                         "target_modules": ["q", "k", "v"], "n_frequency": 1000, "block_size": 32}
    assert r["dataset"] == "eurosat_rgb" and "fusion" not in r
    assert rows["full-f0.1-s1"]["label_fraction"] == 0.1 and rows["full-f0.1-s1"]["seed"] == 1


def test_editing_one_row_changes_only_its_spec(cfg):
    cfg["grid"]["strategy"] = []
    cfg["runs"] = [{"strategy": "full", "seed": 0}, {"strategy": "lora", "seed": 0}]
    before = {r["name"]: canonical_json(r) for r in gcfg.study_rows(gcfg.validate(copy.deepcopy(cfg)))}
    cfg["runs"][1]["lr"] = 0.01
    after = {r["name"]: canonical_json(r) for r in gcfg.study_rows(gcfg.validate(cfg))}
    assert before["full-f1-s0"] == after["full-f1-s0"]
    assert before["lora-f1-s0"] != after["lora-f1-s0"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(gcfg.ConfigError, match="nope.yaml: config file not found"):
        gcfg.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(gcfg.ConfigError, match="bad.yaml: not valid YAML"):
        gcfg.load(bad)


def _pastis_cfg():
    return gcfg.load(ROOT / "config" / "studies" / "shaping_ft_embedded.yaml")


def test_time_series_rows_have_lengths_a_ladder_and_models():
    rows = {r["name"]: r for r in gcfg.study_rows(_pastis_cfg())}
    assert len(rows) == 3 * 2 * 3 * 2
    r = rows["utae-f0.1-t6-s1"]
    assert r["sequence_length"] == 6 and r["label_fraction"] == 0.1 and r["seed"] == 1
    assert r["temporal"] == {"length": 6, "ladder": [15, 6, 1], "pad": "mask",
                             "reference": "2018-09-01"}
    assert r["segmentation"]["model"] == "utae" and r["method"] == "scratch"
    assert rows["e2e-f1-t15-s0"]["train"]["encoder_lr_factor"] == 0.1
    assert "segmentation" not in next(iter(gcfg.study_rows(gcfg.load(ROOT / "config" / "config.yaml"))))


def test_explicit_time_series_rows_default_length_and_join_the_ladder():
    c = yaml.safe_load((ROOT / "config" / ".test" / "pastis.yaml").read_text())
    c["runs"] = [{"strategy": "utae"}, {"strategy": "utae", "sequence_length": 20}]
    rows = {r["name"]: r for r in gcfg.study_rows(gcfg.validate(c))}
    assert "utae-f1-t35-s0" in rows and "utae-f1-t20-s0" in rows  # temporal.length default 35
    assert rows["utae-f1-t20-s0"]["temporal"]["ladder"] == [35, 20, 3, 1]


def test_strategy_backbone_is_carried_into_rows():
    rows = {r["name"]: r for r in gcfg.study_rows(gcfg.load(ROOT / "config" / "studies" / "shaping_ft.yaml"))}
    assert rows["croma_e2e-f1-t35-s0"]["backbone"]["name"] == "croma_optical_base"
    assert rows["croma_e2e-f1-t35-s0"]["backbone"]["weights"].startswith("url:https://")
    assert "backbone" not in rows["dino_e2e-f1-t35-s0"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["strategies"]["utae"].update(strategy="linear"),
         r"strategies\.utae\.strategy: U-TAE is trained from scratch"),
        (lambda c: c["strategies"]["e2e"].update(backbone={"name": "vit_tiny_patch16_224",
                                                           "weights": "pretrain"}),
         r"strategies\.e2e\.backbone\.weights: only the study's backbone is pretrained"),
        (lambda c: c["grid"].update(dataset=["pastis", "eurosat_ms"]),
         r"grid\.dataset: a study is either time-series segmentation"),
        (lambda c: c["grid"].update(sequence_length=[0]), r"grid\.sequence_length\[0\]: 0 is less"),
        (lambda c: c["temporal"].update(pad="crop"), r"temporal\.pad: 'crop' is not one of"),
        (lambda c: c["strategies"]["utae"]["segmentation"].update(model="unet"),
         r"segmentation\.model: 'unet' is not one of"),
    ],
)
def test_time_series_config_errors(edit, message):
    c = yaml.safe_load((ROOT / "config" / "studies" / "shaping_ft_embedded.yaml").read_text())
    edit(c)
    with pytest.raises(gcfg.ConfigError, match=message):
        gcfg.validate(c, "s.yaml")


def test_readme_resolved_listing_is_what_validate_prints(capsys):
    """The README shows `geopeft validate ... --resolved`; run it as written and compare."""
    import os
    import re
    import shlex

    from geopeft.cli import main

    readme = (ROOT / "README.md").read_text()
    m = re.search(r"\n\$ uv run (geopeft validate [^\n]+--resolved)\n(.*?)\n```", readme, re.S)
    assert m, "README lost its --resolved example"
    words = shlex.split(m.group(1))[1:]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(words) == 0
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out.splitlines()
    shown = m.group(2).splitlines()
    for line in shown:
        if line.rstrip().endswith("..."):
            assert any(p.startswith(line.rstrip()[:-3].rstrip()) for p in printed), line
        else:
            assert line in printed, line


def test_resolved_json_of_the_real_studies():
    from geopeft.models.summary import describe_spec

    studies = ROOT / "config" / "studies"
    rows = [describe_spec(s) for s in gcfg.job_specs(gcfg.load(studies / "eurosat_lora.yaml"))]
    assert {r["backbone"]["arch"] for r in rows} == {"vit_base_patch16_224"}
    assert [r["backbone"]["depth"] for r in rows] == [12, 12]
    rows = [describe_spec(s) for s in gcfg.job_specs(gcfg.load(studies / "shaping_ft.yaml"))]
    assert {r["segmentation"] for r in rows} == {"utae", "upernet_ltae"} and len(rows) == 360


#: What each real study file's header says its jobs do with their data.
HOLDS = {"eurosat_lora": {"eurosat_rgb": "loaded whole"},
         "fusion_lora": {"bigearthnet_s2": "streamed from the store", "eurosat_ms": "loaded whole"},
         "shaping_ft": {"pastis": "loaded whole"}}


@pytest.mark.parametrize("study", sorted(HOLDS))
def test_a_real_study_declares_the_resources_its_jobs_need(study, capsys):
    """The header's ``geopeft validate ... --resolved`` command, run as written, prints the
    study's declared CPUs and memory, no CPU shortfall, and whether each dataset loads whole or
    streams, as the header says."""
    import os
    import re
    import shlex

    from geopeft.cli import main

    path = ROOT / "config" / "studies" / f"{study}.yaml"
    header = [ln.lstrip("#").strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
    cmds = [m.group(1) for ln in header
            if (m := re.search(r"`uv run (geopeft validate \S+ --resolved)`", ln))]
    assert cmds, f"{path}: no validate --resolved command in its header"
    declared = yaml.safe_load(path.read_text())["resources"]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(shlex.split(cmds[0])[1:]) == 0
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert f"cpus_per_gpu {declared['cpus_per_gpu']} " in out
    assert f"mem_mb {declared['mem_mb']}," in out and "warning" not in out
    for ds, how in HOLDS[study].items():
        assert re.search(rf"^  {ds}: train \+ val images .*: {how}$", out, re.M), (ds, out)


def test_resources_short_of_threads_and_readers_are_flagged():
    from geopeft.plan import job_resources

    cfg = gcfg.resolve([str(ROOT / "config" / "studies" / "fusion_lora.yaml")],
                       {"resources": {"cpus_per_gpu": 8, "mem_mb": 200000}})
    lines = job_resources(cfg)
    assert any("threads + train.workers = 10 > resources.cpus_per_gpu 8" in ln for ln in lines)
    assert any(ln.startswith("  bigearthnet_s2:") and ln.endswith("loaded whole") for ln in lines)


def _readme_config_example() -> list[str]:
    """The README's `--config ...` example for a probe of the time-series study, as words."""
    import re
    import shlex

    text = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"`--config (study=shaping_ft_probe [^`]*)`", text)
    assert m, "the README lost its --config example"
    return shlex.split(m[1])


def test_config_overrides_are_typed_as_the_schema_types_them():
    """A known trap (issue 37, item 10): Snakemake refuses a dotted key (`train.epochs=2`: "Config
    entry must start with a valid identifier") and hands a nested value's leaves over as strings
    (`train={epochs: 2}` -> {'epochs': '2'}), which failed the schema. The README's example is
    parsed by Snakemake's own parser, exactly as written, and resolves to what it says; every
    scalar type of the schema arrives typed; a string where a string is taken stays one."""
    from snakemake.cli import parse_config

    words = _readme_config_example()
    overrides = parse_config(words)
    assert overrides["train"] == {"epochs": "2"}  # what Snakemake hands over
    cfg = gcfg.resolve([ROOT / "config" / "studies" / "shaping_ft.yaml"], overrides)
    assert cfg["study"] == "shaping_ft_probe" and cfg["train"]["epochs"] == 2
    with pytest.raises(ValueError, match="valid identifier"):
        parse_config(["train.epochs=2"])  # why the README does not write it so

    o = parse_config(["study=2024", "train={lr: 1e-4, amp: false, warmup_epochs: 0.5}",
                      "resources={gpus: 0, mem_mb: 900}", "grid={seed: [1, 2]}",
                      "mlflow={experiment: 7}", "jobserver=false"])
    cfg = gcfg.resolve([], o)
    assert cfg["study"] == "2024" and cfg["jobserver"] is False
    assert (cfg["train"]["lr"], cfg["train"]["amp"], cfg["train"]["warmup_epochs"]) == \
        (1e-4, False, 0.5)
    assert cfg["resources"]["gpus"] == 0 and cfg["resources"]["mem_mb"] == 900
    assert cfg["grid"]["seed"] == [1, 2] and cfg["mlflow"]["experiment"] == "7"
    assert gcfg.resolve([], parse_config(["resources={gpus: auto}"]))["resources"]["gpus"] == "auto"
    with pytest.raises(gcfg.ConfigError, match=r"train.epochs: 'two' is not of type 'integer'"):
        gcfg.resolve([], parse_config(["train={epochs: two}"]))


def test_validate_reads_config_as_snakemake_does(capsys):
    """`geopeft validate --config` parses with Snakemake's parser, so a value it accepts or
    refuses is what snakemake would."""
    from geopeft.cli import main

    assert main(["validate", str(ROOT / "config" / "studies" / "shaping_ft.yaml"), "--json",
                 "--config", *_readme_config_example()]) == 0
    assert '"epochs": 2' in capsys.readouterr().out
    with pytest.raises(SystemExit, match="valid identifier"):
        main(["validate", "--config", "train.epochs=2"])
