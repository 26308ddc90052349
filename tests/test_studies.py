"""Every study command the README, a study file's header or a profile's header tells a user to run
is run here exactly as written (as a dry run that prints its jobs), and the train jobs it would
start are checked against what the study says it runs: the right model, size, weights, adapter,
grid. A study that dry-runs but resolves to something else fails.

``uv run`` / ``python3 -m uv run --locked`` prefixes stand for "in the project's environment":
the test runs the rest with this environment's ``snakemake`` first on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from geopeft import config as gcfg
from geopeft.models.summary import describe_spec
from geopeft.spec import JobSpec

ROOT = Path(__file__).resolve().parents[1]
STUDY_FILES = sorted([*(ROOT / "config" / "studies").glob("*.yaml"),
                      *(ROOT / "config" / ".test").glob("*.yaml")])
PREFIX = re.compile(r"^(?:python3 -m uv run --locked |uv run --locked |uv run )?(snakemake .*)$")
pytestmark = pytest.mark.slow


def _commands_in(path: Path) -> list[str]:
    """The snakemake commands a file tells its reader to run (README: code and inline code;
    config/profile files: the comment header)."""
    text = path.read_text()
    if path.suffix == ".md":
        text = text.replace("\\\n", " ")
        cands = re.findall(r"`([^`\n]*snakemake [^`\n]*)`", text)
        in_block = False
        for line in text.splitlines():
            if line.startswith("```"):
                in_block = not in_block
            elif in_block and "snakemake " in line:
                cands.append(line)
    else:
        cands = [ln.lstrip("#").strip() for ln in text.splitlines() if ln.startswith("#")]
    out = []
    for c in cands:
        c = c.split("&&")[-1].split("   #")[0].split("  (")[0].strip()
        if "uv run" in c and not c.startswith("python3"):
            c = c[c.index("uv run"):]
        m = PREFIX.match(c)
        if m is None or not m.group(1).startswith("snakemake "):
            continue
        cmd = re.sub(r"\s+", " ", m.group(1))
        if "--report" in cmd or "--lint" in cmd:
            continue
        if "config/studies/<study>.yaml" in cmd and "..." not in cmd:
            out += [cmd.replace("config/studies/<study>.yaml", str(f.relative_to(ROOT)))
                    for f in sorted((ROOT / "config" / "studies").glob("*.yaml"))]
        elif not any(t in cmd for t in ("<", "[", "...", "~")):
            out.append(cmd)
    return out


def documented_commands() -> list[tuple[str, str]]:
    files = [ROOT / "README.md", *STUDY_FILES, ROOT / "config" / "config.yaml",
             *sorted((ROOT / "profiles").glob("*/config.yaml"))]
    seen: dict[str, str] = {}
    for f in files:
        for cmd in _commands_in(f):
            seen.setdefault(cmd, str(f.relative_to(ROOT)))
    return sorted((src, cmd) for cmd, src in seen.items())


COMMANDS = documented_commands()


def _configfile(cmd: str) -> Path | None:
    words = shlex.split(cmd)
    return ROOT / words[words.index("--configfile") + 1] if "--configfile" in words else None


def test_every_study_file_has_a_documented_command():
    covered = {_configfile(c) for _, c in COMMANDS}
    assert [f for f in STUDY_FILES if f not in covered] == []
    assert any(_configfile(c) is None for _, c in COMMANDS)  # the README's default run


def _workdir(tmp: Path) -> Path:
    """A fresh working copy (no results) whose paths are the repository's (tests/data: the
    chips of the example of a dataset of your own)."""
    for name in ("Snakefile", "workflow", "config", "profiles"):
        (tmp / name).symlink_to(ROOT / name)
    (tmp / "tests").mkdir(exist_ok=True)
    (tmp / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    return tmp


def dry_run(cmd: str, tmp: Path) -> list[dict]:
    """Run ``cmd`` (a documented command) as a dry run; the job specs of its train jobs."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run([*shlex.split(cmd), "-n", "-p"], cwd=_workdir(tmp), env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    specs = []
    for line in r.stdout.splitlines():
        line = line.strip().removeprefix("Shell command: ")
        if "geopeft train --spec " in line:  # after the rule's log link and attempt header
            words = shlex.split(line[line.index("geopeft train --spec "):])
            specs.append(json.loads(words[words.index("--spec") + 1]))
    assert specs, f"{cmd}: no train job in the dry run\n{r.stdout[-2000:]}"
    return specs


def _all(rows, key):
    return {r[key] if not isinstance(r[key], (dict, list)) else yaml.safe_dump(r[key])
            for r in rows}


