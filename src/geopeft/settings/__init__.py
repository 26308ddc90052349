"""The study configuration as typed dataclasses: each setting's type, default, constraints and
description, written once.

One dataclass per section of a study file; each field's type is its annotation, its default the
dataclass default, its description the docstring under it, and its JSON-Schema constraints
(``enum``, ``minimum``, ``pattern``, ...) the field's ``metadata``. Enums come from the code's
own constants (band names, strategies, peft methods, datasets of the source registry, subset
methods, pad rules, segmentation models). The training, adapter and Fusion-LoRA sections are the
job's own dataclasses (:class:`~geopeft.spec.TrainArgs`, :class:`~geopeft.spec.LoraSpec`,
:class:`~geopeft.spec.FusionConfig`).

:mod:`geopeft.settings.schema` generates from them the JSON-Schema that
:func:`geopeft.config.validate` validates and fills defaults with
(``workflow/schemas/config.schema.yaml``) and the commented defaults file
(``config/defaults.yaml``): ``uv run python -m geopeft.settings --write``.

Field metadata, besides JSON-Schema keywords copied as they are:

* ``optional``: the key may be left out and gets no default (the dataclass default is None);
* ``nullable``: an optional key may also be null (a filled ``X | None`` key always may);
* ``ref``: the value (or each item of a list) is the named ``$defs`` entry;
* ``items``: keywords added to the item schema of a list;
* ``schema``: the value's schema, instead of the one of the annotation;
* ``like``: a class whose same-named field gives type, constraints and description;
* ``job``: the job's setting, not the study's: left out of the schema.
"""


from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geopeft.bands import S2_BANDS
from geopeft.data.temporal import PAD_RULES, REFERENCE_DATE
from geopeft.layout import RESULTS
from geopeft.limits import Limits
from geopeft.settings.data import Data, Subsets
from geopeft.settings.fields import (
    DATASET_PATTERN,
    DATASETS,
    NAME_PATTERN,
    TrainOverrides,
    optional,
    required,
    setting,
)
from geopeft.settings.protocol import Protocol
from geopeft.spec import (
    STRATEGIES,
    FusionConfig,
    LoraSpec,
    PromptSpec,
    TrainArgs,
)
from geopeft.spec.sections import Backbone, Ltae, Segmentation  # noqa: F401  (sections)
from geopeft.strategies import REGISTRY as STRATEGY_REGISTRY
from geopeft.strategies.bottleneck import BottleneckSpec
from geopeft.strategies.probes import ProbeSpec

# ---------------------------------------------------------------------------------- models


@dataclass(kw_only=True)
class Pretrain:
    """Supervised pretraining of the embedded backbone on the synthetic source set (coarse
    labels)."""

    epochs: int = setting(10, like=TrainArgs)
    batch_size: int = setting(64, like=TrainArgs)
    lr: float = setting(0.001, like=TrainArgs)
    weight_decay: float = setting(0.05, like=TrainArgs)
    warmup_epochs: float = setting(1, like=TrainArgs)
    seed: int = setting(0, minimum=0)
    """Seed of the pretraining run."""
    bands: list[str] | None = setting(None, items={"enum": S2_BANDS})
    """Bands the embedded backbone is pretrained on (null = data.bands); Fusion-LoRA studies
    pretrain an RGB encoder ([B04, B03, B02]) and feed it pseudo-RGB."""


