"""One training loop for all strategies.

AdamW over the trainable parameters, linear warmup then cosine decay (per step), bf16 autocast
on CUDA, seeded python/numpy/torch and deterministic algorithms on CPU, random flips and
90-degree rotations as augmentation, a progress bar, and the cost figures each run reports:
trainable/total parameters, wall time, images/s and peak memory (CUDA max allocated, else the
process's peak RSS).
"""

from __future__ import annotations

import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geopeft.data.dataset import Split

if TYPE_CHECKING:
    from geopeft.train.checkpoint import Checkpointer


@dataclass
class TrainArgs:
    """Settings of one training run."""

    epochs: int = 5
    """Passes over the training (sub)set."""
    batch_size: int = 64
    """Samples per optimisation step."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay."""
    warmup_epochs: float = 1.0
    """Linear warmup length in epochs, then cosine decay to zero."""
    augment: bool = True
    """Random horizontal/vertical flips and 90-degree rotations."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    eval_batch_size: int = 256
    """Batch size for validation and prediction."""
    encoder_lr_factor: float = 1.0
    """Encoder learning rate = factor x ``lr`` (the head keeps ``lr``); the ``e2e`` strategy."""
    seed: int = 0
    """Seed of python, numpy and torch (initialisation, data order, augmentation, dropout)."""
    threads: int = 1
    """CPU threads for torch."""
    progress: bool = True
    """Show a progress bar on stderr."""
    checkpoint_every: int = 0
    """Save the full training state every this many steps (0: by time, at epoch ends, on SIGTERM)."""
    checkpoint_minutes: float = 10.0
    """Save the full training state when this many minutes passed since the last save."""
    loss: str = "ce"
    """``ce`` (cross-entropy; BCE for multi-label) or ``weighted_ce`` (classes weighted by inverse
    frequency in the training (sub)set, so rare classes count as much as common ones)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], **extra: Any) -> TrainArgs:
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in {**d, **extra}.items() if k in keys})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int, threads: int = 1) -> None:
    """Seed python, numpy and torch; make CPU kernels deterministic."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # torch.use_deterministic_algorithms() also imports torch._inductor (~5 s per job on a small
    # CPU); the C-level switch it wraps sets the same flag without that import.
    if hasattr(torch._C, "_set_deterministic_algorithms"):
        torch._C._set_deterministic_algorithms(True, warn_only=True)
    else:  # pragma: no cover - future torch
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
    return torch.device(name)


def augment(x: torch.Tensor, gen: torch.Generator, y: torch.Tensor | None = None) -> Any:
    """Apply one of the 8 dihedral transforms (flips x rotations) to each sample (the last two
    axes are y, x: images and time series alike); with label maps ``y`` (B, H, W), the same
    transform to each map, and ``(x, y)`` is returned."""
    t = torch.randint(0, 8, (x.shape[0],), generator=gen)
    out = x.clone()
    out_y = y.clone() if y is not None and y.ndim == 3 else None
    for k in range(8):
        idx = (t == k).nonzero(as_tuple=True)[0]
        if len(idx) == 0:
            continue
        for src, dst in ((x, out), (y, out_y)):
            if dst is None or src is None:
                continue
            r = torch.rot90(src[idx], k % 4, dims=(-2, -1))
            dst[idx] = torch.flip(r, dims=(-1,)) if k >= 4 else r
    if y is None:
        return out
    return out, (out_y if out_y is not None else y)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then cosine decay to 0."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))

    return f


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated, else the process's peak resident set size, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _autocast(device: torch.device, amp: bool) -> Any:
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def is_multilabel(split: Split) -> bool:
    """Multi-hot (N, C) targets: BCE loss and mAP instead of cross-entropy and accuracy."""
    return split.y.ndim == 2 and split.y.dtype.kind == "f"


def is_segmentation(split: Split) -> bool:
    """Label maps (N, H, W): pixel-wise cross-entropy ignoring void, mIoU."""
    return split.y.ndim == 3


def loss_fn(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
            ignore_index: int | None = None) -> torch.Tensor:
    """BCE for multi-hot targets, else (class-weighted) cross-entropy; ``ignore_index`` labels
    (void) contribute nothing. A batch with only ignored pixels has loss 0."""
    if y.ndim == 2 and y.dtype.is_floating_point:
        return F.binary_cross_entropy_with_logits(logits.float(), y.float())
    if ignore_index is None:
        return F.cross_entropy(logits.float(), y, weight=weight)
    # the mean over non-ignored targets, computed without a host sync per step
    total = F.cross_entropy(logits.float(), y, weight=weight, ignore_index=ignore_index,
                            reduction="sum")
    valid = (y != ignore_index).float()
    if weight is not None:
        valid = valid * weight[y.clamp(0, len(weight) - 1)]
    denom = valid.sum()
    return torch.where(denom > 0, total / denom.clamp_min(1e-12), total * 0.0)


def class_weights(y: np.ndarray, n_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Inverse-frequency class weights of labels (or label maps), mean 1 over present classes;
    absent classes (and ``ignore_index``) get 0."""
    v = np.asarray(y).ravel()
    if ignore_index is not None:
        v = v[v != ignore_index]
    counts = np.bincount(v, minlength=n_classes)[:n_classes].astype(np.float64)
    w = np.divide(1.0, counts, out=np.zeros(n_classes), where=counts > 0)
    present = counts > 0
    return (w / w[present].mean()).astype(np.float32) if present.any() else w.astype(np.float32)


