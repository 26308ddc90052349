"""Where backbone weights come from, how they are verified, and how they load into a model.

``backbone.weights`` (the registry in :mod:`geopeft.models.backbones` gives each backbone a
default):

* ``pretrain`` -- the checkpoint written by this study's ``pretrain`` rule
  (``backbone.safetensors`` + ``backbone.json`` recording architecture, bands and normalisation);
* ``none`` -- random initialisation (training from scratch);
* ``timm:<tag>`` -- timm hub weights, read from the Hugging Face cache or fetched when online;
* ``url:<https://...>`` -- a published checkpoint (e.g. SSL4EO-S12 on the Hugging Face hub),
  read from the torch hub cache (``$TORCH_HOME/hub/checkpoints/<file name>``) or downloaded
  there when online, and checked against ``backbone.sha256`` or the sha256 prefix published in
  the file name (``name-<8 hex>.pth``, the torch hub convention);
* ``file:<path>`` -- a local ``.safetensors`` / ``.pth`` state dict, checked against ``sha256``.

Offline without the weights is a :class:`WeightsError` that names what to download and where to
put it. A checksum mismatch is an error; the file is never loaded.

**Patch embedding for other band sets.** Weights know a list of bands (ImageNet/timm weights are
taken as B04, B03, B02; SSL4EO-S12 as the 13 Sentinel-2 bands; CROMA as its 12). For the
requested bands, a band the weights know keeps its filter (selecting fewer known bands is
exactly zero-filling the others); a band they do not know gets the mean filter of the known
bands, and the kernel is then scaled by ``n_known / n_requested`` so that a flat normalised
input produces the same response.

**CROMA checkpoints** hold several encoders (``s1_encoder``, ``s2_encoder``, ``joint_encoder``,
...): the zoo entry's ``checkpoint_wrapper`` names the one to read, and its keys are renamed to
:class:`~geopeft.models.croma.CROMAOptical`'s by its encoder family
(:meth:`geopeft.models.families.EncoderFamily.from_checkpoint`:
:func:`geopeft.models.croma.from_publisher`),
its linear patch embedding (columns ordered band, row, column) becoming the equivalent
convolution kernel (D, bands, 8, 8), so that the band mapping above applies as it is.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geopeft.bands import RGB
from geopeft.errors import GeopeftError
from geopeft.io import read_json
from geopeft.layout import PretrainLayout
from geopeft.models.families import get_family

log = logging.getLogger(__name__)


class WeightsError(GeopeftError, RuntimeError):
    """Backbone weights cannot be found, fetched or verified."""


@dataclass
class Normalization:
    """Per-band normalisation in scaled units (raw value x value_scale): the model computes
    ``(raw x value_scale - mean) / std``, then clamps to ``clip`` when set."""

    bands: list[str]
    """The bands, in the order of ``mean`` and ``std``."""
    mean: list[float]
    """Per-band offset, in scaled units."""
    std: list[float]
    """Per-band divisor, in scaled units."""
    clip: tuple[float, float] | None = None
    """(low, high) the normalised values are clamped to (CROMA: (0, 1)); None: not clamped."""
    rule: str | None = None
    """How ``mean`` and ``std`` derive from the data's train-split statistics, when they do
    (a rule of an encoder family, :attr:`geopeft.models.families.EncoderFamily.norm_rules`). A
    weights' declared normalisation with a rule has no values of its own (empty ``mean`` and
    ``std``): :func:`geopeft.models.classifier.resolve_norm` derives them for each store."""


@dataclass
class Weights:
    """A backbone state dict (head removed) and what it was trained on."""

    state: dict[str, torch.Tensor]
    bands: list[str]
    norm: Normalization | None
    origin: str
    path: Path | None = None
    """The checkpoint file it was read from (errors name it)."""


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: The keys of a timm classifier layer (``head`` of a ViT, ``head.fc`` of a Swin or ConvNeXt,
#: whose ``head.norm`` is the encoder's final norm and stays, ``fc`` of a ResNet).
_CLASSIFIER = re.compile(r"^(head|head\.fc|fc|fc_norm\.head)\.(weight|bias)$")


def is_classifier_key(key: str) -> bool:
    """Whether a state-dict key belongs to a timm model's classifier layer (not the encoder)."""
    return bool(_CLASSIFIER.match(key))


def _strip_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not is_classifier_key(k)}


