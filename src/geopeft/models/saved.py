"""The saved model of a run (``runs/<run>/model/``): what training changed, and how to rebuild
the whole model from it.

The folder holds:

* ``trainable.safetensors`` -- every parameter with ``requires_grad`` (LoRA: adapters and the new
  head; linear: the head; full: everything) and the buffers of their modules. When the backbone
  started from random weights (``weights: none``) nothing could rebuild the frozen part, so every
  parameter is saved;
* ``adapter/`` -- for LoRA, the same adapter in HF peft format (``PeftModel.from_pretrained``);
* ``run.json`` -- the job spec (row, backbone, data), the base weights' origin, parameter counts,
  costs, history and the MLflow run id.

(The resumable state of a run that is still training is another thing: see
:mod:`geopeft.train.resume`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from geopeft.data.dataset import StoreInfo, store_info
from geopeft.io import atomic_dir, follow_umask, read_json, write_json
from geopeft.layout import RUN_RECORD, ModelLayout
from geopeft.models.build import build_model
from geopeft.spec import JobSpec


def trained_tensors(model: nn.Module, everything: bool = False) -> dict[str, torch.Tensor]:
    """What training changed, by name.

    Args:
        model: the model.
        everything: every parameter, not only those with ``requires_grad``.

    Returns:
        The parameters and the buffers of the modules holding them (batch-norm running
        statistics, which training updates and inference uses).
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad or everything}
    owners = {n.rpartition(".")[0] for n in params}
    # and the modules fit rather than trained (a kNN probe's train features)
    owners |= {n for n, m in model.named_modules() if getattr(m, "saves_buffers", False)}
    buffers = {n: b for n, b in model.named_buffers() if n.rpartition(".")[0] in owners}
    return {**params, **buffers}


def saved_names(model: nn.Module, base_weights: str) -> set[str]:
    """Tensors a saved model holds: the trainable parameters (all of them without reloadable
    base weights, ``base_weights == "none"``) and the buffers of their modules."""
    return set(trained_tensors(model, everything=base_weights == "none"))


def trainable_state(model: nn.Module, base_weights: str = "") -> dict[str, torch.Tensor]:
    """CPU copies of the tensors :func:`saved_names` lists."""
    return {n: t.detach().cpu().contiguous().clone()
            for n, t in trained_tensors(model, everything=base_weights == "none").items()}


def save_model(model: nn.Module, out: Path, record: dict[str, Any]) -> None:
    """Write the trained tensors (+ peft adapter for LoRA) and ``run.json`` atomically.

    Args:
        model: the trained model.
        out: the model folder (replaced as a whole, never half-written).
        record: the run record (``run.json``): ``spec`` (the job spec as JSON) and
            ``model.weights`` (the base weights' origin), and what else the run reports.
    """
    from safetensors.torch import save_file

    spec = JobSpec.from_dict(record["spec"], f"{out}: {RUN_RECORD} spec")
    with atomic_dir(out) as tmp:
        save_file(trainable_state(model, record["model"]["weights"]),
                  str(ModelLayout(tmp).trainable))
        spec.row.strategy_object.save(model, tmp)
        follow_umask(tmp)  # safetensors writes 0600
        write_json(ModelLayout(tmp).record, record)


def load_model(model_dir: Path, store: Path | None = None,
               pretrain_dir: Path | None = None, merge: bool = False) -> nn.Module:
    """Rebuild a trained model from its folder (eval mode, CPU).

    Args:
        model_dir: the run's model folder.
        store: the store whose description to use; default: the training store's description
            recorded in ``run.json`` (bands, classes, value scale, statistics), so inference
            needs no prepared data.
        pretrain_dir: the embedded pretrained backbone's folder (default: the recorded one).
        merge: merge a peft adapter into the encoder's weights for inference (one plain model,
            no adapter computation; the same outputs within float rounding). A model without
            an adapter is returned as it is.

    Raises:
        ValueError: the saved tensors do not match the rebuilt model (missing or extra tensors,
            other base weights).
    """
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    record = read_json(ModelLayout(model_dir).record)
    spec = JobSpec.from_dict(record["spec"], f"{ModelLayout(model_dir).record}: spec")
    info = store_info(store) if store is not None else StoreInfo(**record["store"])
    if pretrain_dir is None and spec.encoder is not None and spec.encoder.weights == "pretrain":
        recorded = record.get("pretrain_dir")  # relative to the model folder (absolute before)
        pretrain_dir = (model_dir / recorded) if recorded else None
    model, minfo = build_model(spec, info, pretrain_dir)
    if minfo["weights"] != record["model"]["weights"]:
        raise ValueError(f"{model_dir}: trained on base weights {record['model']['weights']}, "
                         f"but {minfo['weights']} were found")
    state = load_file(str(ModelLayout(model_dir).trainable))
    expected = saved_names(model, minfo["weights"])
    if set(state) != expected:
        raise ValueError(f"{ModelLayout(model_dir).trainable}: tensors do not match the model: "
                         f"missing {sorted(expected - set(state))[:5]}, "
                         f"unexpected {sorted(set(state) - expected)[:5]}")
    model.load_state_dict(state, strict=False)
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval()


__all__ = ["load_model", "save_model", "saved_names", "trainable_state", "trained_tensors"]