def _forward(model: nn.Module, xb: torch.Tensor, db: torch.Tensor | None) -> torch.Tensor:
    return model(xb) if db is None else model(xb, db)


def val_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Validation loss and the primary score (``val_score``): accuracy, or macro mAP."""
    loss = float(loss_fn(torch.from_numpy(logits), torch.from_numpy(y)))
    if y.ndim == 2:
        from geopeft.evaluate.multilabel import multilabel_metrics, sigmoid

        m = multilabel_metrics(y, sigmoid(logits))
        return {"val_loss": loss, "val_map_macro": m["map_macro"], "val_map_micro": m["map_micro"],
                "val_score": m["map_macro"]}
    acc = float((logits.argmax(1) == y).mean())
    return {"val_loss": loss, "val_acc": acc, "val_score": acc}


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256,
            device: torch.device | None = None, amp: bool = True,
            dates: np.ndarray | None = None) -> np.ndarray:
    """Logits for raw inputs ``x`` (N, C, H, W) (time series: (N, T, C, H, W) with ``dates``),
    in eval mode."""
    return np.concatenate([out for out, _ in predict_batches(model, x, batch_size, device, amp,
                                                             dates)])


@torch.no_grad()
def predict_batches(model: nn.Module, x: np.ndarray, batch_size: int = 256,
                    device: torch.device | None = None, amp: bool = True,
                    dates: np.ndarray | None = None) -> Any:
    """Yield (logits, slice) batch by batch, in eval mode (whole samples: no crops)."""
    device = device or next(model.parameters()).device
    model.eval()
    for i in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(device)
        db = None if dates is None else torch.from_numpy(dates[i : i + batch_size]).to(device)
        with _autocast(device, amp):
            out = _forward(model, xb, db)
        yield out.float().cpu().numpy(), slice(i, i + len(xb))


def segmentation_scores(model: nn.Module, split: Split, batch_size: int, device: torch.device,
                        amp: bool = True, weight: torch.Tensor | None = None,
                        ) -> tuple[np.ndarray, float]:
    """Pixel confusion matrix (void excluded) and mean loss of a segmentation split, streamed
    batch by batch (whole patches)."""
    from geopeft.evaluate.segmentation import pixel_confusion

    cm: np.ndarray | None = None
    loss_sum, n = 0.0, 0
    for logits, sl in predict_batches(model, split.x, batch_size, device, amp, split.dates):
        y = split.y[sl]
        k = logits.shape[1]
        c = pixel_confusion(y, logits.argmax(1), k, split.ignore_index)
        cm = c if cm is None else cm + c
        valid = int((y != split.ignore_index).sum()) if split.ignore_index is not None else y.size
        if valid:
            w = None if weight is None else weight.cpu()
            loss_sum += float(loss_fn(torch.from_numpy(logits), torch.from_numpy(y), w,
                                      split.ignore_index)) * valid
            n += valid
    assert cm is not None
    return cm, loss_sum / max(n, 1)


def segmentation_val_metrics(cm: np.ndarray, loss: float) -> dict[str, float]:
    from geopeft.evaluate.segmentation import segmentation_metrics

    m = segmentation_metrics(cm)
    return {"val_loss": loss, "val_miou": m["miou"], "val_oa": m["overall_accuracy"],
            "val_score": m["miou"]}


def dist_info() -> tuple[int, int]:
    """(rank, world size) of a torch.distributed job (torchrun), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sync_gradients(params: list[torch.Tensor], world: int) -> None:
    """Average the gradients of ``params`` over all ranks (one flat all-reduce)."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over all ranks (float64; on the device for nccl)."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.to(device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank (itself when alone)."""
    return flag if world == 1 else sum_over_ranks([float(flag)], device)[0] > 0


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the augmentation and dropout of ``rank`` at optimizer step ``step`` under DDP: the
    per-rank random streams are a function of the step, so a resumed run (whose state rank 0
    saved) draws exactly what the interrupted one would have drawn on every rank."""
    import hashlib

    digest = hashlib.blake2b(f"{seed}:{rank}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def trained_tensors(model: nn.Module, everything: bool = False) -> dict[str, torch.Tensor]:
    """What training changed: parameters with ``requires_grad`` (all with ``everything``) and
    the buffers of the modules holding them (batch-norm running statistics, which training
    updates and inference uses), by name."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad or everything}
    owners = {n.rpartition(".")[0] for n in params}
    buffers = {n: b for n, b in model.named_buffers() if n.rpartition(".")[0] in owners}
    return {**params, **buffers}


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().cpu().clone() for n, t in trained_tensors(model).items()}


