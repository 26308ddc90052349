"""The typed job spec: what one training or evaluation job receives, as dataclasses.

:mod:`geopeft.config` reads, merges and validates the study files once and writes each job's
spec as JSON (the ``--spec`` of the train rule, and ``spec`` in the saved model's ``run.json``);
:meth:`JobSpec.from_dict` turns it into these types, and the code below (data, models, training,
evaluation) takes them, not dicts. A key the spec lacks is an error naming it, never a silent
fallback.

Each default, constraint and enum of the study is written once, in Python: the settings here
(:class:`TrainArgs`, :class:`LoraSpec`, :class:`FusionConfig`, with their JSON-Schema constraints
in each field's metadata) and the study's sections in :mod:`geopeft.settings`, which generates
the JSON-Schema ``workflow/schemas/config.schema.yaml`` from them
(``uv run python -m geopeft.settings``).

Names: a row's ``strategy`` is the key of the study's ``strategies`` table it uses (e.g.
``lora_r4``); its ``method`` is what trains (one of :data:`STRATEGIES`); a LoRA row's
``lora.method`` is the peft method (one of :data:`PEFT_METHODS`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from geopeft.errors import ConfigError
from geopeft.spec.sections import ENCODER_NORMS, SEGMENTATION_MODELS, Backbone, Segmentation
from geopeft.strategies import PEFT_METHODS, STRATEGIES, LoraSpec, PromptSpec, Strategy
from geopeft.strategies import REGISTRY as STRATEGY_REGISTRY
from geopeft.strategies import get as get_strategy

#: Training losses (``train.loss``).
LOSSES = ("ce", "weighted_ce")
#: Where a job trains (``train.device``): CUDA when available, or as named.
DEVICES = ("auto", "cpu", "cuda")
#: Training settings a strategy or a row may override.
TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "augment", "loss",
              "features")


def _take(cls: Any, d: dict[str, Any], where: str, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of dataclass ``cls`` from ``d``; a missing required key is a ConfigError."""
    missing = [f.name for f in fields(cls) if f.name not in d and f.name not in optional]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    return {f.name: d[f.name] for f in fields(cls) if f.name in d}


