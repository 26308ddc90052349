"""The GPU suite: every benchmark that needs a GPU, in one short call on a GPU machine.

Offline (random weights, synthetic tensors, the rehearsal's fixtures), each part in a process
of its own with a time limit, under 8 minutes on one H100:

1. ``trainer_vs_timm``: geopeft's ``fit`` against timm's train benchmark loop, ViT-B/16 at
   224 px, bf16, batch 128, with the MFU; ``fit`` without the next batch's prefetch and with
   ``train.compile``; AdamW foreach vs fused (``bench/trainer_vs_timm.py``).
2. ``lora_cost``: full fine-tuning vs LoRA vs linear probe on ViT-B/16, step time and CUDA peak
   memory, batch 64 (``bench/lora_cost.py``).
3. ``conv_layout``: U-TAE's training step at PASTIS size, default vs channels-last
   (``bench/conv_layout.py``).
4. ``segmentation_memory``: UPerNet + L-TAE end to end at 128 px, 6/15/35 dates, with and
   without ``encoder_chunk`` (``bench/segmentation_memory.py``).
5. ``rehearsal``: the EuroSAT LoRA study's rehearsal with its training jobs on the GPU
   (``geopeft rehearse config/studies/eurosat_lora.yaml --gpus 1``: bf16 autocast, the CUDA
   memory path, the device claim); its runs table is checked for the device and memory kind.
6. ``ddp``: ``geopeft train`` under torchrun on NCCL, world size 1 on a one-GPU machine (the
   NCCL path, not the scaling), then ``geopeft evaluate`` of that run (``bench/ddp_check.py``).

Results: ``OUT/suite.json`` (every part's command, exit status, seconds and results) and
``OUT/suite.md`` (the parts' reports). The exit status is 1 when a part failed.

``--smoke`` runs every part on the CPU at toy sizes (the rehearsal as a dry run, or with
``--jobs`` its jobs too, on the CPU), so that CI keeps the suite runnable
(``tests/test_bench.py``, and ``scripts/gpu/check.sh --smoke`` in a venv like the GPU machine's);
its figures mean nothing. On the GPU machine run it through ``scripts/gpu/check.sh``, which
installs the packages that machine lacks.

    uv run python bench/gpu_suite.py OUT            # on a GPU machine
    uv run python bench/gpu_suite.py --smoke OUT    # on any machine: checks every part runs
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
STUDY = "config/studies/eurosat_lora.yaml"


def parts(out: Path, smoke: bool, jobs: bool = False) -> list[tuple[str, list[str], int]]:
    """(name, command, seconds allowed) of each part; the GPU run's limits add up to 8
    minutes. ``jobs``: the smoke rehearsal runs its jobs (on the CPU) instead of a dry run."""
    py = sys.executable
    if smoke:
        return [
            ("trainer_vs_timm", [py, str(BENCH / "trainer_vs_timm.py"), "--smoke",
                                 "--json", str(out / "trainer_vs_timm.json")], 300),
            ("lora_cost", [py, str(BENCH / "lora_cost.py"), "--smoke",
                           "--json", str(out / "lora_cost.json")], 300),
            ("conv_layout", [py, str(BENCH / "conv_layout.py"), "--smoke",
                             "--json", str(out / "conv_layout.json")], 300),
            ("segmentation_memory", [py, str(BENCH / "segmentation_memory.py"), "--lengths", "2",
                                     "--size", "32", "--chunk", "2",
                                     "--json", str(out / "segmentation_memory.json")], 300),
            ("rehearsal", [py, "-m", "geopeft.cli", "rehearse", STUDY, "--dir",
                           str(out / "fixtures"), "--", *([] if jobs else ["-n"]), "--quiet"],
             900 if jobs else 300),
            ("ddp", [py, str(BENCH / "ddp_check.py"), "--smoke",
                     "--json", str(out / "ddp.json")], 300),
        ]
    return [
        ("trainer_vs_timm", [py, str(BENCH / "trainer_vs_timm.py"), "--device", "cuda",
                             "--steps", "20", "--repeats", "3",
                             "--json", str(out / "trainer_vs_timm.json")], 135),
        ("lora_cost", [py, str(BENCH / "lora_cost.py"), "--device", "cuda", "--batch", "64",
                       "--steps", "10", "--warmup", "3", "--json", str(out / "lora_cost.json")],
         45),
        ("conv_layout", [py, str(BENCH / "conv_layout.py"), "--device", "cuda", "--steps", "10",
                         "--warmup", "3", "--json", str(out / "conv_layout.json")], 40),
        ("segmentation_memory", [py, str(BENCH / "segmentation_memory.py"), "--device", "cuda",
                                 "--lengths", "6", "15", "35", "--size", "128",
                                 "--json", str(out / "segmentation_memory.json")], 70),
        ("rehearsal", [py, "-m", "geopeft.cli", "rehearse", STUDY, "--gpus", "1", "--dir",
                       str(out / "fixtures"), "--cores", "4", "--", "--quiet"], 150),
        ("ddp", [py, str(BENCH / "ddp_check.py"), "--device", "cuda", "--nproc", "1",
                 "--epochs", "3", "--json", str(out / "ddp.json")], 40),
    ]


def workdir(out: Path) -> Path:
    """A working copy for the rehearsal under ``out`` (the workflow linked, its data and
    results its own), so that the checkout stays as it was."""
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "profiles"):
        if not (work / name).exists():
            (work / name).symlink_to(ROOT / name)
    return work


def rehearsal_runs(out: Path, dry: bool) -> list[dict[str, str]]:
    """The rehearsal's runs table (none after a dry run)."""
    table = workdir(out) / "results" / "eurosat_lora_rehearsal" / "runs.csv"
    if dry or not table.is_file():
        return []
    with open(table, newline="") as f:
        return [{k: r[k] for k in ("run", "strategy", "device", "memory_kind", "peak_memory_mb",
                                   "images_per_s", "test_acc") if k in r}
                for r in csv.DictReader(f)]


