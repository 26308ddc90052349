"""One training loop for all strategies.

AdamW over the trainable parameters (fused on CUDA), linear warmup then cosine decay (per
step), bf16 autocast on CUDA, seeded python/numpy/torch and deterministic algorithms on CPU,
random flips and 90-degree rotations as augmentation (on the device), a progress bar, and the
cost figures each run reports: trainable/total parameters, wall time, images/s and peak memory
(CUDA max allocated, else the training tensors of one step).

On CUDA the batches are gathered into pinned memory and copied asynchronously, the next batch's
copy issued while the current step runs (:class:`~geopeft.train.feed._Feeder`, with the
augmentation in :mod:`geopeft.train.feed`), so the GPU does not wait for the data;
``train.compile`` runs the training forward through ``torch.compile`` and
``train.channels_last`` puts convolutions and image batches in channels-last format.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from geopeft.data.dataset import Split
from geopeft.data.stream import chunk_order
from geopeft.errors import GeopeftError
from geopeft.models.inference import forward
from geopeft.models.runtime import (
    MEMORY_KIND,
    SavedTensors,
    autocast,
    peak_memory_mb,
    resolve_device,
    seed_everything,
    training_tensors_mb,
)
from geopeft.models.saved import trained_tensors
from geopeft.process import seconds_since_start
from geopeft.spec import TrainArgs
from geopeft.strategies import param_groups
from geopeft.train.distributed import any_rank, dist_info, step_seed, sum_over_ranks, sync_gradients
from geopeft.train.feed import _Feeder, _Tensors, augment, draw_views
from geopeft.train.losses import class_weights, loss_fn
from geopeft.train.resume import (
    Checkpointer,
    Preempted,
    install_sigterm_handler,
    rng_state,
    set_rng_state,
    stop_requested,
)
from geopeft.train.validation import validate


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then cosine decay to 0.

    Args:
        total_steps: optimiser steps of the run.
        warmup_steps: steps of linear warmup.
    """

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))

    return f


class DivergedLoss(GeopeftError, RuntimeError):
    """Training diverged: the loss became NaN or infinite (:class:`NonFiniteLoss`), or grew past
    ``train.max_loss_growth`` times the run's first loss; the message names run, epoch, step and
    loss and says whether a good state was kept, which is left in place. Training the same
    settings again fails the same way."""

    def __init__(self, message: str, step: int, loss: float):
        super().__init__(message)
        self.step = step
        """The step (1-based) whose loss stopped training."""
        self.loss = loss
        """That loss."""


class NonFiniteLoss(DivergedLoss):
    """The training loss became NaN or infinite."""


@dataclass
class TrainState:
    """Where a run stands: with the model, optimiser, scheduler and random generators, what a
    resumed run continues from (saved by :class:`~geopeft.train.resume.Checkpointer`)."""

    epoch: int = 0
    """The epoch in progress (0-based); after an epoch's end, the next one."""
    start: int = 0
    """Position in the epoch's sample order of the next batch (0 at an epoch's end)."""
    order: torch.Tensor | None = None
    """The sample order of the epoch in progress (None at an epoch's end: the next is drawn)."""
    step: int = 0
    """Optimiser steps taken."""
    seen: int = 0
    """Training samples seen (all ranks)."""
    train_time_s: float = 0.0
    """Time spent in training steps (not validation), over every attempt."""
    wall_time_s: float = 0.0
    """Wall time of :func:`fit` over every attempt (a killed attempt counts up to its last
    record in the state folder, :meth:`~geopeft.train.resume.Checkpointer.record_clock`)."""
    attempts: int = 1
    """How many attempts trained this run: 1, plus one per earlier attempt (resumed, or killed
    before it saved a state)."""
    first_loss: float | None = None
    """The loss of the run's first step (what ``train.max_loss_growth`` compares with)."""
    tensors_mb: dict[str, float] = field(default_factory=dict)
    """The training tensors of the run's first step, in MiB
    (:func:`~geopeft.models.runtime.training_tensors_mb`)."""
    loss_sum: float = 0.0
    """Sum of the sample losses of the epoch in progress."""
    correct: int = 0
    """Correctly classified training samples of the epoch in progress."""
    history: list[dict[str, float]] = field(default_factory=list)
    """The metrics of each finished epoch."""

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> TrainState:
        """The position a saved state holds."""
        defaults = cls()  # states saved before wall_time_s, attempts, tensors_mb, first_loss
        return cls(**{k: saved.get(k, getattr(defaults, k)) for k in cls.__dataclass_fields__
                      if k not in ("history", "tensors_mb")}, history=list(saved["history"]),
                   tensors_mb=dict(saved.get("tensors_mb") or {}))


