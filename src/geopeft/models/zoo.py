"""The declarations of the backbone zoo, importable without torch (config validation uses them).

:mod:`geopeft.models.backbones` builds the models; this module only says what each backbone is.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geopeft.bands import RGB
from geopeft.models import families

# Band order of the SSL4EO-S12 13-band weights (their patch embedding's input channels).
SSL4EO_S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                   "B11", "B12")
# Band order of CROMA's optical encoder: 12 Sentinel-2 bands, B10 (cirrus) left out.
CROMA_S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11",
                  "B12")
#: Sentinel-2 names of the six HLS bands Prithvi-EO-2.0 was pretrained on (BLUE, GREEN, RED,
#: NIR_NARROW, SWIR_1, SWIR_2), in its order.
PRITHVI_S2_BANDS = ("B02", "B03", "B04", "B8A", "B11", "B12")
#: Per-band mean and std of Prithvi-EO-2.0's pretraining data, in DN (reflectance x 10,000):
#: ``PRITHVI_V2_MEAN``, ``PRITHVI_V2_STD`` of TerraTorch's ``prithvi_vit.py``.
PRITHVI_MEAN = (1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0)
PRITHVI_STD = (2248.0, 2179.0, 2178.0, 1850.0, 1242.0, 1049.0)
_HF = "https://hf.co"
#: Each normalisation rule of the zoo in words (its family implements it:
#: :attr:`geopeft.models.families.EncoderFamily.norm_rules`); read without torch by the
#: protocol card.
NORM_RULE_WORDS = {"croma_2sigma": "data mean +- 2 std -> [0, 1]"}


@dataclass(frozen=True)
class BackboneEntry:
    """A backbone of the zoo."""

    key: str
    """Registry name used as ``backbone.name``."""
    family: str
    """The encoder family's key: ``vit``, ``swin`` (timm) or ``croma``
    (:mod:`geopeft.models.croma`); its :class:`geopeft.models.families.EncoderFamily` builds the
    model and says what the task models need of it (token grid, taps, the attention fix for
    adapters, normalisation rules)."""
    arch: str
    """timm architecture name (family ``croma``: the name of geopeft's CROMA variant)."""
    weights: str
    """Default ``backbone.weights``."""
    description: str
    """One line for the listing."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Default keyword arguments for ``timm.create_model``."""
    bands: tuple[str, ...] | None = None
    """Bands the weights' patch embedding expects, in order (None: recorded with the weights)."""
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """Mean and std the weights expect, in scaled units (raw x the store's value scale, i.e.
    reflectance for Sentinel-2 DN); None: recorded with the weights (timm cfg, pretrain rule)."""
    norm_rule: str | None = None
    """How the weights expect inputs normalised when not by a fixed ``norm``: a rule of the
    encoder family (:attr:`geopeft.models.families.EncoderFamily.norm_rules`) deriving mean and
    std from the train split's statistics. ``croma_2sigma``
    (CROMA): per band, min = mean - 2 std and max = mean + 2 std, x -> clip((x - min) / (max -
    min), 0, 1), i.e. mean' = mean - 2 std, std' = 4 std, clipped to [0, 1]
    (:func:`geopeft.models.classifier.resolve_norm` applies it)."""
    lora_targets: tuple[str, ...] | None = None
    """Module name suffixes LoRA adapts by default (None: the family's,
    :attr:`geopeft.models.families.EncoderFamily.adapter_targets`; :meth:`targets`)."""
    checkpoint_wrapper: str | None = None
    """Key the published ``url:`` checkpoint wraps its state dict in (None: a bare state dict);
    the reader unwraps ``state_dict``, ``model`` and ``teacher``, the rehearsal writes it. A file
    holding several encoders (CROMA: ``s1_encoder``, ``s2_encoder``, ``joint_encoder``, ...)
    names the one to read (``s2_encoder``)."""
    taps: tuple[int, ...] | None = None
    """Blocks whose outputs feed a dense (segmentation) decoder, as the reference benchmark taps
    them (PANGAEA-bench's ``output_layers``); None: the decoder's own choice."""


    def targets(self) -> tuple[str, ...]:
        """The module name suffixes LoRA adapts by default: :attr:`lora_targets`, else the
        family's adapter targets (read without torch)."""
        return self.lora_targets or families.adapter_targets(self.family)


#: SSL4EO-S12's encoders: key part -> (family, timm architecture, name, UPerNet taps).
_SSL4EO_ARCHS: dict[str, tuple[str, str, str, tuple[int, ...] | None]] = {
    "vits16": ("vit", "vit_small_patch16_224", "ViT-S/16", (3, 5, 7, 11)),  # PANGAEA's taps
    "rn50": ("resnet", "resnet50", "ResNet-50", None),  # its four stages
}


def _ssl4eo(method: str, url: str, wrapper: str | None = None,
            arch: str = "vits16") -> BackboneEntry:
    family, timm_arch, words, taps = _SSL4EO_ARCHS[arch]
    return BackboneEntry(
        key=f"ssl4eo_s12_{arch}_{method}", family=family, arch=timm_arch,
        weights=f"url:{url}", bands=SSL4EO_S2_BANDS,
        norm=((0.0,) * 13, (1.0,) * 13),  # DN / 10000, as the SSL4EO-S12 benchmarks
        description=f"SSL4EO-S12 {words}, 13 Sentinel-2 L1C bands, {method.upper()}; "
                    f"input DN/10000",
        checkpoint_wrapper=wrapper, taps=taps,
    )


def _croma(size: str, dim: int, depth: int, url: str) -> BackboneEntry:
    return BackboneEntry(
        key=f"croma_optical_{size}", family="croma", arch=f"croma_optical_{size}",
        weights=f"url:{url}", bands=CROMA_S2_BANDS, norm_rule="croma_2sigma",
        description=f"CROMA {size} optical encoder (ViT-{size[0].upper()}/8, 2-D ALiBi), 12 "
                    f"Sentinel-2 bands; input the data's mean +- 2 std -> [0, 1]",
        kwargs={"embed_dim": dim, "depth": depth, "num_heads": 16, "patch_size": 8,
                "img_size": 120},  # CROMA's pretraining size
        checkpoint_wrapper="s2_encoder",
        taps=(3, 5, 7, 11),  # PANGAEA's croma_optical (its config is the large model)
    )


def _prithvi(size: str, dim: int, depth: int, patch: int, taps: tuple[int, ...],
             tl: bool) -> BackboneEntry:
    repo = f"Prithvi-EO-2.0-{size}" + ("-TL" if tl else "")
    return BackboneEntry(
        key=f"prithvi_eo_v2_{size.lower()[:-1]}" + ("_tl" if tl else ""), family="prithvi",
        arch=f"prithvi_eo_v2_{size.lower()[:-1]}",
        weights=f"url:https://huggingface.co/ibm-nasa-geospatial/{repo}/resolve/main/"
                f"{repo.replace('-', '_').replace('Prithvi_EO_2.0', 'Prithvi_EO_V2')}.pt",
        bands=PRITHVI_S2_BANDS,
        norm=(tuple(m * 1e-4 for m in PRITHVI_MEAN), tuple(d * 1e-4 for d in PRITHVI_STD)),
        description=f"Prithvi-EO-2.0 {size}" + (" TL" if tl else "") + f" (ViT, {dim} wide, "
                    f"{depth} blocks, {patch} px patches), 6 HLS bands (S2 B02 B03 B04 B8A B11 "
                    f"B12); input z-scored with its pretraining statistics"
                    + ("; its time and location encodings unused" if tl else ""),
        kwargs={"embed_dim": dim, "depth": depth, "num_heads": 16, "patch_size": patch,
                "img_size": 224},
        taps=taps,  # PANGAEA's prithvi output_layers
    )


def _dofa(size: str, dim: int, depth: int, heads: int, sha8: str,
          taps: tuple[int, ...] | None = None) -> BackboneEntry:
    # torchgeo's rehost of the authors' files (pinned revision, sha256 prefix in the name); any
    # Sentinel-2 band set (the kernel is generated from the bands' wavelengths), z-scored with
    # the data's statistics
    return BackboneEntry(
        f"dofa_{size}_patch16_224", "dofa", f"dofa_{size}_patch16_224",
        f"url:{_HF}/torchgeo/dofa/resolve/b8db318b64a90b9e085ec04ba8851233c5893666/"
        f"dofa_{size}_patch16_224-{sha8}.pth",
        f"DOFA {size} (ViT-{size[0].upper()}/16, wavelength-conditioned patch embedding), any "
        "Sentinel-2 bands; input z-scored with the data's statistics",
        kwargs={"embed_dim": dim, "depth": depth, "num_heads": heads, "patch_size": 16,
                "img_size": 224},
        taps=taps)


REGISTRY: dict[str, BackboneEntry] = {e.key: e for e in (
    BackboneEntry("vit_b16_in21k", "vit", "vit_base_patch16_224",
                  "timm:vit_base_patch16_224.augreg_in21k", "ViT-B/16, ImageNet-21k (timm)",
                  bands=RGB),
    BackboneEntry("vit_b16_in21k_orig", "vit", "vit_base_patch16_224",
                  "timm:vit_base_patch16_224.orig_in21k",
                  "ViT-B/16, ImageNet-21k, google/vit-base-patch16-224-in21k weights", bands=RGB),
    BackboneEntry("swinv2_tiny", "swin", "swinv2_tiny_window8_256",
                  "timm:swinv2_tiny_window8_256.ms_in1k", "Swin-V2-T, window 8, 256 px, ImageNet-1k",
                  bands=RGB),
    BackboneEntry("swinv2_small", "swin", "swinv2_small_window8_256",
                  "timm:swinv2_small_window8_256.ms_in1k", "Swin-V2-S, window 8, 256 px, ImageNet-1k",
                  bands=RGB),
    _ssl4eo("dino", f"{_HF}/torchgeo/vit_small_patch16_224_sentinel2_all_dino/resolve/"
                    "5b41dd418a79de47ac9f5be3e035405a83818a62/"
                    "vit_small_patch16_224_sentinel2_all_dino-36bcc127.pth"),
    _ssl4eo("moco", f"{_HF}/torchgeo/vit_small_patch16_224_sentinel2_all_moco/resolve/"
                    "1cb683f6c14739634cdfaaceb076529adf898c74/"
                    "vit_small_patch16_224_sentinel2_all_moco-67c9032d.pth"),
    _ssl4eo("moco", f"{_HF}/torchgeo/resnet50_sentinel2_all_moco/resolve/"
                    "da4f3c9dbe09272eb902f3b37f46635fa4726879/"
                    "resnet50_sentinel2_all_moco-df8b932e.pth", arch="rn50"),
    _ssl4eo("dino", f"{_HF}/torchgeo/resnet50_sentinel2_all_dino/resolve/"
                    "d7f14bf5530d70ac69d763e58e77e44dbecfec7c/"
                    "resnet50_sentinel2_all_dino-d6c330e9.pth", arch="rn50"),
    # torchgeo's files above are bare timm state dicts; the SSL4EO-S12 MAE encoder is saved as
    # MAE training saves checkpoints, under "model"
    _ssl4eo("mae", f"{_HF}/wangyi111/SSL4EO-S12/resolve/main/B13_vits16_mae_ep99_enc.pth",
            wrapper="model"),
    # The authors' files (huggingface.co/antofuller/CROMA, CROMA_base.pt / CROMA_large.pt) as
    # torchgeo (>= 0.7, torchgeo/models/croma.py) publishes them: pinned revisions, the sha256
    # prefix in the name, the authors' layout (a dict of encoders; the optical one under
    # "s2_encoder").
    _croma("base", 768, 12, f"{_HF}/torchgeo/croma/resolve/"
                            "387883f08af79d777167519c57cd826eda89a16f/CROMA_base-0238d814.pt"),
    _croma("large", 1024, 24, "https://huggingface.co/torchgeo/croma/resolve/"
                              "92cb1a0f4e34c6c01558baf070197c01255382f6/CROMA_large-921e69ad.pt"),
    _prithvi("300M", 1024, 24, 16, (5, 11, 17, 23), tl=False),
    _prithvi("300M", 1024, 24, 16, (5, 11, 17, 23), tl=True),
    _prithvi("600M", 1280, 32, 14, (7, 15, 23, 31), tl=False),
    _prithvi("600M", 1280, 32, 14, (7, 15, 23, 31), tl=True),
    _dofa("base", 768, 12, 12, "a0275954", taps=(3, 5, 7, 11)),  # PANGAEA's dofa output_layers
    _dofa("large", 1024, 24, 16, "0ff904d3"),
    BackboneEntry("embedded", "vit", "vit_tiny_patch16_224", "pretrain",
                  "the embedded backbone: a small ViT pretrained by the pretrain rule on the "
                  "synthetic source set", kwargs={"img_size": 64, "patch_size": 8, "depth": 4,
                                                  "embed_dim": 96, "num_heads": 3}),
)}


@functools.lru_cache(maxsize=1)
def timm_architectures() -> dict[str, str]:
    """Architecture name -> family of every model of a timm family (ViT, Swin-V2), read from the
    timm model file each family declares (:func:`geopeft.models.families.timm_files`) without
    importing timm (torch takes seconds to import; the Snakefile must start fast)."""
    timm_spec = importlib.util.find_spec("timm")
    if timm_spec is None or not timm_spec.submodule_search_locations:
        return {}
    models = Path(list(timm_spec.submodule_search_locations)[0]) / "models"
    out: dict[str, str] = {}
    for family, fname in families.timm_files().items():
        path = models / fname
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            out.update({m: family for m in re.findall(r"@register_model\s*\ndef (\w+)\(", text)})
    return out


def check_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a zoo backbone or an architecture of a timm
    family."""
    archs = timm_architectures()
    if name in REGISTRY or name in archs or not archs:
        return
    close = [k for k in [*REGISTRY, *archs] if name.split("_")[0] in k][:5]
    raise ValueError(f"{name!r} is neither a zoo backbone ({', '.join(REGISTRY)}) nor a timm "
                     f"architecture of an encoder family ({', '.join(families.timm_files())})"
                     + (f"; close: {', '.join(close)}" if close else ""))


def entry_for(name: str) -> BackboneEntry:
    """The registry entry of ``name``, or a generic entry for an architecture of a timm family
    (the family whose timm file registers it, :func:`timm_architectures`).

    Raises:
        ValueError: ``name`` is neither (or timm, which tells the families of its architectures,
            is not installed).
    """
    if name in REGISTRY:
        return REGISTRY[name]
    family = timm_architectures().get(name)
    if family is None:
        check_name(name)
        raise ValueError(f"{name!r} is not a zoo backbone, and timm (whose model files tell an "
                         f"architecture's family) is not installed")
    return BackboneEntry(name, family, name, "pretrain", f"timm {name}")


def resolve(bb: dict[str, Any]) -> dict[str, Any]:
    """A backbone config with the registry's declarations filled in (idempotent).

    Adds ``arch``, ``family``, ``weight_bands``, ``weight_norm`` (``{"mean", "std"}``, or
    ``{"rule"}`` for a :attr:`BackboneEntry.norm_rule`), ``lora_targets``, ``checkpoint_wrapper``
    and ``taps`` (a list, or None); merges the entry's kwargs under the config's; ``weights:
    null`` becomes the entry's default.
    """
    if "arch" in bb:
        return bb
    e = entry_for(bb["name"])
    out = dict(bb)
    out["arch"], out["family"] = e.arch, e.family
    out["kwargs"] = {**e.kwargs, **(bb.get("kwargs") or {})}
    out["weights"] = bb.get("weights") or e.weights
    out.setdefault("sha256", None)
    out.setdefault("file", None)
    out.setdefault("input_size", None)
    out.setdefault("normalize", "auto")
    out["weight_bands"] = list(e.bands) if e.bands else None
    out["weight_norm"] = ({"mean": list(e.norm[0]), "std": list(e.norm[1])} if e.norm
                          else {"rule": e.norm_rule} if e.norm_rule else None)
    out["lora_targets"] = list(e.targets())
    out["checkpoint_wrapper"] = e.checkpoint_wrapper
    out["taps"] = list(e.taps) if e.taps else None
    return out