def run_suite(out: Path, smoke: bool, jobs: bool = False) -> dict:
    """Run every part; their results, keyed by part."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    if not smoke and not cuda:
        raise SystemExit("gpu_suite: no CUDA device is visible; on a CPU run it with --smoke")
    suite = {"smoke": smoke, "torch": torch.__version__,
             "device": torch.cuda.get_device_name(0) if cuda and not smoke else "CPU",
             "parts": {}}
    for name, cmd, limit in parts(out, smoke, jobs):
        t0 = time.perf_counter()
        try:
            cwd = workdir(out) if name == "rehearsal" else ROOT
            p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=limit)
            rc, stdout, stderr = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as err:
            rc, stdout = 124, (err.stdout or b"").decode(errors="replace") if isinstance(
                err.stdout, bytes) else (err.stdout or "")
            stderr = f"timed out after {limit} s"
        part = {"command": " ".join(cmd), "rc": rc,
                "seconds": round(time.perf_counter() - t0, 1), "report": stdout.strip()}
        result = out / f"{name}.json"
        if result.is_file():
            part["results"] = json.loads(result.read_text())
        if name == "rehearsal":
            part["runs"] = rehearsal_runs(out, smoke and not jobs)
            want = "cpu" if smoke else "cuda"
            bad = [r["run"] for r in part["runs"] if not r.get("device", "").startswith(want)]
            if rc == 0 and (bad or ((jobs or not smoke) and not part["runs"])):
                rc = part["rc"] = 1
                stderr += f"\nrehearsal: runs not on {want} or no runs table: {bad}"
        if rc != 0:
            part["stderr_tail"] = stderr[-3000:]
        suite["parts"][name] = part
        print(f"== {name}: rc {rc}, {part['seconds']} s", flush=True)
    (out / "suite.json").write_text(json.dumps(suite, indent=1))
    lines = [f"# GPU suite on {suite['device']} (torch {suite['torch']})"
             + (" — SMOKE: toy sizes on the CPU, the figures mean nothing" if smoke else "")]
    for name, part in suite["parts"].items():
        lines += ["", f"## {name} (exit {part['rc']}, {part['seconds']} s)", "", part["report"]]
        if part.get("runs"):
            lines += ["", *(json.dumps(r) for r in part["runs"])]
        if part["rc"]:
            lines += ["", "```", part.get("stderr_tail", ""), "```"]
    (out / "suite.md").write_text("\n".join(lines) + "\n")
    return suite


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for suite.json, suite.md and each part's JSON")
    ap.add_argument("--smoke", action="store_true",
                    help="every part on the CPU at toy sizes (CI: checks the suite runs)")
    ap.add_argument("--jobs", action="store_true",
                    help="with --smoke: run the rehearsal's jobs on the CPU, not a dry run")
    a = ap.parse_args(argv)
    if a.jobs and not a.smoke:
        ap.error("--jobs goes with --smoke (the GPU run always runs the rehearsal's jobs)")
    suite = run_suite(a.out.resolve(), a.smoke, a.jobs)
    return 1 if any(p["rc"] for p in suite["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