@dataclass
class TrainArgs:
    """Training settings; strategies and rows may override any of them."""

    epochs: int = field(default=5, metadata={"minimum": 1})
    """Passes over the training (sub)set."""
    batch_size: int = field(default=64, metadata={"minimum": 1})
    """Samples per optimisation step."""
    lr: float = field(default=0.001, metadata={"exclusiveMinimum": 0})
    """Peak learning rate (AdamW)."""
    weight_decay: float = field(default=0.05, metadata={"minimum": 0})
    """AdamW decoupled weight decay."""
    warmup_epochs: float = field(default=1, metadata={"minimum": 0})
    """Linear warmup length in epochs, then cosine decay to zero."""
    augment: bool = True
    """Random horizontal/vertical flips and 90 degree rotations."""
    features: bool = True
    """A frozen encoder's rows (linear probes on images; decoder-only time series that do not
    augment) train their head or decoder on the encoder's features, computed once per encoder by
    a features job and shared by the rows (the 8 views of the augmentation when it is on),
    instead of running the encoder every epoch; false: on images."""
    device: str = field(default="auto", metadata={"enum": DEVICES})
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    eval_batch_size: int = field(default=256, metadata={"minimum": 1})
    """Batch size for validation and prediction."""
    encoder_lr_factor: float = field(default=1.0, metadata={"exclusiveMinimum": 0})
    """Encoder lr = factor x lr (the head keeps lr); the ``e2e`` strategy."""
    seed: int = field(default=0, metadata={"job": True})
    """Seed of python, numpy and torch (initialisation, data order, augmentation, dropout)."""
    threads: int = field(default=1, metadata={"job": True})
    """CPU threads for torch."""
    progress: bool = field(default=True, metadata={"job": True})
    """Show a progress bar on stderr."""
    checkpoint_every: int = field(default=0, metadata={"minimum": 0})
    """Save the full training state every N steps (0 = by time, at epoch ends and on SIGTERM);
    a rerun resumes."""
    checkpoint_minutes: float = field(default=10, metadata={"minimum": 0})
    """Save the full training state when this many minutes passed since the last save."""
    loss: str = field(default="ce", metadata={"enum": LOSSES})
    """``ce`` = cross-entropy (BCE for multi-label); ``weighted_ce`` = classes weighted by inverse
    frequency in the training (sub)set, so rare classes count as much as common ones.
    Segmentation ignores void pixels either way."""
    compile: bool = False
    """``torch.compile`` the training forward and backward (GPU runs of many steps; the first
    steps compile). Saving, validation and evaluation use the model as built."""
    channels_last: bool = False
    """Channels-last memory format for convolution weights and 4-D image batches (faster bf16
    convolutions on recent GPUs; no effect on the results beyond rounding)."""
    workers: int = field(default=2, metadata={"minimum": 0})
    """Reader processes that decompress store chunks ahead of the batches when a job's splits
    stream from the store (larger than half its memory;
    :meth:`~geopeft.data.stream.StoreImages.batches`); 0: read in the training process. Same
    batches, same results with any number. Count them in resources.cpus_per_gpu."""
    max_loss_growth: float = field(default=1e4, metadata={"minimum": 0})
    """Stop training, before the update, when a step's loss exceeds this many times the run's
    first step's loss: a diverging run whose loss is still finite but absurd (it would turn NaN
    later). 0: off (NaN and infinite losses stop training either way)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], **extra: Any) -> TrainArgs:
        """The settings in ``d`` (other keys ignored), with ``extra`` on top."""
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in {**d, **extra}.items() if k in keys})



#: What the job adds to a row's training settings (not in the study's ``train``).
_JOB_TRAIN_KEYS = ("seed", "threads", "progress")
#: How a run executes, not what it computes (a run that ``max_loss_growth`` does not stop
#: computes the same); absent from the specs saved before they existed (``run.json`` of older
#: runs), which load with their defaults (compile and channels-last off, as those runs trained).
_EXECUTION_TRAIN_KEYS = ("compile", "channels_last", "workers", "max_loss_growth", "features")


@dataclass
class FusionConfig:
    """Fusion-LoRA (:mod:`geopeft.models.fusion`): which fusion blocks a model has, and their
    sizes."""

    tokenizer: bool = True
    """Learn the bands -> pseudo-RGB mapping (false = fixed true colour B04/B03/B02)."""
    caf: bool = True
    """Spectral token stream + cross-attention fusion."""
    glf: bool = True
    """Gated late fusion of fused and visual tokens (needs caf)."""
    heads: int = field(default=4, metadata={"minimum": 1})
    """Cross-attention heads (must divide the encoder width)."""
    ffn_ratio: float = field(default=2, metadata={"exclusiveMinimum": 0})
    """Fusion feed-forward width / encoder width."""
    tokenizer_hidden: int = field(default=16, metadata={"minimum": 0})
    """Hidden channels of the tokenizer's non-linear branch (0: linear mapping only)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any] | FusionConfig | None) -> FusionConfig:
        """The settings of a row's ``fusion`` mapping (a missing key: its default).

        Raises:
            ConfigError: gated late fusion without cross-attention fusion.
        """
        cfg = d if isinstance(d, FusionConfig) else cls(**(d or {}))
        if cfg.glf and not cfg.caf:
            raise ConfigError("fusion.glf: gated late fusion mixes the cross-attention output "
                             "with the visual tokens, so it needs fusion.caf: true")
        return cfg


