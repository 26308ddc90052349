"""The jobs behind the ``pretrain`` and ``train`` rules: data, model, MLflow run, training,
the saved model (:mod:`geopeft.models.saved`)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from geopeft.data.dataset import StoreInfo, load_splits, store_info
from geopeft.data.stream import memory_budget_mb
from geopeft.io import atomic_dir, canonical_json, follow_umask, read_json, write_json
from geopeft.layout import MODEL_ARTIFACT, PRETRAIN_ARTIFACT, PretrainLayout
from geopeft.models.build import build_model
from geopeft.models.classifier import build_classifier
from geopeft.models.runtime import seed_everything
from geopeft.models.saved import save_model
from geopeft.models.weights import is_classifier_key, sha256_file
from geopeft.process import seconds_since_start
from geopeft.spec import DataSpec, JobSpec, PretrainSpec
from geopeft.strategies import count_parameters
from geopeft.tracking import NOTE_TAG, RunLogger, git_commit, store_name
from geopeft.train.distributed import dist_info
from geopeft.train.features import (
    DecoderOnFeatures,
    FeaturesError,
    FeaturesTooLarge,
    HeadOnFeatures,
    check_provenance,
    encoder_digest,
    fit_probe,
    is_segmenter,
    load_feature_splits,
)
from geopeft.train.loop import DivergedLoss, fit
from geopeft.train.resume import FAILED, Checkpointer, Preempted, known_failure, record_failure

log = logging.getLogger(__name__)


def _tags(study: str, data: DataSpec, rehearsal: bool, fingerprint: str,
          role: str) -> dict[str, str]:
    commit = git_commit()
    return {
        "git_commit": commit,
        # what the runs table's Source column shows
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": f"geopeft {'pretrain' if role == 'pretrain' else 'train'}",
        **({"mlflow.source.git.commit": commit.removesuffix("-dirty")}
           if commit != "unknown" else {}),
        "dataset_fingerprint": fingerprint,
        "dataset": data.dataset,
        "synthetic": str(data.source == "synthetic"),
        "rehearsal": str(rehearsal),
        "role": role,
        "study": study,
    }


class _QuietLogger:
    """The logger of DDP ranks other than 0: only rank 0 logs."""

    run_id = None

    def logged_steps(self, key: str) -> set[int]:
        return set()

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _end_after_error(logger: Any, status: str) -> None:
    """End the run of a failed or preempted job without hiding the job's own error."""
    try:
        logger.end(status)
    except Exception as err:  # the tracking server may be what failed
        log.warning("could not end MLflow run %s as %s: %s", logger.run_id, status, err)


def spec_digest(spec: JobSpec) -> str:
    """The fingerprint of a job's spec: its MLflow run key's, and its failure record's."""
    return hashlib.sha256(canonical_json(spec.raw).encode()).hexdigest()[:16]


def _open_run(experiment: Path, spec: JobSpec, fingerprint: str,
              state_dir: Path | None) -> tuple[RunLogger, bool]:
    """The job's MLflow run and whether an earlier attempt logged to it: the run the state
    records, else an unfinished one of this row and spec (an attempt killed before it recorded
    its id), else a new one."""
    run_file = Path(state_dir) / "mlflow_run.json" if state_dir else None
    key = f"{spec.study}/{spec.row.name}/{spec_digest(spec)}"
    recorded = read_json(run_file) if run_file and run_file.is_file() else {}
    # the run of an attempt with other settings is not this job's (a record without a key, as
    # before keys were written, is taken as this job's)
    run_id = recorded.get("run_id") if recorded.get("key", key) == key else None
    row = spec.row
    what = (f"{row.strategy} ({row.method}) on {spec.data.dataset}, "
            f"{100 * row.label_fraction:g} % of the training labels"
            + (f", {row.sequence_length} dates" if row.sequence_length else "")
            + f", seed {row.seed}" + (" · synthetic data" if spec.data.source == "synthetic" else "")
            + (" · rehearsal: fixture data and random weights" if spec.rehearsal else ""))
    logger = RunLogger(experiment, run_name=spec.row.name, params=spec.tracked_params(),
                       tags={**_tags(spec.study, spec.data, spec.rehearsal, fingerprint,
                                     "finetune"), NOTE_TAG: what},
                       run_id=run_id, run_key=key)
    if run_file is not None:
        write_json(run_file, {"run_id": logger.run_id, "key": key})
    reopened = logger.run_id == run_id  # an earlier attempt of this state logged to it
    if reopened:
        log.info("resuming MLflow run %s", logger.run_id)
        logger.set_running()
    else:
        if logger.reused:  # nothing was logged to it: it starts as a new run would
            log.info("using MLflow run %s, left empty by an attempt killed before it recorded "
                     "it", logger.run_id)
        logger.log_dict(spec.raw, "config.json")
    return logger, reopened


