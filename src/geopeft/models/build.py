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
from geopeft.spec import ConfigError, JobSpec
from geopeft.strategies import apply_strategy


def num_outputs(info: StoreInfo) -> int:
    """Classes the model predicts: the store's, without the void label of segmentation."""
    return len(info.classes) - (info.void_class is not None)


def build_model(spec: JobSpec, info: StoreInfo, pretrain_dir: Path | None = None,
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
    row = spec.row
    encoder = resolve(spec.encoder.as_dict()) if spec.encoder is not None else None
    if row.segmentation is not None:  # U-TAE (no encoder) or UPerNet + L-TAE
        model, minfo = build_segmenter(encoder, info, num_outputs(info), row.segmentation.as_dict(),
                                       pretrain_dir)
    elif encoder is None:
        raise ConfigError(f"{row.name}: an image classifier needs a backbone")
    elif row.fusion is not None:
        model, minfo = build_fusion(encoder, info, len(info.classes), row.fusion, pretrain_dir)
    else:
        model, minfo = build_classifier(encoder, info, len(info.classes), pretrain_dir)
    targets = encoder["lora_targets"] if encoder is not None else None
    return apply_strategy(model, row.method, row.lora, targets, row.options), minfo


__all__ = ["build_model", "num_outputs"]