@dataclass(frozen=True)
class Temporal:
    """How a time-series row cuts its series (:func:`geopeft.data.temporal.temporal_indices`)."""

    length: int
    """Dates per series."""
    ladder: tuple[int, ...]
    """The study's sequence lengths, longest first: shorter selections nest in longer ones."""
    pad: str
    """What a series shorter than ``length`` gets: ``mask`` (padded with empty dates the models
    mask), ``repeat`` (dates repeated) or ``error``."""
    reference: str
    """The date (YYYY-MM-DD) the temporal encodings count days from."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "temporal") -> Temporal:
        v = _take(cls, d, where)
        return cls(**{**v, "ladder": tuple(int(n) for n in v["ladder"])})


@dataclass(frozen=True)
class DataSpec:
    """The data of a job."""

    dataset: str
    """The dataset the row trains on."""
    bands: tuple[str, ...]
    """The band selection, in store order."""
    source: str
    """Where the raw data came from: ``synthetic`` (the embedded world), ``local``, ``download``."""


@dataclass(frozen=True)
class RowSpec:
    """One study row: one training job."""

    name: str
    """The run's name (its folder under ``runs/``)."""
    dataset: str
    """The row's dataset."""
    strategy: str
    """The key of the study's ``strategies`` table the row uses."""
    method: str
    """What trains: one of :data:`STRATEGIES`."""
    label_fraction: float
    """Share of the training labels used (a stratified, nested, seeded subset below 1)."""
    seed: int
    """The row's seed (initialisation, subset, data order)."""
    train: TrainArgs
    """The resolved training settings (defaults <- strategy <- row; every key of the study's
    ``train`` is required in the spec), with the row's seed; see :meth:`train_args`."""
    lora: LoraSpec | None = None
    """The adapter (``lora`` rows)."""
    options: Any = None
    """The strategy's own settings (``Strategy.settings_class``: VPT's prompts), from the
    row's ``Strategy.settings_key`` entry; None for a strategy without."""
    fusion: FusionConfig | None = None
    """Fusion-LoRA settings."""
    sequence_length: int | None = None
    """Dates per series (time-series rows)."""
    temporal: Temporal | None = None
    """How series are cut (time-series rows)."""
    segmentation: Segmentation | None = None
    """The time-series segmentation model's settings (time-series rows)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "row") -> RowSpec:
        optional = ("lora", "options", "fusion", "sequence_length", "temporal", "segmentation")
        v = _take(cls, d, where, optional)
        _take(TrainArgs, v["train"], f"{where}.train",  # every setting there
              _JOB_TRAIN_KEYS + _EXECUTION_TRAIN_KEYS)
        if v["method"] not in STRATEGY_REGISTRY:
            raise ConfigError(f"{where}.method: {v['method']!r} is not one of "
                              f"{tuple(STRATEGY_REGISTRY)}")
        if get_strategy(v["method"]).uses_adapter:
            v["lora"] = LoraSpec.from_dict(d.get("lora") or {}, f"{where}.lora")
        else:
            v.pop("lora", None)
        own = get_strategy(v["method"])
        v["options"] = (own.settings_class.from_dict(d.get(own.settings_key) or {},
                                                     f"{where}.{own.settings_key}")
                        if own.settings_key else None)
        if v.get("temporal") is not None:
            v["temporal"] = Temporal.from_dict(v["temporal"], f"{where}.temporal")
        if v.get("segmentation") is not None:
            v["segmentation"] = Segmentation.from_dict(v["segmentation"], f"{where}.segmentation")
        if v.get("fusion") is not None:
            v["fusion"] = FusionConfig.from_dict(v["fusion"])
        v["train"] = TrainArgs.from_dict(v["train"], seed=v["seed"])
        return cls(**v)

    @property
    def strategy_object(self) -> Strategy:
        """The :class:`~geopeft.strategies.Strategy` of :attr:`method`."""
        return get_strategy(self.method)

    def train_args(self, threads: int) -> TrainArgs:
        """The training settings (every one checked at :meth:`from_dict`) with the row's seed and
        the job's CPU threads."""
        return replace(self.train, threads=threads)


