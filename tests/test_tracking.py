import json
import subprocess
import sys
import threading

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
    init_experiment(uri, "s", tmp_path / "art", tmp_path / "exp.json")
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
    assert p["row.lora.r"] == "4" and p["row.train.lr"] == "0.003" and p["backbone.weights"] == "none"
    assert {"git_commit", "dataset_fingerprint"} <= set(run.data.tags)
    m = run.data.metrics
    assert {"trainable_params", "total_params", "wall_time_s", "images_per_s", "peak_memory_mb",
            "val_acc", "train_loss", "test_overall_accuracy", "test_macro_f1"} <= set(m)
    assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 2
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
