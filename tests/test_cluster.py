"""Cluster and workstation set-up: per-job GPUs, profiles, conda environment pinned to the lock."""

import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

CLAIM = """
import os, sys, time
from pathlib import Path
from geopeft.gpus import claim
ids = claim(1, timeout_s=60, poll_s=0.05)
print(os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
release = Path(sys.argv[1])
while not release.exists():
    time.sleep(0.05)
"""


def _claimer(tmp_path: Path, name: str, **env: str) -> subprocess.Popen:
    e = dict(os.environ, GEOPEFT_GPU_COUNT="2", GEOPEFT_GPU_LOCK_DIR=str(tmp_path / "locks"), **env)
    if "CUDA_VISIBLE_DEVICES" not in env:
        e.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path / f"release-{name}")],
                            env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_each_job_gets_its_own_gpu(tmp_path):
    a, b = _claimer(tmp_path, "a"), _claimer(tmp_path, "b")
    got = {a.stdout.readline().strip(), b.stdout.readline().strip()}
    assert got == {"0", "1"}  # two jobs, two devices, never both on GPU 0
    c = _claimer(tmp_path, "c")
    time.sleep(1.0)
    assert c.poll() is None  # all devices taken: the third job waits ...
    (tmp_path / "release-a").touch()
    a.wait(timeout=30)
    assert c.stdout.readline().strip() in {"0", "1"}  # ... and gets the freed device
    for n in ("b", "c"):
        (tmp_path / f"release-{n}").touch()
    b.wait(timeout=30)
    c.wait(timeout=30)


def test_visible_devices_set_by_slurm_are_kept(tmp_path):
    p = _claimer(tmp_path, "s", CUDA_VISIBLE_DEVICES="3")
    assert p.stdout.readline().strip() == "3"
    (tmp_path / "release-s").touch()
    p.wait(timeout=30)
    assert not (tmp_path / "locks").exists()  # nothing claimed


def test_more_gpus_than_the_machine_has_is_a_clear_error(monkeypatch, tmp_path):
    from geopeft.gpus import claim

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("GEOPEFT_GPU_COUNT", "1")
    monkeypatch.setenv("GEOPEFT_GPU_LOCK_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="asks for 2 GPUs but this machine has 1"):
        claim(2)
    monkeypatch.setenv("GEOPEFT_GPU_COUNT", "0")
    assert claim(1) is None  # no GPU: nothing to claim, CUDA stays untouched
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_gpus_per_job_ask_for_a_gpu_only_where_there_is_one():
    from geopeft.gpus import per_job

    assert per_job("auto", local=True, visible=0) == 0  # CPU machine: CPU jobs, side by side
    assert per_job("auto", local=True, visible=4) == 1  # GPU workstation: one device per job
    assert per_job("auto", local=False, visible=0) == 1  # cluster executor: jobs run on GPU nodes
    assert per_job(2, local=True, visible=0) == 2  # an explicit count is kept as written
    assert per_job(0, local=False) == 0


def _dry_run_gpus(tmp_path: Path, count: str) -> set[str]:
    """The gpu resource of every train job in a dry run of the CI study with profiles/default."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GEOPEFT_GPU_COUNT=count)
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d",
                        str(tmp_path), "--configfile", str(ROOT / "config" / ".test" / "config.yaml"),
                        "--workflow-profile", str(ROOT / "profiles" / "default"), "-n"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    found = set()
    for block in re.split(r"\n(?=rule |localrule )", r.stdout):
        if block.startswith("rule train:"):
            found.update(re.findall(r"\bgpu=(\d+)", block))
    assert found, r.stdout[-2000:]
    return found


@pytest.mark.parametrize(("count", "asked"), [("0", "0"), ("2", "1")], ids=["cpu", "2-gpus"])
def test_train_jobs_claim_a_gpu_only_on_a_gpu_machine(tmp_path, count, asked):
    """Without CUDA the jobs ask gpu=0, so profiles/default's gpu limit does not serialise them;
    with GPUs (faked through GEOPEFT_GPU_COUNT) each asks one device, as before."""
    assert _dry_run_gpus(tmp_path, count) == {asked}


def test_a_train_job_is_told_its_attempt(tmp_path):
    """Snakemake's attempt reaches the train job (--attempt, a resource of the job evaluated
    per attempt), so that a retry of a training that diverged stops at once
    (geopeft.train.run.train_row)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d",
                        str(tmp_path), "--configfile", str(ROOT / "config" / ".test" / "config.yaml"),
                        "--cores", "1", "-n", "-p"], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    commands = [line for line in r.stdout.splitlines() if " geopeft train --spec " in line]
    assert commands and all(" --attempt 1 " in c for c in commands), r.stdout[-2000:]


