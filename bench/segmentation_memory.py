"""Benchmark: peak memory of a time-series segmentation training step vs encoder chunking.

The UPerNet + L-TAE model runs its encoder on all B x T frames of a batch. Without chunking, a
trained encoder keeps the activations of every frame for the backward pass, so memory grows with
the sequence length; with ``encoder_chunk`` frames at a time and activation checkpointing, only
one chunk's activations live at once. Measured side by side in one run, each configuration in a
fresh process (peak RSS on the CPU; CUDA max allocated and bf16 autocast on a GPU): end-to-end
training steps of a ViT-S/16-sized encoder (the SSL4EO-S12 architecture, random weights) at
64 px, batch 2, for several sequence lengths, chunk = all frames vs chunk = 8. Reports the
ratio chunked / unchunked.

    uv run python bench/segmentation_memory.py [--lengths 6 15 35] [--size 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def step(length: int, chunk: int, size: int, device: str) -> dict[str, float]:
    import resource
    import time

    import torch

    from geopeft.data.dataset import StoreInfo
    from geopeft.models.runtime import autocast
    from geopeft.models.segmentation import build_segmenter
    from geopeft.strategies import apply_strategy

    torch.manual_seed(0)
    bands = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    info = StoreInfo("bench", "pastis", [str(i) for i in range(20)], bands, 1e-4, [1000.0] * 10,
                     [500.0] * 10, "bench", (size, size), 19)
    model, _ = build_segmenter({"name": "ssl4eo_s12_vits16_dino", "weights": "none",
                                "kwargs": {"img_size": size}}, info, 19,
                               {"encoder_chunk": chunk, "channels": 128})
    model = apply_strategy(model, "e2e").to(device).train()
    x = torch.randint(0, 4000, (2, length, 10, size, size), dtype=torch.int16, device=device)
    days = torch.linspace(0, 360, length, device=device).expand(2, length).contiguous()
    y = torch.randint(0, 19, (2, size, size), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(2):
        with autocast(torch.device(device), True):  # bf16 on CUDA, as training runs
            loss = torch.nn.functional.cross_entropy(model(x, days), y)
        loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": peak, "step_s": (time.perf_counter() - t0) / 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[6, 15, 35])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(step(a.child[0], a.child[1], a.size, a.device)))
        return
    print(f"{'T':>3} {'frames':>6} {'unchunked MiB':>14} {'chunk=' + str(a.chunk) + ' MiB':>13} "
          f"{'ratio':>6} {'time ratio':>10}")
    results = []
    for t in a.lengths:
        res = {}
        for chunk in (2 * t, a.chunk):  # all frames of the batch at once, then chunks
            out = subprocess.run([sys.executable, __file__, "--child", str(t), str(chunk),
                                  "--size", str(a.size), "--device", a.device],
                                 capture_output=True, text=True, check=True)
            res[chunk] = json.loads(out.stdout.strip().splitlines()[-1])
        full, part = res[2 * t], res[a.chunk]
        print(f"{t:>3} {2 * t:>6} {full['peak_mb']:>14.0f} {part['peak_mb']:>13.0f} "
              f"{part['peak_mb'] / full['peak_mb']:>6.2f} {part['step_s'] / full['step_s']:>10.2f}")
        results.append({"length": t, "frames": 2 * t, "chunk": a.chunk, "unchunked": full,
                        "chunked": part, "memory_ratio": part["peak_mb"] / full["peak_mb"],
                        "time_ratio": part["step_s"] / full["step_s"]})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"size": a.size, "device": a.device, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
