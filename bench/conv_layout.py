"""Benchmark: a convolutional model's training step in the default (NCHW) memory format vs
channels-last (``train.channels_last``), side by side.

U-TAE as the time-series study trains it (PASTIS: 10 bands, 128 px, 15 dates, batch 4; its
reference widths), AdamW (fused on CUDA), cross-entropy over the class maps, bf16 autocast on
CUDA. The two layouts run interleaved, a step of each in turn; after ``--warmup`` steps each,
the medians of ``--steps`` steps are reported with the ratio channels-last / default.
Channels-last pays off with bf16 tensor-core convolutions on a GPU; on a CPU it is mostly
neutral or slower, which is why it is an option, off by default.

    uv run python bench/conv_layout.py [--device cuda] [--size 128] [--dates 15] [--batch 4]
    uv run python bench/conv_layout.py --smoke      # 32 px, 3 dates: checks it runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def build(layout: str, bands: int, device: torch.device) -> tuple[torch.nn.Module, object]:
    from geopeft.models.utae import UTAE

    torch.manual_seed(0)
    model = UTAE(bands, 20, [1000.0] * bands, [500.0] * bands, 1e-4).to(device).train()
    if layout == "channels_last":
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3,
                            fused=True if device.type == "cuda" else None)
    return model, opt


def run(size: int, dates: int, batch: int, steps: int, warmup: int,
        device: torch.device) -> dict:
    from geopeft.models.runtime import autocast

    bands = 10
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(1, 4000, (batch, dates, bands, size, size), generator=gen).float()
    days = torch.linspace(0, 360, dates).expand(batch, dates).contiguous()
    y = torch.randint(0, 19, (batch, size, size), generator=gen)
    x, days, y = x.to(device), days.to(device), y.to(device)
    layouts = {k: build(k, bands, device) for k in ("default", "channels_last")}
    times: dict[str, list[float]] = {k: [] for k in layouts}
    for i in range(warmup + steps):
        for name, (model, opt) in layouts.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with autocast(device, True):
                loss = torch.nn.functional.cross_entropy(model(x, days), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": "U-TAE", "size": size, "dates": dates, "batch": batch, "steps": steps,
            "device": str(device), "threads": torch.get_num_threads(), "step_s": med,
            "channels_last_vs_default": round(med["channels_last"] / med["default"], 3)}


def report(out: dict) -> str:
    s = out["step_s"]
    return (f"U-TAE training step, {out['size']} px, {out['dates']} dates, batch {out['batch']}, "
            f"{out['device']}: default {s['default']:.3f} s, channels-last "
            f"{s['channels_last']:.3f} s (ratio {out['channels_last_vs_default']:.2f}; median of "
            f"{out['steps']} interleaved steps)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--dates", type=int, default=15)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="32 px, 3 dates, batch 2, 2 steps")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    if a.smoke:
        a.size, a.dates, a.batch, a.steps, a.warmup = 32, 3, 2, 2, 1
    out = run(a.size, a.dates, a.batch, a.steps, a.warmup, torch.device(a.device))
    print(report(out))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