def _job_parts(d: dict[str, Any], part: str, where: str) -> tuple[str, DataSpec, int, bool]:
    """Study, data, threads and rehearsal flag of a job's JSON spec, its required keys checked
    (``part``: ``row`` or ``pretrain``)."""
    for key in ("study", "data", "backbone", "threads", part):
        if key not in d:
            raise ConfigError(f"{where}: missing {key}")
    data = _take(DataSpec, d["data"], f"{where}.data")
    # config.base_spec writes ``rehearsal`` into the specs of rehearsals only (so the specs of
    # real runs, and the Snakemake params made of them, stay as they were): absent is False
    return (d["study"], DataSpec(data["dataset"], tuple(data["bands"]), data["source"]),
            int(d["threads"]), bool(d.get("rehearsal", False)))


@dataclass(frozen=True)
class _Job:
    """What every job's spec holds."""

    study: str
    """The study's name."""
    data: DataSpec
    """The job's data (the pretrain job prepares the source set with its bands)."""
    threads: int
    """CPU threads of the job."""
    rehearsal: bool
    """Whether the job belongs to a rehearsal (fixtures, random weights, one epoch)."""
    raw: dict[str, Any]
    """The spec as JSON (run.json, MLflow params)."""


@dataclass(frozen=True)
class JobSpec(_Job):
    """Everything one training job receives (``geopeft train --spec``)."""

    backbone: Backbone | None
    """The row's encoder config (its strategy's own, else the study's); None for U-TAE."""
    row: RowSpec
    """The study row."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "job spec") -> JobSpec:
        """The typed spec of a job's JSON spec.

        Raises:
            ConfigError: a key is missing or a value is not allowed (named with ``where``).
        """
        study, data, threads, rehearsal = _job_parts(d, "row", where)
        return cls(study=study, data=data, threads=threads, rehearsal=rehearsal, raw=d,
                   backbone=None if d["backbone"] is None else
                   Backbone.from_dict(d["backbone"], f"{where}.backbone"),
                   row=RowSpec.from_dict(d["row"], f"{where}.row"))

    @property
    def encoder(self) -> Backbone | None:
        """The encoder to build: ``backbone``, without its weights for ``scratch`` rows (random
        initialisation); None for U-TAE (no encoder)."""
        if self.backbone is None:
            return None
        if not self.row.strategy_object.loads_weights:
            return replace(self.backbone, weights="none")
        return self.backbone

    def train_args(self) -> TrainArgs:
        """The row's training settings with its seed and the job's threads."""
        return self.row.train_args(self.threads)

    def features_reason(self) -> str | None:
        """Why the row runs its encoder on every sample of every epoch instead of training on
        its features computed once (:mod:`geopeft.train.features`); None when it can: a frozen
        encoder (a linear probe; a decoder-only segmentation row) with nothing of the row's
        between it and the head or decoder, and no dropout in it."""
        row = self.row
        if self.backbone is None:
            return "no encoder"
        if not row.strategy_object.frozen_encoder:
            return f"strategy {row.method} trains the encoder"
        if not row.train.features:
            return "train.features: false"
        if row.segmentation is not None and row.segmentation.model != "upernet_ltae":
            return f"segmentation.model {row.segmentation.model} has no separate encoder"
        if row.segmentation is not None and row.train.augment:
            # measured (bench/features.py): the 8 views of every date's levels cost more to
            # make than the encoder passes they save, as the decoder dominates such a row
            return ("train.augment: a time series's 8 dihedral views of every date's levels "
                    "cost more than the encoder passes they save (train.augment: false reads "
                    "features)")
        if row.fusion is not None:
            return "Fusion-LoRA's new modules sit inside the encoder"
        for key in ("drop_rate", "drop_path_rate"):
            if float(self.backbone.kwargs.get(key, 0) or 0) > 0:
                return f"backbone.kwargs.{key}: dropout changes the features every epoch"
        return None

    def features_request(self) -> dict[str, Any]:
        """What the features of this row's frozen encoder depend on: the encoder (its weights;
        for the study's pretrained one, the study whose pretrain rule made it), the data and its
        bands, and the views (8 dihedral views when the row augments, else 1); rows with the
        same request share one features job (:meth:`features_key`)."""
        assert self.backbone is not None
        bb = self.backbone.as_dict()
        return {"backbone": bb, "data": {"dataset": self.data.dataset, "source": self.data.source,
                                         "bands": list(self.data.bands)},
                "pretrain_of": self.study if bb.get("weights") == "pretrain" else None,
                # a segmentation decoder reads the encoder's tapped levels (every date's)
                "levels": (None if self.row.segmentation is None
                           else self.row.segmentation.out_indices or "declared"),
                # a random encoder is the row seed's
                "seed": self.row.seed if bb.get("weights") == "none" else None,
                "views": 8 if (self.row.train.augment
                               and self.row.strategy_object.augments_features) else 1,
                "rehearsal": self.rehearsal}

    def features_key(self) -> str:
        """The digest of :meth:`features_request`: the features store's name."""
        import hashlib

        from geopeft.io import canonical_json

        return hashlib.sha256(canonical_json(self.features_request()).encode()).hexdigest()[:16]

    def tracked_params(self) -> dict[str, Any]:
        """The params of the job's MLflow run: what tells the rows of a study apart, under the
        same keys for every row (``none`` where a row has no such thing, e.g. the adapter of a
        full fine-tuning), so MLflow's tables and comparison plots line up row by row. The whole
        spec is the run's ``config.json`` artifact."""
        row, train, enc = self.row, self.row.train, self.encoder
        adapter = (row.strategy_object.words(row.lora, options=row.options)
                   if row.lora is not None or row.options is not None else "none")
        if row.fusion:
            adapter += " + fusion " + " ".join(f"{k} {v}"
                                               for k, v in sorted(asdict(row.fusion).items()))
        model = row.segmentation.model if row.segmentation is not None else "classifier"
        return {
            "strategy": row.strategy, "method": row.method, "dataset": self.data.dataset,
            "bands": " ".join(self.data.bands), "label_fraction": row.label_fraction,
            "seed": row.seed, "sequence_length": row.sequence_length or "none",
            "model": model, "encoder": enc.name if enc else "none",
            "weights": enc.weights if enc else "none", "adapter": adapter,
            **{k: getattr(train, k) for k in ("epochs", "batch_size", "lr", "encoder_lr_factor",
                                              "weight_decay", "warmup_epochs", "loss", "augment")},
            "rehearsal": self.rehearsal,
        }