@dataclass(kw_only=True)
class Strategy(TrainOverrides):
    """A named strategy: what trains, and the training settings of its rows."""

    # what trains, each strategy in its own words (geopeft.strategies)
    strategy: str = required(enum=STRATEGIES, description="; ".join(
        f"{name} = {s.summary}" for name, s in STRATEGY_REGISTRY.items()) + ".")
    lora: LoraSpec = setting(LoraSpec)
    prompt: PromptSpec = setting(PromptSpec)
    bottleneck: BottleneckSpec = setting(BottleneckSpec)
    probe: ProbeSpec = setting(ProbeSpec)
    fusion: FusionConfig | None = optional()
    """Fusion-LoRA (geopeft.models.fusion): a learned spectral tokenizer to pseudo-RGB for the
    frozen encoder, a spectral token stream with cross-attention fusion (caf) and gated late
    fusion (glf). Ablation ladder: RGB-only {tokenizer: false, caf: false, glf: false},
    {tokenizer: true, caf: false, glf: false}, + caf, + glf. Needs B04, B03, B02 in
    data.bands."""
    backbone: Backbone | None = optional()
    """The encoder of this strategy's rows, replacing the study's backbone (a study can compare
    encoders); only the study's own backbone can use weights: pretrain."""
    segmentation: Segmentation = setting(Segmentation)
    lr_sweep: list[float] | None = optional(items={"exclusiveMinimum": 0}, minItems=2,
                                            uniqueItems=True)
    """Learning rates chosen among on validation (instead of lr): each of the strategy's rows
    runs once per rate, named <strategy>-lr<rate>-...; the table, figures, paper and MLflow
    summary keep, per dataset, label fraction (and length), the rate with the best mean
    validation score over the seeds (ties: the first listed), never a test score; the sweep
    table shows every rate, and the cost ledger counts the sweep's time."""
    encoder_lr_factor: float | None = optional(like=TrainArgs, description=(
        "Encoder lr = factor x lr (the ft_rate of the time-series study); default: the "
        "strategy's own (" + ", ".join(f"{n} {s.encoder_lr_factor:g}" for n, s in
                                      STRATEGY_REGISTRY.items() if s.encoder_lr_factor) +
        "), else train.encoder_lr_factor."))


# ---------------------------------------------------------------------------------- study table


@dataclass(kw_only=True)
class Grid:
    """Study table as a grid; every combination becomes one row (one training job)."""

    strategy: list[str] = setting([])
    """Keys of strategies."""
    dataset: list[str] = setting([], ref="dataset")
    """Datasets the study covers (empty = data.dataset); run names then start with the
    dataset."""
    label_fraction: list[float] = setting([1.0], ref="fraction")
    """Shares of the training labels used."""
    sequence_length: list[int] = setting([], items={"minimum": 1}, uniqueItems=True)
    """Dates per series (time-series datasets; empty = temporal.length); run names then hold
    -t<length>."""
    seed: list[int] = setting([0], items={"minimum": 0})
    """Seeds of the rows."""


@dataclass(kw_only=True)
class Row(TrainOverrides):
    """An explicit study row."""

    name: str | None = optional(pattern=NAME_PATTERN)
    """The run's name (default <strategy>-f<fraction>[-t<length>]-s<seed>)."""
    strategy: str = required()
    """A key of strategies."""
    dataset: str | None = optional(ref="dataset")
    """Dataset of the row (default data.dataset)."""
    label_fraction: float = setting(1.0, ref="fraction")
    """Share of the training labels used."""
    sequence_length: int | None = optional(minimum=1)
    """Dates per series (time-series datasets; default temporal.length)."""
    seed: int = setting(0, minimum=0)
    """The row's seed (initialisation, subset, data order)."""


