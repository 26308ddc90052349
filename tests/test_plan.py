"""``geopeft plan``: jobs per rule as Snakemake expands a study, hours from a measured step time,
runtime flags, the SLURM profile's arrays, clear errors, and the README's plan command as written."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from geopeft import config as gcfg
from geopeft.cli import main
from geopeft.plan import (
    LOCAL_RULES,
    Curve,
    PlanError,
    StepTime,
    format_plan,
    load_measurements,
    make_plan,
    read_steptimes,
    rule_jobs,
    steptime_from_run,
)

ROOT = Path(__file__).resolve().parents[1]
SHAPING = "config/studies/shaping_ft.yaml"
#: (model, method) of every shaping_ft strategy
SHAPING_MODELS = [("ssl4eo_s12_vits16_dino", "linear"), ("ssl4eo_s12_vits16_dino", "e2e"),
                  ("ssl4eo_s12_vits16_dino", "lora"), ("croma_optical_base", "linear"),
                  ("croma_optical_base", "e2e"), ("utae", "scratch")]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # study paths, profiles/slurm, config/measurements as documented


def _steptimes(path: Path, train_per_date: float, val_per_date: float, startup: float = 0.0,
               kind: str = "h100", dates: int = 35) -> Path:
    """A step-time file with the same per-date times for every shaping_ft model."""
    doc = {"kind": kind, "note": "test", "entries": [
        {"model": m, "method": k, "sequence_length": dates, "batch_size": 8,
         "train_s_per_sample": train_per_date * dates, "val_s_per_sample": val_per_date * dates,
         "startup_s": startup} for m, k in SHAPING_MODELS]}
    path.write_text(yaml.safe_dump(doc))
    return path


def _snakemake_job_stats(study: str, tmp: Path) -> dict[str, int]:
    for name in ("Snakefile", "workflow", "config", "profiles"):
        (tmp / name).symlink_to(ROOT / name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--forceall", "--configfile",
                        study], cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = r.stdout.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)
            if m[1] != "total"}


@pytest.mark.parametrize("study", ["config/.test/config.yaml", "config/.test/pastis.yaml",
                                   SHAPING])
def test_jobs_per_rule_are_snakemakes(study, tmp_path):
    """The plan counts jobs from the study rows; Snakemake's dry run must count the same."""
    assert rule_jobs(gcfg.resolve([study])) == _snakemake_job_stats(study, tmp_path)


def test_shaping_ft_jobs():
    jobs = rule_jobs(gcfg.resolve([SHAPING]))
    # 6 strategies x 4 label fractions x 5 lengths x 3 seeds; subsets: 3 fractions < 1 x 3 seeds
    assert (jobs["train"], jobs["evaluate"], jobs["subset"], jobs["prepare"]) == (360, 360, 9, 1)
    assert jobs["download"] == jobs["fetch"] == 1 and "pretrain" not in jobs


def test_local_rules_are_the_rule_files():
    """LOCAL_RULES is what the rule files declare as localrules (and the target all)."""
    declared = set()
    for f in (ROOT / "workflow" / "rules").glob("*.smk"):
        for block in re.findall(r"localrules:\n((?:\s+\w+,?\n)+)", f.read_text()):
            declared |= set(re.findall(r"\w+", block))
    assert declared | {"all"} == set(LOCAL_RULES)


def test_plan_without_a_measurement_says_so():
    text = format_plan(make_plan([SHAPING], gpus=16))
    assert "none measured" in text and "GPU-hours:" not in text
    assert "train          360  GPU x1" in text
    assert "Data pastis: train 1,455 / val 497 / test 481" in text