@dataclass(frozen=True)
class PretrainSpec(_Job):
    """What the pretrain job receives: the embedded backbone, trained on the synthetic source set."""

    backbone: Backbone
    """The study's backbone (built with random weights, then pretrained)."""
    train: TrainArgs
    """The ``pretrain`` settings (augmentation on)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "pretrain spec") -> PretrainSpec:
        """The typed spec of the pretrain job's JSON spec (``pretrain`` keys the schema leaves
        out, such as the evaluation batch, are :class:`TrainArgs`' own).

        Raises:
            ConfigError: a key is missing (named with ``where``).
        """
        study, data, threads, rehearsal = _job_parts(d, "pretrain", where)
        return cls(study=study, data=data, threads=threads, rehearsal=rehearsal, raw=d,
                   backbone=Backbone.from_dict(d["backbone"], f"{where}.backbone"),
                   train=TrainArgs.from_dict(d["pretrain"], augment=True, threads=threads))


__all__ = ["DEVICES", "ENCODER_NORMS", "LOSSES", "PEFT_METHODS", "SEGMENTATION_MODELS",
           "STRATEGIES", "TRAIN_KEYS", "Backbone", "ConfigError", "DataSpec", "FusionConfig",
           "JobSpec", "LoraSpec", "PretrainSpec", "PromptSpec", "RowSpec", "Segmentation", "Temporal",
           "TrainArgs"]
