"""Benchmark: what LoRA saves against full fine-tuning and a linear probe, side by side.

Builds the EuroSAT LoRA study's model the way a training job does (geopeft's classifier on
timm's ViT-B/16 at 224 px, 3 bands, 10 classes; random weights, offline), once per variant:
full fine-tuning, LoRA (r 8, alpha 16, dropout 0.1 on q/k/v, the study's adapter), the same
LoRA with q, k and v called as three layers (``lora_unfused``: geopeft before
:func:`geopeft.models.backbones.fused_lora_qkv`) and a linear probe.
Each training step is the training loop's (AdamW over the strategy's parameter groups, fused
on CUDA, cross-entropy, backward, optimiser step; bf16 autocast on CUDA). The variants run
interleaved in one process, a step of each in turn, so that a slower or busier machine moves
all of them alike; after ``--warmup`` steps each, ``--steps`` steps each are timed and the
medians reported, with the ratios LoRA / full and linear / full.

Memory is geopeft's own accounting of the training tensors (what the runs table reports): on a
GPU the allocator's maximum allocated over one step of the variant alone; on the CPU (where
torch keeps no such count and the process's resident set is mostly torch itself) the tensors a
step holds, broken down into parameters, gradients, optimiser state and saved activations
(:func:`geopeft.models.runtime.training_tensors_mb`).

    uv run python bench/lora_cost.py [--batch 4] [--steps 5] [--threads 2] [--device cpu]
    uv run python bench/lora_cost.py --smoke          # a tiny ViT at 32 px: checks it runs

Target (issue 18): LoRA's step time <= 0.70 x full fine-tuning's, training memory <= 0.60 x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

VARIANTS = ("full", "lora", "lora_unfused", "linear")


def build(variant: str, arch: str, size: int, device: torch.device) -> torch.nn.Module:
    """The classifier a ``variant`` job trains (random weights), its strategy applied."""
    from geopeft.data.dataset import StoreInfo
    from geopeft.models.backbones import SplitQKV
    from geopeft.models.classifier import build_classifier
    from geopeft.spec import LoraSpec
    from geopeft.strategies import apply_strategy

    info = StoreInfo(Path("bench"), "eurosat_rgb", [str(i) for i in range(10)],
                     ["B04", "B03", "B02"], 1.0, [0.4] * 3, [0.2] * 3, "bench", (size, size))
    torch.manual_seed(0)
    cfg = {"name": arch, "weights": "none", "kwargs": {"img_size": size}}
    is_lora = variant.startswith("lora")
    model, _ = build_classifier(cfg, info, 10, split=is_lora)
    lora = LoraSpec(method="lora", r=8, alpha=16, dropout=0.1, target_modules=("q", "k", "v"))
    model = apply_strategy(model, "lora" if is_lora else variant, lora if is_lora else None)
    if variant == "lora_unfused":  # q, k, v called one by one: geopeft before the fused path
        for m in model.modules():
            if isinstance(m, SplitQKV):
                m.fused = False
    return model.to(device).train()


class Trainer:
    """One variant's model, optimiser and step (the training loop's, without its bookkeeping)."""

    def __init__(self, variant: str, model: torch.nn.Module, lr: float):
        from geopeft.strategies import count_parameters, param_groups

        self.variant, self.model = variant, model
        cuda = next(model.parameters()).device.type == "cuda"
        self.opt = torch.optim.AdamW(param_groups(model, lr), lr=lr, weight_decay=0.05,
                                     fused=True if cuda else None)
        self.trainable, self.total = count_parameters(model)
        self.times: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor, saved=None) -> None:
        from contextlib import nullcontext

        from geopeft.models.runtime import autocast

        with saved if saved is not None else nullcontext(), autocast(x.device, True):
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(arch: str, size: int, batch: int, steps: int, warmup: int, device: torch.device,
        variants: tuple[str, ...] = VARIANTS) -> dict:
    from geopeft.models.runtime import SavedTensors, training_tensors_mb

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    trainers = [Trainer(v, build(v, arch, size, device), 1e-4) for v in variants]
    memory = {}
    for t in trainers:  # memory: the first step of each variant, alone
        saved = SavedTensors()
        if device.type == "cuda":
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
        t.step(x, y, saved)
        sync(device)
        if device.type == "cuda":
            memory[t.variant] = {"total": torch.cuda.max_memory_allocated(device) / 2**20}
        else:
            memory[t.variant] = training_tensors_mb(t.model, t.opt, saved)
    for i in range(warmup + steps):  # interleaved: a step of each variant in turn
        for t in trainers:
            sync(device)
            t0 = time.perf_counter()
            t.step(x, y)
            sync(device)
            if i >= warmup:
                t.times.append(time.perf_counter() - t0)
    out = {"arch": arch, "size": size, "batch": batch, "steps": steps, "device": str(device),
           "threads": torch.get_num_threads(), "variants": {}}
    for t in trainers:
        out["variants"][t.variant] = {
            "step_s": statistics.median(t.times), "trainable_params": t.trainable,
            "total_params": t.total, "memory_mb": {k: round(v, 1) for k, v in memory[t.variant].items()}}
    v = out["variants"]
    if "full" in v:
        for name in v:
            v[name]["time_vs_full"] = round(v[name]["step_s"] / v["full"]["step_s"], 3)
            v[name]["memory_vs_full"] = round(v[name]["memory_mb"]["total"]
                                              / v["full"]["memory_mb"]["total"], 3)
    return out


def report(out: dict) -> str:
    kind = "CUDA max allocated" if out["device"].startswith("cuda") else "training tensors"
    lines = [f"{out['arch']} at {out['size']} px, batch {out['batch']}, {out['device']}, "
             f"{out['threads']} threads; median of {out['steps']} interleaved steps each",
             f"| variant | trainable | step (s) | vs full | memory MiB ({kind}) | vs full | "
             "parameters / gradients / optimiser / activations MiB |", "|---|---|---|---|---|---|---|"]
    for name, r in out["variants"].items():
        m = r["memory_mb"]
        parts = " / ".join(f"{m[k]:.0f}" for k in ("parameters", "gradients", "optimizer",
                                                    "activations") if k in m) or "-"
        lines.append(f"| {name} | {r['trainable_params']:,} | {r['step_s']:.3f} | "
                     f"{r.get('time_vs_full', float('nan')):.2f} | {m['total']:.0f} | "
                     f"{r.get('memory_vs_full', float('nan')):.2f} | {parts} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="vit_base_patch16_224")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--smoke", action="store_true", help="a tiny ViT at 32 px, 2 steps")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.smoke:
        a.arch, a.size, a.steps, a.warmup = "vit_tiny_patch16_224", 32, 2, 1
    out = run(a.arch, a.size, a.batch, a.steps, a.warmup, torch.device(a.device))
    print(report(out))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
