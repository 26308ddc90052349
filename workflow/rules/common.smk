import os
import re

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from geopeft import config as study_config
from geopeft.io import canonical_json
from geopeft.data.subsets import subset_file_name
from geopeft.layout import (
    FIGURE_FORMATS,
    PAPER_PDF,
    SUBSET_KEY,
    SUBSET_NAME,
    StudyLayout,
    TrackingLayout,
)
from geopeft.paper.runs import study_figures


# One resolution for snakemake and `geopeft validate`: the study file(s) or the default study,
# then --config, then the schema's defaults (geopeft.config.resolve).
_study = study_config.resolve(workflow.overwrite_configfiles, workflow.config_settings.config)
config.clear()
config.update(_study)

# A dataset of your own (data.generic): every job of this run knows it from the environment
# (geopeft.data.sources.get_source; a prepared store also carries it)
if DATA_GENERIC := config["data"].get("generic"):
    os.environ[study_config.GENERIC_ENV] = canonical_json({config["data"]["dataset"]: DATA_GENERIC})

STUDY = config["study"]
# Every path of results/ and data/ comes from geopeft.layout: string roots give the strings
# as written, with the rules' wildcards ("{run}", "{dataset}") kept for Snakemake.
LAYOUT = StudyLayout.of(config["results_dir"], STUDY)
DATA = config["data"]
# tagged by the data settings: studies whose data differ never share a folder
DATA_LAYOUT = study_config.data_layout(config)
BANDS = study_config.bands_id(DATA["bands"])
ROWS = {row["name"]: row for row in study_config.study_rows(config)}
# the study's figures, decided from its datasets as make_figures and the paper decide them (a
# time-series segmentation study: label fraction x sequence length)
FIGURES = study_figures(r["dataset"] for r in ROWS.values())
# The study's task and primary metric, as the report's captions word them.
REPORT_TASK, REPORT_METRIC = study_config.report_task(ROWS.values())
EXPERIMENT = LAYOUT.experiment
# The study's protocol card (geopeft.config.protocol), derived from the resolved study
PROTOCOL = study_config.protocol_record(config)
# The tracking store and experiment that mlflow_init creates
MLFLOW = {
    "uri": study_config.tracking_uri(config),
    "experiment": config["mlflow"]["experiment"] or STUDY,
    "artifacts": TrackingLayout(config["results_dir"]).artifacts,
}


def recreate_stale_experiment():
    """mlflow_init's output describes an MLflow store; when that store is damaged (set aside,
    kept), gone or created again without this experiment, create both again at the start of
    the run, before any job logs, as mlflow_init does, and log the pretraining run and every
    trained run again from their folders (geopeft.tracking.recover_experiment). The jobs take
    the file as ancient(): rewriting it reruns nothing."""
    from geopeft.tracking import recover_experiment

    metrics, time_series = study_config.view_columns(sorted({r["dataset"] for r in ROWS.values()}))
    lines = recover_experiment(
        EXPERIMENT, MLFLOW["uri"], MLFLOW["experiment"], MLFLOW["artifacts"], metrics, time_series,
        pretrain_dir=LAYOUT.pretrain, run_dirs=[LAYOUT.run(name).root for name in ROWS])
    for i, line in enumerate(lines):
        (logger.warning if i == 0 else logger.info)(line)


_VISIBLE_GPUS = []


def get_job_gpus(wildcards=None):
    """GPUs each pretrain/train/evaluate job asks for: resources.gpus, where auto is 1 on a
    cluster executor or a local machine with GPUs and 0 on a local machine without
    (geopeft.gpus.per_job), so CPU jobs run as many at once as cores allow."""
    from geopeft.gpus import device_count, per_job

    if not _VISIBLE_GPUS:
        _VISIBLE_GPUS.append(device_count())
    return per_job(config["resources"]["gpus"], workflow.local_exec, _VISIBLE_GPUS[0])


# Resources of GPU jobs: gpu (Snakemake's --resources gpu=N, SLURM --gpus), cpus_per_gpu, mem_mb
# and a runtime that grows with each attempt (a job killed at its time limit gets more).
GPU_RESOURCES = {
    "gpu": get_job_gpus,
    "cpus_per_gpu": config["resources"]["cpus_per_gpu"],
    "mem_mb": config["resources"]["mem_mb"],
    "runtime": lambda wildcards, attempt: config["resources"]["runtime"] * attempt,
}


# Resources of the CPU rules that run as cluster jobs (prepare, subset, figures; the other CPU
# rules are local rules). Declared here and not as the SLURM profile's default-resources: a
# --workflow-profile overrides the same key of the user's --profile whole, so a site profile's
# default-resources (account, partition) would be dropped for every job.
CPU_RESOURCES = {"runtime": 30, "mem_mb": 4000}


wildcard_constraints:
    dataset="[a-z0-9_]+",
    bands="[A-Za-z0-9_-]+",
    run="|".join(map(re.escape, ROWS)) if ROWS else "[A-Za-z0-9_.-]+",
    method="[a-z]+",
    fraction="[0-9.e-]+",
    seed="[0-9]+",
    key="[0-9a-f]{16}",


def get_store(dataset=None, bands=BANDS):
    """Prepared zarr store of a dataset (default: the study's) for a band selection."""
    return DATA_LAYOUT.store(dataset or DATA["dataset"], bands)


def get_run_store(wildcards):
    """Prepared store of a run's dataset."""
    return get_store(ROWS[wildcards.run]["dataset"])


