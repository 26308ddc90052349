"""What each row of a study will really run: the resolved backbone (built on the meta device, so
its depth, width, patch and parameter count are timm's, not the config's), weights, strategy,
adapter, training settings, dataset, bands, label fraction and sequence length.

``geopeft validate FILE --resolved`` prints it; the tests check each real study against it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict
from typing import Any

from geopeft.io import canonical_json
from geopeft.models.zoo import resolve
from geopeft.spec import JobSpec
from geopeft.strategies import LoraSpec
from geopeft.strategies import get as get_strategy


@functools.lru_cache(maxsize=32)
def _structure(backbone_json: str, in_chans: int) -> dict[str, Any]:
    import torch

    from geopeft.models.backbones import create_model, resolve
    from geopeft.models.families import get_family

    bb = resolve(json.loads(backbone_json))
    family = get_family(bb["family"])
    with torch.device("meta"):
        m = create_model(bb, in_chans, 0)
    width = family.width(m)
    return {"arch": bb["arch"], "family": bb["family"], "depth": family.depth(m), "width": width,
            "embed_dim": int(getattr(m, "embed_dim", width)), "patch": family.patch(m),
            "img_size": family.input_size(m), "grid": list(family.token_grid(m)),
            "params": sum(p.numel() for p in m.parameters()), "lora_targets": bb["lora_targets"]}


def describe_spec(spec: JobSpec) -> dict[str, Any]:
    """The resolved summary of one job spec (:func:`geopeft.config.job_specs`)."""
    row = spec.row
    bb = spec.backbone
    args = row.train_args(spec.threads)
    lora = asdict(row.lora) if row.lora is not None else None
    if lora is not None and lora["target_modules"] is not None:
        lora["target_modules"] = list(lora["target_modules"])
    out: dict[str, Any] = {
        "name": row.name, "dataset": row.dataset, "bands": list(spec.data.bands),
        "source": spec.data.source, "strategy": row.strategy, "method": row.method,
        "label_fraction": row.label_fraction, "seed": row.seed,
        "sequence_length": row.sequence_length,
        "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "encoder_lr_factor": args.encoder_lr_factor,
        "lora": lora, "options": asdict(row.options) if row.options is not None else None,
        "fusion": asdict(row.fusion) if row.fusion is not None else None,
        "segmentation": row.segmentation.model if row.segmentation is not None else None,
    }
    if bb is None:
        out["backbone"] = None
        out["weights"] = "none (U-TAE, trained from scratch)"
        return out
    r = resolve(spec.encoder.as_dict())
    weights = r["weights"] if row.strategy_object.loads_weights else "none (from scratch)"
    n_in = 3 if row.fusion is not None else len(spec.data.bands)
    struct = _structure(canonical_json({"name": bb.name, "kwargs": bb.kwargs}), n_in)
    out["backbone"] = {"name": bb.name, **struct, "input_size": r["input_size"] or struct["img_size"]}
    out["weights"] = weights
    return out


def format_row(d: dict[str, Any]) -> str:
    """One human-readable line (plus continuation) of a resolved row."""
    bb = d["backbone"]
    if bb is None:
        model = f"{d['segmentation']} (no backbone)"
    else:
        depth = bb["depth"] if isinstance(bb["depth"], int) else "+".join(map(str, bb["depth"]))
        model = (f"{bb['name']} = {bb['arch']} (depth {depth}, width {bb['width']}, patch "
                 f"{bb['patch']}, {bb['img_size']} px, input {bb['input_size']} px, "
                 f"{bb['params'] / 1e6:.1f} M params)")
        if d["segmentation"]:
            model += f" + {d['segmentation']}"
    parts = [f"{d['method']}"]
    if d["lora"]:
        lo = d["lora"]
        parts.append(get_strategy(d["method"]).words(LoraSpec(**lo), (bb or {}).get("lora_targets")))
    own = get_strategy(d["method"])
    if d.get("options") and own.settings_class is not None:
        parts.append(own.words(options=own.settings_class(**d["options"])))
    if d["fusion"]:
        parts.append("fusion " + " ".join(f"{k}={v}" for k, v in sorted(d["fusion"].items())))
    if d["encoder_lr_factor"] != 1.0:
        parts.append(f"encoder lr x{d['encoder_lr_factor']:g}")
    seq = f", T {d['sequence_length']}" if d["sequence_length"] else ""
    return (f"  {d['name']}: {model}\n"
            f"      weights {d['weights']}; {'; '.join(parts)}\n"
            f"      {d['epochs']} epochs, batch {d['batch_size']}, lr {d['lr']:g}; {d['dataset']} "
            f"({d['source']}) {' '.join(d['bands'])}; labels {d['label_fraction']:g}{seq}; "
            f"seed {d['seed']}")