@dataclass
class _Run:
    """The fixed parts of one :func:`fit`: the model and what drives it."""

    model: nn.Module
    args: TrainArgs
    name: str
    device: torch.device
    rank: int
    world: int
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    gen: torch.Generator
    """Data order: the same on every rank."""
    aug_gen: torch.Generator
    """Augmentation: the data generator alone; under DDP reseeded every step per rank."""
    total_steps: int
    trainable: list[torch.Tensor]
    """The parameters that train (their gradients are averaged over ranks under DDP)."""
    forward_model: nn.Module
    """What the training steps call: the model, or its ``torch.compile`` (``train.compile``)."""
    checkpointer: Checkpointer | None
    extra_state: dict[str, Any]
    weight: torch.Tensor | None = None
    """Class weights of ``weighted_ce``, sized by the model's first output."""
    clock: tuple[float, float] = (0.0, 0.0)
    """This attempt's start (``perf_counter``) and the wall time of the earlier attempts."""

    def wall_time(self) -> float:
        """Wall time of the run so far, earlier attempts included."""
        return self.clock[1] + time.perf_counter() - self.clock[0]

    def saved(self, state: TrainState) -> dict[str, Any]:
        """The full state to save: where the run stands, model, optimiser and generators."""
        trainable = {n: t.detach().cpu().clone() for n, t in trained_tensors(self.model).items()}
        return {"trainable": trainable, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "data_generator": self.gen.get_state(),
                "rng": rng_state(), "epoch": state.epoch, "start": state.start,
                "order": state.order, "step": state.step, "seen": state.seen,
                "train_time_s": state.train_time_s, "wall_time_s": self.wall_time(),
                "attempts": state.attempts, "tensors_mb": state.tensors_mb,
                "first_loss": state.first_loss, "loss_sum": state.loss_sum,
                "correct": state.correct, "history": state.history, **self.extra_state}

    def save(self, state: TrainState) -> None:
        """Save the state (rank 0 writes; other ranks only take part in the stop)."""
        if self.checkpointer is not None and self.rank == 0:
            self.checkpointer.save(self.saved(state), state.step)

    def record_clock(self, state: TrainState) -> None:
        """Record the wall time so far in the state folder when due (rank 0)."""
        if self.checkpointer is not None and self.rank == 0:
            self.checkpointer.record_clock(self.wall_time(), state.attempts)

    def check_loss(self, value: float, state: TrainState, epoch: int) -> None:
        """Stop before the update (:class:`DivergedLoss`, naming run, epoch, step, loss and the
        kept state) on a loss that is NaN or infinite, or past ``max_loss_growth`` times the
        run's first (taken here); ``value`` is the same on every rank."""
        growth, first, ckpt = self.args.max_loss_growth, state.first_loss, self.checkpointer
        finite = math.isfinite(value)
        if finite and first is None:
            state.first_loss = value
        if finite and not (growth and first and value > growth * first):
            return
        last = ckpt.last_step() if ckpt is not None else None
        kept = ("no state is saved for this run" if ckpt is None else
                f"no state was saved yet in {ckpt.directory}: a rerun starts from the beginning"
                if last is None else f"the last good state is kept in {ckpt.directory}, of step {last}")
        what = (f"training loss is {value}" if not finite else
                f"training loss is {value:.6g}, {value / first:.3g} times the first step's "
                f"{first:.6g}, past train.max_loss_growth {growth:g}")
        raise (NonFiniteLoss if not finite else DivergedLoss)(
            f"{self.name}: {what} at epoch {epoch + 1}, step {state.step + 1}; stopped before the "
            f"update ({kept}). Lower the learning rate, check the inputs for NaN/inf, or turn off "
            "amp" + ("" if not finite else " (train.max_loss_growth: 0 turns this check off)"),
            state.step + 1, value)


