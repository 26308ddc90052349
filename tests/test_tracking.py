import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import backbone_cfg, full_spec
from mlflow.tracking import MlflowClient

from geopeft.tracking import RunLogger, TrackingError, flatten, init_experiment


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": "1", "a.c": "[1, 2]", "d": "{}"}


def test_init_once_then_runs_land_in_the_experiment(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    info = init_experiment(uri, "study-x", tmp_path / "art", tmp_path / "exp.json")
    again = init_experiment(uri, "study-x", tmp_path / "art", tmp_path / "exp2.json")
    assert info["experiment_id"] == again["experiment_id"] != "0"
    log = RunLogger(tmp_path / "exp.json", "r1", params={"a": {"b": 2}}, tags={"t": "v"})
    log.log_metrics({"m": 1.0}, 0)
    log.log_metrics({"m": 2.0}, 1)
    log.end()
    run = MlflowClient(uri).get_run(log.run_id)
    assert run.info.experiment_id == info["experiment_id"]
    assert run.data.params == {"a.b": "2"} and run.data.tags["t"] == "v"
    hist = MlflowClient(uri).get_metric_history(log.run_id, "m")
    assert [(h.step, h.value) for h in hist] == [(0, 1.0), (1, 2.0)]


def test_asynchronous_metrics_are_all_logged_before_the_run_ends(tmp_path):
    """Over HTTP metrics go out asynchronously (the loop does not wait for the server); ending
    the run, or reading metrics back, waits for every pending batch."""
    uri = f"sqlite:///{tmp_path}/m.db"
    init_experiment(uri, "async", tmp_path / "art", tmp_path / "exp.json")
    assert not RunLogger(tmp_path / "exp.json", "sync").asynchronous  # a local DB: synchronous
    log = RunLogger(tmp_path / "exp.json", "a", asynchronous=True)
    gate, send = threading.Event(), log.client.log_batch
    log.client.log_batch = lambda *a, **k: (gate.wait(30), send(*a, **k))  # a slow server
    for step in range(30):
        log.log_metrics({"loss": 1 / (step + 1), "acc": step / 30}, step)
    assert log.pending() == 30  # queued, the loop did not wait
    gate.set()
    assert log.logged_steps("loss") == set(range(30))  # reading back waits for the queue
    log.log_metrics({"loss": 0.0}, 30)
    log.end()
    client = MlflowClient(uri)
    assert client.get_run(log.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(log.run_id, "loss")] == list(range(31))


def test_lost_asynchronous_metrics_fail_the_run_by_name(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    init_experiment(uri, "async", tmp_path / "art", tmp_path / "exp.json")
    log = RunLogger(tmp_path / "exp.json", "a", asynchronous=True)
    real = log.run_id
    log.run_id = "0" * 32  # the server does not know this run: the background request fails
    log.log_metrics({"loss": 1.0}, 0)
    with pytest.raises(TrackingError, match=r"m\.db: run 0{32}: 1 metric batch\(es\) could not be logged"):
        log.flush()
    log.run_id = real
    log.log_metrics({"loss": 1.0}, 0)
    log.end()
    assert MlflowClient(uri).get_run(real).info.status == "FINISHED"


@pytest.mark.slow
def test_training_run_logs_params_metrics_artifacts(world, rgb_store, tmp_path, monkeypatch):
    """A train + evaluate job pair through the CLI, as the workflow runs them."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where MLflow looks up logged models
    init_experiment(uri, "s", tmp_path / "art", tmp_path / "exp.json",
                    metrics=["test_overall_accuracy"])
    row = {"name": "lora-f1-s0", "strategy": "lora", "method": "lora", "label_fraction": 1.0,
           "seed": 0, "dataset": "eurosat_rgb",
           "lora": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1,
                    "target_modules": ["q", "v"]},
           "train": {"epochs": 2, "batch_size": 16, "lr": 0.003}}
    spec = full_spec({"study": "s", "data": {"dataset": "eurosat_rgb", "bands": ["B04", "B03", "B02"],
                                             "source": "synthetic"},
                      "backbone": backbone_cfg(), "threads": 1, "row": row})
    cli = [sys.executable, "-m", "geopeft.cli"]
    subprocess.run([*cli, "train", "--spec", json.dumps(spec), "--store", str(rgb_store),
                    "--experiment", "exp.json", "--out", "run/model"], check=True)
    subprocess.run([*cli, "evaluate", "--model", "run/model", "--store", str(rgb_store),
                    "--experiment", "exp.json", "--metrics", "run/metrics.json",
                    "--confusion", "run/confusion.csv"], check=True)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("s")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "lora-f1-s0" and run.info.status == "FINISHED"
    p = run.data.params
    # a few params, the same keys for every row (the whole spec is config.json)
    assert p == {"strategy": "lora", "method": "lora", "dataset": "eurosat_rgb",
                 "bands": "B04 B03 B02", "label_fraction": "1.0", "seed": "0",
                 "sequence_length": "none", "model": "classifier", "encoder": p["encoder"],
                 "weights": "none", "adapter": "lora r 4 alpha 8 dropout 0.1 on q,v",
                 "epochs": "2", "batch_size": "16", "lr": "0.003", "encoder_lr_factor": "1.0",
                 "weight_decay": p["weight_decay"], "warmup_epochs": p["warmup_epochs"],
                 "loss": p["loss"], "augment": p["augment"], "rehearsal": "False"}
    config = json.loads(open(client.download_artifacts(run.info.run_id, "config.json",
                                                       str(tmp_path))).read())
    assert config["row"]["lora"]["r"] == 4 and config["row"]["train"]["lr"] == 0.003
    assert {"git_commit", "dataset_fingerprint"} <= set(run.data.tags)
    m = run.data.metrics
    assert {"trainable_params", "total_params", "wall_time_s", "images_per_s", "peak_memory_mb",
            "val_score", "train_loss", "test_overall_accuracy", "test_macro_f1"} <= set(m)
    assert len(client.get_metric_history(run.info.run_id, "val_score")) == 2
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "evaluation", "config.json"} <= arts
    model_arts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/trainable.safetensors", "model/adapter", "model/run.json"} <= model_arts
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["overall_accuracy"] == pytest.approx(m["test_overall_accuracy"])

    # the inference app classifies raw files with the saved run, without the prepared store
    test_files = (world["rgb"] / "eurosat-test.txt").read_text().split()[:6]
    paths = [str(world["rgb"] / "EuroSAT_RGB" / n.rsplit("_", 1)[0] / n) for n in test_files]
    out = subprocess.run([*cli, "predict", "--model", "run/model", *paths], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out[0] == "file,prediction,probability,top3" and len(out) == 7
    from geopeft.data.sources.eurosat import EUROSAT_CLASSES

    assert all(line.split(",")[1] in EUROSAT_CLASSES for line in out[1:])
    bad = subprocess.run([*cli, "predict", "--model", "run/model", str(tmp_path / "nope.jpg")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "nope.jpg" in bad.stderr

    # MLflow at a glance: the run says what it is, which store it read (train and test, the
    # store's fingerprint as digest), its confusion matrix as an image, each metric once
    tags = run.data.tags
    assert tags["mlflow.source.name"] == "geopeft train"
    assert tags["mlflow.note.content"].startswith("lora (lora) on eurosat_rgb, 100 % of the "
                                                  "training labels, seed 0")
    fingerprint = tags["dataset_fingerprint"]
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "test"}
    for context, ds in inputs.items():
        assert ds.name == f"eurosat_rgb B04 B03 B02 · {context}" and ds.digest == fingerprint[:16]
        assert json.loads(ds.profile)["fingerprint"] == fingerprint
    assert "val_acc" not in m and "val_map_macro" not in m
    png = client.download_artifacts(run.info.run_id, "evaluation/confusion.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    # the run's model is an MLflow model (pyfunc) that gives geopeft predict's classes, on files
    # (a table with a path column) and on an array of samples already read (the README's
    # `mlflow models predict` command is run by tests/test_default_study.py)
    import mlflow.pyfunc
    import pandas as pd

    from geopeft.data.sources import get_source
    from geopeft.evaluate.predict import Predictor

    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    got = model.predict(pd.DataFrame({"path": paths}))
    assert got["prediction"].tolist() == [line.split(",")[1] for line in out[1:]]
    assert got["file"].tolist() == paths
    x = np.stack([get_source("eurosat_rgb").read_file(Path(f)) for f in paths[:2]])
    got = model.predict(x)
    expected = Predictor(tmp_path / "run" / "model").predict_arrays(list(x))
    assert got["prediction"].tolist() == [e.labels[0] for e in expected]
    for (_, g), e in zip(got.iterrows(), expected, strict=True):
        assert [g[c] for c in e.classes] == pytest.approx(e.scores.tolist(), abs=1e-5)
    with pytest.raises(ValueError, match=r"an array input is \(N, bands, H, W\)"):
        model.predict(np.zeros((2, 2)))

    # the experiment: a study view (its columns) and a description; pretraining kept apart
    exp = client.get_experiment(exp.experiment_id)
    view = json.loads(exp.tags["mlflow.sharedViewState.geopeft"])
    assert view["selectedColumns"][:3] == ["params.`strategy`", "params.`label_fraction`",
                                           "params.`seed`"]
    assert "metrics.`test_overall_accuracy`" in view["selectedColumns"]
    # best first on validation, never on test (issue 34, item 4; it sorted by the test metric)
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`val_score`", False)
    assert "metrics.`val_score`" in view["selectedColumns"]
    assert "viewStateShareKey=geopeft" in exp.tags["mlflow.note.content"]
    assert client.get_experiment_by_name("s (pretraining)") is not None


# ------------------------------------------------------------- a store that is lost or rebuilt


def _fresh(code: str, tmp_path) -> str:
    """Run ``code`` in a new process, as each job is (MLflow caches a store's connections per
    process, so a store deleted and created again is only seen afresh by another process)."""
    r = subprocess.run([sys.executable, "-c", "import sys\nfrom pathlib import Path\n"
                        "from geopeft.tracking import RunLogger, TrackingError, init_experiment\n"
                        f"t = Path({str(tmp_path)!r})\n" + code],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip()


def test_a_store_deleted_before_a_job_is_a_clear_error_and_not_recreated_empty(tmp_path):
    db = tmp_path / "m.db"
    init_experiment(f"sqlite:///{db}", "s", tmp_path / "art", tmp_path / "exp.json")
    db.unlink()
    with pytest.raises(TrackingError, match=r"exp\.json: the MLflow store .*m\.db is gone\. Rerun snakemake"):
        RunLogger(tmp_path / "exp.json", "r")
    assert not db.exists()  # no empty store left behind
    # a store created again for another experiment: the recorded id now names another one
    out = _fresh("init_experiment(f'sqlite:///{t}/m.db', 'other', t / 'art', t / 'other.json')\n"
                 "try:\n    RunLogger(t / 'exp.json', 'r')\n"
                 "except TrackingError as e:\n    print(e)", tmp_path)
    assert "has no experiment 's' with id" in out


def test_a_recorded_run_the_store_lost_is_replaced_by_a_new_one(tmp_path):
    db = tmp_path / "m.db"
    init_experiment(f"sqlite:///{db}", "s", tmp_path / "art", tmp_path / "exp.json")
    old = RunLogger(tmp_path / "exp.json", "r").run_id
    db.unlink()  # deleted and initialised again: the same experiment, none of its runs
    out = _fresh("init_experiment(f'sqlite:///{t}/m.db', 's', t / 'art', t / 'exp.json')\n"
                 f"log = RunLogger(t / 'exp.json', 'r', run_id={old!r})\n"
                 "print(log.replaced, log.run_id)", tmp_path)
    replaced, new = out.split()
    assert replaced == old and new != old
    assert MlflowClient(f"sqlite:///{tmp_path}/./m.db").get_run(new).info.run_name == "r"


def test_an_unfinished_run_of_the_same_row_is_reused_not_duplicated(tmp_path):
    """A kill between creating the run and recording its id left a RUNNING run: the rerun finds
    it by its key instead of opening a second run with the same name."""
    uri = f"sqlite:///{tmp_path}/m.db"
    init_experiment(uri, "s", tmp_path / "art", tmp_path / "exp.json")
    first = RunLogger(tmp_path / "exp.json", "row", run_key="s/row/abc")  # then killed
    again = RunLogger(tmp_path / "exp.json", "row", run_key="s/row/abc")
    assert again.reused and again.run_id == first.run_id
    other = RunLogger(tmp_path / "exp.json", "row", run_key="s/row/def")  # another spec
    assert not other.reused and other.run_id != first.run_id
    again.log_metrics({"loss": 1.0}, 0)  # it trained: another training must not continue it
    fresh = RunLogger(tmp_path / "exp.json", "row", run_key="s/row/abc")
    assert not fresh.reused and fresh.run_id != first.run_id
    fresh.end()
    after = RunLogger(tmp_path / "exp.json", "row", run_key="s/row/def")
    assert after.reused and after.run_id == other.run_id  # the empty one of the other spec
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("s").experiment_id])
    assert len(runs) == 3  # first (reused once), other (reused once), fresh: not five


def test_train_job_reuses_the_run_of_an_attempt_killed_before_recording_it(tmp_path):
    from conftest import job_spec

    from geopeft.train.run import _open_run

    init_experiment(f"sqlite:///{tmp_path}/m.db", "s", tmp_path / "art", tmp_path / "exp.json")
    spec = job_spec({"backbone": backbone_cfg(), "row": {"name": "lora-f1-s0", "method": "lora"}})
    state = tmp_path / "state"
    first, reopened = _open_run(tmp_path / "exp.json", spec, "fp", state)
    assert not reopened
    (state / "mlflow_run.json").unlink()  # killed before the id was recorded
    second, reopened = _open_run(tmp_path / "exp.json", spec, "fp", state)
    assert second.run_id == first.run_id and second.reused
    assert not reopened  # nothing was logged to it: no step is skipped as already logged
    assert json.loads((state / "mlflow_run.json").read_text())["run_id"] == first.run_id


def test_a_store_deleted_while_a_job_runs_is_said_plainly(tmp_path):
    db = tmp_path / "m.db"
    init_experiment(f"sqlite:///{db}", "s", tmp_path / "art", tmp_path / "exp.json")
    out = _fresh("log = RunLogger(t / 'exp.json', 'r')\n"
                 "log.log_metrics({'loss': 1.0}, 0)\n"
                 "(t / 'm.db').unlink()\n"
                 "try:\n    log.log_metrics({'loss': 0.5}, 1)\n"
                 "except TrackingError as e:\n    print(e)", tmp_path)
    assert "m.db is gone while this job ran" in out and "resumes from its saved training state" in out


def test_a_dataset_logged_by_another_job_first_is_linked_not_an_error(tmp_path):
    """Two jobs log the same dataset at the same moment: the store creates its record for one,
    the other's insert fails on the unique (experiment, name, digest), as SQLite says it. The
    loser logs again and is linked to the record (before: the job failed, and only Snakemake's
    retry rescued it)."""
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path}/m.db"
    init_experiment(uri, "race", tmp_path / "art", tmp_path / "exp.json")
    a, b = RunLogger(tmp_path / "exp.json", "a"), RunLogger(tmp_path / "exp.json", "b")
    profile = {"samples": 10}
    real, calls = b.client.log_inputs, []

    def first_loses(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the other job's insert lands between this one's check and insert
            a.log_dataset("eurosat_rgb", "f" * 64, tmp_path, "train", profile)
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: "
                                  "datasets.experiment_id, datasets.name, datasets.digest")
        return real(*args, **kwargs)

    b.client.log_inputs = first_loses
    b.log_dataset("eurosat_rgb", "f" * 64, tmp_path, "train", profile)
    assert len(calls) == 2
    client = MlflowClient(uri)
    for log in (a, b):
        inputs = client.get_run(log.run_id).inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("eurosat_rgb · train", "f" * 16)]
    other = MlflowException("database is locked")  # any other failure is not retried
    b.client.log_inputs = lambda *a, **k: (calls.append(1), (_ for _ in ()).throw(other))
    with pytest.raises(MlflowException, match="locked"):
        b.log_dataset("eurosat_rgb", "e" * 64, tmp_path, "test", profile)
    assert len(calls) == 3


def _log_same_dataset(exp: str, i: int, barrier) -> None:
    log = RunLogger(Path(exp), f"job{i}")
    barrier.wait(60)
    log.log_dataset("eurosat_rgb", "a" * 64, Path(exp).parent, "train", {"samples": 10})
    log.end()


def test_eight_jobs_log_the_same_dataset_at_once(tmp_path):
    """Eight processes released together log the same dataset into one SQLite store, with no
    retry around them: every one succeeds and is linked to one dataset record."""
    import multiprocessing as mp
    import sqlite3

    uri = f"sqlite:///{tmp_path}/m.db"
    init_experiment(uri, "race", tmp_path / "art", tmp_path / "exp.json")
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_log_same_dataset, args=(str(tmp_path / "exp.json"), i, barrier))
             for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 8
    db = sqlite3.connect(tmp_path / "m.db")
    assert db.execute("select count(*) from datasets").fetchone()[0] == 1
    assert db.execute("select count(*) from inputs").fetchone()[0] == 8


def test_mlflow_s_global_tracking_uri_is_as_it_was_after_a_block(tmp_path, monkeypatch):
    """download_model and log_pyfunc point MLflow's global tracking URI at their store only
    while they need it: afterwards the process's URI and MLFLOW_TRACKING_URI are as they were
    (a later MLflow call in the same process, e.g. the next test under pytest-xdist, found the
    store of an earlier one, by then deleted)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    from geopeft.tracking import global_tracking_uri

    mine = f"sqlite:///{tmp_path}/mine.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mine)
    monkeypatch.setattr(utils, "_tracking_uri", None)
    with global_tracking_uri(f"sqlite:///{tmp_path}/other.db"):
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/other.db"
    assert utils._tracking_uri is None and mlflow.get_tracking_uri() == mine
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(mine)
    with pytest.raises(RuntimeError), global_tracking_uri(f"sqlite:///{tmp_path}/other.db"):
        raise RuntimeError("a failed download")
    assert mlflow.get_tracking_uri() == mine
    mlflow.set_tracking_uri(None)
    assert "MLFLOW_TRACKING_URI" not in __import__("os").environ


# ------------------------------------------- a damaged or lost store, and its runs logged again


def _logged_study(tmp_path: Path) -> dict:
    """A study whose pretraining run and one trained run are logged: their folders as the jobs
    write them (backbone.json and run.json record their run ids; run.json the pretraining
    run's), logged as the jobs log them."""
    from geopeft.tracking.recover import RELOGGED_TAG  # noqa: F401 (the module under test)

    uri = f"sqlite:///{tmp_path}/m.db"
    exp, res = tmp_path / "exp.json", tmp_path / "study"
    init_experiment(uri, "s", tmp_path / "art", exp)
    pre = RunLogger(exp, "pretrain", pretraining=True)
    (res / "pretrain").mkdir(parents=True)
    (res / "pretrain" / "backbone.safetensors").write_bytes(b"weights")
    (res / "pretrain" / "backbone.json").write_text(json.dumps({"mlflow_run_id": pre.run_id,
                                                                "final_val_acc": 0.5}))
    pre.log_artifact(res / "pretrain", "backbone")
    pre.end()
    run = RunLogger(exp, "lora-f0.5-s0")
    model = res / "runs" / "lora-f0.5-s0" / "model"
    model.mkdir(parents=True)
    (model / "trainable.safetensors").write_bytes(b"tensors")
    (model / "run.json").write_text(json.dumps({
        "mlflow_run_id": run.run_id, "pretrain_run_id": pre.run_id, "trainable_params": 10,
        "spec": {"study": "s", "row": {"name": "lora-f0.5-s0", "strategy": "lora",
                                       "label_fraction": 0.5, "seed": 0}},
        "history": [{"train_loss": 2.0}, {"train_loss": 1.0}]}))
    (model.parent / "metrics.json").write_text('{"primary": 0.5}')
    run.log_artifact(model, "model")
    run.end()
    return {"db": tmp_path / "m.db", "exp": exp, "res": res, "pretrain": pre.run_id,
            "run": run.run_id, "model": model}


def _recover(tmp_path: Path, s: dict) -> list[str]:
    """The start of a run (the workflow's onstart). The URI is spelt another way: MLflow keeps
    a store's connection per URI and process, and a job is a new process."""
    from geopeft.tracking import recover_experiment

    return recover_experiment(s["exp"], f"sqlite:///{tmp_path}/./m.db", "s", tmp_path / "art",
                              pretrain_dir=s["res"] / "pretrain",
                              run_dirs=sorted((s["res"] / "runs").iterdir()))


def _damage(db: Path, how: str) -> bytes:
    if how == "garbage":
        db.write_bytes(np.random.default_rng(0).bytes(db.stat().st_size))
    else:  # a copy or a disk cut short
        with open(db, "r+b") as fh:
            fh.truncate(db.stat().st_size // 2)
    return db.read_bytes()


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_damaged_store_is_set_aside_kept_and_created_again_with_its_runs(tmp_path, how):
    """Issue 37, item 2: a damaged mlflow.db crashed the next run's start with sqlite's
    DatabaseError; it is moved aside (kept, byte for byte), said in one line, created again as
    mlflow_init creates it, and its runs are logged again from their folders: a run's model and
    its pretrained backbone download by the ids their files record."""
    from geopeft.tracking import download_model, stale_experiment

    s = _logged_study(tmp_path)
    damaged = _damage(s["db"], how)
    lines = _recover(tmp_path, s)
    backups = list(tmp_path.glob("m.db.damaged-*"))
    assert [b.read_bytes() for b in backups] == [damaged]  # nothing lost
    why = "file is not a database" if how == "garbage" else "database disk image is malformed"
    assert lines[0] == (f"{s['exp']}: the MLflow store {s['db']} is damaged ({why}): moved it "
                        f"to {backups[0]}, creating the store and the experiment again")
    assert "logged 2 run(s) again" in lines[1]
    assert stale_experiment(s["exp"]) is None
    model_dir, pretrain_dir = download_model(f"sqlite:///{tmp_path}/./m.db", s["run"],
                                             tmp_path / "dl")
    assert json.loads((model_dir / "run.json").read_text())["mlflow_run_id"] == s["run"]
    assert (pretrain_dir / "backbone.safetensors").read_bytes() == b"weights"
    assert _recover(tmp_path, s) == []  # sound again: nothing more to do


def test_mlflow_init_sets_a_damaged_store_aside(tmp_path, caplog):
    """The mlflow_init rule (init_experiment) on a damaged store: today sqlite's DatabaseError;
    the store is set aside, said in the log, and created afresh."""
    db = tmp_path / "m.db"
    db.write_bytes(b"not a database" * 100)
    info = init_experiment(f"sqlite:///{db}", "s", tmp_path / "art", tmp_path / "exp.json")
    (backup,) = tmp_path.glob("m.db.damaged-*")
    assert backup.read_bytes() == b"not a database" * 100
    assert f"the MLflow store {db} is damaged (file is not a database): moved it to {backup}" \
        in caplog.text
    assert MlflowClient(f"sqlite:///{db}").get_experiment(info["experiment_id"]).name == "s"


def test_after_a_deleted_store_the_runs_are_found_by_their_recorded_ids(tmp_path):
    """Issue 37, item 2: after mlflow.db was deleted, a run trained after the store was created
    again (its run.json names the pretraining run that backbone.json records) failed
    download_model with "pretrain run ... has no 'backbone' artifacts"; the pretraining run is
    logged again and found by that id. A job reopening a recorded run (evaluate) continues the
    run logged again instead of opening a second one."""
    from geopeft.tracking import RELOGGED_TAG, download_model

    s = _logged_study(tmp_path)
    s["db"].unlink()
    lines = _recover(tmp_path, s)
    assert lines[0] == (f"{s['exp']}: the MLflow store {s['db']} is gone; creating the store "
                        f"and the experiment again")
    retrained = RunLogger(s["exp"], "linear-f1-s0")
    model = tmp_path / "linear" / "model"
    model.mkdir(parents=True)
    (model / "run.json").write_text(json.dumps({"mlflow_run_id": retrained.run_id,
                                                "pretrain_run_id": s["pretrain"]}))
    retrained.log_artifact(model, "model")
    retrained.end()
    _, pretrain_dir = download_model(f"sqlite:///{tmp_path}/./m.db", retrained.run_id,
                                     tmp_path / "dl")
    assert (pretrain_dir / "backbone.safetensors").read_bytes() == b"weights"
    evaluate = RunLogger(s["exp"], "lora-f0.5-s0", run_id=s["run"])
    assert evaluate.replaced is None and evaluate.run_id != s["run"]
    run = evaluate.client.get_run(evaluate.run_id)
    assert run.data.tags[RELOGGED_TAG] == s["run"] and run.info.run_name == "lora-f0.5-s0"
    assert run.data.params == {"strategy": "lora", "label_fraction": "0.5", "seed": "0"}
    hist = evaluate.client.get_metric_history(evaluate.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in hist) == [(0, 2.0), (1, 1.0)]
    arts = {a.path for a in evaluate.client.list_artifacts(evaluate.run_id, "evaluation")}
    assert arts == {"evaluation/metrics.json"}


def test_a_recovery_killed_half_way_is_taken_up_by_the_next(tmp_path, monkeypatch):
    """The experiment file is rewritten last: a recovery that stops after the pretraining run
    is taken up by the next start, which logs only the run still missing (a store created again
    reuses the old experiment ids: the file's creation time tells the stores apart)."""
    from geopeft.tracking import RELOGGED_TAG, recover

    s = _logged_study(tmp_path)
    before = s["exp"].read_bytes()
    s["db"].unlink()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recover, "relog_run", killed)
    with pytest.raises(KeyboardInterrupt):
        _recover(tmp_path, s)
    assert s["exp"].read_bytes() == before
    monkeypatch.undo()
    lines = _recover(tmp_path, s)
    assert "logged 1 run(s) again" in lines[1]
    client = MlflowClient(f"sqlite:///{tmp_path}/./m.db")
    exps = [e.experiment_id for e in client.search_experiments()]
    tags = sorted(r.data.tags.get(RELOGGED_TAG, "") for r in client.search_runs(exps))
    assert tags == sorted([s["pretrain"], s["run"]])


def test_a_busy_store_is_not_taken_for_a_damaged_one(tmp_path):
    """Studies share one store: another study's writer holding it is no damage (nothing is set
    aside); a damaged file is named as such."""
    import contextlib
    import sqlite3

    from geopeft.tracking import damaged_store

    db = tmp_path / "m.db"
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("create table t(x)")
        con.commit()
        con.execute("begin exclusive")
        assert damaged_store(db, timeout=0.05) is None
    db.write_bytes(b"x" * 4096)
    assert damaged_store(db) == "file is not a database"
