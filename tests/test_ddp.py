"""Multi-process training (DDP under torchrun, gloo on CPU): same weights as one process; a
killed run resumes bitwise."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_resume import _spec, _wait_for_step

from geopeft.data.dataset import store_info
from geopeft.models.build import build_model
from geopeft.models.runtime import seed_everything
from geopeft.spec import JobSpec
from geopeft.tracking import init_experiment

pytestmark = pytest.mark.slow


def _run(tmp_path, store, exp, name, *extra):
    spec = _spec(3)
    spec["row"] = dict(spec["row"], name=name, method="full", strategy="full")
    spec["row"].pop("lora")
    spec["row"]["train"] = dict(spec["row"]["train"], augment=False, checkpoint_every=0)
    cmd = [sys.executable, "-m", "geopeft.cli", "train", "--spec", json.dumps(spec), "--store",
           str(store), "--experiment", str(exp), "--out", str(tmp_path / name), "--gpus", "0", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


@pytest.mark.parametrize("stream", [False, True], ids=["loaded", "streamed"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, rgb_store, stream):
    """Two processes, each its shard of every global batch; streamed (a job memory too small
    for the splits: --mem-mb), each rank reads its shard of the same chunk order through its
    reader processes."""
    exp = tmp_path / "exp.json"
    init_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", "ddp", tmp_path / "art", exp)
    mem = ("--mem-mb", "0.01") if stream else ()
    r1 = _run(tmp_path, rgb_store, exp, "one", *mem)
    r = _run(tmp_path, rgb_store, exp, "two", "--nproc", "2", *mem)
    assert "running 2 processes under torchrun" in r.stderr
    if stream:
        assert "streaming batches from the store" in r1.stderr
        assert r.stderr.count("streaming batches from the store") == 2  # each rank
        assert "shared by 2 processes" in r.stderr
    else:
        assert "loading the splits whole" in r.stderr
    a = load_file(str(tmp_path / "one" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "two" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    # the updates agree: gradient averaging is exact in theory, but AdamW turns rounding noise
    # in near-zero gradients (e.g. attention key biases, whose true gradient is 0) into full steps
    spec = json.loads((tmp_path / "one" / "run.json").read_text())["spec"]
    seed_everything(spec["row"]["seed"], 1)
    init = dict(build_model(JobSpec.from_dict(spec), store_info(rgb_store))[0].named_parameters())
    ua = torch.cat([(a[k] - init[k].detach()).flatten() for k in a])
    ub = torch.cat([(b[k] - init[k].detach()).flatten() for k in a])
    assert ua.norm() > 0.5  # it trained
    assert torch.nn.functional.cosine_similarity(ua, ub, dim=0) > 0.99
    assert (ua - ub).norm() / ua.norm() < 0.15
    ha = json.loads((tmp_path / "one" / "run.json").read_text())["history"]
    hb = json.loads((tmp_path / "two" / "run.json").read_text())["history"]
    for x, y in zip(ha, hb, strict=True):  # train loss over all ranks' shards, same as one process
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=0.05)
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=0.05)
    db = sqlite3.connect(tmp_path / "mlflow.db")
    assert db.execute("select count(*) from runs where name = 'two'").fetchone()[0] == 1


def test_a_probe_on_features_trains_under_ddp_as_in_one_process(tmp_path, rgb_store):
    """A linear row on its frozen encoder's features, in two processes: each its shard of every
    global batch of features; the same head as in one process (without augmentation, whose
    draws are per rank under DDP, on images as on features)."""
    from geopeft.train.run import make_features

    exp = tmp_path / "exp.json"
    init_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", "ddp-features", tmp_path / "art", exp)
    spec = _spec(3)
    spec["row"] = dict(spec["row"], method="linear", strategy="linear")
    spec["row"].pop("lora")
    spec["row"]["train"] = dict(spec["row"]["train"], checkpoint_every=0, lr=0.01, augment=False)
    feats = tmp_path / "f.zarr"
    make_features(JobSpec.from_dict({**spec, "row": dict(spec["row"], name="f")}), rgb_store, feats)
    outs = {}
    for name, extra in (("one", ()), ("two", ("--nproc", "2"))):
        cmd = [sys.executable, "-m", "geopeft.cli", "train", "--spec",
               json.dumps(dict(spec, row=dict(spec["row"], name=name))), "--store",
               str(rgb_store), "--experiment", str(exp), "--out", str(tmp_path / name),
               "--features", str(feats), "--gpus", "0", *extra]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
        assert "trains its head on the features" in r.stderr
        outs[name] = load_file(str(tmp_path / name / "trainable.safetensors"))
    a, b = outs["one"], outs["two"]
    # as on images: AdamW turns the rounding noise of averaged gradients into full steps, so
    # the updates agree in direction and size, not bitwise
    seed_everything(spec["row"]["seed"], 1)
    init = dict(build_model(JobSpec.from_dict(spec), store_info(rgb_store))[0].named_parameters())
    keys = ("backbone.head.weight", "backbone.head.bias")
    ua = torch.cat([(a[k] - init[k].detach()).flatten() for k in keys])
    ub = torch.cat([(b[k] - init[k].detach()).flatten() for k in keys])
    assert ua.norm() > 0.1  # it trained
    assert torch.nn.functional.cosine_similarity(ua, ub, dim=0) > 0.99
    assert (ua - ub).norm() / ua.norm() < 0.15


def _start(spec, store, exp, out, state, name):
    spec = dict(spec, row=dict(spec["row"], name=name))
    cmd = [sys.executable, "-m", "geopeft.cli", "train", "--spec", json.dumps(spec), "--store",
           str(store), "--experiment", str(exp), "--out", str(out), "--state", str(state),
           "--gpus", "0", "--nproc", "2"]
    # its own process group: SLURM signals every process of a job step, torchrun and ranks alike
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory, rgb_store):
    """An uninterrupted 2-process LoRA run with augmentation and dropout (4 epochs, 32 steps)."""
    root = tmp_path_factory.mktemp("ddp-resume")
    exp = root / "exp.json"
    init_experiment(f"sqlite:///{root / 'mlflow.db'}", "ddp-resume", root / "art", exp)
    spec = _spec(4)
    assert spec["row"]["train"]["augment"] and spec["row"]["lora"]["dropout"] > 0
    p = _start(spec, rgb_store, exp, root / "ref", root / "ref-state", "ref")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-4000:]
    return {"root": root, "exp": exp, "spec": spec}


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (a node failure)."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in procs:
        proc.kill()


@pytest.mark.parametrize("how", ["sigterm", "sigkill-all", "sigkill-launcher"])
def test_two_process_run_killed_and_resumed_is_bitwise_the_uninterrupted_one(how, ddp_reference,
                                                                             rgb_store):
    """SIGTERM to every process (SLURM preemption): all ranks stop after the same step and rank 0
    saves it. SIGKILL to every process (node failure): the last periodic state. SIGKILL to the
    launcher's process group only (torchrun's workers have sessions of their own): the orphaned
    workers notice, stop cleanly and exit. Each time the resumed run ends bitwise equal to the
    uninterrupted one (per-rank augmentation and dropout streams are a function of the step)."""
    import psutil

    root, exp, spec = ddp_reference["root"], ddp_reference["exp"], ddp_reference["spec"]
    name = f"killed-{how}"
    state = root / f"{name}-state"
    p = _start(spec, rgb_store, exp, root / name, state, name)
    kill_at = random.Random(f"{os.getpid()}{how}").randint(3, 16)  # of 32 steps
    _wait_for_step(state, kill_at, p, timeout=300)
    workers = psutil.Process(p.pid).children(recursive=True)
    if how == "sigkill-all":
        _kill_tree(p.pid)
    else:
        os.killpg(p.pid, signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    _, err = p.communicate(timeout=180)
    assert p.returncode != 0
    if how == "sigterm":  # every rank stopped after the same step, rank 0 saved it
        assert "stopped by SIGTERM" in err, err[-3000:]
    _, alive = psutil.wait_procs(workers, timeout=90)
    assert not alive, f"orphaned workers still running: {alive}"
    assert not (root / name).exists()
    p = _start(spec, rgb_store, exp, root / name, state, name)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-4000:]
    assert "resuming from" in err

    a = json.loads((root / "ref" / "run.json").read_text())
    b = json.loads((root / name / "run.json").read_text())
    assert b["history"] == a["history"]
    wa, wb = (load_file(str(root / d / "trainable.safetensors")) for d in ("ref", name))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    db = sqlite3.connect(root / "mlflow.db")
    runs = db.execute("select run_uuid, status from runs where name = ?", (name,)).fetchall()
    assert len(runs) == 1 and runs[0][1] == "FINISHED"
    steps = [s for (s,) in db.execute("select step from metrics where run_uuid = ? and key = ?",
                                      (runs[0][0], "train_loss"))]
    assert sorted(steps) == [0, 1, 2, 3]