def check_eurosat_lora(rows):
    assert len(rows) == 2 and {r["method"] for r in rows} == {"full", "lora"}
    for r in rows:
        bb = r["backbone"]
        assert (bb["arch"], bb["depth"], bb["width"], bb["patch"], bb["img_size"]) == (
            "vit_base_patch16_224", 12, 768, 16, 224)
        assert 85e6 < bb["params"] < 87e6
        assert r["weights"] == "timm:vit_base_patch16_224.orig_in21k"
        assert (r["dataset"], r["bands"], r["epochs"], r["batch_size"]) == (
            "eurosat_rgb", ["B04", "B03", "B02"], 3, 64)
    lora = next(r for r in rows if r["method"] == "lora")
    assert lora["lora"] == {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.1,
                            "target_modules": ["q", "k", "v"], "n_frequency": 1000, "block_size": 32}
    assert lora["lr"] == 5e-4 and next(r for r in rows if r["method"] == "full")["lr"] == 5e-5


def check_fusion_lora(rows):
    assert len(rows) == 30
    assert Counter(r["dataset"] for r in rows) == {"bigearthnet_s2": 15, "eurosat_ms": 15}
    for r in rows:
        bb = r["backbone"]
        assert (bb["arch"], bb["depth"], bb["width"], bb["img_size"]) == (
            "swinv2_tiny_window8_256", [2, 2, 6, 2], 768, 256)
        assert r["weights"] == "timm:swinv2_tiny_window8_256.ms_in1k"
        assert r["method"] == "lora"  # the Swin-V2 is frozen; adapters, fusion and head train
        assert (r["lora"]["r"], r["lora"]["alpha"], r["lora"]["dropout"]) == (8, 16, 0.1)
        assert r["bands"] == ["B02", "B03", "B04", "B08", "B11", "B12"]
    ladder = {(r["fusion"]["tokenizer"], r["fusion"]["caf"], r["fusion"]["glf"], r["lora"]["method"])
              for r in rows}
    assert ladder == {(False, False, False, "lora"), (True, False, False, "lora"),
                      (True, True, False, "lora"), (True, True, True, "lora"),
                      (True, True, True, "dora")}
    assert {r["seed"] for r in rows} == {0, 1, 2}


def check_shaping_ft(rows):
    assert len(rows) == 360
    assert {r["label_fraction"] for r in rows} == {0.01, 0.1, 0.5, 1.0}
    assert {r["sequence_length"] for r in rows} == {1, 6, 15, 25, 35}
    assert {r["seed"] for r in rows} == {0, 1, 2}
    utae = [r for r in rows if r["backbone"] is None]
    assert len(utae) == 60 and {r["segmentation"] for r in utae} == {"utae"}
    gfm = [r for r in rows if r["backbone"] is not None]
    # the study's two encoders: SSL4EO-S12 ViT-S/16 DINO and CROMA base (12 bands, patch 8,
    # 16 x 16 tokens of a 128 px PASTIS patch; 10 of its bands: 85.5 M parameters)
    shapes = {"ssl4eo_s12_vits16_dino": ("vit_small_patch16_224", 12, 384, 16, 128),
              "croma_optical_base": ("croma_optical_base", 12, 768, 8, 128)}
    for r in gfm:
        bb = r["backbone"]
        assert (bb["arch"], bb["depth"], bb["width"], bb["patch"], bb["input_size"]) == (
            shapes[bb["name"]])
        assert r["weights"].startswith("url:https://") and r["segmentation"] == "upernet_ltae"
    croma = [r for r in gfm if r["backbone"]["name"] == "croma_optical_base"]
    assert len(croma) == 120 and {r["backbone"]["params"] for r in croma} == {85_520_640}
    assert {r["weights"] for r in croma} == {
        "url:https://hf.co/torchgeo/croma/resolve/387883f08af79d777167519c57cd826eda89a16f/"
        "CROMA_base-0238d814.pt"}
    assert Counter(r["method"] for r in gfm) == {"linear": 120, "e2e": 120, "lora": 60}
    assert {r["encoder_lr_factor"] for r in gfm if r["method"] == "e2e"} == {0.1}


def check_peft_methods(rows):
    """Issue 34's methods study: 15 methods x 2 encoders x 2 datasets x 2 label fractions x
    3 seeds x each method's 3 learning rates."""
    assert len(rows) == 1080
    by_strategy = Counter(r["strategy"] for r in rows)
    assert len(by_strategy) == 30 and set(by_strategy.values()) == {36}
    assert {r["dataset"] for r in rows} == {"eurosat_ms", "bigearthnet_s2"}
    assert ({r["label_fraction"] for r in rows}, {r["seed"] for r in rows}) == ({0.1, 1.0},
                                                                              {0, 1, 2})
    cells = Counter((r["strategy"], r["dataset"], r["label_fraction"], r["seed"]) for r in rows)
    assert set(cells.values()) == {3}  # three rates per cell, chosen on validation
    for r in rows:
        bb = r["backbone"]
        if r["strategy"].endswith("_ssl4eo"):
            assert (bb["name"], bb["width"], bb["input_size"]) == ("ssl4eo_s12_vits16_dino", 384,
                                                                   224)
            assert r["weights"].startswith("url:https://hf.co/torchgeo/vit_small_patch16_224")
        else:
            assert (bb["arch"], bb["width"], bb["input_size"]) == ("vit_base_patch16_224", 768,
                                                                   224)
            assert r["weights"] == "timm:vit_base_patch16_224.orig_in21k"
        if r["method"] == "lora" and r["lora"]["method"] != "ia3":
            assert r["lora"]["target_modules"] == ["q", "v"]
    methods = {(r["method"], (r["lora"] or {}).get("method"),
                (r["options"] or {}).get("deep")) for r in rows}
    assert len(methods) == 15, methods