@dataclass(kw_only=True)
class Temporal:
    """Temporal subsampling of time-series datasets (geopeft.data.temporal): each length is drawn
    evenly spaced from the next longer one of the study's lengths, so selections are nested and
    in date order; T = 1 is the median date of the next longer selection."""

    length: int = setting(35, minimum=1)
    """Dates per series when the grid or row names none."""
    pad: str = setting(PAD_RULES[0], enum=PAD_RULES)
    """A series shorter than the length: mask = all its dates, then empty (all-zero) dates that
    the models mask out of attention and aggregation, as the reference implementations;
    repeat = evenly spaced dates with repetition (every date kept, date order); error = stop,
    naming the patch."""
    reference_date: str = setting(REFERENCE_DATE, pattern="^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    """The temporal encodings count days from this date."""


@dataclass(kw_only=True)
class Paper:
    """`snakemake paper`: paper/main.pdf, a section per study generated from its results
    (geopeft.paper.document)."""

    studies: list[str] = setting([], items={"pattern": NAME_PATTERN})
    """Studies of the paper, in order, by name (their results in <results_dir>/<study>: run each
    study first); empty = this study alone."""


@dataclass(kw_only=True)
class Mlflow:
    """Experiment tracking (MLflow)."""

    tracking_uri: str | None = None
    """MLflow tracking URI; null = sqlite:///<results_dir>/mlflow.db."""
    experiment: str | None = None
    """Experiment name; null = study name."""


@dataclass(kw_only=True)
class Resources:
    """Resources of the GPU jobs (pretrain, train, evaluate), read by Snakemake (--resources
    gpu=N on a workstation, profiles/default) and the SLURM executor (profiles/slurm). Light
    rules are local rules or use the profile's CPU defaults."""

    gpus: int | str = setting("auto", schema={
        "oneOf": [{"type": "integer", "minimum": 0}, {"const": "auto"}]})
    """GPUs per job (Snakemake resource gpu; SLURM --gpus); 0 = CPU jobs. auto: 1 on a cluster
    executor and on a local machine with NVIDIA GPUs (nvidia-smi), 0 on a local machine without,
    so that CPU jobs run as many at once as cores allow (geopeft.gpus.per_job). Each job claims
    its own device(s)."""
    cpus_per_gpu: int = setting(8, minimum=1)
    """CPU cores per GPU (SLURM --cpus-per-gpu)."""
    mem_mb: int = setting(32000, minimum=100)
    """Memory per job in MB."""
    runtime: int = setting(120, minimum=1)
    """Minutes for a job's first attempt; attempt n gets n x this (retries after a time-out)."""


@dataclass(kw_only=True)
class Study:
    """One study: a dataset (embedded synthetic world or a real source), a backbone, a
    pretraining step when the backbone is the embedded one, training defaults, named strategies
    and a study table (grid and/or explicit rows). Every key is documented here; defaults are
    filled in."""

    study: str = required(pattern=NAME_PATTERN)
    """Study name; outputs go to results/<study>/ and the MLflow experiment gets this name."""
    results_dir: str = RESULTS
    """Root folder of generated results."""
    data: Data = required()
    subsets: Subsets = setting(Subsets)
    backbone: Backbone = required()
    """The study's encoder."""
    pretrain: Pretrain = setting(Pretrain)
    train: TrainArgs = setting(TrainArgs)
    strategies: dict[str, Strategy] = required(minProperties=1)
    """Named strategy configurations that study rows refer to."""
    grid: Grid = setting(Grid)
    runs: list[Row] = setting([])
    """Explicit study rows, added to the grid's."""
    temporal: Temporal = setting(Temporal)
    paper: Paper = setting(Paper)
    mlflow: Mlflow = setting(Mlflow)
    threads: int = setting(1, minimum=1)
    """CPU threads per training job."""
    jobserver: bool = True
    """Local runs (no cluster executor, no conda/apptainer): fork the pretrain, train and evaluate
    jobs from one warm process that has imported torch, timm, peft, MLflow and zarr once
    (geopeft.jobserver; about 10 s saved per job). Results are identical; false = every job a
    fresh process."""
    rehearsal: bool | str = False
    """Rehearse a real study on a CPU before spending GPU hours (`uv run geopeft rehearse FILE`,
    or `--config rehearsal=true` while `geopeft rehearsal-server` runs): the same DAG, the real
    download, prepare and weight-loading paths, only smaller. Data: fixture archives in the
    publishers' layouts (a few dozen samples), downloaded from the fixture server on 127.0.0.1;
    weights: random values in the publishers' checkpoint formats, sha256 pinned; every strategy
    once, the first and last value of each other grid axis alternating over them, the first
    seed, 1 epoch, batch <= 8, CPU jobs of one thread; explicit runs are kept. Outputs go to
    results/<study>_rehearsal and every figure, table and MLflow run says "rehearsal". true =
    fixtures in .rehearsal/; a string names another fixture folder."""
    rehearsal_gpus: int = setting(0, minimum=0)
    """GPUs per training job of a rehearsal (`geopeft rehearse --gpus N`): 0 = CPU jobs of one
    thread (the default: rehearse on a laptop); 1 = the study's CUDA path (bf16 autocast, CUDA
    memory accounting, the device claim) on a GPU machine, still with fixture data."""
    resources: Resources = setting(Resources)
    limits: Limits = setting(Limits)
    protocol: Protocol = setting(Protocol)


#: The schema's ``$defs``, in order: named sections (referred to by every use) and value types.
DEFS: dict[str, Any] = {
    "backbone": Backbone,
    # a built-in dataset (DATASETS) or one of your own declared in data.generic
    # (geopeft.config.checks says which names a study may use)
    "dataset": {"type": "string", "pattern": DATASET_PATTERN},
    "fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "train": TrainArgs,
    "strategy": Strategy,
    "row": Row,
}

__all__ = ["DATASETS", "DEFS", "Backbone", "Data", "Grid", "Row", "Strategy", "Study"]
