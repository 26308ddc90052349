"""Benchmark: geopeft's training loop against timm's own train benchmark, side by side.

The reference is the train step of timm's ``benchmark.py --bench train`` (the script in the
pytorch-image-models repository, not part of the timm wheel; its loop is written out here):
one random input batch kept on the device, ``zero_grad``, the forward pass under autocast,
cross-entropy against random targets drawn on the device, backward, the optimiser step, a
device synchronisation per step. geopeft's side is :func:`geopeft.train.loop.fit` as a training
job runs it, on an in-memory split of random images of the same shape: each batch indexed from
the split (on CUDA gathered into pinned memory and copied ahead, :class:`_Feeder`), the loss
read every step (the guard against a non-finite loss), the learning-rate schedule, the
progress bar; with augmentation off (``fit``, like for like) and on (``fit_augment``, as the
studies train).

Both train the same timm model from the same initial weights with the same optimiser (AdamW,
lr 1e-4, weight decay 0.05, fused on CUDA as ``fit`` uses it), batch and precision (bf16
autocast on CUDA, float32 on CPU). Only steady-state steps count: timm's loop times
``--steps`` steps after ``--warmup``; ``fit`` runs one untimed epoch, then the time from the
end of its first epoch to the end of its last (``--steps`` steps) is taken. The variants run
interleaved, ``--repeats`` times, and the medians of images/s are reported with the ratio
fit / timm (target >= 0.95).

On CUDA the FLOPs of one training step (forward and backward) are counted with
``torch.utils.flop_counter`` and the model FLOPs utilisation is given against the card's
dense bf16 peak (``PEAK_BF16``; none for a card not listed).

    uv run python bench/trainer_vs_timm.py                       # CPU: tiny ViT, 64 px, batch 32
    uv run python bench/trainer_vs_timm.py --device cuda         # ViT-B/16, 224 px, bf16, batch 128
    uv run python bench/trainer_vs_timm.py --smoke               # a few steps: checks it runs
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = ("timm", "fit", "fit_augment")
#: Measured on CUDA too: ``fit`` without the next batch's prefetch (batches gathered and copied
#: when their step starts) and ``fit`` with ``train.compile`` (one round: each compiles anew).
CUDA_VARIANTS = ("fit_no_prefetch", "fit_compile")
#: Dense bf16 tensor-core peak FLOP/s by card name (vendor data sheets, without sparsity); the
#: first match in ``torch.cuda.get_device_name()`` wins.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
             ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12))


def peak_flops(name: str) -> float | None:
    """The dense bf16 peak of the card ``name`` (None: not listed)."""
    return next((v for k, v in PEAK_BF16 if k in name), None)


def build(arch: str, size: int, classes: int, device: torch.device) -> torch.nn.Module:
    """timm's model (random weights), marked so that geopeft's optimiser groups find its head."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=classes, img_size=size)
    model.new_modules = lambda: ["head"]  # what geopeft.strategies.param_groups reads
    return model.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timm_loop(model: torch.nn.Module, batch: int, size: int, classes: int, steps: int,
              warmup: int, device: torch.device, amp: bool) -> float:
    """Images/s of timm's train benchmark loop over ``steps`` steps after ``warmup``."""
    from geopeft.models.runtime import autocast

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05,
                            fused=True if device.type == "cuda" else None)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn((batch, 3, size, size), device=device)

    def step() -> None:
        opt.zero_grad()
        with autocast(device, amp):
            out = model(x)
            target = torch.empty((batch,), device=device, dtype=torch.long).random_(classes)
            loss_fn(out, target).backward()
        opt.step()
        sync(device)

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def fit_loop(model: torch.nn.Module, data: object, batch: int, steps_per_epoch: int,
             epochs: int, device: torch.device, threads: int, variant: str = "fit") -> float:
    """Images/s of :func:`geopeft.train.loop.fit` over its epochs after the first."""
    import functools

    from geopeft.spec import TrainArgs
    from geopeft.train import loop

    ends: list[float] = []
    args = TrainArgs(epochs=epochs, batch_size=batch, lr=1e-4, weight_decay=0.05,
                     warmup_epochs=0, augment=variant == "fit_augment", device=device.type,
                     amp=True, threads=threads, progress=False,
                     compile=variant == "fit_compile")
    feeder = loop._Feeder
    if variant == "fit_no_prefetch":
        loop._Feeder = functools.partial(feeder, ahead=False)
    try:
        loop.fit(model, data, None, args, on_epoch=lambda e, m: ends.append(time.perf_counter()))
    finally:
        loop._Feeder = feeder
    return batch * steps_per_epoch * (epochs - 1) / (ends[-1] - ends[0])


def optimizer_step_s(model: torch.nn.Module, device: torch.device, steps: int) -> dict:
    """Median seconds of one AdamW update of every parameter of ``model`` with its default
    multi-tensor (foreach) implementation and the fused one (what ``fit`` uses on CUDA)."""
    params = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    out = {}
    for name, fused in (("foreach", None), ("fused", True)):
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=fused)
        times = []
        for _ in range(steps + 1):
            sync(device)
            t0 = time.perf_counter()
            opt.step()
            sync(device)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times[1:])
    return out