def _start(model: nn.Module, train: Split, args: TrainArgs, name: str,
           checkpointer: Checkpointer | None, extra_state: dict[str, Any] | None) -> _Run:
    """Seed, place the model, build optimiser, schedule and generators."""
    seed_everything(args.seed, args.threads)
    rank, world = dist_info()
    device = resolve_device(args.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)  # 4-D (convolution) weights only
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("no trainable parameters: check the strategy")
    # fused: one kernel for the whole update on CUDA; on CPU the default (foreach) keeps the
    # bitwise-reproducible results of earlier versions
    opt = torch.optim.AdamW(param_groups(model, args.lr, args.encoder_lr_factor),
                            lr=args.lr, weight_decay=args.weight_decay,
                            fused=True if device.type == "cuda" else None)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(total, int(round(args.warmup_epochs * steps_per_epoch))))
    gen = torch.Generator().manual_seed(args.seed)
    return _Run(model, args, name, device, rank, world, opt, sched, gen,
                gen if world == 1 else torch.Generator(), total,
                [p for p in model.parameters() if p.requires_grad],
                torch.compile(model) if args.compile else model, checkpointer,
                extra_state or {})


def _restore(run: _Run, saved: dict[str, Any]) -> TrainState:
    """Load a saved state into model, optimiser, schedule and generators; where it stood."""
    model = run.model
    _, unexpected = model.load_state_dict(
        {k: v.to(run.device) for k, v in saved["trainable"].items()}, strict=False)
    own = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or own - set(saved["trainable"]):
        raise ValueError(f"checkpoint does not fit the model: unexpected {unexpected[:3]}, "
                         f"missing {sorted(own - set(saved['trainable']))[:3]}")
    run.opt.load_state_dict(saved["optimizer"])
    run.sched.load_state_dict(saved["scheduler"])
    run.gen.set_state(saved["data_generator"])
    set_rng_state(saved["rng"])
    return TrainState.restore(saved)


def _shard(run: _Run, idx: torch.Tensor) -> torch.Tensor:
    """This rank's part of the global batch ``idx`` (all of it without DDP)."""
    return idx.tensor_split(run.world)[run.rank] if run.world > 1 else idx


