"""Preemption-safe training: atomic verified states, SIGTERM/SIGKILL at random steps, resume."""

import json
import os
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import backbone_cfg
from safetensors.torch import load_file

from geopeft import process
from geopeft.tracking import init_experiment
from geopeft.train.resume import Checkpointer


def test_corrupt_or_partial_state_is_never_loaded(tmp_path):
    ck = Checkpointer(tmp_path / "state", keep=3)
    for step in (1, 2, 3):
        ck.save({"step": step, "w": torch.full((4,), float(step))}, step)
    assert [p.name for p in ck.states()] == ["step-00000001.pt", "step-00000002.pt", "step-00000003.pt"]
    assert ck.latest()["step"] == 3
    newest = ck.states()[-1]
    newest.write_bytes(newest.read_bytes()[:50])  # truncated by a kill mid-write
    assert ck.latest()["step"] == 2  # falls back to the previous good state
    ck.states()[-2].with_suffix(".json").unlink()  # no checksum sidecar: never trusted
    assert ck.latest()["step"] == 1
    (tmp_path / "state" / ".step-00000009.pt.tmp-1").write_bytes(b"partial")
    assert ck.latest()["step"] == 1
    ck.save({"step": 4}, 4)
    assert len(ck.states()) == 3  # keeps the last three


def test_a_state_of_other_settings_is_never_resumed(tmp_path, caplog):
    """A rerun after the study changed (another lr after a diverged loss, more epochs) is another
    job spec: the states and the wall-time record an attempt of the old spec left are not
    resumed (before: the old optimiser and scheduler came back, so the new lr was never used),
    they are removed with a warning; the same spec resumes as before, and a state written
    before fingerprints were recorded still resumes."""
    state = tmp_path / "state"
    old = Checkpointer(state, fingerprint="a" * 16, clock_every_s=0)
    old.save({"step": 7}, 7)
    old.record_clock(12.5, 1)
    assert Checkpointer(state, fingerprint="a" * 16).latest()["step"] == 7
    assert Checkpointer(state, fingerprint="a" * 16).clock()["wall_time_s"] == 12.5
    new = Checkpointer(state, fingerprint="b" * 16, clock_every_s=0)
    assert new.clock() is None
    with caplog.at_level("WARNING", logger="geopeft"):
        assert new.latest() is None
    assert "saved for other settings (spec aaaaaaaaaaaaaaaa, this job's bbbbbbbbbbbbbbbb)" in \
        caplog.text and new.states() == []
    new.save({"step": 1}, 1)  # its own states are kept by the rotation, not the old ones
    new.save({"step": 2}, 2)
    assert new.latest()["step"] == 2
    legacy = Checkpointer(tmp_path / "legacy")
    legacy.save({"step": 3}, 3)
    assert Checkpointer(tmp_path / "legacy", fingerprint="c" * 16).latest()["step"] == 3


def _spec(epochs: int) -> dict:
    train = {"epochs": epochs, "batch_size": 8, "lr": 0.003, "weight_decay": 0.05,
             "warmup_epochs": 1, "augment": True, "device": "cpu", "amp": True,
             "eval_batch_size": 64, "encoder_lr_factor": 1.0, "checkpoint_every": 1,
             "checkpoint_minutes": 0, "loss": "ce"}
    row = {"name": "r", "strategy": "lora", "method": "lora", "label_fraction": 1.0, "seed": 3,
           "dataset": "eurosat_rgb", "train": train,
           "lora": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1,
                    "target_modules": ["q", "v"]}}
    return {"study": "resume", "data": {"dataset": "eurosat_rgb", "bands": ["B04", "B03", "B02"],
            "source": "synthetic"}, "backbone": backbone_cfg(), "row": row, "threads": 1}