def step_flops(model: torch.nn.Module, size: int, device: torch.device, amp: bool,
               batch: int) -> float:
    """FLOPs of one training step's forward and backward at ``batch`` (counted at a batch of
    2 and scaled: every matrix product of a ViT grows linearly with the batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from geopeft.models.runtime import autocast

    x = torch.randn((2, 3, size, size), device=device)
    with FlopCounterMode(display=False) as counter:
        with autocast(device, amp):
            out = model(x)
        out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2 * batch


def run(arch: str, size: int, batch: int, steps: int, warmup: int, repeats: int,
        device: torch.device, threads: int, classes: int = 10,
        variants: tuple[str, ...] | None = None) -> dict:
    """Images/s of each variant (medians over ``repeats`` interleaved rounds) and the ratios."""
    from geopeft.data.dataset import Split
    from geopeft.models.runtime import seed_everything

    seed_everything(0, threads)
    base = build(arch, size, classes, device)
    initial = copy.deepcopy(base.state_dict())
    n = batch * steps
    gen = np.random.default_rng(0)
    data = Split(gen.standard_normal((n, 3, size, size), dtype=np.float32),
                 gen.integers(0, classes, n))
    if variants is None:
        variants = VARIANTS + (CUDA_VARIANTS if device.type == "cuda" else ())
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(repeats):
        for v in variants:
            if v == "fit_compile" and i:
                continue
            model = build(arch, size, classes, device)
            model.load_state_dict(initial)
            if v == "timm":
                rates[v].append(timm_loop(model, batch, size, classes, steps, warmup, device,
                                          True))
            else:  # one untimed epoch of `steps` steps, then the timed ones
                rates[v].append(fit_loop(model, data, batch, steps, 2, device, threads, v))
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    med = {v: statistics.median(r) for v, r in rates.items()}
    out = {"arch": arch, "size": size, "batch": batch, "steps": steps, "repeats": repeats,
           "device": str(device), "threads": torch.get_num_threads(),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
           "precision": "bf16 autocast" if device.type == "cuda" else "float32",
           "images_per_s": {v: round(r, 2) for v, r in med.items()},
           "all_images_per_s": rates,
           "vs_timm": {v: round(r / med["timm"], 3) for v, r in med.items()} if "timm" in med
           else {},
           "adamw_step_s": optimizer_step_s(base, device, 5)}
    flops = step_flops(base, size, device, True, batch)
    out["gflop_per_step"] = round(flops / 1e9, 1)
    peak = peak_flops(out["device_name"]) if device.type == "cuda" else None
    out["peak_tflops"] = peak / 1e12 if peak else None
    for v in variants:
        achieved = flops * med[v] / batch
        out.setdefault("tflops", {})[v] = round(achieved / 1e12, 3)
        out.setdefault("mfu", {})[v] = round(achieved / peak, 3) if peak else None
    return out


def report(out: dict) -> str:
    """A markdown table of the results."""
    lines = [f"{out['arch']} at {out['size']} px, batch {out['batch']}, {out['device_name']} "
             f"({out['device']}, {out['threads']} threads), {out['precision']}; median of "
             f"{out['repeats']} interleaved rounds of {out['steps']} steady-state steps",
             "| loop | images/s | vs timm | TFLOP/s | MFU |", "|---|---|---|---|---|"]
    for v in out["images_per_s"]:
        ratio = out["vs_timm"].get(v, float("nan"))
        mfu = out["mfu"][v]
        lines.append(f"| {v} | {out['images_per_s'][v]:.1f} | {ratio:.2f} | "
                     f"{out['tflops'][v]:.2f} | {f'{mfu:.1%}' if mfu is not None else '-'} |")
    opt = out["adamw_step_s"]
    lines.append(f"\nAdamW update of all {out['arch']} parameters: foreach "
                 f"{1000 * opt['foreach']:.1f} ms, fused {1000 * opt['fused']:.1f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--arch", help="timm model (CPU: vit_tiny_patch16_224, CUDA: "
                                   "vit_base_patch16_224)")
    ap.add_argument("--size", type=int, help="image size (CPU 64, CUDA 224)")
    ap.add_argument("--batch", type=int, help="batch size (CPU 32, CUDA 128)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round and variant")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps of timm's loop")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS + CUDA_VARIANTS,
                    help=f"default {' '.join(VARIANTS)}, on CUDA also {' '.join(CUDA_VARIANTS)}")
    ap.add_argument("--smoke", action="store_true", help="a tiny ViT at 32 px, 2 steps, 1 round")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    cuda = a.device == "cuda"
    a.arch = a.arch or ("vit_base_patch16_224" if cuda else "vit_tiny_patch16_224")
    a.size = a.size or (224 if cuda else 64)
    a.batch = a.batch or (128 if cuda else 32)
    if a.smoke:
        a.arch, a.size, a.batch, a.steps, a.warmup, a.repeats = (
            "vit_tiny_patch16_224", 32, 4, 2, 1, 1)
    out = run(a.arch, a.size, a.batch, a.steps, a.warmup, a.repeats, torch.device(a.device),
              a.threads, variants=tuple(a.variants) if a.variants else None)
    print(report(out))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