def _read_state(path: Path, wrapper: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file, unwrapped from training wrappers and key prefixes.

    Args:
        path: the checkpoint.
        wrapper: the key the state dict is under, when the file holds several (the zoo entry's
            ``checkpoint_wrapper``, e.g. CROMA's ``s2_encoder``); a file without it is read as
            usual, one holding other encoders only is an error naming what it holds.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise WeightsError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if wrapper and isinstance(obj, dict):
        if isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
        elif obj and all(isinstance(v, dict) for v in obj.values()) and not (
                {"state_dict", "model", "teacher"} & set(obj)):
            raise WeightsError(f"{path}: holds {', '.join(map(str, obj))} but no {wrapper!r} "
                               f"state dict")
    for key in ("state_dict", "model", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: holds no state dict")
    for prefix in ("module.", "backbone.", "encoder."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _declared(bb: dict[str, Any], n_in: int) -> tuple[list[str], Normalization | None]:
    """Bands and normalisation of file/url weights: the registry's, else RGB for 3 channels (a
    declared rule, e.g. CROMA's, has no values until :func:`~geopeft.models.classifier.resolve_norm`
    derives them from a store)."""
    bands = list(bb.get("weight_bands") or ([] if n_in != 3 else RGB))
    norm = bb.get("weight_norm")
    if not norm:
        return bands, None
    return bands, Normalization(bands, list(norm.get("mean", [])), list(norm.get("std", [])),
                                rule=norm.get("rule"))


def _from_file(bb: dict[str, Any], path: Path, origin: str) -> Weights:
    state = _read_state(path, bb.get("checkpoint_wrapper"))
    if bb.get("family"):  # the published layout -> the model's (CROMA's renamed)
        try:
            state = get_family(bb["family"]).from_checkpoint(state, bb)
        except ValueError as err:
            raise WeightsError(f"{path}: {err}") from None
    pw = _patch_weight(state, bb.get("family"))
    any_bands = bb.get("family") and _input_conv(bb["family"]) is None
    bands, norm = _declared(bb, pw.shape[1] if pw is not None else 0 if any_bands else 3)
    if pw is not None and bands and pw.shape[1] != len(bands):
        raise WeightsError(f"{path}: patch embedding has {pw.shape[1]} input channels, but "
                           f"{bb['name']} declares {len(bands)} bands {bands}")
    return Weights(_strip_head(state), bands, norm, origin, path)


def hub_cache_path(url: str) -> Path:
    """Where ``url:`` weights are looked for: the torch hub checkpoint cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1].split("?")[0]


def expected_sha256(bb: dict[str, Any], name: str) -> str | None:
    """``backbone.sha256``, else the prefix published in a ``name-<8 hex>.pth`` file name."""
    if bb.get("sha256"):
        return str(bb["sha256"])
    m = re.search(r"-([0-9a-f]{8,64})\.[a-z]+$", name)
    return m.group(1) if m else None


def _url_weights(bb: dict[str, Any], url: str) -> Weights:
    path = hub_cache_path(url)
    want = expected_sha256(bb, path.name)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        try:
            torch.hub.download_url_to_file(url, str(part), progress=False)
        except Exception as err:  # offline: URLError, socket errors, HTTP errors
            raise WeightsError(
                f"backbone.weights: {url} is not in the torch hub cache and could not be downloaded "
                f"({type(err).__name__}: {str(err)[:200]}). On a machine with network, download it "
                f"to {path} (or set TORCH_HOME), or use backbone.weights: file:<path> with "
                f"backbone.sha256"
            ) from None
        _check(part, want, url)
        part.replace(path)
    _check(path, want, str(path))
    return _from_file(bb, path, f"url:{path.name}")


def _check(path: Path, want: str | None, what: str) -> None:
    got = sha256_file(path)
    if want is None:
        log.warning("%s: no published checksum; sha256 is %s (pin it with backbone.sha256)", what, got)
    elif not got.startswith(want):
        bad = path.with_name(path.name + ".bad")
        path.replace(bad)
        raise WeightsError(f"{what}: sha256 {got} does not match the expected {want}; "
                           f"the file was moved aside to {bad}")


def _pinned(path: Path, want: str | None) -> str:
    """The sha256 of a local weights file, which must equal ``backbone.sha256`` (the file is
    left where it is: it is the user's)."""
    got = sha256_file(path)
    if got != want:
        raise WeightsError(f"{path}: sha256 {got} does not match backbone.sha256 {want}")
    return got


def load_weights(bb: dict[str, Any], pretrain_dir: Path | None = None) -> Weights | None:
    """Resolve ``backbone.weights`` to a state dict; ``None`` for ``weights: none``.

    Args:
        bb: the resolved backbone config (``weights``, ``sha256``, ``file``).
        pretrain_dir: the embedded pretrained backbone (``weights: pretrain``).
    """
    w = bb["weights"]
    if w == "none":
        return None
    if w == "pretrain":
        if pretrain_dir is None:
            raise WeightsError("backbone.weights is 'pretrain' but no pretrain checkpoint was given")
        meta_path = PretrainLayout(Path(pretrain_dir)).record
        st_path = PretrainLayout(Path(pretrain_dir)).weights
        for p in (meta_path, st_path):
            if not p.is_file():
                raise WeightsError(f"{p}: pretrained backbone not found (run the pretrain rule)")
        meta = read_json(meta_path)
        if sha256_file(st_path) != meta["sha256"]:
            raise WeightsError(f"{st_path}: sha256 does not match {meta_path}")
        from safetensors.torch import load_file

        norm = Normalization(**meta["norm"]) if meta.get("norm") else None
        return Weights(_strip_head(load_file(str(st_path))), list(meta["bands"]), norm,
                       f"pretrain:{meta['sha256'][:12]}", st_path)
    if w.startswith("file:"):
        path = Path(w[5:])
        if not path.is_file():
            raise WeightsError(f"backbone.weights: {path} not found")
        got = _pinned(path, bb["sha256"])
        return _from_file(bb, path, f"file:{got[:12]}")
    if w.startswith("url:"):
        return _url_weights(bb, w[4:])
    if w.startswith("timm:"):
        return _timm_weights(bb, w[5:])
    if w.startswith("hf:"):
        return _hf_weights(bb, w[3:])
    raise WeightsError(f"backbone.weights: {w!r} is not understood")


#: ``hf:<owner>/<repo>[@<revision>]/<file>``: a file of a Hugging Face model repository.
HF_WEIGHTS = re.compile(r"^(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<rev>[^/\s]+))?/(?P<file>\S+)$")


def _hf_weights(bb: dict[str, Any], spec: str) -> Weights:
    """``hf:<owner>/<repo>[@<revision>]/<file>``: the file from the Hugging Face cache
    (``HF_HUB_CACHE``; fetched when online, never with ``HF_HUB_OFFLINE=1``), checked against
    ``backbone.sha256`` when given (else its sha256 is logged), read in the backbone's published
    layout."""
    import os

    m = HF_WEIGHTS.match(spec)
    if m is None:
        raise WeightsError(f"backbone.weights: hf:{spec} is not hf:<owner>/<repo>[@<revision>]/"
                           f"<file>")
    from huggingface_hub import hf_hub_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        path = Path(hf_hub_download(m["repo"], m["file"], revision=m["rev"],
                                    cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                                    local_files_only=offline))
    except Exception as err:  # offline or missing: the hub raises many different types
        raise WeightsError(
            f"backbone.weights: hf:{spec}: {m['file']} of {m['repo']}"
            f"{'@' + m['rev'] if m['rev'] else ''} is not in the Hugging Face cache"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ' and could not be fetched'} "
            f"({type(err).__name__}). On a machine with network run: huggingface-cli download "
            f"{m['repo']} {m['file']}{' --revision ' + m['rev'] if m['rev'] else ''} and copy "
            f"the cache, or use backbone.weights: file:<path> with backbone.sha256") from None
    _check(path, bb.get("sha256"), f"hf:{spec}")
    return _from_file(bb, path, f"hf:{spec}")


def _timm_weights(bb: dict[str, Any], tag: str) -> Weights:
    import timm

    overlay = {}
    if bb.get("file"):  # a local copy of the tag's weights file, loaded by timm as the hub's
        path = Path(bb["file"])
        if not path.is_file():
            raise WeightsError(f"backbone.file: {path} not found (the weights file of timm:{tag})")
        _pinned(path, bb.get("sha256"))
        overlay = {"pretrained_cfg_overlay": {"file": str(path)}}
    try:
        model = timm.create_model(tag, pretrained=True, num_classes=0, **overlay,
                                  **{k: v for k, v in bb["kwargs"].items() if k != "in_chans"})
    except Exception as err:  # offline hub access raises many different exception types
        raise WeightsError(
            f"backbone.weights: timm weights {tag!r} are not in the Hugging Face cache and could "
            f"not be fetched ({type(err).__name__}: {str(err)[:200]}). On a machine with network "
            f"run: python -c \"import timm; timm.create_model('{tag}', pretrained=True)\" and copy "
            f"~/.cache/huggingface, or save the state dict and use backbone.weights: file:<path>"
        ) from None
    cfg = model.pretrained_cfg
    mean, std = list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))
    norm = Normalization(list(RGB), mean, std) if len(mean) == 3 else None
    origin = f"timm:{tag}" + (f" (file {Path(bb['file']).name})" if overlay else "")
    return Weights(_strip_head(model.state_dict()), list(RGB), norm, origin,
                   Path(bb["file"]) if overlay else None)


def _input_conv(family: str | None) -> str | None:
    """The state-dict key of a family's band-reading convolution (a ViT's patch embedding);
    None: a family whose kernel is not a weight (DOFA's, generated from the wavelengths)."""
    return get_family(family).input_conv if family else "patch_embed.proj.weight"


def _patch_weight(state: dict[str, torch.Tensor], family: str | None = None,
                  ) -> torch.Tensor | None:
    key = _input_conv(family)
    return state.get(key) if key is not None else None


def adapt_patch_embed(weight: torch.Tensor, src_bands: list[str], dst_bands: list[str]) -> torch.Tensor:
    """Map a patch-embedding kernel (D, C_src, p, p) from ``src_bands`` to ``dst_bands``."""
    if list(src_bands) == list(dst_bands):
        return weight
    if not src_bands:
        if weight.shape[1] != len(dst_bands):
            raise WeightsError(
                f"the weights' patch embedding has {weight.shape[1]} unnamed input channels; "
                f"cannot map them to {len(dst_bands)} bands"
            )
        return weight
    known = [b for b in dst_bands if b in src_bands]
    mean_filter = weight.mean(dim=1)
    chans = [weight[:, src_bands.index(b)] if b in src_bands else mean_filter for b in dst_bands]
    out = torch.stack(chans, dim=1)
    if len(known) != len(dst_bands):
        out = out * (len(src_bands) / len(dst_bands))
    return out


def load_into(model: nn.Module, weights: Weights, bands: list[str]) -> None:
    """Load ``weights`` into a timm ViT built for ``bands`` (head left as initialised).

    Args:
        model: the timm model.
        weights: the loaded weights.
        bands: the store's bands (the patch embedding is adapted to them).
    """
    state = dict(weights.state)
    if getattr(model, "drops_qkv_bias", False):  # backbone.drop_qkv_bias: PANGAEA's encoder
        dropped = [k for k in state if k.endswith("attn.qkv.bias")]
        for k in dropped:
            del state[k]
        log.info("backbone.drop_qkv_bias: left out the %d published q/k/v biases of %s",
                 len(dropped), weights.path or weights.origin)
    key = _input_conv(getattr(model, "encoder_family", None))
    pw = state.get(key) if key is not None else None
    if pw is not None and key is not None:
        state[key] = adapt_patch_embed(pw, weights.bands, bands)
    pos = state.get("pos_embed")
    own = model.state_dict()
    if pos is not None and "pos_embed" in own and pos.shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
        grid = model.patch_embed.grid_size
        state["pos_embed"] = resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=prefix)
    check_fits(model, state, weights)
    model.load_state_dict(state, strict=False)


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], weights: Weights) -> None:
    """Raise :class:`WeightsError` naming the checkpoint file and the first mismatching keys
    unless every tensor of ``model`` (head aside) is in ``state`` with the same shape and
    ``state`` holds nothing else: never a silent partial load."""
    own = model.state_dict()
    persistent = {k for k in own if not is_classifier_key(k)}
    bad_shape = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in state.items()
                 if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(persistent - set(state))
    unexpected = sorted(set(state) - set(own))
    if bad_shape or missing or unexpected:
        where = weights.path or weights.origin
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:5])}" for label, keys in
                 (("shape mismatch", bad_shape), ("missing", missing), ("unexpected", unexpected))
                 if keys]
        raise WeightsError(f"{where}: checkpoint ({weights.origin}) does not fit "
                           f"{type(model).__name__}: " + "; ".join(parts))