def test_hours_from_a_measured_step_time(tmp_path):
    """GPU-hours = epochs x (train subset x train s + val split x val s) + test split x val s,
    per-sample times scaled by the dates, summed over the grid."""
    f = _steptimes(tmp_path / "h100.yaml", train_per_date=0.001, val_per_date=0.0005)
    plan = make_plan([SHAPING], measured=[f], gpus=16)
    assert plan.kind == "h100" and not plan.unmeasured
    n_train = {0.01: 15, 0.1: 146, 0.5: 728, 1.0: 1455}  # round(fraction x 1,455)
    by_name = {r.name: r for r in plan.runs}
    r = by_name["dino_e2e-f1-t35-s0"]
    assert r.train_job_s == pytest.approx(40 * (1455 * 0.035 + 497 * 0.0175))
    assert r.eval_job_s == pytest.approx(481 * 0.0175)
    assert by_name["utae-f0.01-t1-s0"].train_job_s == pytest.approx(
        40 * (15 * 0.001 + 497 * 0.0005))
    expected = 18 * sum(40 * (n * 0.001 * t + 497 * 0.0005 * t) + 481 * 0.0005 * t
                        for n in n_train.values() for t in (35, 25, 15, 6, 1)) / 3600
    assert plan.gpu_hours == pytest.approx(expected)
    assert plan.wall_hours() >= expected / 16
    assert plan.wall_hours() == pytest.approx(expected / 16, rel=0.05)  # 360 chains balance well
    text = format_plan(plan)
    assert f"GPU-hours: {expected:,.2f}" in text and "Wall time on 16 x h100" in text


def test_doubling_epochs_doubles_the_hours(tmp_path):
    f = _steptimes(tmp_path / "h100.yaml", train_per_date=0.001, val_per_date=0.0)
    h40 = make_plan([SHAPING], measured=[f]).gpu_hours
    h80 = make_plan([SHAPING], {"train": {"epochs": 80}}, measured=[f]).gpu_hours
    assert h80 == pytest.approx(2 * h40)
    # and twice the GPUs halve the wall time (within the last job's imbalance)
    assert make_plan([SHAPING], measured=[f], gpus=32).wall_hours() == pytest.approx(
        make_plan([SHAPING], measured=[f], gpus=16).wall_hours() / 2, rel=0.05)


def test_jobs_over_the_runtime_are_flagged(tmp_path):
    """resources.runtime is 240 min x attempt, retries 2 in profiles/slurm: a job resumes from
    its checkpoint in attempt 2 (up to 720 min in all) or 3 (1,440 min), else cannot finish."""
    # 0.4 s per sample-date: the f1-t35 rows train 40 x 1,455 x 14 s = 226 h
    f = _steptimes(tmp_path / "slow.yaml", train_per_date=0.4, val_per_date=0.0)
    plan = make_plan([SHAPING], measured=[f])
    by_name = {r.name: r for r in plan.runs}
    assert by_name["utae-f1-t35-s0"].attempts == 0
    assert by_name["utae-f0.01-t1-s0"].attempts == 1  # 40 x 15 x 0.4 s = 4 min
    t6 = by_name["utae-f0.5-t1-s0"]  # 40 x 728 x 0.4 s = 194 min: first attempt
    assert t6.attempts == 1
    t2 = by_name["utae-f0.1-t6-s0"]  # 40 x 146 x 2.4 s = 234 min
    assert t2.attempts == 1
    t3 = by_name["utae-f0.5-t6-s0"]  # 40 x 728 x 2.4 s = 1,165 min: attempts 1+2+3 (1,440)
    assert t3.attempts == 3
    text = format_plan(plan)
    assert re.search(r"FLAG \d+ train jobs exceed 240 min and resume", text)
    assert re.search(r"FLAG \d+ train jobs cannot finish in 3 attempts", text)
    assert "utae-f1-t35-s0" in text


def test_per_sample_time_is_linear_in_the_dates():
    one = Curve(((6, 0.6, 0.3),), None, (), ())
    assert one.at(35) == pytest.approx((3.5, 1.75))  # proportional from one length
    two = Curve(((1, 0.3, None), (6, 0.8, None)), None, (), ())
    assert two.at(35)[0] == pytest.approx(0.3 + 0.1 * 34)  # a + b T through both
    assert two.at(3)[0] == pytest.approx(0.5)
    assert two.at(None)[0] == pytest.approx(0.55)  # image rows: the mean


def _run_json(tmp_path: Path, device: str = "cpu") -> Path:
    spec = gcfg.job_spec(gcfg.resolve([SHAPING]), gcfg.study_rows(gcfg.resolve([SHAPING]))[0])
    rec = {"spec": spec, "train_time_s": 30.0, "wall_time_s": 40.0, "train_samples": 10,
           "history": [{}, {}, {}], "device": device, "startup_s": 2.5,
           "store": {"path": str(tmp_path / "gone.zarr")}}
    p = tmp_path / "runs" / spec["row"]["name"] / "model" / "run.json"
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps(rec))
    return p