def _train(spec, store, exp, out, state, name):
    spec = dict(spec, row=dict(spec["row"], name=name))
    cmd = [sys.executable, "-m", "geopeft.cli", "train", "--spec", json.dumps(spec), "--store",
           str(store), "--experiment", str(exp), "--out", str(out), "--state", str(state)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(state: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(int(p.stem.split("-")[1]) >= step for p in state.glob("step-*.pt")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {step}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_run_resumes_bitwise_in_one_mlflow_run(sig, tmp_path, rgb_store):
    exp = tmp_path / "exp.json"
    init_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", "resume", tmp_path / "art", exp)
    epochs = 12  # 60 train samples / 8 = 8 steps per epoch, 96 steps
    spec = _spec(epochs)
    ref = _train(spec, rgb_store, exp, tmp_path / "ref", tmp_path / "ref-state", "ref")
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    assert not (tmp_path / "ref-state").exists()  # state removed once the model is written

    state = tmp_path / "state"
    kill_at = random.Random(os.getpid()).randint(5, 80)
    p = _train(spec, rgb_store, exp, tmp_path / "out", state, "killed")
    _wait_for_step(state, kill_at, p)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert p.returncode == 75, err[-3000:]
        assert "preempted: stopped by SIGTERM" in err
    else:
        assert p.returncode == -signal.SIGKILL
    assert not (tmp_path / "out").exists()  # nothing half-written under the final name
    first = Checkpointer(state).latest()  # what the first attempt left: its wall time so far
    assert first["attempts"] == 1 and first["wall_time_s"] > 0
    p = _train(spec, rgb_store, exp, tmp_path / "out", state, "killed")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert "resuming from" in err

    a = json.loads((tmp_path / "ref" / "run.json").read_text())
    b = json.loads((tmp_path / "out" / "run.json").read_text())
    assert b["history"] == a["history"]  # bitwise: JSON floats round-trip exactly
    # the cost counts both attempts, not the last one only
    assert a["attempts"] == 1 and b["attempts"] == 2
    assert b["wall_time_s"] > first["wall_time_s"] and b["train_time_s"] > first["train_time_s"]
    assert b["wall_time_s"] - first["wall_time_s"] >= b["train_time_s"] - first["train_time_s"]
    wa, wb = (load_file(str(d / "trainable.safetensors")) for d in (tmp_path / "ref", tmp_path / "out"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    db = sqlite3.connect(tmp_path / "mlflow.db")
    runs = db.execute("select run_uuid, status from runs where name = 'killed'").fetchall()
    assert len(runs) == 1 and runs[0][1] == "FINISHED"
    assert runs[0][0] == b["mlflow_run_id"]
    for key in ("train_loss", "val_score", "trainable_params"):
        steps = [s for (s,) in db.execute("select step from metrics where run_uuid = ? and key = ?",
                                          (runs[0][0], key))]
        assert sorted(steps) == (list(range(epochs)) if key != "trainable_params" else [0]), key


# -------------------------------------------------------------------- a diverged training


def test_a_retry_of_a_diverged_training_stops_at_once_with_the_same_error(tmp_path, rgb_store,
                                                                         monkeypatch):
    """Snakemake retries a failed job, and a diverged training fails the same way every time:
    its failure is recorded in the run's state folder, and a retry (attempt 2) of the same spec
    stops at once with the same error, before reading any data; a rerun the user starts
    (attempt 1), or a retry of other settings, trains."""
    import copy

    from geopeft.spec import JobSpec
    from geopeft.train import run as train_run
    from geopeft.train.loop import DivergedLoss

    # the MLflow run is not what is tested here (a new store takes seconds to create)
    monkeypatch.setattr(train_run, "_open_run", lambda *args: (train_run._QuietLogger(), False))
    exp = tmp_path / "exp.json"
    bad, good = _spec(2), _spec(2)
    bad["row"]["train"]["lr"] = 1e3  # the loss grows 1e5-fold by step 4
    state = tmp_path / "state"

    def train(spec: dict, attempt: int) -> None:
        train_run.train_row(JobSpec.from_dict(copy.deepcopy(spec)), rgb_store, None, exp,
                            tmp_path / "out", state_dir=state, attempt=attempt)

    with pytest.raises(DivergedLoss) as first:
        train(bad, 1)
    record = (state / "failed.json").read_bytes()

    class Trains(Exception):
        pass

    def trains(*args, **kwargs):
        raise Trains

    monkeypatch.setattr(train_run, "load_splits", trains)  # from here on: training starts
    with pytest.raises(DivergedLoss) as retry:
        train(bad, 2)
    assert str(retry.value).startswith(f"{first.value} (attempt 2: not trained again, an earlier "
                                       f"attempt of these settings failed so, {state / 'failed.json'}")
    assert (retry.value.step, retry.value.loss) == (first.value.step, first.value.loss)
    with pytest.raises(Trains):
        train(good, 2)  # other settings
    assert not (state / "failed.json").exists()  # the stale record is gone
    (state / "failed.json").write_bytes(record)
    with pytest.raises(Trains):
        train(bad, 1)  # the user's rerun
    assert not (state / "failed.json").exists()


# -------------------------------------------------------------------- one trainer per run


HOLD = """
import sys, time
from pathlib import Path
from geopeft.train.resume import lock_run
lock_run(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_trainer_on_a_run_stops_naming_the_holder(tmp_path, rgb_store):
    state = tmp_path / "runs" / "r" / "state"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(state)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cmd = [sys.executable, "-m", "geopeft.cli", "train", "--spec", json.dumps(_spec(1)),
               "--store", str(rgb_store), "--experiment", str(tmp_path / "none.json"),
               "--out", str(tmp_path / "out"), "--state", str(state)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2
        assert f"another trainer (pid {holder.pid}) is training this run" in r.stderr
        assert not (tmp_path / "out").exists()
    finally:
        holder.kill()
        holder.wait()
    # the OS released the lock with its holder: the run can be locked again at once
    again = subprocess.Popen([sys.executable, "-c", HOLD, str(state)], stdout=subprocess.PIPE, text=True)
    assert again.stdout.readline().strip() == "locked"
    again.kill()
    again.wait()


WATCHED = """
import signal, sys, time
from pathlib import Path
from geopeft.train.resume import stop_when_snakemake_is_gone
marker = Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda s, f: (marker.write_text("stopped"), sys.exit(75)))
print(stop_when_snakemake_is_gone(poll_s=0.05), flush=True)
time.sleep(60)
"""


def test_a_job_stops_when_its_snakemake_is_killed(tmp_path):
    """SIGKILL of Snakemake leaves its jobs running (their shell survives); the job notices."""
    fake = tmp_path / "bin" / "snakemake"  # a stand-in that starts one job through a shell
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport subprocess, sys, time\n"
                    f"subprocess.Popen(['bash', '-c', sys.argv[1] + '; true'])\ntime.sleep(120)\n")
    fake.chmod(0o755)
    marker, out = tmp_path / "stopped", tmp_path / "job.out"
    job = f"{sys.executable} -c {shlex.quote(WATCHED)} {marker} > {out}"
    snake = subprocess.Popen([str(fake), job])
    end = time.monotonic() + 60
    while not (out.exists() and out.read_text().strip()):
        assert time.monotonic() < end, "the job never started"
        time.sleep(0.05)
    assert out.read_text().strip() == str(snake.pid)  # it found the Snakemake above its shell
    time.sleep(0.3)
    assert not marker.exists()
    snake.kill()
    snake.wait()
    end = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < end, "the orphaned job kept running"
        time.sleep(0.05)


def test_a_trainer_whose_snakemake_is_gone_before_it_looks_does_not_train(monkeypatch):
    """The fallback path: the job noted its Snakemake (or Snakemake named itself, from
    jobserver.start), which is gone by the time the trainer starts its watch: no ancestor is
    left to find, yet it stops before training (Preempted: exit 75, state kept)."""
    from geopeft.train.resume import Preempted, stop_when_snakemake_is_gone

    gone = subprocess.Popen(["sleep", "60"])
    monkeypatch.setenv(process.SNAKEMAKE_ENV, process.process_key(gone.pid))
    gone.kill()
    gone.wait()
    with pytest.raises(Preempted, match=f"Snakemake \\(pid {gone.pid}\\) that started this job is gone"):
        stop_when_snakemake_is_gone(poll_s=0.05)


# -------------------------------------------------------------------- time of a killed attempt


SLOW_STEPS = """
import json, sys, time
import torch
from geopeft.data.dataset import load_split, store_info
from geopeft.models.classifier import build_classifier
from geopeft.spec import TrainArgs
from geopeft.strategies import apply_strategy
from geopeft.train.loop import fit
from geopeft.train.resume import Checkpointer

store, state, backbone, step_s = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
info = store_info(store)
torch.manual_seed(0)
m = apply_strategy(build_classifier(backbone, info, len(info.classes))[0], "linear")
t0 = []

def slow(module, inputs, output):  # the second epoch's steps take step_s each
    if module.training:
        t0.append(time.perf_counter())
        print(len(t0), t0[-1] - t0[0], flush=True)  # step, seconds since the first step began
        if len(t0) > 8:
            time.sleep(step_s)
    return output

m.register_forward_hook(slow)
fit(m, load_split(store, "train"), None, TrainArgs(epochs=2, batch_size=8, seed=0, progress=False),
    checkpointer=Checkpointer(state, every_steps=0, every_minutes=0, clock_every_s=float(sys.argv[5])))
"""


def test_a_sigkill_between_states_loses_no_more_wall_time_than_the_clock_interval(tmp_path, rgb_store):
    """With the default checkpointing a state is saved every 10 minutes: a SIGKILL between two
    states must not drop the time since the last one from the run's wall_time_s. The killed
    attempt records its wall time as it passes; the resumed run counts it, losing at most the
    record interval (plus one step)."""
    from geopeft.data.dataset import load_split, store_info
    from geopeft.models.classifier import build_classifier
    from geopeft.spec import TrainArgs
    from geopeft.strategies import apply_strategy
    from geopeft.train.loop import fit

    state, step_s, every_s = tmp_path / "state", 0.15, 0.05
    p = subprocess.Popen([sys.executable, "-c", SLOW_STEPS, str(rgb_store), str(state),
                          json.dumps(backbone_cfg()), str(step_s), str(every_s)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    step = 0
    try:  # 8 steps per epoch: the only state is the first epoch's; kill in the second
        for line in p.stdout:
            step, since_first = int(line.split()[0]), float(line.split()[1])
            if step == 12:
                break
    finally:
        p.kill()
        _, err = p.communicate(timeout=60)
    assert step == 12, err[-3000:]
    ck = Checkpointer(state)
    saved = ck.latest()
    assert saved["step"] == 8 and saved["attempts"] == 1  # the kill came 3 slow steps later
    assert since_first - saved["wall_time_s"] > 3 * step_s  # what a resume from it alone would lose

    info = store_info(rgb_store)
    torch.manual_seed(0)
    m = apply_strategy(build_classifier(backbone_cfg(), info, len(info.classes))[0], "linear")
    t = time.perf_counter()
    res = fit(m, load_split(rgb_store, "train"), None,
              TrainArgs(epochs=2, batch_size=8, seed=0, progress=False),
              checkpointer=ck, resume=saved)
    this_attempt = time.perf_counter() - t
    assert res["attempts"] == 2
    # the killed attempt's fit ran at least since_first (its clock started before its first
    # step); of that, no more than the record interval and one step's forward is lost
    assert res["wall_time_s"] - this_attempt >= since_first - every_s - 0.05
