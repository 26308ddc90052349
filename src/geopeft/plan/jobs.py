"""Jobs per rule and the resources of each GPU job, as Snakemake expands a study
(``geopeft plan``, ``geopeft validate --resolved``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from geopeft.config import (
    WORLD_DATASETS,
    bands_id,
    features_rows,
    pretrain_source,
    row_backbone,
    study_rows,
    trainable,
)
from geopeft.data.sources import REGISTRY as SOURCES

#: Rules whose jobs ask for GPUs (``GPU_RESOURCES`` in ``workflow/rules/common.smk``).
GPU_RULES = ("pretrain", "features", "train", "evaluate")
#: Rules that run where Snakemake runs (``localrules:`` in ``workflow/rules/*.smk``; ``all``
#: is a target only). ``tests/test_plan.py`` reads the rule files to keep this list true.
LOCAL_RULES = ("mlflow_init", "download", "fetch", "protocol", "aggregate", "table", "paper",
               "all")
#: The order rules are listed in (the DAG's order).
RULE_ORDER = ("synthesize", "synthesize_layout", "download", "fetch", "prepare", "subset",
              "mlflow_init", "pretrain", "features", "train", "evaluate", "protocol", "aggregate",
              "figures",
              "table", "paper", "all")
#: Datasets the ``synthesize`` rule writes in one job (EuroSAT and its source set); the embedded
#: datasets whose source writes its world alone (``Source.world``) get a ``synthesize_layout``.
_SYNTHESIZE_OUTPUTS = tuple(n for n, s in SOURCES.items() if s.embedded and not s.world)


# --------------------------------------------------------------------------- job resources


def job_resources(cfg: dict[str, Any]) -> list[str]:
    """What each GPU job of a resolved study asks for (``resources``, ``threads``,
    ``train.workers``) and how its training job will hold each dataset's images: loaded whole
    when the train (at the study's largest label fraction) and val splits take at most
    :data:`~geopeft.data.stream.WHOLE_SHARE` of ``mem_mb``, else streamed from the store
    (:func:`~geopeft.data.stream.stream_decision` makes the job's own decision by the store, also
    under a smaller cgroup or SLURM limit, and logs it). Printed by ``geopeft validate
    --resolved`` and ``geopeft plan``.

    Args:
        cfg: the resolved study.
    """
    from geopeft.data.stream import WHOLE_SHARE

    res, threads, workers = cfg["resources"], int(cfg["threads"]), int(cfg["train"]["workers"])
    cpus = threads + workers
    out = [f"Resources of each GPU job (pretrain, features, train, evaluate): gpus {res['gpus']}, "
           f"cpus_per_gpu {res['cpus_per_gpu']} (threads {threads} + train.workers {workers} "
           f"reader processes when the splits stream), mem_mb {res['mem_mb']}, runtime "
           f"{res['runtime']} min"]
    if res["gpus"] != 0 and cpus > res["cpus_per_gpu"]:
        out.append(f"  warning: threads + train.workers = {cpus} > resources.cpus_per_gpu "
                   f"{res['cpus_per_gpu']}: a cluster job gets fewer CPUs than it runs; raise "
                   f"cpus_per_gpu or lower them")
    data, rows = cfg["data"], study_rows(cfg)
    half = WHOLE_SHARE * res["mem_mb"]
    for ds in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == ds]
        sizes = None if data["source"] == "synthetic" else SOURCES[ds].split_sizes(data["options"])
        length = max((r.get("sequence_length") or 0 for r in mine), default=0) or None
        per = SOURCES[ds].sample_bytes(len(data["bands"]), data["options"], length)
        if not sizes or not per:
            out.append(f"  {ds}: size unknown before its store is prepared (embedded world, or "
                       f"no published split for these options); each job decides by its store "
                       f"(logged)")
            continue
        n = train_samples(sizes, max(r["label_fraction"] for r in mine)) + sizes["val"]
        mb = n * per / 2**20
        how = "streamed from the store" if mb > half else "loaded whole"
        out.append(f"  {ds}: train + val images {mb:,.0f} MB ({n:,} samples x {per / 2**10:,.0f} "
                   f"KB, {np.dtype(SOURCES[ds].dtype)}{f', {length} dates' if length else ''})"
                   f" {'>' if mb > half else '<='} {WHOLE_SHARE:.0%} of mem_mb ({half:,.0f} "
                   f"MB): {how}")
    return out + features_lines(cfg)


# --------------------------------------------------------------------------- jobs per rule


def rule_jobs(cfg: dict[str, Any]) -> dict[str, int]:
    """Jobs per rule of a study's full run (``snakemake --forceall``), in DAG order.

    Counts what the rules' inputs ask for: one prepare job per (dataset, band selection), one
    subset per (dataset, method, label fraction < 1, seed), one train and one evaluate job per
    row, the download files of each dataset (``data.remotes`` / the source's), the pretraining
    of the embedded backbone when a row uses it.

    Args:
        cfg: the validated study (:func:`geopeft.config.resolve`).

    Returns:
        ``{rule: jobs}`` for every rule with at least one job.
    """
    from geopeft.data.fetch import remotes_for
    from geopeft.data.subsets import subset_file_name

    rows = study_rows(cfg)
    data = cfg["data"]
    bands = bands_id(data["bands"])
    jobs: dict[str, int] = {}
    if not all(trainable(r["dataset"]) for r in rows):
        stores, rows = {(data["dataset"], bands)}, []  # the study only fetches and prepares
    else:
        stores = {(r["dataset"], bands) for r in rows}
    pretrained = any((bb := row_backbone(cfg, r)) is not None and bb["weights"] == "pretrain"
                     for r in rows)
    if pretrained:
        stores.add((pretrain_source(cfg), bands_id(cfg["pretrain"]["bands"] or data["bands"])))
    raw = sorted({ds for ds, _ in stores})
    if data["source"] == "synthetic":
        jobs["synthesize"] = int(any(ds in _SYNTHESIZE_OUTPUTS for ds in raw))
        jobs["synthesize_layout"] = sum(ds in WORLD_DATASETS for ds in raw)
    elif data["source"] == "download":
        jobs["download"] = sum(len(remotes_for(ds, data["mirrors"], data["remotes"])) for ds in raw)
        jobs["fetch"] = len(raw)
    jobs["prepare"] = len(stores)
    jobs["subset"] = len({(r["dataset"], subset_file_name(cfg["subsets"]["method"],
                                                          r["label_fraction"], r["seed"]))
                          for r in rows if r["label_fraction"] < 1.0})
    if rows:
        jobs.update(mlflow_init=1, pretrain=int(pretrained), features=len(features_keys(cfg, rows)),
                    train=len(rows), evaluate=len(rows), protocol=1, aggregate=1, figures=1,
                    table=1)
    jobs["all"] = 1
    return {r: jobs[r] for r in RULE_ORDER if jobs.get(r)}


def features_keys(cfg: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The features jobs of a study's rows: one per distinct frozen encoder, data and views
    (:meth:`geopeft.spec.JobSpec.features_key`) among the rows that train on features; each
    with its dataset, views, the rows that read it and the spec of one of them."""
    keys: dict[str, dict[str, Any]] = {}
    for key, spec in features_rows(cfg, rows).values():
        job = keys.setdefault(key, {"dataset": spec.row.dataset, "rows": 0, "spec": spec,
                                    "views": spec.features_request()["views"]})
        job["rows"] += 1
    return keys


def features_dim(spec: Any, bands: int) -> int:
    """The width of a frozen encoder's features per sample (a classifier head's input: the
    pooled output) or per date (a segmentation decoder's: every tapped level, flattened), from
    its architecture alone (built and run on the meta device: no weights, no memory)."""
    import torch

    from geopeft.models.backbones import create_model, resolve
    from geopeft.models.families import get_family

    assert spec.backbone is not None
    bb = resolve(spec.backbone.as_dict())
    with torch.device("meta"):
        m = create_model(bb, bands, 0)
        if spec.row.segmentation is None:
            return int(m.num_features)
        family = get_family(bb["family"])
        taps = family.taps(m, spec.row.segmentation.out_indices, bb.get("taps"))
        side = int(bb.get("input_size") or bb["kwargs"].get("img_size") or 224)
        levels = family.features(m, torch.empty(1, bands, side, side), sorted(set(taps.indices)))
    return sum(int(np.prod(lv.shape[1:])) for lv in levels) * len(taps.indices) // len(levels)


def features_lines(cfg: dict[str, Any]) -> list[str]:
    """The study's features jobs and the disk their stores take (float32; the train samples'
    views; a series's every date), before anything runs (``geopeft plan``, ``validate
    --resolved``)."""
    data, rows = cfg["data"], study_rows(cfg)
    jobs = features_keys(cfg, rows)
    out = []
    for key, job in jobs.items():
        ds, views, spec = job["dataset"], job["views"], job["spec"]
        if data["source"] == "synthetic":
            n = int(data["synthetic"]["n_samples"])
        else:
            sizes = SOURCES[ds].split_sizes(data["options"])
            n = sum(sizes.values()) if sizes else 0
        dim = features_dim(spec, len(data["bands"]))
        series = spec.row.segmentation is not None
        dates = SOURCES[ds].max_dates if series else None
        what = f"{n:,} {'series' if series else 'samples'} x {views} view(s)"
        if not n:
            size = "size unknown before the store is prepared"
        elif dates is not None:
            size = (f"up to {n * views * dates * dim * 4 / 2**30:,.1f} GB on disk ({what} x "
                    f"{dates} dates x {dim} float32)")
        else:  # a series of unknown length: per date
            size = (f"{n * views * dim * 4 / 2**20:,.1f} MB{' per date' if series else ''} on "
                    f"disk ({what} x {dim} float32"
                    f"{'; dates unknown before the store is prepared' if series else ''})")
        out.append(f"  features {key} ({ds}, read by {job['rows']} row(s)): {size}")
    if out:
        out.insert(0, f"Features jobs (frozen encoders run once; train.features): {len(out)}")
    return out


def train_samples(sizes: dict[str, int] | None, fraction: float) -> int | None:
    """Training samples of a run at label ``fraction`` of the train split (at least 1; None:
    split sizes unknown)."""
    if not sizes:
        return None
    return max(1, round(sizes["train"] * fraction))