def test_step_time_of_a_finished_run(tmp_path):
    p = _run_json(tmp_path)
    s = steptime_from_run(p)
    assert (s.kind, s.model, s.method, s.sequence_length, s.batch_size) == (
        "cpu", "ssl4eo_s12_vits16_dino", "linear", 35, 8)
    assert s.train_s == pytest.approx(30.0 / 30) and s.startup_s == 2.5
    assert s.val_s is None  # its store is gone: validation samples cannot be counted
    with pytest.raises(PlanError, match=r"run.json: measured on 'cuda'; say which GPU"):
        steptime_from_run(_run_json(tmp_path / "gpu", "cuda"))
    assert steptime_from_run(_run_json(tmp_path / "gpu2", "cuda"), "a100").kind == "a100"


def test_steptimes_command_writes_what_plan_reads(tmp_path, capsys):
    _run_json(tmp_path)
    out = tmp_path / "steps.yaml"
    assert main(["steptimes", str(tmp_path / "runs"), "--note", "test", "--out", str(out)]) == 0
    [s] = read_steptimes(out)
    assert (s.kind, s.model, s.train_s) == ("cpu", "ssl4eo_s12_vits16_dino", 1.0)
    assert main(["plan", "--configfile", SHAPING, "--measured", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Step times measured on cpu" in text
    assert "Not measured on cpu: croma_optical_base e2e" in text and "GPU-hours:" not in text


@pytest.mark.parametrize("args, message", [
    (["--measured", "nowhere/steps.yaml"], r"nowhere/steps.yaml: step-time file not found"),
    (["--measured", "nowhere/run.json"], r"nowhere/run.json: run.json not found"),
    (["--measured", "config/measurements/shaping_ft_rehearsal_cpu.yaml", "--gpu-kind", "a100"],
     r"--gpu-kind a100: no step time measured on a100 \(measured: cpu; from config/measurements"),
    (["--profile", "nowhere"], r"nowhere/config.yaml: profile not found"),
    (["--slurm-overhead", "nowhere.json"], r"nowhere.json: SLURM overhead measurement not found"),
    (["--gpus", "0"], r"--gpus: at least 1, got 0"),
    (["--configfile", "nowhere.yaml"], r"nowhere.yaml: config file not found"),
])
def test_bad_input_is_a_clear_error(args, message, capsys):
    argv = ["plan", *([] if "--configfile" in args else ["--configfile", SHAPING]), *args]
    assert main(argv) == 2
    assert re.search(r"geopeft plan: error: " + message, capsys.readouterr().err)


@pytest.mark.parametrize("entry, message", [
    ({"method": "linear", "train_s_per_sample": 1}, r"entries\[0\]: missing model"),
    ({"model": "utae", "method": "scratch", "train_s_per_sample": "fast"}, r"entries\[0\]: not a number"),
    ({"model": "utae", "method": "scratch", "train_s_per_sample": 0},
     r"entries\[0\].train_s_per_sample: must be > 0"),
])
def test_bad_step_time_entry_names_file_and_key(entry, message, tmp_path):
    f = tmp_path / "steps.yaml"
    f.write_text(yaml.safe_dump({"kind": "h100", "entries": [entry]}))
    with pytest.raises(PlanError, match=re.escape(str(f)) + ": " + message):
        load_measurements([f])
    f.write_text(yaml.safe_dump({"entries": [{"model": "utae", "method": "scratch",
                                              "train_s_per_sample": 1}]}))
    with pytest.raises(PlanError, match=r"entries\[0\]: missing kind"):
        load_measurements([f])


def test_profile_arrays_and_their_limits(tmp_path):
    """profiles/slurm submits train and evaluate as arrays with limits that hand the plugin
    every ready job; a profile whose jobs or rate would hold some back is flagged."""
    plan = make_plan([SHAPING])
    assert set(plan.profile.array_rules) == {"train", "evaluate"}
    assert not [n for n in plan.notes if "issue #473" in n]
    text = format_plan(plan)
    assert "with slurm-array-jobs train,evaluate" in text
    prof = tmp_path / "config.yaml"
    prof.write_text(yaml.safe_dump({"slurm-array-jobs": "train,evaluate", "jobs": 50}))
    notes = make_plan([SHAPING], profile=tmp_path).notes
    assert any("jobs 50 < 720" in n for n in notes)
    assert any("max-jobs-per-timespan 100/1s" in n for n in notes)


def test_overhead_share_of_the_gpu_time(tmp_path):
    o = tmp_path / "o.json"
    o.write_text(json.dumps({"per_job_s": {"individual": 10.0, "array": 5.0}, "jobs": 50}))
    f = _steptimes(tmp_path / "h100.yaml", train_per_date=0.001, val_per_date=0.0005)
    plan = make_plan([SHAPING], measured=[f], gpus=16, overhead=o)
    assert plan.overhead_hours("individual") == pytest.approx(720 * 10 / 3600)
    assert plan.overhead_hours("array") == pytest.approx(720 * 5 / 3600)
    share = 100 * plan.overhead_hours("array") / plan.gpu_hours
    assert f"{share:.2f} % of the" in format_plan(plan)
    o.write_text(json.dumps({"per_job_s": {"individual": 10.0}}))
    with pytest.raises(PlanError, match=r"o.json: per_job_s.individual and per_job_s.array"):
        make_plan([SHAPING], overhead=o)


def _readme_plan_blocks() -> list[tuple[str, list[str]]]:
    """Each `geopeft plan` command of the README and the output lines shown under it."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    out = []
    for m in re.finditer(r"```bash\n((?:uv run )?geopeft plan [^\n]*)\n```\n+```\n(.*?)```", text,
                         re.S):
        out.append((m[1], [ln.strip() for ln in m[2].splitlines()
                           if ln.strip() and ln.strip() != "..."]))
    return out


def test_the_readme_plan_commands_print_what_it_shows():
    blocks = _readme_plan_blocks()
    assert len(blocks) >= 2, "the README shows geopeft plan with and without a measurement"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for cmd, shown in blocks:
        words = shlex.split(re.sub(r"\s+", " ", cmd))
        words = words[2:] if words[:2] == ["uv", "run"] else words
        r = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"
        lines = [ln.strip() for ln in r.stdout.splitlines()]
        missing = [s for s in shown if s not in lines]
        assert not missing, f"{cmd}: the README shows lines it does not print:\n{missing}\n{r.stdout}"


def test_step_time_curve_from_two_lengths_of_a_rehearsal():
    """A rehearsal measures each strategy at one length; two lengths give a line in the dates."""
    steps = [StepTime("cpu", "utae", "scratch", 0.3, 1), StepTime("cpu", "utae", "scratch", 0.8, 6)]
    from geopeft.plan import curves

    c = curves(steps, "cpu")[("utae", "scratch")]
    assert c.at(11)[0] == pytest.approx(1.3)


def _study_plan_commands() -> list[tuple[Path, str]]:
    """Each `geopeft plan` command a study file's header tells its reader to run."""
    return [(f, ln.lstrip("#").strip()) for f in sorted((ROOT / "config" / "studies").glob("*.yaml"))
            for ln in f.read_text().splitlines()
            if ln.startswith("#") and "geopeft plan " in ln]


@pytest.mark.parametrize(("study", "cmd"), _study_plan_commands(),
                         ids=[c for _, c in _study_plan_commands()])
def test_a_study_header_s_plan_command_plans_that_study(study, cmd):
    """Run as written: it plans the study's every run, and says what the header says it says
    (peft_methods: that the SLURM profile's jobs must be raised for 2,160 GPU jobs)."""
    from geopeft import config as gcfg

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    words = shlex.split(cmd)
    words = words[2:] if words[:2] == ["uv", "run"] else words
    r = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{cmd}\n{r.stderr}"
    n = len(gcfg.study_rows(gcfg.resolve([study])))
    assert f"{n} runs" in r.stdout.splitlines()[0]
    header = " ".join(ln.lstrip("#") for ln in study.read_text().splitlines() if ln.startswith("#"))
    if "jobs: 1000 must be raised" in re.sub(r"\s+", " ", header):
        assert re.search(r"jobs 1000 < \d+ .* raise jobs", r.stdout), r.stdout