def _step(run: _Run, feeder: _Feeder, idx: torch.Tensor, state: TrainState, epoch: int,
          next_idx: torch.Tensor | None = None) -> bool:
    """One optimiser step on the samples ``idx`` (this rank's shard under DDP; ``next_idx``:
    the next step's, prefetched on CUDA); updates the running sums; returns whether a stop
    (SIGTERM) was requested on any rank."""
    args, device, world = run.args, run.device, run.world
    data = feeder.data
    idx = _shard(run, idx)
    if world > 1:  # this rank's streams for this step
        rank_seed = step_seed(args.seed, run.rank, state.step)
        run.aug_gen.manual_seed(rank_seed)
        torch.manual_seed(rank_seed)
    if data.views:  # features of the dihedral views: augmentation picks one, as it draws
        t = draw_views(len(idx), run.aug_gen) if args.augment else None
        xb, yb, db = feeder.batch(idx, t)
    else:
        xb, yb, db = feeder.batch(idx)
        if args.augment and data.segmentation:
            xb, yb = augment(xb, run.aug_gen, yb)
        elif args.augment:
            xb = augment(xb, run.aug_gen)
    measure = not state.tensors_mb  # the run's first step: what its tensors hold
    with autocast(device, args.amp), SavedTensors() if measure else nullcontext() as saved:
        logits = forward(run.forward_model, xb, db)
        if data.weighted and run.weight is None:
            run.weight = torch.from_numpy(
                class_weights(data.labels, logits.shape[1], data.ignore)).to(device)
        loss = loss_fn(logits, yb, run.weight, data.ignore)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    # the next batch's copy overlaps this step's kernels (the loss read below waits for them)
    feeder.prefetch(_shard(run, next_idx) if next_idx is not None else None)
    stop = stop_requested()
    n_right = int((logits.argmax(1) == yb).sum()) if yb.ndim == 1 else 0
    if world == 1:
        loss_value = float(loss.detach())
        run.check_loss(loss_value, state, epoch)
        state.loss_sum += loss_value * len(idx)
        state.correct += n_right
        state.seen += len(idx)
    else:
        sync_gradients(run.trainable, world)
        # running sums over all ranks, identical on every rank (so rank 0's saved state holds
        # them), and every rank stops after the same step once any got SIGTERM
        d_loss, d_right, d_seen, n_stop = sum_over_ranks(
            [float(loss.detach()) * len(idx), n_right, len(idx), float(stop)], device)
        run.check_loss(d_loss / d_seen, state, epoch)  # the same on every rank: all stop together
        state.loss_sum += d_loss
        state.correct += int(d_right)
        state.seen += int(d_seen)
        stop = n_stop > 0
    run.opt.step()
    run.sched.step()
    state.step += 1
    if measure:
        state.tensors_mb = training_tensors_mb(run.model, run.opt, saved)
    return stop


def _train_epoch(run: _Run, feeder: _Feeder, state: TrainState, epoch: int, resumed: bool,
                 bar: Any) -> None:
    """The training steps of one epoch (from where a resumed state stood); saves the state when
    due and on SIGTERM (then raises :class:`Preempted`)."""
    args, ckpt = run.args, run.checkpointer
    run.model.train()
    te = time.perf_counter()
    if resumed and state.order is not None:
        order, start = state.order, state.start
    else:
        x = feeder.data.x
        # streamed images: an order that reads chunk by chunk (geopeft.data.stream.chunk_order)
        order = (torch.randperm(len(x), generator=run.gen) if isinstance(x, torch.Tensor)
                 else chunk_order(x.chunk_of(), run.gen))
        start = 0
        state.loss_sum, state.correct = 0.0, 0
    state.epoch, state.order = epoch, order
    feeder.plan([_shard(run, order[i : i + args.batch_size])
                 for i in range(start, len(order), args.batch_size)])
    for i in range(start, len(order), args.batch_size):
        last = i + args.batch_size >= len(order)
        stop = _step(run, feeder, order[i : i + args.batch_size], state, epoch,
                     None if last else order[i + args.batch_size : i + 2 * args.batch_size])
        bar.update(1)
        run.record_clock(state)
        if ckpt is not None and not last and (stop or ckpt.due(state.step)):
            state.train_time_s += time.perf_counter() - te
            te = time.perf_counter()
            state.start = i + args.batch_size
            run.save(state)
            if stop:
                bar.close()
                raise Preempted(f"stopped by SIGTERM after step {state.step}; state saved in "
                                f"{ckpt.directory}, rerun to resume")
    feeder.close()
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    state.train_time_s += time.perf_counter() - te


def _epoch_metrics(run: _Run, state: TrainState, train: Split,
                   val: Split | None) -> dict[str, float]:
    """Train loss (and accuracy), learning rate, and the validation metrics of the epoch."""
    m = {"train_loss": state.loss_sum / len(train), "lr": float(run.sched.get_last_lr()[0])}
    if train.y.ndim == 1:
        m["train_acc"] = state.correct / len(train)
    if val is not None:
        m.update(validate(run.model, val, run.args.eval_batch_size, run.device, run.args.amp))
    return m


