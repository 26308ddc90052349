"""Cheap probes of a frozen encoder: a kNN classifier and a logistic regression on its pooled
features, fit in one pass over the features job's output (no epochs, no learning rate).

* ``knn`` is DINO's weighted kNN protocol (Caron et al. 2021, ``eval_knn.py`` of
  facebookresearch/dino): features L2-normalised, the ``probe.k`` (20) train samples of highest
  cosine similarity vote for their class with weight ``exp(similarity / probe.temperature)``
  (0.07); a sample's class scores are the normalised votes (multi-label: each class's weighted
  share of neighbours carrying it). The head holds the train features and targets as buffers,
  saved with the run.
* ``logistic`` is a multinomial logistic regression (multi-label: one per class) fit to
  convergence by L-BFGS on the train features (full batch, from zero weights): the mean loss
  plus ``probe.l2`` / 2 x the squared weights (the bias unpenalised), i.e. scikit-learn's
  ``LogisticRegression(C=1 / (l2 x n_train))``, against which ``tests/test_features.py`` checks
  it. It is the classifier's own linear head, so the run saves and serves as a linear probe.

Both read the samples as they are (one view: no augmentation) and need the row's features
(``train.features: true``); their rows are refused at validation otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from geopeft.strategies.base import Strategy, is_new, new_module_names, settings_from_dict

if TYPE_CHECKING:
    from torch import nn

    from geopeft.strategies.peft import LoraSpec


@dataclass(frozen=True)
class ProbeSpec:
    """The settings of a ``knn`` or ``logistic`` probe."""

    k: int = field(default=20, metadata={"minimum": 1})
    """knn: neighbours that vote (DINO: 20)."""
    temperature: float = field(default=0.07, metadata={"exclusiveMinimum": 0})
    """knn: a neighbour's vote is exp(cosine similarity / temperature) (DINO: 0.07)."""
    l2: float = field(default=1e-4, metadata={"minimum": 0})
    """logistic: weight of the squared weights' penalty (l2 / 2 x |W|^2 added to the mean
    loss)."""
    max_iter: int = field(default=1000, metadata={"minimum": 1})
    """logistic: L-BFGS iterations at most."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "probe") -> ProbeSpec:
        """The probe of a resolved ``probe`` mapping (every key present)."""
        return settings_from_dict(cls, d, where)

    def words(self, name: str) -> str:
        """The probe in words (summary, paper, MLflow)."""
        return (f"knn, k {self.k}, temperature {self.temperature:g}" if name == "knn"
                else f"logistic, l2 {self.l2:g}")


def knn_head(width: int, classes: int) -> nn.Module:
    """A kNN head for features of ``width``: empty until :meth:`fit`; its buffers (the train
    features, normalised, and their targets) are saved with the run and take their saved
    size when loaded."""
    import torch
    from torch import nn

    class KNNHead(nn.Module):
        """DINO's weighted kNN vote over the train features it holds."""

        #: the saved model keeps this module's buffers (geopeft.models.saved)
        saves_buffers = True

        def __init__(self) -> None:
            super().__init__()
            self.in_features, self.out_features = width, classes
            self.register_buffer("bank", torch.zeros(0, width))
            self.register_buffer("targets", torch.zeros(0, classes))
            self.register_buffer("settings", torch.tensor([20.0, 0.07, 0.0]))  # k, T, multi-label

        def fit(self, features: torch.Tensor, targets: torch.Tensor, k: int, temperature: float,
                multilabel: bool) -> None:
            self.bank = torch.nn.functional.normalize(features.float(), dim=1)
            self.targets = targets.float()
            self.settings = torch.tensor([float(k), float(temperature), float(multilabel)])

        def forward(self, f: torch.Tensor) -> torch.Tensor:
            k = min(int(self.settings[0]), len(self.bank))
            sim = torch.nn.functional.normalize(f.float(), dim=1) @ self.bank.T
            top, idx = sim.topk(k, dim=1)
            weights = (top / self.settings[1]).exp()
            votes = (self.targets[idx] * weights[..., None]).sum(1)  # (B, C)
            share = votes / weights.sum(1, keepdim=True)
            eps = 1e-6
            if bool(self.settings[2]):  # multi-label: each class's share, as a logit
                p = share.clamp(eps, 1 - eps)
                return torch.log(p / (1 - p))
            return torch.log(share.clamp_min(eps))  # softmax gives the shares back

        def _load_from_state_dict(self, state: dict, prefix: str, *args: Any) -> None:
            for name in ("bank", "targets"):
                if prefix + name in state:  # a fitted bank: take its size
                    setattr(self, name, torch.empty_like(state[prefix + name]))
            super()._load_from_state_dict(state, prefix, *args)

    return KNNHead()


class Probe(Strategy):
    """A probe fit in one pass on the frozen encoder's features (see the module's text)."""

    frozen_encoder = True
    closed_form: ClassVar[bool] = True
    augments_features = False
    settings_key = "probe"
    settings_class = ProbeSpec

    def mark(self, model: nn.Module, new: list[str]) -> None:
        for name, p in model.named_parameters():
            p.requires_grad_(is_new(name, new))

    def words(self, lora: LoraSpec | None = None, targets: list[str] | None = None,
              options: Any = None) -> str:
        return (options or ProbeSpec()).words(self.name)


class KNN(Probe):
    name = "knn"
    summary = ("frozen encoder; the k nearest train features vote for the class (DINO's weighted "
               "kNN: cosine similarity, weights exp(sim / temperature)), no training")

    def prepare(self, model: nn.Module, lora: LoraSpec | None = None,
                default_targets: list[str] | None = None, options: Any = None) -> nn.Module:
        head = model.head  # type: ignore[attr-defined]
        (name,) = [n for n, m in model.named_modules() if m is head]
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, knn_head(int(head.in_features), int(head.out_features)))
        new = new_module_names(model)
        self.mark(model, new)
        self.record(model, set())
        return model


class Logistic(Probe):
    name = "logistic"
    summary = ("frozen encoder; the head is a logistic regression fit by L-BFGS on the train "
               "features (L2 probe.l2), no epochs")


__all__ = ["KNN", "Logistic", "Probe", "ProbeSpec", "knn_head"]
