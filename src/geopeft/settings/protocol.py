"""The settings of a study's protocol card: the reference protocol it is compared with, each
difference from it and why, and the reference's published figures
(:mod:`geopeft.config.protocol` derives the rest of the card from the study itself)."""

from __future__ import annotations

from dataclasses import dataclass

from geopeft.settings.fields import optional, required, setting

#: What a protocol card says, in order: aspect -> its heading (a declared difference names one).
ASPECTS = {
    "data": "data and splits",
    "frames": "frames",
    "encoder": "encoders and weights",
    "input": "input size and resizing",
    "normalisation": "normalisation",
    "missing_bands": "bands the weights and the data do not share",
    "augmentation": "augmentation",
    "schedule": "optimiser, schedule, epochs",
    "lr": "learning rate and its selection",
    "checkpoint": "checkpoint selection",
    "metric": "metric",
    "seeds": "seeds and spread",
}


@dataclass(kw_only=True)
class Difference:
    """One way the study's protocol differs from the reference's."""

    aspect: str = required(enum=tuple(ASPECTS))
    """What differs (an aspect of the card)."""
    ours: str = required(minLength=1)
    """What this study does."""
    reference: str = required(minLength=1)
    """What the reference protocol does."""
    why: str = required(minLength=1)
    """Why the study differs: a reader must be able to tell a choice from an accident."""


@dataclass(kw_only=True)
class Anchor:
    """A published figure of the reference protocol: shown beside ours, marked published, never
    mixed with our numbers."""

    what: str = required(minLength=1)
    """What was measured (model, method, setting)."""
    metric: str = required(minLength=1)
    """The metric, with its unit (e.g. "test mIoU (%)")."""
    value: float = required()
    """The published value, in the metric's unit."""
    source: str = required(minLength=1)
    """Where it is published (paper and table, or repository and file)."""
    strategy: str | None = optional()
    """The study's strategy whose runs it compares with (the paper puts ours beside it)."""
    dataset: str | None = optional(ref="dataset")
    """The dataset of that comparison (default: the study's first)."""
    label_fraction: float = setting(1.0, ref="fraction")
    """The label fraction of that comparison."""
    sequence_length: int | None = optional(minimum=1)
    """The dates per series of that comparison (time series; default: the longest)."""


@dataclass(kw_only=True)
class Protocol:
    """The study's protocol card (`geopeft validate --resolved`, results/<study>/protocol.json,
    the MLflow experiment's description, the paper): what the runs do is derived from the study;
    here the reference protocol it is compared with, every difference from it and why, and the
    reference's published figures."""

    reference: str | None = optional()
    """The reference protocol the study is compared with (who, paper, repository)."""
    differences: list[Difference] = setting([])
    """Every way the study's protocol differs from the reference's, each justified."""
    anchors: list[Anchor] = setting([])
    """The reference's published figures."""
