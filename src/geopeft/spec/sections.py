"""The typed sections of a job spec that are also study settings: the encoder (:class:`Backbone`)
and the time-series segmentation model (:class:`Segmentation`, :class:`Ltae`), with the field
helpers every settings dataclass uses (:func:`setting`, :func:`optional`, :func:`required`: a
field's JSON-Schema constraints in its metadata, read by :mod:`geopeft.settings`).

A section parsed from a spec remembers which keys the spec gave (:meth:`Segmentation.as_dict`
returns exactly those), so a key left out stays out: the model fills its own default.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from geopeft.errors import ConfigError
from geopeft.strategies import REGISTRY as STRATEGY_REGISTRY

#: Segmentation models of time-series rows (``strategies.<name>.segmentation.model``,
#: :mod:`geopeft.models.segmentation`).
SEGMENTATION_MODELS = ("upernet_ltae", "utae")
#: U-TAE encoder norms (:mod:`geopeft.models.utae`).
ENCODER_NORMS = ("group", "batch")
#: Input normalisation of a backbone (``backbone.normalize``).
NORMALIZATIONS = ("auto", "backbone", "dataset")
#: A SHA-256 checksum.
SHA256_PATTERN = "^[0-9a-f]{64}$"
#: What a segmentation model takes for the settings a study leaves out
#: (:class:`geopeft.models.segmentation.SegConfig`; the schema's descriptions quote them).
SEGMENTATION_DEFAULTS: dict[str, Any] = {
    "channels": 512, "encoder_chunk": 64, "checkpoint": True, "encoder_widths": (64, 64, 64, 128),
    "decoder_widths": (32, 32, 64, 128), "out_conv": 32, "encoder_norm": ENCODER_NORMS[0]}
#: L-TAE settings of each model (``segmentation.ltae`` overrides them key by key): the U-TAE
#: reference's, and PANGAEA's shared L-TAE (``d_model: null`` = the encoder's width).
LTAE_DEFAULTS: dict[str, dict[str, Any]] = {
    "utae": {"d_model": 256, "heads": 16, "d_k": 4, "positional_encoding": True},
    "upernet_ltae": {"d_model": None, "heads": 16, "d_k": 4, "positional_encoding": False},
}


def _words(v: Any) -> str:
    """A default as the schema's descriptions write it (YAML's words)."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


_D = {k: _words(v) for k, v in SEGMENTATION_DEFAULTS.items()}


def setting(default: Any = MISSING, **schema: Any) -> Any:
    """A key with a default (a list, mapping or section class is copied per instance)."""
    if isinstance(default, type):
        return field(default_factory=default, metadata=schema)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=schema)
    return field(default=default, metadata=schema)


def optional(**schema: Any) -> Any:
    """A key that may be left out; no default is filled in."""
    return field(default=None, metadata={**schema, "optional": True})


def required(**schema: Any) -> Any:
    """A key every study sets."""
    return field(metadata=schema)


def _given(cls: Any, d: dict[str, Any], where: str) -> dict[str, Any]:
    """The keys of ``d`` that are fields of ``cls``; another key is a ConfigError."""
    names = {f.name for f in fields(cls) if not f.metadata.get("job")}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}")
    return dict(d)


