"""Bottleneck adapters in a frozen ViT: AdaptFormer (parallel) and the Houlsby adapter
(sequential).

An adapter is ``up(dropout(act(down(h)))) x scale``: a down-projection to ``bottleneck.dim``,
ReLU, an up-projection back to the width; the down-projection has ``nn.Linear``'s default
initialisation, the up-projection and both biases start at zero, so the model starts as the
frozen encoder (AdaptFormer's initialisation).

* ``adaptformer`` (Chen et al. 2022, AdaptMLP): one adapter per block, beside the MLP: it reads
  the residual stream that enters the MLP sub-block (before ``norm2``) and its output is added
  to the MLP branch's, scaled by ``bottleneck.scale`` (0.1 as published):
  ``x + mlp(norm2(x)) + s * adapter(x)``.
* ``houlsby`` (Houlsby et al. 2019): two adapters per block, after the attention and after the
  MLP sub-layer, each with its own residual (``h + adapter(h)``, scale 1), before the block's
  residual addition.

geopeft adds them with hooks on the blocks (the encoder's modules keep their names, so the
pretrained weights load as they are); the adapters are modules of the encoder
(``<encoder>.bottleneck.<block>``), trained with the new modules and saved with the model.
ViTs only (timm ``VisionTransformer``: the zoo's ViTs, SSL4EO-S12, the embedded one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from geopeft.strategies.base import (
    Strategy,
    is_new,
    new_module_names,
    settings_from_dict,
    vit_encoder,
)

if TYPE_CHECKING:
    from torch import nn

    from geopeft.strategies.peft import LoraSpec


@dataclass(frozen=True)
class BottleneckSpec:
    """The adapters of an ``adaptformer`` or ``houlsby`` row."""

    dim: int = field(default=64, metadata={"minimum": 1})
    """Width of the adapter's bottleneck."""
    scale: float = field(default=0.1, metadata={"exclusiveMinimum": 0})
    """AdaptFormer: the scale of the adapter's output (0.1 as published; the Houlsby adapter
    takes none)."""
    dropout: float = field(default=0.0, metadata={"minimum": 0, "maximum": 1})
    """Dropout inside the adapter, after the activation."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "bottleneck") -> BottleneckSpec:
        """The adapters of a resolved ``bottleneck`` mapping (every key present)."""
        return settings_from_dict(cls, d, where)


def _adapter(width: int, spec: BottleneckSpec, scale: float, like: Any) -> nn.Module:
    import torch
    from torch import nn

    class Adapter(nn.Module):
        """``up(dropout(relu(down(h)))) x scale``, starting at zero."""

        def __init__(self) -> None:
            super().__init__()
            kw = {"device": like.device, "dtype": like.dtype}
            self.down = nn.Linear(width, spec.dim, **kw)
            self.up = nn.Linear(spec.dim, width, **kw)
            self.dropout = nn.Dropout(spec.dropout)
            self.scale = scale
            if like.device.type != "meta":
                with torch.no_grad():
                    self.down.bias.zero_()
                    self.up.weight.zero_()
                    self.up.bias.zero_()

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return self.up(self.dropout(torch.relu(self.down(h)))) * self.scale

    return Adapter()


def _add_output(adapter: nn.Module, residual: bool):  # noqa: ANN202
    """A forward hook adding ``adapter`` of the module's output to it (Houlsby)."""
    def hook(_module: Any, _args: tuple, out: Any) -> Any:
        return out + adapter(out) if residual else out
    return hook


class _Bottleneck(Strategy):
    families = ("vit",)
    settings_key = "bottleneck"
    settings_class = BottleneckSpec
    parallel: bool

    def prepare(self, model: nn.Module, lora: LoraSpec | None = None,
                default_targets: list[str] | None = None,
                options: BottleneckSpec | None = None) -> nn.Module:
        from torch import nn

        spec = options or BottleneckSpec()
        vit = vit_encoder(model, self.name)
        like = vit.patch_embed.proj.weight
        width = int(vit.embed_dim)
        adapters = nn.ModuleDict()
        for i, blk in enumerate(vit.blocks):
            if self.parallel:
                a = _adapter(width, spec, spec.scale, like)
                adapters[f"{i}_mlp"] = a
                seen: dict[str, Any] = {}
                blk.norm2.register_forward_pre_hook(
                    lambda _m, args, seen=seen: seen.__setitem__("x", args[0]))
                blk.ls2.register_forward_hook(
                    lambda _m, _a, out, a=a, seen=seen: out + a(seen.pop("x")))
            else:
                for where in ("ls1", "ls2"):
                    a = _adapter(width, spec, 1.0, like)
                    adapters[f"{i}_{where}"] = a
                    getattr(blk, where).register_forward_hook(_add_output(a, True))
        vit.bottleneck = adapters
        new = new_module_names(model)
        trained = {id(p) for p in adapters.parameters()}
        for name, p in model.named_parameters():
            p.requires_grad_(is_new(name, new) or id(p) in trained)
        self.record(model, {n for n, p in model.named_parameters() if p.requires_grad})
        return model

    def words(self, lora: LoraSpec | None = None, targets: list[str] | None = None,
              options: BottleneckSpec | None = None) -> str:
        spec = options or BottleneckSpec()
        scale = f", scale {spec.scale:g}" if self.parallel else ""
        drop = f", dropout {spec.dropout:g}" if spec.dropout else ""
        return f"{self.name} bottleneck {spec.dim}{scale}{drop}"


class AdaptFormer(_Bottleneck):
    name = "adaptformer"
    summary = ("AdaptFormer: a bottleneck adapter beside each block's MLP (bottleneck.dim, "
               "scale) in the frozen ViT, and the new modules, train")
    parallel = True


class Houlsby(_Bottleneck):
    name = "houlsby"
    summary = ("Houlsby adapters: bottleneck adapters after each block's attention and MLP "
               "(bottleneck.dim) in the frozen ViT, and the new modules, train")
    parallel = False
