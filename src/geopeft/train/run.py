"""Entry points behind the ``pretrain`` and ``train`` rules, and checkpoint save/load.

A checkpoint folder holds only what training changed, plus what is needed to rebuild the rest:

* ``trainable.safetensors`` -- every parameter with ``requires_grad`` (LoRA: adapters and the new
  head; linear: the head; full: everything). When the backbone started from random weights
  (``weights: none``) nothing could rebuild the frozen part, so every parameter is saved;
* ``adapter/`` -- for LoRA, the same adapter in HF peft format (``PeftModel.from_pretrained``);
* ``run.json`` -- the job spec (row, backbone, data), the base weights' origin, parameter counts,
  costs, history and the MLflow run id.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geopeft.data.dataset import StoreInfo, load_split, store_info
from geopeft.io import atomic_dir, read_json, write_json
from geopeft.models.backbones import resolve
from geopeft.models.classifier import build_classifier
from geopeft.models.fusion import build_fusion
from geopeft.models.strategies import apply_strategy, count_parameters
from geopeft.models.weights import sha256_file
from geopeft.train.loop import TrainArgs, fit, seed_everything, trained_tensors
from geopeft.train.tracking import RunLogger, git_commit

log = logging.getLogger(__name__)


def _tags(spec: dict[str, Any], fingerprint: str, role: str) -> dict[str, str]:
    return {
        "git_commit": git_commit(),
        "dataset_fingerprint": fingerprint,
        "dataset": spec["data"]["dataset"],
        "synthetic": str(spec["data"].get("source") == "synthetic"),
        "rehearsal": str(bool(spec.get("rehearsal", False))),
        "role": role,
        "study": spec["study"],
    }


def backbone_for(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The backbone config of a job: the row's own (a strategy's encoder) or the study's;
    ``scratch`` rows ignore the weights (random init); None for U-TAE (no backbone)."""
    bb = spec["row"].get("backbone") or spec.get("backbone")
    if bb is None:
        return None
    if spec["row"]["method"] == "scratch":
        return dict(bb, weights="none")
    return bb


def num_outputs(info: StoreInfo) -> int:
    """Classes the model predicts: the store's, without the void label of segmentation."""
    return len(info.classes) - (info.void_class is not None)


