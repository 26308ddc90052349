"""Visual prompt tuning (VPT, Jia et al. 2022): learned prompt tokens in a frozen ViT.

``vpt`` rows add ``prompt.tokens`` learned tokens to the encoder's token sequence, after its
prefix tokens (class token, registers), and train them with the new modules; the encoder stays
frozen. As the reference implementation (KMnP/vpt, ``PromptedTransformer``):

* **shallow** (``prompt.deep: false``): one set of prompts enters before the first block and
  travels through every block with the image tokens;
* **deep** (``prompt.deep: true``): each block has its own prompts, which replace the previous
  block's prompt outputs;
* prompts are initialised uniformly in +-sqrt(6 / (fan_in + width)), the patch projection's
  fan-in (the reference's ``3 x patch x patch`` for RGB: here the input's bands x patch x patch),
  and pass through ``prompt.dropout`` when they enter.

geopeft inserts them with hooks on the encoder's blocks and takes them out of each block's
output again (shallow: carried to the next block), so that every block's output, the taps of a
segmentation decoder and the head see the encoder's usual tokens; the outputs equal the
reference's forward (``tests/test_strategies.py``). VPT needs a ViT (timm ``VisionTransformer``:
the zoo's ViTs, SSL4EO-S12, the embedded encoder); Swin's windows and CROMA's ALiBi attention
have no place for extra tokens.
"""

from __future__ import annotations

import math
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
class PromptSpec:
    """The prompts of a ``vpt`` row."""

    tokens: int = field(default=10, metadata={"minimum": 1})
    """Prompt tokens (per block when deep)."""
    deep: bool = True
    """Deep prompts (each block its own) or shallow (one set, before the first block)."""
    dropout: float = field(default=0.0, metadata={"minimum": 0, "maximum": 1})
    """Dropout on the prompts as they enter."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "prompt") -> PromptSpec:
        """The prompts of a resolved ``prompt`` mapping (every key present)."""
        return settings_from_dict(cls, d, where)

    def words(self) -> str:
        """The prompts in words (summary, paper, MLflow)."""
        kind = "deep" if self.deep else "shallow"
        drop = f", dropout {self.dropout:g}" if self.dropout else ""
        return f"vpt {kind}, {self.tokens} tokens{drop}"


def _make_prompts(vit: Any, spec: PromptSpec) -> nn.Module:
    import torch
    from torch import nn

    class VisualPrompts(nn.Module):
        """The prompt tokens (``prompts``: layers x tokens x width) and their dropout."""

        def __init__(self) -> None:
            super().__init__()
            width = int(vit.embed_dim)
            layers = len(vit.blocks) if spec.deep else 1
            proj = vit.patch_embed.proj
            fan_in = int(proj.weight[0].numel())  # bands x patch x patch
            val = math.sqrt(6.0 / float(fan_in + width))
            self.prompts = nn.Parameter(torch.empty(layers, spec.tokens, width,
                                                    device=proj.weight.device))
            if self.prompts.device.type != "meta":
                nn.init.uniform_(self.prompts, -val, val)
            self.dropout = nn.Dropout(spec.dropout)

    return VisualPrompts()


def _hook(vit: Any, prompts: nn.Module, deep: bool) -> None:
    """Insert the prompts before each block and take them out after it (module docstring)."""
    import torch

    n = prompts.prompts.shape[1]
    start = int(vit.num_prefix_tokens)
    carry: dict[str, torch.Tensor] = {}

    def before(i: int):  # noqa: ANN202
        def pre(_module: Any, args: tuple) -> tuple:
            x = args[0]
            if deep or i == 0:
                p = prompts.dropout(prompts.prompts[i if deep else 0]).to(x.dtype)
                p = p.unsqueeze(0).expand(x.shape[0], -1, -1)
            else:
                p = carry.pop("p")
            return (torch.cat([x[:, :start], p, x[:, start:]], dim=1), *args[1:])
        return pre

    def after(_module: Any, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        if not deep:
            carry["p"] = out[:, start:start + n]
        return torch.cat([out[:, :start], out[:, start + n:]], dim=1)

    for i, block in enumerate(vit.blocks):
        block.register_forward_pre_hook(before(i))
        block.register_forward_hook(after, prepend=True)


class VPT(Strategy):
    name = "vpt"
    summary = ("visual prompt tuning: prompt tokens (prompt.tokens, deep or shallow) in the "
               "frozen ViT, and the new modules, train (VPT)")
    families = ("vit",)
    settings_key = "prompt"
    settings_class = PromptSpec

    def prepare(self, model: nn.Module, lora: LoraSpec | None = None,
                default_targets: list[str] | None = None,
                options: PromptSpec | None = None) -> nn.Module:
        spec = options or PromptSpec()
        vit = vit_encoder(model, self.name)
        vit.vpt = _make_prompts(vit, spec)
        _hook(vit, vit.vpt, spec.deep)
        new = new_module_names(model)
        trained = {id(p) for p in vit.vpt.parameters()}
        for name, p in model.named_parameters():
            p.requires_grad_(is_new(name, new) or id(p) in trained)
        self.record(model, {n for n, p in model.named_parameters() if p.requires_grad})
        return model

    def words(self, lora: LoraSpec | None = None, targets: list[str] | None = None,
              options: PromptSpec | None = None) -> str:
        return (options or PromptSpec()).words()