def _record(spec: JobSpec, minfo: dict[str, Any], params: tuple[int, int], n_train: int,
            result: dict[str, Any], run_id: str | None, info: StoreInfo,
            pretrain_dir: Path | None, out: Path,
            stages: dict[str, float | None]) -> dict[str, Any]:
    """The run record (``run.json``): spec, model, sizes, history, costs, provenance, and the
    start-up by stage (``startup_stages``: seconds since the process started when the modules
    were imported, the data loaded, the model built, the MLflow run open and the first training
    step began)."""
    costs = {k: result[k] for k in ("wall_time_s", "train_time_s", "images_per_s", "peak_memory_mb",
                                    "memory_kind", "tensors_mb", "attempts", "startup_s", "steps",
                                    "world_size")}
    return {
        "spec": spec.raw,
        "model": minfo,
        "trainable_params": params[0],
        "total_params": params[1],
        "train_samples": n_train,
        "history": result["history"],
        "device": result["device"],
        "mlflow_run_id": run_id,
        "dataset_fingerprint": info.fingerprint,
        "store": {**asdict(info), "path": str(info.path)},
        # relative to the model folder: a results/ folder moved or copied still loads
        "pretrain_dir": os.path.relpath(Path(pretrain_dir).resolve(), Path(out).resolve())
        if pretrain_dir else None,
        # the MLflow run whose "backbone" artifacts hold the pretrained encoder: with this run's
        # "model" artifacts, all a rebuild needs (geopeft.tracking.download_model)
        "pretrain_run_id": read_json(PretrainLayout(Path(pretrain_dir)).record).get("mlflow_run_id")
        if pretrain_dir else None,
        **costs,
        "startup_stages": {**stages, "first_step": result["startup_s"]},
    }


def _refuse_known_failure(spec: JobSpec, state_dir: Path | None, attempt: int) -> None:
    """Stop at once, with the same error, a retry (``attempt`` above 1) of a spec whose training
    diverged in an earlier attempt (recorded in the state folder): it would diverge again."""
    rec = known_failure(Path(state_dir), spec_digest(spec), attempt) if state_dir else None
    if rec is not None:
        raise DivergedLoss(f"{rec['error']} (attempt {attempt}: not trained again, an earlier "
                           f"attempt of these settings failed so, {Path(state_dir) / FAILED}; "
                           "change the settings, or rerun)", rec["step"], rec["loss"])


