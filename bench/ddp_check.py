"""DDP through geopeft's own torchrun path: ``geopeft train`` in ``--nproc`` processes on a tiny
embedded EuroSAT-RGB store, on NCCL where CUDA is there (gloo on a CPU).

On a one-GPU machine this is world size 1: it tests the NCCL path (process group, device
claim, gradient sync calls, rank-0 saving, the MLflow run), not the scaling. The run must end
with status 0, say which backend it joined, and save its weights; then ``geopeft evaluate``
scores it as the workflow does (test metrics, the MLflow model). ``--json`` writes the backend,
the world size, the wall time, the losses and the test accuracy.

    uv run python bench/ddp_check.py --device cuda --nproc 1 --json OUT/ddp.json   # GPU
    uv run python bench/ddp_check.py --smoke --json OUT/ddp.json                   # any CPU
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}


def make_store(tmp: Path) -> Path:
    """The embedded EuroSAT-RGB world at 32 px, 100 scenes, prepared."""
    from geopeft.data.prepare import prepare
    from geopeft.data.synthetic import WorldSpec, generate_eurosat

    generate_eurosat(WorldSpec(seed=0, n_samples=100, source_samples=0, size=32), None, tmp / "rgb")
    prepare("eurosat_rgb", tmp / "rgb", ["B04", "B03", "B02"], tmp / "rgb.zarr")
    return tmp / "rgb.zarr"


def job_spec(device: str, epochs: int) -> dict:
    """A LoRA row of the default study's kind on a tiny ViT (adapter and head train)."""
    from dataclasses import fields

    from geopeft.spec import TrainArgs

    train = {f.name: f.default for f in fields(TrainArgs)  # the schema's training defaults
             if f.name not in ("seed", "threads", "progress")}
    train.update(epochs=epochs, batch_size=16, device=device)
    row = {"name": "ddp", "strategy": "lora", "method": "lora", "label_fraction": 1.0, "seed": 0,
           "dataset": "eurosat_rgb", "train": train,
           "lora": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1,
                    "target_modules": ["q", "v"]}}
    backbone = {"name": "vit_tiny_patch16_224", "kwargs": dict(TINY_VIT), "weights": "none",
                "sha256": None, "input_size": None, "normalize": "auto"}
    return {"study": "ddp_check", "threads": 1, "backbone": backbone, "row": row,
            "data": {"dataset": "eurosat_rgb", "bands": ["B04", "B03", "B02"],
                     "source": "synthetic"}}


def run(device: str, nproc: int, epochs: int) -> dict:
    """Train the row under torchrun; what it says of itself."""
    from geopeft.tracking import init_experiment

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = make_store(tmp)
        exp = tmp / "experiment.json"
        init_experiment(f"sqlite:///{tmp / 'mlflow.db'}", "ddp_check", tmp / "artifacts", exp)
        gpus = nproc if device == "cuda" else 0
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "geopeft.cli", "train",
               "--spec", json.dumps(job_spec(device, epochs)), "--store", str(store),
               "--experiment", str(exp), "--out", str(tmp / "out"), "--gpus", str(gpus)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        took = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"ddp_check: geopeft train under torchrun ended with status "
                             f"{r.returncode}\n{r.stderr[-4000:]}")
        joined = re.findall(r"joined the process group: backend (\w+), rank (\d+) of (\d+)",
                            r.stderr)
        if len(joined) != nproc:
            raise SystemExit(f"ddp_check: {len(joined)} of {nproc} ranks joined a process group\n"
                             f"{r.stderr[-4000:]}")
        if not (tmp / "out" / "trainable.safetensors").is_file():
            raise SystemExit("ddp_check: the run saved no trainable.safetensors")
        history = json.loads((tmp / "out" / "run.json").read_text())["history"]
        # the evaluation job of the same row, as the workflow runs it (the MLflow model too)
        r = subprocess.run([sys.executable, "-m", "geopeft.cli", "evaluate", "--model",
                            str(tmp / "out"), "--store", str(store), "--experiment", str(exp),
                            "--metrics", str(tmp / "metrics.json"), "--confusion",
                            str(tmp / "confusion.csv")], capture_output=True, text=True,
                           timeout=600)
        if r.returncode != 0:
            raise SystemExit(f"ddp_check: geopeft evaluate ended with status {r.returncode}\n"
                             f"{r.stderr[-4000:]}")
        metrics = json.loads((tmp / "metrics.json").read_text())
    return {"device": device, "backend": joined[0][0], "world_size": int(joined[0][2]),
            "epochs": epochs, "seconds": round(took, 1),
            "train_loss": [round(h["train_loss"], 4) for h in history],
            "val_loss": [round(h["val_loss"], 4) for h in history],
            "test_overall_accuracy": metrics["overall_accuracy"],
            "test_samples": metrics["test_samples"]}


def report(out: dict) -> str:
    return (f"DDP through geopeft train under torchrun: backend {out['backend']}, world size "
            f"{out['world_size']} on {out['device']}, {out['epochs']} epochs in {out['seconds']} s; "
            f"train loss {out['train_loss'][0]} -> {out['train_loss'][-1]}; test overall accuracy "
            f"{out['test_overall_accuracy']:.3f} on {out['test_samples']} images")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="CPU, one process, two epochs")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.smoke:
        a.device, a.nproc, a.epochs = "cpu", 1, 2
    out = run(a.device, a.nproc, a.epochs)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
