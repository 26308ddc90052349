"""The model of a job: classifier, Fusion-LoRA or time-series segmenter, with its strategy
applied (which parameters train)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from geopeft.data.dataset import StoreInfo
from geopeft.models.backbones import resolve
from geopeft.models.classifier import build_classifier
from geopeft.models.fusion import build_fusion
from geopeft.models.segmentation import build_segmenter
from geopeft.models.strategies import apply_strategy


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
    """The model of a job spec with its strategy applied.

    Args:
        spec: the job spec.
        info: the description of the store it trains on (bands, classes, statistics).
        pretrain_dir: the folder of the embedded pretrained backbone (``weights: pretrain``).

    Returns:
        The model (a classifier, Fusion-LoRA when the row has ``fusion`` settings, a time-series
        segmenter when it has ``segmentation`` settings) and its description for the run record.
    """
    row = spec["row"]
    if row.get("segmentation") is not None:
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


__all__ = ["backbone_for", "build_model", "num_outputs"]