def train_row(spec: JobSpec, store: Path, subset: Path | None, experiment: Path,
              out: Path, pretrain_dir: Path | None = None,
              state_dir: Path | None = None, mem_mb: float | None = None,
              attempt: int = 1, features: Path | None = None) -> dict[str, Any]:
    """Train one study row and write its saved model ``out``.

    Args:
        spec: the job spec.
        store: the prepared zarr store of the row's dataset.
        subset: the label-fraction subset file (None: every training label).
        experiment: the study's MLflow experiment file (``mlflow-init``).
        out: the model folder to write.
        pretrain_dir: the embedded pretrained backbone (``weights: pretrain``).
        state_dir: where the training state is saved (periodically, per epoch and on SIGTERM);
            a rerun resumes from it, in the same MLflow run, with one value per metric step; the
            folder is removed once ``out`` is written.
        mem_mb: the job's memory (``resources.mem_mb``): splits larger than half of it (or of
            a smaller cgroup/SLURM limit or the available memory) stream from the store.
        attempt: Snakemake's attempt of the job: a retry of settings whose training diverged
            (recorded in ``state_dir``) stops at once with the same error, as a rerun would fail.
        features: the row's frozen encoder's features (``geopeft features``): its head trains
            on them instead of running the encoder on every sample of every epoch
            (:mod:`geopeft.train.features`; their provenance is checked first).

    Returns:
        The run record written to ``out/run.json``.

    Raises:
        DivergedLoss: the loss became NaN or infinite, or grew past ``train.max_loss_growth``
            times its start (recorded in ``state_dir``), or did so in an earlier attempt.
    """
    stages = {"imports": seconds_since_start()}
    _refuse_known_failure(spec, state_dir, attempt)
    rank, world = dist_info()
    row = spec.row
    info = store_info(store)
    args = spec.train_args()
    if features is not None and spec.features_reason() is not None:
        raise FeaturesError(f"{features}: {row.name} cannot train on features: "
                            f"{spec.features_reason()}")
    probe = row.strategy_object.closed_form
    if probe and features is None:
        raise FeaturesError(f"{row.name}: strategy {row.method} fits its head on the encoder's "
                            f"features: give them (geopeft features; --features)")
    if features is None:
        # in memory, or read from the store batch by batch when too large (one decision, logged)
        train, val = load_splits(store, [("train", subset), ("val", None)], row.temporal,
                                 memory_budget_mb(mem_mb, world), args.workers)
        stages["data"] = seconds_since_start()
    ckpt = (Checkpointer(Path(state_dir), args.checkpoint_every, args.checkpoint_minutes,
                         fingerprint=spec_digest(spec)) if state_dir else None)
    resume = ckpt.latest() if ckpt else None
    seed_everything(args.seed, args.threads)
    model, minfo = build_model(spec, info, pretrain_dir)
    stages["model"] = seconds_since_start()
    fit_model = model
    if features is not None:  # the head trains on the features of the frozen encoder
        used = check_provenance(features, {"key": spec.features_key(),
                                           "store_fingerprint": info.fingerprint,
                                           "weights": encoder_digest(model)})
        budget, source = memory_budget_mb(mem_mb, world)
        try:
            train, val = load_feature_splits(
                features, store, subset,
                args.augment and row.strategy_object.augments_features, row.temporal,
                budget / 2)
        except FeaturesTooLarge as err:
            if probe:
                raise
            # as images would: past half the budget they stream from the store
            log.warning("%s: trains on images: %s (half of %s)", row.name, err, source)
            minfo = {**minfo, "features": {"path": str(features), "not_used": str(err)}}
            features = None
            train, val = load_splits(store, [("train", subset), ("val", None)], row.temporal,
                                     (budget, source), args.workers)
        else:
            fit_model = (DecoderOnFeatures(model, [tuple(s) for s in used["levels"]],
                                           info.image_size) if is_segmenter(model)
                         else HeadOnFeatures(model))
            minfo = {**minfo, "features": {"path": str(features), "key": used["key"],
                                           "views": used["views"], "dim": used["dim"]}}
            log.info("%s: trains its %s on the features in %s (%d view(s))", row.name,
                     "decoder" if is_segmenter(model) else "head", features, used["views"])
        stages["data"] = seconds_since_start()
    trainable, total = count_parameters(model)
    logger: Any = _QuietLogger()
    reopened = False
    if rank == 0:
        logger, reopened = _open_run(experiment, spec, info.fingerprint, state_dir)
        if not reopened:
            logger.log_dataset(store_name(info), info.fingerprint, store, "train",
                               {"samples": len(train), "label_fraction": row.label_fraction,
                                "bands": info.bands})
    stages["mlflow_run"] = seconds_since_start()
    # steps an interrupted earlier attempt of this run already logged (none for a fresh run)
    done = logger.logged_steps("train_loss") if reopened else set()
    logger.log_once({"trainable_params": trainable, "total_params": total,
                     "train_samples": len(train)}, 0,
                    logger.logged_steps("trainable_params") if reopened else set())
    log.info("%s: %d/%d trainable parameters, %d train samples%s", row.name, trainable, total,
             len(train), f", resuming at step {resume['step']}" if resume else "")
    for e, m in enumerate(resume["history"] if resume else []):
        logger.log_once(m, e, done)
    try:
        if probe:
            result = fit_probe(fit_model, row.method, row.options, train, val, args)
            logger.log_once(result["history"][0], 0, done)
        else:
            result = fit(fit_model, train, val, args,
                         on_epoch=lambda e, m: logger.log_once(m, e, done),
                         checkpointer=ckpt, resume=resume,
                         extra_state={"mlflow_run_id": logger.run_id}, name=row.name)
    except Preempted:
        _end_after_error(logger, "KILLED")
        raise
    except DivergedLoss as err:
        if rank == 0 and state_dir:
            record_failure(Path(state_dir), spec_digest(spec), str(err), step=err.step,
                           loss=err.loss)
        _end_after_error(logger, "FAILED")
        raise
    except BaseException:
        _end_after_error(logger, "FAILED")
        raise
    record = _record(spec, minfo, (trainable, total), len(train), result, logger.run_id, info,
                     pretrain_dir, out, stages)
    logger.log_metrics({k: record[k] for k in ("wall_time_s", "train_time_s", "images_per_s",
                                               "peak_memory_mb")})
    if rank == 0:
        save_model(model, out, record)
        logger.log_artifact(out, MODEL_ARTIFACT)
        logger.end()
        if ckpt is not None:
            ckpt.clear()
    return record