def check_own_chips_example(rows):
    """Issue 32's example of a dataset of your own: full, LoRA and linear on all and half the
    train labels of the chips of tests/data/own_chips, read from that folder (no synthetic
    world, no download)."""
    assert sorted((r["strategy"], r["label_fraction"]) for r in rows) == [
        (s, f) for s in ("full", "linear", "lora") for f in (0.5, 1.0)]
    for r in rows:
        assert (r["dataset"], r["source"], r["weights"]) == ("own_chips", "local",
                                                              "none"), r


def check_own_fields_example(rows):
    """Issue 32's example of a segmentation time series of your own: UPerNet + L-TAE on a ViT
    (random weights) and the U-TAE, each on 3 dates and on 1, read from tests/data/own_fields."""
    assert sorted((r["strategy"], r["segmentation"], r["sequence_length"]) for r in rows) == [
        ("upernet", "upernet_ltae", 1), ("upernet", "upernet_ltae", 3), ("utae", "utae", 1),
        ("utae", "utae", 3)]
    for r in rows:
        assert (r["dataset"], r["source"], r["label_fraction"]) == ("own_fields", "local", 1.0)
        assert r["backbone"] is None or r["weights"] == "none", r


def check_embedded(rows):
    for r in rows:
        assert r["source"] == "synthetic"
        assert r["backbone"] is None or r["weights"] in ("pretrain", "none (from scratch)")


INTENT = {"eurosat_lora": check_eurosat_lora, "fusion_lora": check_fusion_lora,
          "shaping_ft": check_shaping_ft, "peft_methods": check_peft_methods,
          "own_chips_example": check_own_chips_example,
          "own_fields_example": check_own_fields_example}


def _declared(path: Path | None) -> dict:
    return yaml.safe_load((path or ROOT / gcfg.DEFAULT_STUDY).read_text())


@pytest.mark.parametrize(("source", "cmd"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_documented_command_runs_the_documented_study(source, cmd, tmp_path):
    specs = dry_run(cmd, tmp_path)
    path = _configfile(cmd)
    cfg = gcfg.resolve([path] if path else [])
    # the jobs are the rows `geopeft validate` resolves for the same file: one resolution
    assert sorted(s["row"]["name"] for s in specs) == sorted(r["name"] for r in gcfg.study_rows(cfg))
    for s in specs:
        assert s == gcfg.job_spec(cfg, next(r for r in gcfg.study_rows(cfg)
                                            if r["name"] == s["row"]["name"]))
    # nothing of the default study leaks in: what the file leaves out is the schema's default
    declared = _declared(path)
    for s in specs:
        assert s["threads"] == declared.get("threads", 1)
        if s["backbone"] is not None and not s["row"].get("backbone"):
            assert s["backbone"]["kwargs"] == declared["backbone"].get("kwargs", {}), source
    rows = [describe_spec(JobSpec.from_dict(s)) for s in specs]
    study = cfg["study"]
    if study in INTENT:
        INTENT[study](rows)
    else:
        check_embedded(rows)


def test_a_study_file_is_the_whole_study(tmp_path):
    """Snakemake deep-merges --configfile over the Snakefile's configfile: a key the study leaves
    out must come from the schema, not from config/config.yaml (the default study)."""
    study = tmp_path / "mine.yaml"
    study.write_text(yaml.safe_dump({
        "study": "mine", "data": {"dataset": "eurosat_rgb", "source": "synthetic",
                                   "bands": ["B04", "B03", "B02"]},
        "backbone": {"name": "embedded"}, "strategies": {"lp": {"strategy": "linear"}},
        "grid": {"strategy": ["lp"]}}))
    (tmp_path / "wd").mkdir()
    specs = dry_run(f"snakemake --cores 1 --configfile {study}", tmp_path / "wd")
    assert len(specs) == 1  # the default study's label fractions and seeds do not leak in
    s = specs[0]
    schema_train = gcfg.load_schema()["$defs"]["train"]["properties"]
    assert s["row"]["train"]["epochs"] == schema_train["epochs"]["default"]
    assert s["row"]["train"]["batch_size"] == schema_train["batch_size"]["default"]
    assert s["backbone"]["kwargs"] == {} and s["threads"] == 1
    assert "lora" not in gcfg.job_spec(gcfg.resolve([study]), gcfg.study_rows(gcfg.resolve([study]))[0])
