"""The benchmarks of issue 18 stay runnable: the GPU check (scripts/gpu/check.sh) rehearsed on the
CPU in a look-alike of the GPU machine, and the trainer-vs-timm comparison's own arithmetic."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mfu_peaks_are_the_cards_dense_bf16_figures():
    tvt = _bench("trainer_vs_timm")
    assert tvt.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert tvt.peak_flops("NVIDIA H100 PCIe") == 756e12  # not the SXM figure
    assert tvt.peak_flops("NVIDIA H200") == 989e12
    assert tvt.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert tvt.peak_flops("Tesla T4") is None


def test_trainer_vs_timm_times_both_loops_on_the_same_model():
    """Tiny run: every variant trained, the step's FLOPs counted (a ViT's forward and backward:
    about 3x the forward's), the ratio against timm's loop computed from the medians."""
    tvt = _bench("trainer_vs_timm")
    out = tvt.run("vit_tiny_patch16_224", 32, 4, steps=2, warmup=1, repeats=1,
                  device=torch.device("cpu"), threads=1)
    assert set(out["images_per_s"]) == {"timm", "fit", "fit_augment"}
    assert all(v > 0 for v in out["images_per_s"].values())
    assert out["vs_timm"]["fit"] == pytest.approx(
        out["images_per_s"]["fit"] / out["images_per_s"]["timm"], rel=1e-2)
    from torch.utils.flop_counter import FlopCounterMode

    model = tvt.build("vit_tiny_patch16_224", 32, 10, torch.device("cpu"))
    with FlopCounterMode(display=False) as fwd:
        model(torch.randn(4, 3, 32, 32))
    assert out["gflop_per_step"] * 1e9 == pytest.approx(3 * fwd.get_total_flops(), rel=0.1)
    assert out["mfu"]["fit"] is None  # no peak known for a CPU
    assert out["adamw_step_s"]["fused"] > 0 and "| fit_augment |" in tvt.report(out)


def test_gpu_suite_smoke_covers_every_part_of_the_gpu_run():
    suite = _bench("gpu_suite")
    full = [name for name, _, _ in suite.parts(Path("out"), smoke=False)]
    smoke = [name for name, _, _ in suite.parts(Path("out"), smoke=True)]
    assert full == smoke == ["trainer_vs_timm", "lora_cost", "conv_layout",
                             "segmentation_memory", "rehearsal", "ddp"]
    assert sum(limit for _, _, limit in suite.parts(Path("out"), smoke=False)) <= 8 * 60
    commands = {n: c for n, c, _ in suite.parts(Path("out"), smoke=False)}
    rehearsal = commands["rehearsal"]
    assert rehearsal[rehearsal.index("--gpus") + 1] == "1"  # the CUDA path, not CPU jobs
    ddp = commands["ddp"]
    assert ddp[ddp.index("--device") + 1] == "cuda" and ddp[ddp.index("--nproc") + 1] == "1"
    dry = {n: c for n, c, _ in suite.parts(Path("out"), smoke=True)}["rehearsal"]
    jobs = {n: c for n, c, _ in suite.parts(Path("out"), smoke=True, jobs=True)}["rehearsal"]
    assert "-n" in dry and "-n" not in jobs


def _wheels():
    spec = importlib.util.spec_from_file_location("wheels", ROOT / "scripts" / "gpu" / "wheels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_carried_wheels_are_what_the_gpu_machine_lacks():
    """scripts/gpu/wheels.py: geopeft's locked closure on CPython 3.12, less the machine's own
    packages (torch and its CUDA libraries among them) and the large wheels the check does
    without; the look-alike's requirements pin the machine's known versions."""
    w = _wheels()
    machine = w.machine_packages()
    assert machine["torch"] == "2.11.0" and "zarr" not in machine and "mlflow" not in machine
    closure = w.locked_closure()
    need = w.missing(closure, machine)
    assert {"zarr", "mlflow-skinny", "snakemake", "jsonschema", "zstandard", "sqlalchemy"} <= set(need)
    assert not {"torch", "torchvision", "gradio", "timm", "numpy", "mlflow", "pulp",
                "rasterio"} & set(need)
    assert not [n for n in need if n.startswith(("nvidia-", "cuda-"))]
    assert all(v for v in need.values())  # each at uv.lock's version
    reqs = w.machine_requirements(w.locked_closure(prune=()), machine)
    assert "torch==2.11.0" in reqs and "numpy==2.5.2" in reqs and "timm==" + closure["timm"] in reqs
    assert not [r for r in reqs if r.startswith(("nvidia-", "cuda-", "setuptools==", "zarr"))]


@pytest.mark.slow
def test_the_gpu_check_passes_its_cpu_rehearsal_in_a_lookalike_of_the_gpu_machine(tmp_path):
    """``scripts/gpu/check.sh --smoke OUT`` in a Python 3.12 venv holding only the GPU machine's
    packages (scripts/gpu/lookalike.sh) plus the wheels scripts/gpu/wheels.sh carries: every
    module imports, every part of the suite runs (the rehearsal as a dry run; real train and
    evaluate jobs in the DDP part, on gloo), and the wheels fit the device tool's 64 MiB with the
    working tree. (``--jobs`` runs the rehearsal's jobs too: 2.5 more minutes, by hand.)"""
    venv = Path(tempfile.gettempdir()) / "geopeft-gpu-lookalike"  # made again when stale
    # the README's `bash scripts/gpu/wheels.sh`, as written
    for cmd in (["bash", "scripts/gpu/lookalike.sh", str(venv)], ["bash", "scripts/gpu/wheels.sh"]):
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = re.search(r"with the working tree ([\d.]+) of 64 MiB", r.stdout)
    assert m and float(m.group(1)) <= 64, r.stdout
    python = dict(os.environ, PYTHON=str(venv / "bin" / "python"))
    # the README's command for the GPU machine, as written: on a CPU it says what to do instead
    r = subprocess.run(["bash", "scripts/gpu/check.sh", str(tmp_path / "gpu")], cwd=ROOT, env=python,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "no CUDA device is visible; on a CPU run it with --smoke" in r.stderr
    assert "torch 2.11.0" in (tmp_path / "gpu" / "env.txt").read_text()
    out = tmp_path / "out"
    r = subprocess.run(["bash", "scripts/gpu/check.sh", "--smoke", str(out)], cwd=ROOT,
                       env=python, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    env = (out / "env.txt").read_text()
    assert env.startswith("python 3.12.") and "torch 2.11.0" in env
    assert f"zarr {_wheels().locked_closure()['zarr']} " in env  # the carried wheel, not ours
    suite = json.loads((out / "suite.json").read_text())
    assert suite["smoke"] is True and suite["torch"].startswith("2.11.0")
    assert all(p["rc"] == 0 for p in suite["parts"].values())
    parts = suite["parts"]
    assert parts["trainer_vs_timm"]["results"]["images_per_s"]["fit"] > 0
    assert set(parts["lora_cost"]["results"]["variants"]) >= {"full", "lora", "linear"}
    assert parts["conv_layout"]["results"]["step_s"]["channels_last"] > 0
    assert parts["segmentation_memory"]["results"]["results"][0]["chunk"] == 2
    assert "Building DAG of jobs" in parts["rehearsal"]["report"]  # a dry run
    ddp = parts["ddp"]["results"]  # real jobs in the look-alike: train under torchrun, evaluate
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 1
    assert ddp["train_loss"][-1] < ddp["train_loss"][0]
    assert ddp["test_samples"] > 0 and 0 <= ddp["test_overall_accuracy"] <= 1
    assert "SMOKE" in (out / "suite.md").read_text()


def test_loader_benchmark_times_the_store_path_against_memory(tmp_path):
    """bench/loader.py (toy size): an epoch from the store (load + fit) and in memory, the
    load's median timed on its own, and both ratios computed from the medians."""
    loader = _bench("loader")
    store = loader.make_store(tmp_path, 120, 32, chunk=16)
    backbone = {**loader.DEFAULT_BACKBONE, "kwargs": {**loader.DEFAULT_BACKBONE["kwargs"],
                                                      "img_size": 32}}
    out = loader.run(store, backbone, 32, repeats=2, workers=2)
    assert out["chunks"] >= 4 and out["workers"] == 2  # streamed through reader processes
    from geopeft.data.dataset import load_split

    assert out["samples"] == len(load_split(store, "train"))
    med = out["epoch_s"]
    assert out["store_vs_memory"] == pytest.approx(med["memory"] / med["store"], abs=1e-3)
    assert 0 < out["load_s"] < med["store"]
    assert out["store_vs_memory_from_load"] == pytest.approx(
        med["memory"] / (med["memory"] + out["load_s"]), abs=1e-3)
    assert out["stream_vs_memory"] == pytest.approx(med["memory"] / med["stream"], abs=1e-3)
    assert "ratio from its parts" in loader.report(out) and "streamed" in loader.report(out)


@pytest.mark.slow
def test_stream_memory_benchmark_trains_an_epoch_both_ways(tmp_path, capsys):
    """bench/stream_memory.py on a small BigEarthNet-shaped store: the store has the writer's
    ~16 MB chunks and the real shape, and an epoch runs streamed and loaded whole."""
    bench = _bench("stream_memory")
    assert bench.main(["--sizes", "300", "--dir", str(tmp_path), "--json",
                       str(tmp_path / "out.json")]) == 0
    import zarr

    arr = zarr.open_array(tmp_path / "ben300.zarr" / "image", mode="r")
    assert arr.shape == (300, 6, 120, 120) and arr.dtype == "uint16" and arr.chunks[0] == 97
    out = json.loads((tmp_path / "out.json").read_text())
    assert [r["mode"] for r in out] == ["stream", "whole"]
    assert all(r["peak_rss_mb"] > 0 and r["train_samples"] > 200 for r in out)
    assert [r["workers"] for r in out] == [2, 0] and out[0]["reader_peak_rss_mb"] > 0


def test_scene_map_benchmark_maps_both_kinds_of_scene(tmp_path):
    """``bench/scene_map.py`` on small scenes: both maps made by ``geopeft predict`` in a fresh
    process, with their peak memory, time and tiles run."""
    out = tmp_path / "scene.json"
    assert _bench("scene_map").main(["--sides", "300", "--written", "200", "--json",
                                     str(out)]) == 0
    res = json.loads(out.read_text())
    cls, seg = res["classification"]["300"], res["segmentation"]["300"]
    assert cls["peak_mib"] > 0 and seg["peak_mib"] > 0 and res["one chip"]["32"]["peak_mib"] > 0
    # 32 px cells at 0, 32, ..., 256, 268: the 6 x 6 inside the written 200 px run; those at
    # 192 hold 8 of 32 columns written, more than half nodata: not run, nor any further out
    assert "10x10 map, one class per tile (32x32 px tiles: 36 run, 64 empty)" in cls["said"]
    # 24 px tiles every 18 px (0 ... 270, then 276 flush): 17 a side; 12 a side start in the
    # written 200 px (0 ... 198) and run, the other 289 - 144 hold no valid pixel
    assert "300x300 map, one class per pixel (24x24 px tiles: 144 run, 145 empty)" in seg["said"]


def test_features_benchmark_times_a_probe_both_ways(tmp_path):
    """``bench/features.py`` on a small world: the same linear row on images and on its
    features, the features job between, the same validation accuracy."""
    out = tmp_path / "features.json"
    assert _bench("features").main(["--samples", "120", "--epochs", "2", "--json",
                                    str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["views"] == 8 and m["images_s"] > 0 and m["features_job_s"] > 0
    assert m["on_features_s"] > 0
    # the same head within float tolerance: at most one of the 24 val scenes may change class
    assert abs(m["val_images"] - m["val_on_features"]) <= 1 / 24 + 1e-9


def test_features_benchmark_times_a_decoder_only_series_row_both_ways(tmp_path):
    """``bench/features.py --series`` on a few patches: the decoder-only row on images and on its
    encoder's levels, the features job between, the same validation mIoU."""
    out = tmp_path / "series.json"
    assert _bench("features").main(["--series", "--samples", "12", "--epochs", "1", "--json",
                                    str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["series"] and m["views"] == 1 and m["dim"] == 4 * 96 * 8 * 8
    assert m["images_s"] > 0 and m["features_job_s"] > 0 and m["on_features_s"] > 0
    assert m["val_on_features"] == pytest.approx(m["val_images"], abs=1e-4)
