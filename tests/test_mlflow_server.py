"""MLflow server mode: 16 jobs logging over HTTP at once, all in the right experiment; server down."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from geopeft.tracking import RunLogger, TrackingError, check_server, init_experiment

pytestmark = pytest.mark.slow
N_JOBS, N_STEPS = 16, 10

JOB = """
import sys, time
from pathlib import Path
from geopeft.tracking import RunLogger
exp, i, art = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
log = RunLogger(exp, run_name=f"job{i}", params={"job": i, "row": {"lr": 0.001 * i}},
                tags={"role": "test"})
for step in range({steps}):
    log.log_metrics({"loss": 1.0 / (step + 1 + i), "acc": step / 10}, step)
art.write_text(f"job {i}")
log.log_artifact(art, "out")
log.end()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlserver")
    port = _free_port()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "geopeft.cli", "mlflow-server", "--backend-store-uri",
         f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--port", str(port), "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"),
        start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                break
        except OSError:
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError("mlflow server did not start")
    yield {"uri": uri, "root": root}
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def test_sixteen_jobs_log_into_the_right_experiment(server, tmp_path):
    from mlflow.tracking import MlflowClient

    exp = tmp_path / "exp.json"
    info = init_experiment(server["uri"], "study16", tmp_path / "unused", exp)
    procs = [subprocess.Popen([sys.executable, "-c", JOB.replace("{steps}", str(N_STEPS)), str(exp),
                               str(i), str(tmp_path / f"a{i}.txt")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(N_JOBS)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    client = MlflowClient(tracking_uri=server["uri"])
    runs = client.search_runs([info["experiment_id"]], max_results=100)
    assert sorted(r.info.run_name for r in runs) == sorted(f"job{i}" for i in range(N_JOBS))
    default = client.get_experiment_by_name("Default")
    assert default is None or not client.search_runs([default.experiment_id])
    for r in runs:
        i = int(r.info.run_name[3:])
        assert r.info.status == "FINISHED"
        assert r.data.params["job"] == str(i) and r.data.params["row.lr"] == str(0.001 * i)
        for key in ("loss", "acc"):
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, key))
            assert steps == list(range(N_STEPS)), (r.info.run_name, key)
        arts = [a.path for a in client.list_artifacts(r.info.run_id, "out")]
        assert arts == [f"out/a{i}.txt"]
        local = client.download_artifacts(r.info.run_id, f"out/a{i}.txt", str(tmp_path / f"d{i}"))
        assert Path(local).read_text() == f"job {i}"


def test_server_down_is_a_clear_error(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=r"does not answer.*geopeft mlflow-server"):
        check_server(uri, attempts=2, timeout=1)
    assert time.monotonic() - t0 < 30
    (tmp_path / "exp.json").write_text(
        f'{{"experiment_id": "1", "experiment": "x", "tracking_uri": "{uri}"}}')
    with pytest.raises(TrackingError):
        RunLogger(tmp_path / "exp.json", run_name="r")