def _nonfinite(name: str, value: float, epoch: int, step: int,
               checkpointer: Checkpointer | None) -> str:
    kept = (f"the last good state is kept in {checkpointer.directory}" if checkpointer is not None
            else "no state was saved")
    return (f"{name}: training loss is {value} at epoch {epoch + 1}, step {step + 1}; stopped "
            f"before the update ({kept}). Lower the learning rate, check the inputs for "
            f"NaN/inf, or turn off amp")


def fit(model: nn.Module, train: Split, val: Split | None, args: TrainArgs,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        checkpointer: Checkpointer | None = None, resume: dict[str, Any] | None = None,
        extra_state: dict[str, Any] | None = None, name: str = "run") -> dict[str, Any]:
    """Train ``model`` in place; returns history and cost figures.

    A loss that is NaN or infinite stops training before the optimiser step with
    :class:`NonFiniteLoss` naming the run (``name``), epoch and step; the weights and the last
    saved state are those of the last good step.

    ``on_epoch(epoch, metrics)`` is called after every epoch with train loss/accuracy, learning
    rate and validation loss/accuracy (when ``val`` is given).

    With a ``checkpointer`` (on every rank under DDP; rank 0 writes), the full training state is
    saved periodically, at every epoch end and on SIGTERM (then
    :class:`~geopeft.train.checkpoint.Preempted` is raised); ``resume`` (a state from
    :meth:`Checkpointer.latest`) continues exactly where that state left off, so an interrupted
    and resumed CPU run ends bitwise identical to an uninterrupted one.
    ``extra_state`` (e.g. the MLflow run id) is stored in every state.
    """
    from tqdm.auto import tqdm

    from geopeft.train.checkpoint import (
        NonFiniteLoss,
        Preempted,
        install_sigterm_handler,
        rng_state,
        set_rng_state,
        stop_requested,
    )

    seed_everything(args.seed, args.threads)
    rank, world = dist_info()
    device = resolve_device(args.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("no trainable parameters: check the strategy")
    from geopeft.models.strategies import param_groups

    opt = torch.optim.AdamW(param_groups(model, args.lr, args.encoder_lr_factor),
                            lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(total, int(round(args.warmup_epochs * steps_per_epoch))))
    xt = torch.from_numpy(train.x)
    yt = torch.from_numpy(train.y)
    dt = torch.from_numpy(train.dates) if train.dates is not None else None
    seg = is_segmentation(train)
    ignore = train.ignore_index
    weighted = args.loss == "weighted_ce" and not is_multilabel(train)
    weight: torch.Tensor | None = None  # class weights, sized by the model's first output
    gen = torch.Generator().manual_seed(args.seed)  # data order: the same on every rank
    # augmentation and dropout: one process draws both from the saved generator and RNG state;
    # under DDP each rank reseeds them every step from (seed, rank, step) (see step_seed)
    aug_gen = gen if world == 1 else torch.Generator()
    if world > 1:
        trainable_params = [p for p in model.parameters() if p.requires_grad]
    history: list[dict[str, float]] = []
    # position: epoch, first batch start of that epoch, the epoch's order and running sums
    epoch0, start0, order0 = 0, 0, None
    step, seen, train_time, loss_sum, correct = 0, 0, 0.0, 0.0, 0
    if resume is not None:
        missing, unexpected = model.load_state_dict(
            {k: v.to(device) for k, v in resume["trainable"].items()}, strict=False)
        own = {n for n, p in model.named_parameters() if p.requires_grad}
        if unexpected or own - set(resume["trainable"]):
            raise ValueError(f"checkpoint does not fit the model: unexpected {unexpected[:3]}, "
                             f"missing {sorted(own - set(resume['trainable']))[:3]}")
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        gen.set_state(resume["data_generator"])
        set_rng_state(resume["rng"])
        epoch0, start0, order0 = resume["epoch"], resume["start"], resume["order"]
        step, seen, train_time = resume["step"], resume["seen"], resume["train_time_s"]
        loss_sum, correct = resume["loss_sum"], resume["correct"]
        history = list(resume["history"])
    if checkpointer is not None:  # every rank takes part in a clean stop; rank 0 saves
        install_sigterm_handler()
    saver = checkpointer if rank == 0 else None

    def state(epoch: int, start: int, order: torch.Tensor | None) -> dict[str, Any]:
        return {"trainable": _trainable(model), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "data_generator": gen.get_state(),
                "rng": rng_state(), "epoch": epoch, "start": start, "order": order, "step": step,
                "seen": seen, "train_time_s": train_time, "loss_sum": loss_sum, "correct": correct,
                "history": history, **(extra_state or {})}

    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not args.progress,
               mininterval=0.5 if sys.stderr.isatty() else 10, file=sys.stderr)
    t0 = time.perf_counter()
    for epoch in range(epoch0, args.epochs):
        model.train()
        te = time.perf_counter()
        if epoch == epoch0 and order0 is not None:
            order, start = order0, start0
        else:
            order, start = torch.randperm(len(train), generator=gen), 0
            loss_sum, correct = 0.0, 0
        for i in range(start, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            if world > 1:  # this rank's shard of the global batch, its streams for this step
                idx = idx.tensor_split(world)[rank]
                rank_seed = step_seed(args.seed, rank, step)
                aug_gen.manual_seed(rank_seed)
                torch.manual_seed(rank_seed)
            xb, yb = xt[idx], yt[idx]
            db = dt[idx].to(device) if dt is not None else None
            if args.augment and seg:
                xb, yb = augment(xb, aug_gen, yb)
            elif args.augment:
                xb = augment(xb, aug_gen)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with _autocast(device, args.amp):
                logits = _forward(model, xb, db)
                if weighted and weight is None:
                    weight = torch.from_numpy(class_weights(train.y, logits.shape[1], ignore)
                                              ).to(device)
                loss = loss_fn(logits, yb, weight, ignore)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            stop = stop_requested()
            n_right = int((logits.argmax(1) == yb).sum()) if yb.ndim == 1 else 0
            if world == 1:
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise NonFiniteLoss(_nonfinite(name, loss_value, epoch, step, checkpointer))
                loss_sum += loss_value * len(idx)
                correct += n_right
                seen += len(idx)
            else:
                sync_gradients(trainable_params, world)
                # running sums over all ranks, identical on every rank (so rank 0's saved state
                # holds them), and every rank stops after the same step once any got SIGTERM
                d_loss, d_right, d_seen, n_stop = sum_over_ranks(
                    [float(loss.detach()) * len(idx), n_right, len(idx), float(stop)], device)
                if not math.isfinite(d_loss):  # the same sum on every rank: all stop together
                    raise NonFiniteLoss(_nonfinite(name, d_loss, epoch, step, checkpointer))
                loss_sum += d_loss
                correct += int(d_right)
                seen += int(d_seen)
                stop = n_stop > 0
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            last = i + args.batch_size >= len(order)
            if checkpointer is not None and not last and (stop or checkpointer.due(step)):
                train_time += time.perf_counter() - te
                te = time.perf_counter()
                if saver is not None:
                    saver.save(state(epoch, i + args.batch_size, order), step)
                if stop:
                    bar.close()
                    raise Preempted(f"stopped by SIGTERM after step {step}; state saved in "
                                    f"{checkpointer.directory}, rerun to resume")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time += time.perf_counter() - te
        m = {"train_loss": loss_sum / len(train), "lr": float(sched.get_last_lr()[0])}
        if train.y.ndim == 1:
            m["train_acc"] = correct / len(train)
        if val is not None and is_segmentation(val):
            m.update(segmentation_val_metrics(*segmentation_scores(
                model, val, args.eval_batch_size, device, args.amp)))
        elif val is not None:
            logits = predict(model, val.x, args.eval_batch_size, device, args.amp, val.dates)
            m.update(val_metrics(logits, val.y))
        history.append(m)
        if saver is not None:
            saver.save(state(epoch + 1, 0, None), step)
        bar.set_postfix({k: round(v, 4) for k, v in m.items() if k != "lr"})
        if on_epoch:
            on_epoch(epoch, m)
        if (checkpointer is not None and any_rank(stop_requested(), world, device)
                and epoch + 1 < args.epochs):
            bar.close()
            raise Preempted(f"stopped by SIGTERM after epoch {epoch + 1}; state saved in "
                            f"{checkpointer.directory}, rerun to resume")
    bar.close()
    wall = time.perf_counter() - t0
    return {
        "history": history,
        "wall_time_s": wall,
        "train_time_s": train_time,
        "images_per_s": seen / max(train_time, 1e-9),
        "peak_memory_mb": peak_memory_mb(device),
        "device": str(device),
        "steps": total,
    }
