"""Benchmark: MLflow logging overhead per training step, as a fraction of the step time.

Times, side by side in one run, (a) training steps of the default study's model (embedded ViT,
batch 32, 64 px, LoRA) and (b) what geopeft logs per step: one batched ``log_batch`` per epoch
(train/val metrics) divided over the epoch's steps, to a SQLite store and -- with ``--server`` --
over HTTP to a local ``mlflow server``. Over HTTP geopeft logs asynchronously: the time the
training loop is blocked is the enqueueing, plus waiting for the queue when the run ends
(counted, spread over the run's steps). With ``--server`` it also trains the same steps with and
without logging over HTTP, interleaved, and reports the wall-time difference. Target: under 1 %
of the step time.

    uv run python bench/mlflow_overhead.py [--steps 40] [--steps-per-epoch 19] [--server]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from geopeft.data.dataset import StoreInfo
from geopeft.models.classifier import build_classifier
from geopeft.spec import LoraSpec
from geopeft.strategies import apply_strategy
from geopeft.tracking import RunLogger, init_experiment


def _model_and_batch():
    info = StoreInfo(Path("x"), "eurosat_rgb", [f"c{i}" for i in range(10)], ["B04", "B03", "B02"],
                     1 / 255, [100.0] * 3, [50.0] * 3, "f", (64, 64))
    cfg = {"name": "embedded", "weights": "none", "normalize": "dataset"}
    torch.manual_seed(0)
    torch.set_num_threads(1)
    m, _ = build_classifier(cfg, info, 10)
    m = apply_strategy(m, "lora", LoraSpec(r=8, alpha=16, dropout=0.1))
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.rand(32, 3, 64, 64) * 255, torch.randint(0, 10, (32,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


METRICS = {"train_loss": 0.5, "train_acc": 0.8, "lr": 1e-3, "val_loss": 0.6, "val_score": 0.7}


def step_time(steps: int) -> float:
    step = _model_and_batch()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])


def log_time(uri: str, tmp: Path, epochs: int) -> tuple[float, float]:
    """(median time blocked per epoch's log call, time blocked when the run ends)."""
    exp = tmp / f"exp-{abs(hash(uri))}.json"
    init_experiment(uri, "bench", tmp / "art", exp)
    logger = RunLogger(exp, run_name="bench", params={"a": 1})
    times = []
    for e in range(epochs):
        t0 = time.perf_counter()
        logger.log_metrics(METRICS, e)
        times.append(time.perf_counter() - t0)
        time.sleep(0.2)  # the epoch's training
    t0 = time.perf_counter()
    logger.end()
    return statistics.median(times), time.perf_counter() - t0


def interleaved(uri: str, tmp: Path, epochs: int, steps_per_epoch: int, rounds: int = 3) -> float:
    """Wall-time overhead per step of logging over HTTP while training (fraction of a step)."""
    step = _model_and_batch()
    for _ in range(5):
        step()
    exp = tmp / "exp-interleaved.json"
    init_experiment(uri, "bench-interleaved", tmp / "art", exp)
    with_log, without = [], []
    for r in range(rounds):
        for log in ((True, False) if r % 2 == 0 else (False, True)):
            logger = RunLogger(exp, run_name=f"i{r}") if log else None  # per job, not per step
            t1 = time.perf_counter()
            for e in range(epochs):
                for _ in range(steps_per_epoch):
                    step()
                if logger is not None:
                    logger.log_metrics(METRICS, e)
            if logger is not None:
                logger.end()
            (with_log if log else without).append(time.perf_counter() - t1)
    return (statistics.median(with_log) - statistics.median(without)) / statistics.median(without)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--steps-per-epoch", type=int, default=19, help="default study: 600/32")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--interleaved-epochs", type=int, default=5)
    ap.add_argument("--server", action="store_true", help="also log over HTTP to a local server")
    a = ap.parse_args()
    st = step_time(a.steps)
    print(f"training step: {1000 * st:.1f} ms (median)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        uris = [f"sqlite:///{tmp / 'mlflow.db'}"]
        server = None
        if a.server:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            server = subprocess.Popen([sys.executable, "-m", "geopeft.cli", "mlflow-server",
                                       "--backend-store-uri", f"sqlite:///{tmp / 'srv.db'}",
                                       "--artifacts-destination", str(tmp / "srv-art"),
                                       "--port", str(port)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            uris.append(f"http://127.0.0.1:{port}")
        try:
            n = a.epochs * a.steps_per_epoch
            for uri in uris:
                per_epoch, at_end = log_time(uri, tmp, a.epochs)
                per_step = (per_epoch * a.epochs + at_end) / n
                print(f"{uri.split(':')[0]:>6}: blocked {1000 * per_epoch:.2f} ms per epoch's "
                      f"log_batch + {1000 * at_end:.1f} ms at the end of a {a.epochs}-epoch run -> "
                      f"{1000 * per_step:.3f} ms per step = {100 * per_step / st:.2f} % of a step "
                      f"(target < 1 %: {'met' if per_step / st < 0.01 else 'NOT met'})")
            if server is not None:
                frac = interleaved(uris[-1], tmp, a.interleaved_epochs, a.steps_per_epoch)
                print(f"  http, training and logging interleaved ({a.interleaved_epochs} epochs x "
                      f"{a.steps_per_epoch} steps, server on this machine): wall time +{100 * frac:.2f} % "
                      f"per step against no logging (same model, alternating order)")
        finally:
            if server is not None:
                os.killpg(server.pid, 15)


if __name__ == "__main__":
    main()