def build_model(spec: dict[str, Any], info: StoreInfo, pretrain_dir: Path | None = None,
                ) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a job spec with its strategy applied: a classifier, Fusion-LoRA when the
    row has ``fusion`` settings, a time-series segmenter when it has ``segmentation`` settings.
    Returns the model and its description for the run record."""
    row = spec["row"]
    if row.get("segmentation") is not None:
        from geopeft.models.segmentation import build_segmenter

        raw = backbone_for(spec)
        seg_bb = resolve(raw) if raw is not None and row["segmentation"].get("model") != "utae" else None
        model, minfo = build_segmenter(seg_bb, info, num_outputs(info), row["segmentation"],
                                       pretrain_dir)
        targets = seg_bb["lora_targets"] if seg_bb else None
        return apply_strategy(model, row["method"], row.get("lora"), targets), minfo
    bb = resolve(backbone_for(spec))  # type: ignore[arg-type]
    if row.get("fusion") is not None:
        model, minfo = build_fusion(bb, info, len(info.classes), row["fusion"], pretrain_dir)
    else:
        model, minfo = build_classifier(bb, info, len(info.classes), pretrain_dir)
    return apply_strategy(model, row["method"], row.get("lora"), bb["lora_targets"]), minfo


def saved_names(model: nn.Module, base_weights: str) -> set[str]:
    """Tensors a checkpoint holds: the trainable parameters (all of them without reloadable base
    weights) and the buffers of their modules (batch-norm running statistics)."""
    return set(trained_tensors(model, everything=base_weights == "none"))


def trainable_state(model: nn.Module, base_weights: str = "") -> dict[str, torch.Tensor]:
    return {n: t.detach().cpu().contiguous().clone()
            for n, t in trained_tensors(model, everything=base_weights == "none").items()}


def save_checkpoint(model: nn.Module, out: Path, record: dict[str, Any]) -> None:
    """Write trainable parameters (+ peft adapter for LoRA) and ``run.json`` atomically."""
    from safetensors.torch import save_file

    with atomic_dir(out) as tmp:
        save_file(trainable_state(model, record["model"]["weights"]),
                  str(tmp / "trainable.safetensors"))
        if record["spec"]["row"]["method"] == "lora":
            model.save_pretrained(str(tmp / "adapter"))  # type: ignore[operator]
        write_json(tmp / "run.json", record)


def load_checkpoint(model_dir: Path, store: Path | None = None,
                    pretrain_dir: Path | None = None) -> nn.Module:
    """Rebuild a trained model from its checkpoint folder (eval mode, CPU).

    ``store`` defaults to the description of the training store recorded in ``run.json``
    (bands, classes, value scale, statistics), so inference needs no prepared data.

    Raises:
        ValueError: the checkpoint does not match the rebuilt model (missing or extra tensors,
            other base weights).
    """
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    record = read_json(model_dir / "run.json")
    spec = record["spec"]
    info = store_info(store) if store is not None else StoreInfo(**record["store"])
    if pretrain_dir is None and (backbone_for(spec) or {}).get("weights") == "pretrain":
        pretrain_dir = record.get("pretrain_dir") and Path(record["pretrain_dir"])
    model, minfo = build_model(spec, info, pretrain_dir)
    if minfo["weights"] != record["model"]["weights"]:
        raise ValueError(f"{model_dir}: trained on base weights {record['model']['weights']}, "
                         f"but {minfo['weights']} were found")
    state = load_file(str(model_dir / "trainable.safetensors"))
    expected = saved_names(model, minfo["weights"])
    if set(state) != expected:
        raise ValueError(f"{model_dir / 'trainable.safetensors'}: tensors do not match the model: "
                         f"missing {sorted(expected - set(state))[:5]}, "
                         f"unexpected {sorted(set(state) - expected)[:5]}")
    model.load_state_dict(state, strict=False)
    return model.eval()


class _QuietLogger:
    """The logger of DDP ranks other than 0: only rank 0 logs."""

    run_id = None

    def logged_steps(self, key: str) -> set[int]:
        return set()

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _end_after_error(logger: Any, status: str) -> None:
    """End the run of a failed or preempted job without hiding the job's own error."""
    try:
        logger.end(status)
    except Exception as err:  # the tracking server may be what failed
        log.warning("could not end MLflow run %s as %s: %s", logger.run_id, status, err)


def _open_run(experiment: Path, spec: dict[str, Any], fingerprint: str,
              state_dir: Path | None) -> RunLogger:
    """The job's MLflow run: a new one, or the one an earlier, interrupted attempt started."""
    run_file = Path(state_dir) / "mlflow_run.json" if state_dir else None
    run_id = read_json(run_file)["run_id"] if run_file and run_file.is_file() else None
    logger = RunLogger(experiment, run_name=spec["row"]["name"], params=spec,
                       tags=_tags(spec, fingerprint, "finetune"), run_id=run_id)
    if run_file is not None:
        write_json(run_file, {"run_id": logger.run_id})
    if run_id is not None:
        log.info("resuming MLflow run %s", run_id)
        logger.set_running()
    else:
        logger.log_dict(spec, "config.json")
    return logger