def get_raw(wildcards):
    """Raw folder of a dataset: data.raw_dir for local data, else generated or downloaded."""
    if DATA["source"] == "local" and wildcards.dataset == DATA["dataset"]:
        return DATA["raw_dir"]
    return DATA_LAYOUT.raw(wildcards.dataset)


def get_download_files(wildcards):
    """Every file the dataset's source downloads (registry, or data.remotes), mirrors first."""
    from geopeft.data.fetch import remotes_for

    files = remotes_for(wildcards.dataset, DATA["mirrors"], DATA["remotes"])
    return [DATA_LAYOUT.download(wildcards.dataset, r.name) for r in files]


def get_source_store():
    """Prepared store of the synthetic pretraining source set, with pretrain.bands: in the
    target's format for EuroSAT, else the multispectral source set."""
    bands = study_config.bands_id(config["pretrain"]["bands"] or DATA["bands"])
    return get_store(study_config.pretrain_source(config), bands)


def get_subset(wildcards):
    """Label-fraction subset file of a run ([] when it uses every training label)."""
    row = ROWS[wildcards.run]
    if row["label_fraction"] >= 1.0:
        return []
    name = subset_file_name(config["subsets"]["method"], row["label_fraction"], row["seed"])
    return DATA_LAYOUT.subset(row["dataset"], BANDS, name)


def get_pretrain(wildcards=None):
    """The pretrained embedded backbone, when the study (or the run's row) uses it."""
    run = getattr(wildcards, "run", None)
    if run is not None:
        bb = study_config.row_backbone(config, ROWS[run])
        return LAYOUT.pretrain if bb is not None and bb["weights"] == "pretrain" else []
    return LAYOUT.pretrain if config["backbone"]["weights"] == "pretrain" else []


def get_pretrain_spec(wildcards):
    return canonical_json(study_config.pretrain_spec(config))


def get_train_spec(wildcards):
    """Everything one training job depends on: editing another row leaves it unchanged."""
    return canonical_json(study_config.job_spec(config, ROWS[wildcards.run]))


def _features_plan():
    """Which runs train their head on a frozen encoder's features, and the features jobs: one
    per distinct encoder, data and views (geopeft.spec.JobSpec.features_key), whatever the rows'
    seeds and label fractions."""
    of_run, jobs = {}, {}
    for name, (key, spec) in study_config.features_rows(config, list(ROWS.values())).items():
        of_run[name] = DATA_LAYOUT.features(spec.row.dataset, BANDS, key)
        jobs.setdefault(key, {"spec": canonical_json(spec.raw), "dataset": spec.row.dataset,
                              "pretrain": LAYOUT.pretrain if spec.backbone.weights == "pretrain"
                              else []})
    return of_run, jobs


FEATURES_OF_RUN, FEATURES_JOBS = _features_plan()


def get_features(wildcards):
    """The features a run's head trains on ([]: it trains on images)."""
    return FEATURES_OF_RUN.get(wildcards.run, [])


def optional_flag(flag, paths):
    """`--flag path` for an optional input, '' when absent."""
    return f"{flag} {paths}" if paths else ""


# The studies of `snakemake paper` (paper.studies; default: this one), as results folders.
PAPER_STUDIES = [StudyLayout.of(config["results_dir"], name).root
                 for name in config["paper"]["studies"]] or [LAYOUT.root]


def get_paper_inputs(wildcards):
    """What the paper needs: this study's outputs when it is in the paper (built here), the
    runs table and LaTeX table of every other study (built by running that study; a missing
    one is named with what to run)."""
    inputs = []
    for results in PAPER_STUDIES:
        if results == LAYOUT.root:
            inputs += get_final_outputs()
            continue
        study = StudyLayout(results)
        for f in (study.runs_csv, study.table):
            if not os.path.exists(f):
                raise WorkflowError(
                    f"paper.studies: {f} is missing; run that study first "
                    f"(snakemake --configfile <its study file>), then `snakemake paper`")
            inputs.append(ancient(f))
    return inputs


def get_final_outputs():
    if not all(study_config.trainable(row["dataset"]) for row in ROWS.values()):
        # fetched and prepared here; trained by the Fusion-LoRA / time-series studies
        return [get_store()]
    return [
        # every run's model, a deliverable itself: a model lost (a killed --forcerun) is retrained
        *[LAYOUT.run(run).model for run in ROWS],
        LAYOUT.runs_csv,
        LAYOUT.protocol,
        LAYOUT.table,
        LAYOUT.per_class_tex,
        *expand(LAYOUT.figure("{name}", "{ext}"), name=FIGURES, ext=list(FIGURE_FORMATS)),
    ]


# One warm process forks the pretrain/train/evaluate jobs of a local run (geopeft.jobserver):
# ~10 s of imports saved per job. Not on a cluster executor or with conda/apptainer envs.
_JOBSERVER = []


onstart:
    from geopeft import jobserver

    recreate_stale_experiment()
    if (config["jobserver"] and workflow.local_exec
            and not workflow.deployment_settings.deployment_method):
        _JOBSERVER.append(jobserver.start(LAYOUT.log("jobserver")))


onsuccess:
    from geopeft import jobserver

    for handle in _JOBSERVER:
        jobserver.stop(handle)


onerror:
    from geopeft import jobserver

    for handle in _JOBSERVER:
        jobserver.stop(handle)
