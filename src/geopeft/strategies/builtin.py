"""The strategies geopeft ships, registered in the order the schema lists them.

* ``full``    -- every parameter trains.
* ``lora``    -- HF peft adapters on the encoder's target modules (``lora.method``: LoRA, DoRA,
  LoHa, LoKr, IA3, VeRA, FourierFT, OFT, BOFT; their settings from the study); the encoder is
  frozen, and the new modules train and are saved with the adapter (``modules_to_save``).
* ``linear``  -- the encoder is frozen; only the new modules (head; fusion blocks) train (linear
  probe, or decoder-only).
* ``e2e``     -- end to end: every parameter trains, the encoder at ``encoder_lr_factor`` (0.1
  unless the strategy sets it) x the head's learning rate.
* ``scratch`` -- every parameter trains from a random initialisation (the backbone's weights are
  ignored).
* ``bitfit``  -- the encoder's bias terms and the new modules train, everything else is frozen
  (BitFit, Ben Zaken et al. 2022).
* ``vpt``     -- learned prompt tokens in the frozen ViT and the new modules train (VPT, Jia et
  al. 2022; ``prompt``: tokens, deep or shallow, dropout; :mod:`geopeft.strategies.vpt`).
* ``adaptformer``, ``houlsby`` -- bottleneck adapters in the frozen ViT (beside each MLP, or
  after each attention and MLP) and the new modules train (``bottleneck``: dim, scale, dropout;
  :mod:`geopeft.strategies.bottleneck`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from geopeft.layout import ModelLayout
from geopeft.strategies.base import Strategy, encoder_targets, is_new, new_module_names, register
from geopeft.strategies.bottleneck import AdaptFormer, Houlsby
from geopeft.strategies.peft import LoraSpec, adapter_words, peft_config, target_suffixes
from geopeft.strategies.probes import KNN, Logistic
from geopeft.strategies.vpt import VPT

if TYPE_CHECKING:
    from torch import nn


class Full(Strategy):
    name = "full"
    summary = "all weights train"
    without_encoder = True

    def mark(self, model: nn.Module, new: list[str]) -> None:
        for p in model.parameters():
            p.requires_grad_(True)


class Scratch(Full):
    name = "scratch"
    summary = "all weights train, from a random initialisation"
    loads_weights = False


class E2E(Full):
    name = "e2e"
    summary = "all weights train, the encoder at encoder_lr_factor x lr"
    without_encoder = False
    encoder_lr_factor = 0.1


class Linear(Strategy):
    name = "linear"
    summary = "frozen encoder, the new modules (head, fusion blocks) train"
    frozen_encoder = True

    def mark(self, model: nn.Module, new: list[str]) -> None:
        for name, p in model.named_parameters():
            p.requires_grad_(is_new(name, new))


def is_bias(name: str) -> bool:
    """Whether parameter ``name`` is a bias term: named ``bias``, or ``<something>_bias`` (the
    separate query and value biases of Swin-V2's and BEiT's attention). Additive attention
    tables (``relative_position_bias_table``) are not bias terms."""
    last = name.rsplit(".", 1)[-1]
    return last == "bias" or last.endswith("_bias")


class BitFit(Strategy):
    name = "bitfit"
    summary = "the encoder's bias terms and the new modules train (BitFit)"

    def mark(self, model: nn.Module, new: list[str]) -> None:
        for name, p in model.named_parameters():
            p.requires_grad_(is_new(name, new) or is_bias(name))


class PeftAdapter(Strategy):
    name = "lora"
    summary = ("HF peft adapters (lora.method) in the frozen encoder, the new modules train and "
               "are saved with the adapter")
    uses_adapter = True

    def prepare(self, model: nn.Module, lora: LoraSpec | None = None,
                default_targets: list[str] | None = None, options: Any = None) -> nn.Module:
        from peft import get_peft_model

        lora = lora or LoraSpec()
        new = new_module_names(model)
        suffixes = target_suffixes(lora, default_targets) or ["q", "k", "v"]
        before = {id(p) for p in model.parameters()}
        try:
            wrapped = get_peft_model(model, peft_config(lora, encoder_targets(model, suffixes), new))
        except ValueError as err:
            raise ValueError(f"lora.target_modules {suffixes}: {err}") from None
        inside = ["base_model.model." + n for n in new]
        self.record(wrapped, {n for n, p in wrapped.named_parameters()
                              if is_new(n, inside) or id(p) not in before})
        return wrapped

    def words(self, lora: LoraSpec | None = None, targets: list[str] | None = None,
              options: Any = None) -> str:
        return adapter_words(lora or LoraSpec(), targets)

    def save(self, model: nn.Module, folder: Any) -> None:
        model.save_pretrained(str(ModelLayout(Path(folder)).adapter))  # type: ignore[operator]


for _strategy in (Full(), PeftAdapter(), Linear(), E2E(), Scratch(), BitFit(), VPT(),
                  AdaptFormer(), Houlsby(), KNN(), Logistic()):
    register(_strategy)