def train_row(spec: dict[str, Any], store: Path, subset: Path | None, experiment: Path,
              out: Path, pretrain_dir: Path | None = None,
              state_dir: Path | None = None) -> dict[str, Any]:
    """Train one study row and write its checkpoint folder ``out``.

    With ``state_dir`` the training state is checkpointed there (periodically, per epoch and on
    SIGTERM) and a rerun resumes from it, in the same MLflow run, with one value per metric
    step; the folder is removed once ``out`` is written.
    """
    from geopeft.train.checkpoint import Checkpointer, Preempted
    from geopeft.train.loop import dist_info

    rank, _ = dist_info()
    row = spec["row"]
    info = store_info(store)
    temporal = row.get("temporal")
    train = load_split(store, "train", subset, temporal)
    val = load_split(store, "val", temporal=temporal)
    args = TrainArgs.from_dict(row["train"], seed=row["seed"], threads=spec.get("threads", 1))
    ckpt = (Checkpointer(Path(state_dir), args.checkpoint_every, args.checkpoint_minutes)
            if state_dir else None)
    resume = ckpt.latest() if ckpt else None
    seed_everything(args.seed, args.threads)
    model, minfo = build_model(spec, info, pretrain_dir)
    trainable, total = count_parameters(model)
    reopened = bool(state_dir) and (Path(state_dir) / "mlflow_run.json").is_file()
    logger: Any = _open_run(experiment, spec, info.fingerprint, state_dir) if rank == 0 else _QuietLogger()
    # steps an interrupted earlier attempt of this run already logged (none for a fresh run)
    done = logger.logged_steps("train_loss") if reopened else set()
    logger.log_once({"trainable_params": trainable, "total_params": total,
                     "train_samples": len(train)}, 0,
                    logger.logged_steps("trainable_params") if reopened else set())
    log.info("%s: %d/%d trainable parameters, %d train samples%s", row["name"], trainable, total,
             len(train), f", resuming at step {resume['step']}" if resume else "")
    if resume:
        for e, m in enumerate(resume["history"]):
            logger.log_once(m, e, done)
    try:
        result = fit(model, train, val, args, on_epoch=lambda e, m: logger.log_once(m, e, done),
                     checkpointer=ckpt, resume=resume,
                     extra_state={"mlflow_run_id": logger.run_id}, name=row["name"])
    except Preempted:
        _end_after_error(logger, "KILLED")
        raise
    except BaseException:
        _end_after_error(logger, "FAILED")
        raise
    costs = {k: result[k] for k in ("wall_time_s", "train_time_s", "images_per_s", "peak_memory_mb")}
    logger.log_metrics(costs)
    record = {
        "spec": spec,
        "model": minfo,
        "trainable_params": trainable,
        "total_params": total,
        "train_samples": len(train),
        "history": result["history"],
        "device": result["device"],
        "mlflow_run_id": logger.run_id,
        "dataset_fingerprint": info.fingerprint,
        "store": {**asdict(info), "path": str(info.path)},
        "pretrain_dir": str(Path(pretrain_dir).resolve()) if pretrain_dir else None,
        **costs,
    }
    if rank == 0:
        save_checkpoint(model, out, record)
        logger.log_artifact(out, "model")
        logger.end()
        if ckpt is not None:
            ckpt.clear()
    return record


def pretrain(spec: dict[str, Any], store: Path, experiment: Path, out: Path) -> dict[str, Any]:
    """Supervised pretraining of the embedded backbone on the synthetic source set.

    The source set holds scenes disjoint from the target task, labelled with five coarse
    land-cover groups; the backbone learns spectral and textural features from them. Writes
    ``backbone.safetensors`` (timm state dict without head) and ``backbone.json`` (architecture,
    bands, the normalisation it was trained with, sha256).
    """
    from safetensors.torch import save_file

    info = store_info(store)
    train = load_split(store, "train")
    val = load_split(store, "val")
    p = spec["pretrain"]
    args = TrainArgs.from_dict(p, augment=True, threads=spec.get("threads", 1))
    seed_everything(args.seed, args.threads)
    bb = dict(spec["backbone"], weights="none", normalize="dataset")
    model, minfo = build_classifier(bb, info, len(info.classes), split=False)
    logger = RunLogger(experiment, run_name="pretrain", params=spec,
                       tags=_tags(spec, info.fingerprint, "pretrain"))
    logger.log_dict(spec, "config.json")
    t0 = time.perf_counter()
    result = fit(model, train, val, args, on_epoch=lambda e, m: logger.log_metrics(m, e))
    vit = model.backbone
    state = {k: v.detach().contiguous().clone() for k, v in vit.state_dict().items()
             if not k.startswith("head.")}
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / "backbone.safetensors"))
        write_json(tmp / "backbone.json", {
            "name": spec["backbone"]["name"],
            "kwargs": spec["backbone"]["kwargs"],
            "bands": info.bands,
            "norm": {"bands": info.bands, "mean": minfo["norm_mean"], "std": minfo["norm_std"]},
            "sha256": sha256_file(tmp / "backbone.safetensors"),
            "source_dataset": info.dataset,
            "source_classes": info.classes,
            "source_fingerprint": info.fingerprint,
            "final_val_acc": result["history"][-1].get("val_acc"),
            "wall_time_s": time.perf_counter() - t0,
            "mlflow_run_id": logger.run_id,
        })
    logger.log_artifact(out / "backbone.json")
    logger.end()
    return result


__all__ = ["build_model", "load_checkpoint", "pretrain", "save_checkpoint", "train_row"]
