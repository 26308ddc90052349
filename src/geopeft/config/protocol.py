"""A study's protocol card: what its runs do, in words, derived from the resolved study (so it
cannot drift from what runs), with the reference protocol it is compared with, every declared
difference from it and why, and the published figures of that reference (``protocol``).

``geopeft validate --resolved`` prints it; the ``protocol`` rule writes it to
``results/<study>/protocol.json``, which the MLflow experiment's description and the paper's
study section show. Torch-free: the zoo's declarations and the registries say everything.
"""

from __future__ import annotations

from typing import Any

from geopeft.bands import RGB
from geopeft.config.rows import (
    is_series,
    job_spec,
    study_datasets,
    study_rows,
    trainable,
    uses_backbone,
)
from geopeft.data.sources import get_source
from geopeft.models.zoo import NORM_RULE_WORDS, entry_for
from geopeft.settings.protocol import ASPECTS
from geopeft.tasks import TASKS

#: The norm rules' words that the zoo's fixed normalisations do not have (as ``geopeft
#: backbones`` lists them).
_DN = "DN / 10000 (the weights' fixed mean 0, std 1 in reflectance)"


def _encoders(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """(who uses it, backbone config, whether a Fusion-LoRA strategy does) of each encoder a row
    uses: the study's, then each strategy's own, U-TAE (no encoder) left out; strategies sharing
    one encoder config are said once."""
    used = {r["strategy"] for r in study_rows(cfg)}
    merged: dict[str, tuple[list[str], dict[str, Any], list[bool]]] = {}
    for key in (k for k in cfg["strategies"] if k in used):
        strat = cfg["strategies"][key]
        if not uses_backbone(strat):
            continue
        own = strat.get("backbone")
        bb = own or cfg["backbone"]
        whos, _, fusion = merged.setdefault(repr(sorted(bb.items())), ([], bb, []))
        whos.append(key if own else "study")
        fusion.append(strat.get("fusion") is not None)
    return [(_label(list(dict.fromkeys(whos)), bb), bb, any(fusion))
            for whos, bb, fusion in merged.values()]


def _label(whos: list[str], bb: dict[str, Any]) -> str:
    """An encoder as the card names it: its name, and which rows use it."""
    if whos == ["study"]:
        return f"{bb['name']} (the study's encoder)"
    rows = ", ".join(w for w in whos if w != "study")
    if len(whos) > 3:
        rows = f"{len(whos)} strategies, {whos[0]} ... {whos[-1]}"
    return f"{bb['name']} ({rows})"


def weight_bands(bb: dict[str, Any]) -> tuple[str, ...] | None:
    """The bands an encoder's weights know: the zoo's, B04 B03 B02 for timm's (ImageNet) weights,
    None for the embedded encoder (as pretrained) or random weights."""
    e = entry_for(bb["name"])
    return e.bands or (RGB if str(bb["weights"]).startswith("timm:") else None)


def _norm_words(bb: dict[str, Any], bands: list[str]) -> str:
    """How an encoder's inputs are normalised, in words, as
    :func:`geopeft.models.classifier.resolve_norm` decides it."""
    e = entry_for(bb["name"])
    mode = bb.get("normalize", "auto")
    zscore = "z-score with the train split's per-band mean and sd"
    if mode == "dataset":
        return zscore
    if e.norm_rule:
        return f"{NORM_RULE_WORDS[e.norm_rule]} (the train split's statistics)"
    known = weight_bands(bb)
    if e.norm is not None or bb["weights"].startswith("timm:"):
        if known is None or set(bands) <= set(known):
            return _DN if e.norm and set(e.norm[0]) == {0.0} else "the weights' own mean and sd"
        return f"{zscore} (the weights' own are known for {' '.join(known)} only)"
    if bb["weights"] == "pretrain":
        return "the embedded encoder's pretraining normalisation (recorded with its weights)"
    return zscore


def _bands_words(bb: dict[str, Any], bands: list[str]) -> str:
    known = weight_bands(bb)
    if bb["weights"] == "pretrain":
        return "none: the embedded encoder is pretrained on the study's bands"
    if not known:
        return "none: random weights"
    missing = [b for b in known if b not in bands]
    extra = [b for b in bands if b not in known]
    parts: list[str] = []
    if missing:
        parts.append(f"{' '.join(missing)} absent from the data: zero in the normalised input "
                     f"(their patch-embedding channels dropped)")
    if extra:
        parts.append(f"{' '.join(extra)} unknown to the weights: the mean filter of the known "
                     f"bands (every band's filter then scaled by {len(known) - len(missing)}/"
                     f"{len(bands)})")
    return "; ".join(parts) or "none: the data holds the weights' bands"


def _augmentation_words(cfg: dict[str, Any], row: dict[str, Any]) -> str:
    """A row's augmentation in words, and how a row on its frozen encoder's features gets it."""
    from geopeft.spec import JobSpec

    spec = JobSpec.from_dict(job_spec(cfg, row)) if trainable(row["dataset"]) else None
    on_features = spec is not None and spec.features_reason() is None
    if spec is not None and on_features and spec.row.strategy_object.closed_form:
        return f"none ({row['method']} probe: the samples as they are)"
    if not row["train"]["augment"]:
        return "none"
    if on_features:
        return ("random flips and 90-degree rotations of training batches (linear probes: "
                "the frozen encoder's features of the 8 views, computed once, the drawn view "
                "each step)")
    return "random flips and 90-degree rotations of training batches"


def _distinct(values: list[Any]) -> str:
    seen = list(dict.fromkeys(values))
    return seen[0] if len(seen) == 1 else " / ".join(map(str, seen))


#: Fusion-LoRA's inputs (:mod:`geopeft.models.fusion`), in words.
_FUSION_NORM = ("the bands z-scored with the train split's statistics, mapped to a 3-channel "
                "pseudo-RGB image (the fixed B04 B03 B02 composite, or the learned spectral "
                "tokenizer), then the encoder's own normalisation (Fusion-LoRA)")


def _fusion_bands(bands: list[str]) -> str:
    others = [b for b in bands if b not in RGB]
    return ("Fusion-LoRA: the encoder takes a 3-channel pseudo-RGB image, its RGB weights as "
            "they are" + (f"; {' '.join(others)} reach the model only through the spectral "
                          f"tokenizer and the spectral stream (unused by a strategy with both off)"
                          if others else ""))


def _patch_px(cfg: dict[str, Any], dataset: str) -> int | None:
    """The side of the patches a dataset's store holds: data.options.size, the embedded world's
    size, or the source's native size (None: not known before the data are read)."""
    data = cfg["data"]
    if (data.get("options") or {}).get("size"):
        return int(data["options"]["size"])
    if data["source"] == "synthetic":
        return int(data["synthetic"]["size"])
    return get_source(dataset).native_size


def _input_words(bb: dict[str, Any], sizes: dict[str, int | None], fusion: bool) -> str:
    """How the patches reach an encoder: resized (bilinear) to ``input_size`` when it differs
    from the stored side, else as stored."""
    stored = ", ".join(f"{ds} {px} px" if px else f"{ds} as stored" for ds, px in sizes.items())
    prefix = "a 3-channel pseudo-RGB image of " if fusion else ""
    want = bb.get("input_size")
    if want and any(px != want for px in sizes.values()):
        return f"{prefix}each patch ({stored}) resized (bilinear) to {want} px"
    return f"{prefix}the patches as stored ({stored}), not resized"


def protocol_card(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(aspect, what the study does) for every aspect of :data:`ASPECTS`, from the resolved
    study ``cfg``."""
    rows = study_rows(cfg)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    bands = list(cfg["data"]["bands"])
    encoders = _encoders(cfg)
    fractions = sorted({r["label_fraction"] for r in rows})
    card = {}
    synthetic = cfg["data"]["source"] == "synthetic"
    card["data"] = "; ".join(
        f"{ds}: " + ("the embedded synthetic world's split (not the real dataset)" if synthetic
                     else get_source(ds).published_splits_source or "its own split")
        for ds in datasets) + (f"; bands {' '.join(bands)}; label fractions "
         f"{', '.join(f'{100 * f:g} %' for f in fractions)} of the train split "
         f"({cfg['subsets']['method']}, nested, seeded by the run seed)")
    series = [r for r in rows if is_series(r["dataset"])]
    lengths = sorted({r["sequence_length"] for r in series}, reverse=True)
    card["frames"] = (
        f"sequence lengths {', '.join(map(str, lengths))} "
        f"(nested, evenly spaced, in date order); shorter series: pad {cfg['temporal']['pad']}"
        if series else "single images (one date)")
    card["encoder"] = "; ".join(f"{who}: weights {bb['weights']}" + (
        ", q/k/v biases left out (drop_qkv_bias)" if bb.get("drop_qkv_bias") else "")
                                for who, bb, _ in encoders) or "none (U-TAE from scratch)"
    sizes = {ds: _patch_px(cfg, ds) for ds in datasets}
    card["input"] = "; ".join(f"{who}: {_input_words(bb, sizes, fusion)}"
                              for who, bb, fusion in encoders) or _input_words({}, sizes, False)
    card["normalisation"] = "; ".join(
        f"{who}: " + (_FUSION_NORM if fusion else _norm_words(bb, bands))
        for who, bb, fusion in encoders) or "z-score with the train split's per-band mean and sd"
    card["missing_bands"] = "; ".join(
        f"{who}: " + (_fusion_bands(bands) if fusion else _bands_words(bb, bands))
        for who, bb, fusion in encoders) or "none"
    card["augmentation"] = _distinct([_augmentation_words(cfg, r) for r in rows])
    card["schedule"] = _distinct([
        f"AdamW, weight decay {t['weight_decay']:g}, {t['warmup_epochs']:g} warm-up epoch(s) "
        f"then cosine decay, {t['epochs']} epochs, batch {t['batch_size']}, loss {t['loss']}"
        for t in (r["train"] for r in rows)])
    lrs: dict[str, dict[str, None]] = {}
    for r in rows:
        t = r["train"]
        factor = (f", encoder at {t['encoder_lr_factor']:g} x" if t.get("encoder_lr_factor", 1) != 1
                  else "")
        lrs.setdefault(r["strategy"], {})[(
            f"chosen on validation among {', '.join(f'{x:g}' for x in r['lr_sweep'])}"
            if r.get("lr_sweep") else f"{t['lr']:g}") + factor] = None
    by_text: dict[str, list[str]] = {}
    for key, texts in lrs.items():  # a row's own lr: its strategy's rates listed
        fixed = all("chosen" not in x for x in texts)
        by_text.setdefault(" / ".join(texts) + (" (fixed)" if fixed else ""), []).append(key)
    card["lr"] = "; ".join(f"{', '.join(keys)}: {text}" for text, keys in by_text.items())
    card["checkpoint"] = ("the last epoch's weights (no early stopping; the test split chooses "
                          "nothing)")
    card["metric"] = "; ".join(
        f"{ds}: test {TASKS[get_source(ds).task].metric_words}" for ds in datasets)
    seeds = sorted({r["seed"] for r in rows})
    card["seeds"] = (f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"
                     f" per cell; every spread is the sd over the seeds, with n")
    return [(a, card[a]) for a in ASPECTS]


def protocol_record(cfg: dict[str, Any]) -> dict[str, Any]:
    """The card, the reference, its declared differences and published figures: what
    ``protocol.json`` holds."""
    p = cfg["protocol"]
    return {"study": cfg["study"], "card": protocol_card(cfg), "reference": p.get("reference"),
            "differences": [dict(d) for d in p["differences"]],
            "anchors": [dict(a) for a in p["anchors"]]}


def card_lines(record: dict[str, Any]) -> list[str]:
    """The protocol record as text lines (``validate --resolved``, MLflow's description)."""
    lines = [f"Protocol of {record['study']}:"]
    lines += [f"  {ASPECTS[a]}: {text}" for a, text in record["card"]]
    if record["reference"]:
        lines.append(f"Compared with: {record['reference']}")
    diffs = record["differences"]
    if diffs:
        lines.append(f"Differences from it ({len(diffs)}):")
        lines += [f"  - {ASPECTS[d['aspect']]}: ours {d['ours']}; reference {d['reference']}; "
                  f"why: {d['why']}" for d in diffs]
    elif record["reference"]:
        lines.append("Differences from it: none declared")
    if record["anchors"]:
        lines.append("Published figures (the reference's, not ours):")
        lines += [f"  - {a['what']}: {a['metric']} {a['value']:g} ({a['source']})"
                  for a in record["anchors"]]
    return lines


def check_record(record: Any, where: str) -> None:
    """A protocol record holds the card (every aspect, in order), the reference, differences
    and anchors.

    Raises:
        ConfigError: naming ``where`` and what is missing.
    """
    from geopeft.spec import ConfigError

    keys = ("study", "card", "reference", "differences", "anchors")
    if not isinstance(record, dict) or any(k not in record for k in keys):
        raise ConfigError(f"{where}: a protocol record has the keys {', '.join(keys)}")
    if [a for a, _ in record["card"]] != list(ASPECTS):
        raise ConfigError(f"{where}: card: the aspects are {', '.join(ASPECTS)}, in order")


def card_markdown(record: dict[str, Any]) -> str:
    """The protocol record as Markdown (the MLflow experiment's description): the card as a
    table, the reference, its differences (a table) and its published figures."""
    out = ["### Protocol", "", "| aspect | this study |", "|---|---|"]
    out += [f"| {ASPECTS[a]} | {text} |" for a, text in record["card"]]
    if record["reference"]:
        out += ["", f"Compared with: {record['reference']}"]
    if record["differences"]:
        out += ["", "| differs in | ours | reference | why |", "|---|---|---|---|"]
        out += [f"| {ASPECTS[d['aspect']]} | {d['ours']} | {d['reference']} | {d['why']} |"
                for d in record["differences"]]
    if record["anchors"]:
        out += ["", "Published figures (the reference's, not ours):", ""]
        out += [f"- {a['what']}: {a['metric']} {a['value']:g} ({a['source']})"
                for a in record["anchors"]]
    return "\n".join(out)


def check_protocol(cfg: dict[str, Any], source: str) -> None:
    """An anchor names a strategy and dataset of the study; differences need a reference.

    Raises:
        ConfigError: naming the key.
    """
    from geopeft.spec import ConfigError

    p = cfg["protocol"]
    if p["differences"] and not p.get("reference"):
        raise ConfigError(f"{source}: protocol.differences: differences from what? set "
                          f"protocol.reference")
    datasets = {ds for _, ds in study_datasets(cfg)}
    for i, a in enumerate(p["anchors"]):
        if a.get("strategy") is not None and a["strategy"] not in cfg["strategies"]:
            raise ConfigError(f"{source}: protocol.anchors[{i}].strategy: {a['strategy']!r} is "
                              f"not a key of strategies ({', '.join(cfg['strategies'])})")
        if a.get("dataset") is not None and a["dataset"] not in datasets:
            raise ConfigError(f"{source}: protocol.anchors[{i}].dataset: {a['dataset']!r} is not "
                              f"a dataset of the study ({', '.join(sorted(datasets))})")


__all__ = ["ASPECTS", "card_lines", "card_markdown", "check_protocol", "check_record", "protocol_card",
           "protocol_record", "weight_bands"]