def fit(model: nn.Module, train: Split, val: Split | None, args: TrainArgs,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        checkpointer: Checkpointer | None = None, resume: dict[str, Any] | None = None,
        extra_state: dict[str, Any] | None = None, name: str = "run") -> dict[str, Any]:
    """Train ``model`` in place; returns history and cost figures.

    A loss that is NaN or infinite, or past ``args.max_loss_growth`` times the first step's,
    stops training before the optimiser step with :class:`DivergedLoss` naming the run, epoch,
    step and loss; the weights and the last saved state are those of the last good step.

    Args:
        model: the model, its strategy applied (some parameters trainable).
        train: the training (sub)set.
        val: the validation split (None: no validation metrics).
        args: the training settings.
        on_epoch: called after every epoch with (epoch, metrics): train loss/accuracy, learning
            rate and the validation metrics.
        checkpointer: with one (on every rank under DDP; rank 0 writes), the full training state
            is saved periodically, at every epoch end and on SIGTERM (then
            :class:`~geopeft.train.resume.Preempted` is raised).
        resume: a state from :meth:`Checkpointer.latest`: training continues exactly where it
            left off, so an interrupted and resumed CPU run ends bitwise identical to an
            uninterrupted one.
        extra_state: stored in every state (e.g. the MLflow run id).
        name: the run's name, for messages.
    """
    from tqdm.auto import tqdm

    run = _start(model, train, args, name, checkpointer, extra_state)
    feeder = _Feeder(_Tensors.of(train, args), run.device, args.channels_last)
    state = _restore(run, resume) if resume is not None else TrainState()
    if resume is not None:
        state.attempts += 1
    clock = checkpointer.clock() if checkpointer is not None else None
    if clock is not None:  # attempts killed after the state (or before any) count too
        state.wall_time_s = max(state.wall_time_s, clock["wall_time_s"])
        state.attempts = max(state.attempts, clock["attempts"] + 1)
    run.clock = (time.perf_counter(), state.wall_time_s)
    if checkpointer is not None:  # every rank takes part in a clean stop; rank 0 saves
        install_sigterm_handler()
    bar = tqdm(total=run.total_steps, initial=state.step, desc="train", unit="step",
               disable=not args.progress, mininterval=0.5 if sys.stderr.isatty() else 10,
               file=sys.stderr)
    startup_s = seconds_since_start()
    first = state.epoch
    for epoch in range(first, args.epochs):
        _train_epoch(run, feeder, state, epoch, epoch == first, bar)
        m = _epoch_metrics(run, state, train, val)
        state.history.append(m)
        state.epoch, state.start, state.order = epoch + 1, 0, None
        run.save(state)
        bar.set_postfix({k: round(v, 4) for k, v in m.items() if k != "lr"})
        if on_epoch:
            on_epoch(epoch, m)
        if (checkpointer is not None and any_rank(stop_requested(), run.world, run.device)
                and epoch + 1 < args.epochs):
            bar.close()
            raise Preempted(f"stopped by SIGTERM after epoch {epoch + 1}; state saved in "
                            f"{checkpointer.directory}, rerun to resume")
    bar.close()
    return {
        "history": state.history,
        "wall_time_s": run.wall_time(),
        "attempts": state.attempts,
        "startup_s": startup_s,
        "train_time_s": state.train_time_s,
        "images_per_s": state.seen / max(state.train_time_s, 1e-9),
        "peak_memory_mb": peak_memory_mb(run.device, state.tensors_mb),
        "memory_kind": MEMORY_KIND[run.device.type] if run.device.type in MEMORY_KIND else "",
        "tensors_mb": state.tensors_mb,
        "device": str(run.device),
        "steps": run.total_steps,
        "world_size": run.world,
    }