@dataclass(kw_only=True)
class Backbone:
    """An encoder: a zoo entry or a timm architecture, and its weights."""

    name: str = required()
    """A backbone of the zoo (`geopeft backbones` lists them: vit_b16_in21k, swinv2_tiny,
    ssl4eo_s12_vits16_dino/moco/mae, croma_optical_base/large, embedded, ...) or any timm ViT /
    Swin-V2 architecture name, e.g. vit_base_patch16_224."""
    kwargs: dict[str, Any] = setting({})
    """Extra keyword arguments for timm.create_model (img_size, patch_size, depth, ...), over the
    zoo entry's."""
    weights: str | None = setting(None, pattern="^(pretrain|none|timm:.+|url:.+|file:.+|"
                                                "hf:[^/@ ]+/[^/@ ]+(@[^/ ]+)?/.+)$")
    """null = the zoo entry's published weights (pretrain for a plain timm name); pretrain = the
    checkpoint of this study's pretrain rule; none = random initialisation; timm:<tag> = timm hub
    weights (needs the HF cache or network); url:<https://...> = a published checkpoint in the
    torch hub cache (downloaded when online, sha256-checked); hf:<owner>/<repo>[@<revision>]/
    <file> = a file of a Hugging Face model repository through its cache (HF_HUB_OFFLINE=1:
    the cache only; checked against sha256 when given), in the backbone's published layout;
    file:<path> = a local .safetensors/.pth checked against sha256."""
    sha256: str | None = setting(None, pattern=SHA256_PATTERN)
    """Checksum of file weights, of url weights (instead of the hash in the file name) and of
    `file`."""
    file: str | None = None
    """A local copy of the weights file of timm:<tag> weights (e.g. on an offline cluster, or the
    rehearsal's fixture), loaded by timm with the tag's pretrained configuration; needs sha256."""
    input_size: int | None = None
    """Resize inputs to this side before the backbone (null = backbone img_size)."""
    normalize: str = setting("auto", enum=NORMALIZATIONS)
    """backbone = the normalisation the weights were trained with (recorded in the checkpoint or
    timm's pretrained cfg); dataset = train-split statistics; auto = backbone when known."""
    drop_qkv_bias: bool | None = optional()
    """true = build the ViT without its q/k/v biases and leave the published ones out when the
    weights load, as PANGAEA-bench builds its SSL4EO-S12 encoder (22,634,880 parameters for
    ViT-S/16 instead of the published 22,648,704). Off by default: the published weights hold
    them. ViT encoders only; a replication of PANGAEA's protocol names it."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "backbone") -> Backbone:
        """The encoder of a spec's ``backbone`` mapping (a key saved specs lack: its default).

        Raises:
            ConfigError: an unknown key, or no ``name`` (named with ``where``).
        """
        if "name" not in d:
            raise ConfigError(f"{where}: missing name")
        return cls(**_given(cls, d, where))

    def as_dict(self) -> dict[str, Any]:
        """The encoder as the models take it (:func:`geopeft.models.zoo.resolve`)."""
        return asdict(self)


@dataclass(kw_only=True)
class _GivenKeys:
    """A section whose keys a study may leave out for the model to fill: it remembers the keys
    the spec gave (:meth:`as_dict` returns exactly those, a nested section's too)."""

    given: tuple[str, ...] = field(default=(), repr=False, compare=False, metadata={"job": True})
    """The keys the spec gave (the rest: the model's defaults)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str) -> Any:
        """The section of a spec's mapping ``d``, remembering which keys it gave.

        Raises:
            ConfigError: an unknown key (named with ``where``).
        """
        v = _given(cls, d or {}, where)
        for key, section in _NESTED.get(cls.__name__, {}).items():
            if v.get(key) is not None:
                v[key] = section.from_dict(v[key], f"{where}.{key}")
        return cls(**v, given=tuple(v))

    def as_dict(self) -> dict[str, Any]:
        """The keys the spec gave, as it gave them."""
        return {k: v.as_dict() if isinstance(v, _GivenKeys) else v
                for k in self.given for v in (getattr(self, k),)}


@dataclass(kw_only=True)
class Ltae(_GivenKeys):
    """L-TAE settings (the defaults of each model: :data:`LTAE_DEFAULTS`)."""

    d_model: int | None = optional(nullable=True, minimum=1)
    """Width of the attention (null = the encoder's width)."""
    heads: int | None = optional(minimum=1)
    """Attention heads."""
    d_k: int | None = optional(minimum=1)
    """Key width per head."""
    positional_encoding: bool | None = optional()
    """Add the encoding of days since temporal.reference_date (period 1000)."""


@dataclass(kw_only=True)
class Segmentation(_GivenKeys):
    """Time-series segmentation model (time-series datasets, e.g. PASTIS;
    geopeft.models.segmentation). upernet_ltae = PANGAEA-bench's seg_upernet_mt_ltae: the
    backbone on every date, four tapped levels, one L-TAE shared by all levels, a Feature2Pyramid
    neck and a UPerNet head; utae = the supervised U-TAE baseline of utae-paps (no backbone;
    strategy full or scratch)."""

    model: str = setting(SEGMENTATION_MODELS[0], enum=SEGMENTATION_MODELS)
    """upernet_ltae (an encoder of the zoo + PANGAEA's UPerNet + L-TAE) or utae."""
    channels: int | None = optional(minimum=4, description=(
        f"UPerNet channels (default {_D['channels']}, as PANGAEA)."))
    out_indices: list[int] | None = optional(items={"minimum": 0}, minItems=4, maxItems=4)
    """ViT blocks feeding the decoder (default: the encoder's declared taps, e.g. 3 5 7 11 for
    SSL4EO-S12 ViT-S/16 and CROMA as PANGAEA; else four evenly spaced)."""
    ltae: Ltae | None = optional()
    encoder_chunk: int | None = optional(minimum=1, description=(
        f"Frames the encoder processes at once (default {_D['encoder_chunk']}): bounds memory."))
    checkpoint: bool | None = optional(description=(
        f"Recompute a trained encoder's activations per chunk in the backward pass (default "
        f"{_D['checkpoint']})."))
    encoder_widths: list[int] | None = optional(items={"minimum": 1}, minItems=2, description=(
        f"U-TAE encoder channels per level (default {_D['encoder_widths']})."))
    decoder_widths: list[int] | None = optional(items={"minimum": 1}, minItems=2, description=(
        f"U-TAE decoder channels per level (default {_D['decoder_widths']}; the last equals the "
        f"encoder's last)."))
    out_conv: int | None = optional(minimum=1, description=(
        f"U-TAE output block's first width (default {_D['out_conv']})."))
    encoder_norm: str | None = optional(enum=ENCODER_NORMS, description=(
        f"U-TAE encoder norm (default {_D['encoder_norm']}): group = GroupNorm(4), the "
        f"reference's default; batch = the reference's option."))


#: The nested sections of each section (parsed by :meth:`_GivenKeys.from_dict`).
_NESTED: dict[str, dict[str, type[_GivenKeys]]] = {"Segmentation": {"ltae": Ltae}}

Ltae.__doc__ = "L-TAE settings. " + "; ".join(
    f"{model}: " + ", ".join(f"{k} {_words(v)}" for k, v in d.items())
    for model, d in LTAE_DEFAULTS.items()) + " (d_model null = the encoder's width)."
Segmentation.__doc__ = (Segmentation.__doc__ or "").replace(
    "strategy full or scratch", "strategy " + " or ".join(
        n for n, st in STRATEGY_REGISTRY.items() if st.without_encoder))


__all__ = ["ENCODER_NORMS", "LTAE_DEFAULTS", "NORMALIZATIONS", "SEGMENTATION_DEFAULTS",
           "SEGMENTATION_MODELS", "SHA256_PATTERN", "Backbone", "Ltae", "Segmentation", "optional",
           "required", "setting"]