def pretrain(spec: PretrainSpec, store: Path, experiment: Path, out: Path,
             mem_mb: float | None = None) -> dict[str, Any]:
    """Supervised pretraining of the embedded backbone on the synthetic source set.

    The source set holds scenes disjoint from the target task, labelled with five coarse
    land-cover groups; the backbone learns spectral and textural features from them.

    Args:
        spec: the pretrain spec.
        store: the prepared store of the source set.
        experiment: the study's MLflow experiment file.
        out: the folder to write: ``backbone.safetensors`` (timm state dict without head) and
            ``backbone.json`` (architecture, bands, the normalisation it was trained with,
            sha256).
        mem_mb: the job's memory (``resources.mem_mb``), as for :func:`train_row`.

    Returns:
        What :func:`~geopeft.train.loop.fit` returns.
    """
    from safetensors.torch import save_file

    info = store_info(store)
    args = spec.train
    train, val = load_splits(store, [("train", None), ("val", None)], None,
                             memory_budget_mb(mem_mb), args.workers)
    seed_everything(args.seed, args.threads)
    bb = dict(spec.backbone.as_dict(), weights="none", normalize="dataset")
    model, minfo = build_classifier(bb, info, len(info.classes), split=False)
    logger = RunLogger(experiment, run_name="pretrain", params=spec.raw,
                       tags=_tags(spec.study, spec.data, spec.rehearsal, info.fingerprint,
                                  "pretrain"), pretraining=True)
    logger.log_dict(spec.raw, "config.json")
    logger.log_dataset(store_name(info), info.fingerprint, store, "train",
                       {"samples": len(train), "bands": info.bands})
    t0 = time.perf_counter()
    result = fit(model, train, val, args, on_epoch=lambda e, m: logger.log_metrics(m, e))
    vit = model.backbone
    state = {k: v.detach().contiguous().clone() for k, v in vit.state_dict().items()
             if not is_classifier_key(k)}
    with atomic_dir(out) as tmp:
        save_file(state, str(PretrainLayout(tmp).weights))
        follow_umask(PretrainLayout(tmp).weights)  # safetensors writes 0600
        write_json(PretrainLayout(tmp).record, {
            "name": spec.backbone.name,
            "kwargs": spec.backbone.kwargs,
            "bands": info.bands,
            "norm": {"bands": info.bands, "mean": minfo["norm_mean"], "std": minfo["norm_std"]},
            "sha256": sha256_file(PretrainLayout(tmp).weights),
            "source_dataset": info.dataset,
            "source_classes": info.classes,
            "source_fingerprint": info.fingerprint,
            "final_val_acc": result["history"][-1].get("val_score"),
            "wall_time_s": time.perf_counter() - t0,
            "mlflow_run_id": logger.run_id,
        })
    logger.log_artifact(out, PRETRAIN_ARTIFACT)  # weights and description: runs rebuild from them
    logger.end()
    return result


def make_features(spec: JobSpec, store: Path, out: Path,
                  pretrain_dir: Path | None = None) -> dict[str, Any]:
    """The ``features`` job: the features of ``spec``'s frozen encoder (any row of those sharing
    its :meth:`~geopeft.spec.JobSpec.features_key`) on every sample of ``store``, written to
    ``out`` with their provenance.

    Raises:
        FeaturesError: the row cannot train on features (its reason), or its head does not read
            the encoder's pooled output.
    """
    reason = spec.features_reason()
    if reason is not None:
        raise FeaturesError(f"{out}: {spec.row.name} cannot train on features: {reason}")
    from geopeft.train.features import compute_features

    info = store_info(store)
    args = spec.train_args()
    seed_everything(args.seed, args.threads)
    model, _ = build_model(spec, info, pretrain_dir)
    provenance = {"key": spec.features_key(), "store_fingerprint": info.fingerprint,
                  "weights": encoder_digest(model)}
    return compute_features(model, store, out, spec.features_request()["views"], provenance,
                            args.eval_batch_size)


__all__ = ["make_features", "pretrain", "train_row"]