SIDE_BY_SIDE = """
rule all:
    input: expand("out/{i}.txt", i=range(2))
rule job:
    output: "out/{i}.txt"
    threads: 1
    resources: gpu=1
    shell:
        "touch started-{wildcards.i}; other=started-$((1 - {wildcards.i}));"
        " for n in $(seq 100); do [ -e $other ] && break; sleep 0.1; done;"
        " if [ -e $other ]; then echo together > {output}; else echo alone > {output}; fi"
"""


@pytest.mark.parametrize("provided", [None, "1"], ids=["no-resources", "gpu=1"])
def test_snakemake_limits_the_gpu_resource_only_when_it_is_provided(tmp_path, provided):
    """What the profiles rely on (Snakemake 9): jobs asking gpu=1 run side by side when no
    --resources gpu=N is given, one at a time under --resources gpu=1 (profiles/default). Each
    job waits up to 10 s for the other to start: together, or alone."""
    (tmp_path / "Snakefile").write_text(SIDE_BY_SIDE)
    extra = ["--resources", f"gpu={provided}"] if provided else []
    r = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *extra], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    seen = [(tmp_path / f"out/{i}.txt").read_text().strip() for i in range(2)]
    if provided is None:
        assert seen == ["together", "together"]
        assert "Provided resources: gpu" not in r.stdout + r.stderr
    else:
        assert "alone" in seen  # the first waited in vain: the second had not started


def _lock_versions() -> dict[str, str]:
    with open(ROOT / "uv.lock", "rb") as fh:
        lock = tomllib.load(fh)
    return {p["name"]: p["version"] for p in lock["package"] if "version" in p}


def test_conda_env_pins_equal_the_lock():
    lock = _lock_versions()
    env = yaml.safe_load((ROOT / "envs" / "geopeft.yaml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r requirements.txt" in pip
    pins = {}
    for line in (ROOT / "envs" / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^ ;]+)", line)
        if m:
            pins[m[1].lower()] = m[2]
    assert pins, "envs/requirements.txt holds no pins"
    wrong = {k: (v, lock.get(k)) for k, v in pins.items() if lock.get(k) != v}
    assert not wrong, f"envs/requirements.txt differs from uv.lock: {wrong}"
    with open(ROOT / "pyproject.toml", "rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    direct = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in deps}
    assert direct <= set(pins), f"not pinned for conda: {direct - set(pins)}"


@pytest.mark.parametrize("profile", ["default", "slurm"])
def test_profiles_parse_and_dry_run(profile, tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d",
                        str(tmp_path), "--configfile", str(ROOT / "config" / ".test" / "config.yaml"),
                        "--workflow-profile", str(ROOT / "profiles" / profile), "-n"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^train\s+4$", r.stdout, re.M)
    cfg = yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text())
    if profile == "slurm":
        assert cfg["executor"] == "slurm" and cfg["slurm-requeue"] and cfg["retries"] >= 1
    else:
        assert cfg["resources"]["gpu"] >= 1  # GPU workstations: one job per device


def test_a_site_profile_s_account_and_partition_reach_every_slurm_job(tmp_path):
    """``--workflow-profile profiles/slurm --profile <site>`` as the README says: a workflow
    profile overrides a --profile key by key, so profiles/slurm sets no default-resources and
    the site's (profiles/slurm/site-example.yaml) reach every cluster job, GPU and CPU rules
    alike, next to the runtime and memory the rules declare."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "config.yaml").write_text((ROOT / "profiles/slurm/site-example.yaml").read_text())
    assert "default-resources" not in yaml.safe_load(
        (ROOT / "profiles/slurm/config.yaml").read_text())
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d",
                        str(tmp_path / "w"), "--configfile",
                        str(ROOT / "config" / ".test" / "config.yaml"),
                        "--workflow-profile", str(ROOT / "profiles" / "slurm"),
                        "--profile", str(site), "-n"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    blocks = re.findall(r"^rule (\w+):\n(.*?)(?=^\[|\Z)", r.stdout, re.S | re.M)
    local = {"mlflow_init", "download", "fetch", "protocol", "aggregate", "table", "all"}  # login
    seen = set()
    for rule, block in blocks:
        if rule in local:
            continue
        res = re.search(r"resources: (.*)", block)
        assert res, (rule, block)
        assert "slurm_account=proj123" in res[1] and "slurm_partition=gpu" in res[1], (rule, res[1])
        assert "runtime=" in res[1] and "mem_mb=" in res[1], (rule, res[1])
        seen.add(rule)
    assert {"synthesize", "prepare", "subset", "pretrain", "train", "evaluate", "figures"} <= seen, seen
