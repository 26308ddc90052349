"""The layout of ``results/`` and ``data/``: every file and folder name, written once.

The rules (through ``workflow/rules/common.smk``) and the code ask these classes for their paths;
no other module spells a name of the trees. A class is given the root of its tree and returns
the same kind of path: a ``str`` root gives strings joined with ``/`` exactly as written (the
rules: Snakemake wildcards such as ``{run}`` are kept, ``expand`` fills them), a
:class:`~pathlib.Path` root gives paths (the code). ::

    results/<study>/                       StudyLayout
        mlflow_experiment.json             .experiment
        pretrain/                          .pretrain (PretrainLayout: backbone.json, .safetensors)
        runs/<run>/                        .run(name) (RunLayout)
            model/                         .model (ModelLayout: run.json, trainable.safetensors,
                                               adapter/)
            state/                         .state
            metrics.json, confusion.csv    .metrics, .confusion
        runs.csv, runs.html                .runs_csv, .runs_html
        table.tex, per_class.tex/.csv      .table, .per_class_tex, .per_class_csv
        ledger.csv                         .ledger_csv
        protocol.json                      .protocol
        figures/<name>.<ext>               .figures, .figure(name, ext)
        logs/<rule>[/<name>].log           .logs, .log(rule, name)
    results/mlflow.db, results/mlartifacts TrackingLayout
    <root>/                                DataLayout (data.root, data.source, tags)
        raw/<raw_dir>/<dataset>            .raw(dataset); raw_dir = <source>[-w<tag>]
        prepared/<prepared_dir>/<dataset>/ .prepared(dataset); prepared_dir = raw_dir[-o<tag>]
            <bands>.zarr, <bands>.subsets/ .store(dataset, bands), .subsets(dataset, bands)
        downloads/<dataset>/<file>         .download(dataset, file)
        logs/<rule>[/<name>].log           .logs, .log(rule, name) (downloads)
        logs/<raw_dir>/..., logs/<prepared_dir>/...  .raw_log, .prepared_log

The tags keep two studies whose data settings differ out of each other's folders: ``w<tag>``
names a raw world other than the default one (the synthetic world's settings, a local raw_dir,
declared remotes), ``o<tag>`` the preparation options (geopeft.config.data_layout derives both).
        rehearsal/                         rehearsal_data(root): a rehearsal's data root
    .rehearsal/                            FixtureLayout: manifest.json, server.json, files/,
                                               torch/
    paper/main.pdf                         PAPER_PDF

Nothing here imports beyond the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

#: A root and the paths under it: ``str`` (joined with ``/``, as the rules write them) or Path.
P = TypeVar("P", str, Path)

#: The default results folder (``results_dir``) and data root (``data.root``).
RESULTS, DATA = "results", "data"
#: A run's record in its model folder: the job spec, the history, the costs.
RUN_RECORD = "run.json"
#: The trained tensors of a model folder (the trainable ones only).
TRAINABLE = "trainable.safetensors"
#: The peft adapter folder of a LoRA model folder.
ADAPTER = "adapter"
#: The pretrained backbone's record (name, bands, norm, sha256) in the pretrain folder.
PRETRAIN_RECORD = "backbone.json"
#: The pretrained backbone's tensors in the pretrain folder.
PRETRAIN_WEIGHTS = "backbone.safetensors"
#: The folder of a study's runs, and of a study's pretrained backbone.
RUNS, PRETRAIN = "runs", "pretrain"
#: A run's folders: the trained model, the resumable training state.
MODEL, STATE = "model", "state"
#: A run's test metrics and test confusion matrix.
METRICS, CONFUSION = "metrics.json", "confusion.csv"
#: Every run's record under a study folder, as a glob pattern.
RUN_RECORDS = f"{RUNS}/*/{MODEL}/{RUN_RECORD}"
#: The study's runs table (CSV) and its HTML page (the Snakemake report).
RUNS_CSV, RUNS_HTML = "runs.csv", "runs.html"
#: The study's LaTeX table, and its per-class report (LaTeX, CSV).
TABLE, PER_CLASS_TEX, PER_CLASS_CSV = "table.tex", "per_class.tex", "per_class.csv"
#: The study's cost ledger per strategy (CSV; its LaTeX is in table.tex).
LEDGER_CSV = "ledger.csv"
#: The study's protocol card (geopeft.config.protocol).
PROTOCOL = "protocol.json"
#: The study's figures folder, and the formats each figure is drawn in.
FIGURES, FIGURE_FORMATS = "figures", ("pdf", "png")
#: The logs folder of a study and of a data root; a log file's suffix.
LOGS, LOG_SUFFIX = "logs", ".log"
#: The study's MLflow experiment file (written by ``geopeft mlflow-init``).
EXPERIMENT = "mlflow_experiment.json"
#: The MLflow SQLite store and the artifact folder, in the results folder.
MLFLOW_DB, MLARTIFACTS = "mlflow.db", "mlartifacts"
#: The MLflow artifact paths of a run's model folder and of a pretrain run's backbone folder.
MODEL_ARTIFACT, PRETRAIN_ARTIFACT = "model", "backbone"
#: The data tree's folders: raw datasets, prepared stores, downloaded files.
RAW, PREPARED, DOWNLOADS = "raw", "prepared", "downloads"
#: A prepared store's suffix, and its subsets folder's.
STORE_SUFFIX, SUBSETS_SUFFIX = ".zarr", ".subsets"
#: Between a store's band selection and a frozen encoder's key in its features' name.
FEATURES_INFIX = ".features-"
#: A label-fraction subset's key and file name (``str.format`` fields, or Snakemake wildcards).
SUBSET_KEY = "{method}-f{fraction}-s{seed}"
SUBSET_NAME = f"{SUBSET_KEY}.json"
#: A rehearsal's data root under the study's data root.
REHEARSAL_DATA = "rehearsal"
#: The default fixture folder of ``geopeft rehearsal-server``.
FIXTURES = ".rehearsal"
#: The paper, and the folder beside it where LaTeX builds it.
PAPER_PDF, PAPER_BUILD = "paper/main.pdf", "generated"


def join(root: P, *parts: str) -> P:
    """``root/part/...``: a string joined with ``/`` (as written) for a string root, else a Path."""
    if isinstance(root, str):
        return "/".join((root, *parts))
    return root.joinpath(*parts)


@dataclass(frozen=True)
class ModelLayout(Generic[P]):
    """A trained model folder (``runs/<run>/model``)."""

    root: P

    @property
    def record(self) -> P:
        """The run record, ``run.json``."""
        return join(self.root, RUN_RECORD)

    @property
    def trainable(self) -> P:
        """The trained tensors, ``trainable.safetensors``."""
        return join(self.root, TRAINABLE)

    @property
    def adapter(self) -> P:
        """The peft adapter folder (LoRA), ``adapter/``."""
        return join(self.root, ADAPTER)


@dataclass(frozen=True)
class PretrainLayout(Generic[P]):
    """The pretrained embedded backbone's folder (``pretrain``)."""

    root: P

    @property
    def record(self) -> P:
        """The backbone's record, ``backbone.json``."""
        return join(self.root, PRETRAIN_RECORD)

    @property
    def weights(self) -> P:
        """The backbone's tensors, ``backbone.safetensors``."""
        return join(self.root, PRETRAIN_WEIGHTS)


@dataclass(frozen=True)
class RunLayout(Generic[P]):
    """One run's folder (``runs/<run>``)."""

    root: P

    @property
    def model(self) -> P:
        """The trained model folder (:class:`ModelLayout`)."""
        return join(self.root, MODEL)

    @property
    def record(self) -> P:
        """The model folder's run record."""
        return ModelLayout(self.model).record

    @property
    def state(self) -> P:
        """The training state folder (checkpoints to resume from)."""
        return join(self.root, STATE)

    @property
    def metrics(self) -> P:
        """The test metrics, ``metrics.json``."""
        return join(self.root, METRICS)

    @property
    def confusion(self) -> P:
        """The test confusion matrix, ``confusion.csv``."""
        return join(self.root, CONFUSION)


@dataclass(frozen=True)
class StudyLayout(Generic[P]):
    """A study's results folder (``<results_dir>/<study>``)."""

    root: P

    @classmethod
    def of(cls, results_dir: P, study: str) -> StudyLayout[P]:
        """The results folder of ``study`` in ``results_dir``."""
        return cls(join(results_dir, study))

    @property
    def runs(self) -> P:
        """The runs folder, one folder per run."""
        return join(self.root, RUNS)

    def run(self, name: str) -> RunLayout[P]:
        """One run's folder (``"{run}"`` for the rules' wildcard)."""
        return RunLayout(join(self.runs, name))

    @property
    def pretrain(self) -> P:
        """The pretrained embedded backbone's folder (:class:`PretrainLayout`)."""
        return join(self.root, PRETRAIN)

    @property
    def runs_csv(self) -> P:
        """The runs table, one row per run."""
        return join(self.root, RUNS_CSV)

    @property
    def runs_html(self) -> P:
        """The runs table as an HTML page (the Snakemake report)."""
        return join(self.root, RUNS_HTML)

    @property
    def table(self) -> P:
        """The paper's LaTeX table."""
        return join(self.root, TABLE)

    @property
    def per_class_tex(self) -> P:
        """The per-class report, LaTeX."""
        return join(self.root, PER_CLASS_TEX)

    @property
    def per_class_csv(self) -> P:
        """The per-class report, CSV."""
        return join(self.root, PER_CLASS_CSV)

    @property
    def protocol(self) -> P:
        """The protocol card (JSON)."""
        return join(self.root, PROTOCOL)

    @property
    def ledger_csv(self) -> P:
        """The cost ledger per dataset and strategy, CSV."""
        return join(self.root, LEDGER_CSV)

    @property
    def figures(self) -> P:
        """The figures folder."""
        return join(self.root, FIGURES)

    def figure(self, name: str, ext: str) -> P:
        """A figure file, ``figures/<name>.<ext>``."""
        return join(self.figures, figure_file(name, ext))

    @property
    def experiment(self) -> P:
        """The MLflow experiment file."""
        return join(self.root, EXPERIMENT)

    @property
    def logs(self) -> P:
        """The study's logs folder."""
        return join(self.root, LOGS)

    def log(self, rule: str, name: str | None = None) -> P:
        """A job's log: ``logs/<rule>.log``, or ``logs/<rule>/<name>.log`` per wildcard."""
        return _log(self.logs, rule, name)

    def train_history(self, run: str) -> P:
        """Every attempt's output of a run's training, appended (the job's log links to it)."""
        return self.log("train", f"{run}.history")


@dataclass(frozen=True)
class TrackingLayout(Generic[P]):
    """The MLflow store in the results folder (``results_dir``)."""

    results_dir: P

    @property
    def db(self) -> P:
        """The SQLite backend store."""
        return join(self.results_dir, MLFLOW_DB)

    @property
    def uri(self) -> str:
        """The backend store as a tracking URI, ``sqlite:///<results_dir>/mlflow.db``."""
        return f"sqlite:///{self.db}"

    @property
    def artifacts(self) -> P:
        """The artifact folder."""
        return join(self.results_dir, MLARTIFACTS)


@dataclass(frozen=True)
class DataLayout(Generic[P]):
    """The data tree of a source (``data.root``, ``data.source``), for one raw world and one
    set of preparation options: ``world`` and ``options`` are short tags of the settings that
    shape them (empty: the defaults), so that studies whose data differ never share a folder."""

    root: P
    source: str
    world: str = ""
    """Tag of the raw data's settings when they are not the default ones (``raw/<source>-w<tag>``)."""
    options: str = ""
    """Tag of the preparation options when any is set (``prepared/<raw_dir>-o<tag>``)."""

    @property
    def raw_dir(self) -> str:
        """The name of the source's raw folder: ``<source>`` or ``<source>-w<world>``."""
        return f"{self.source}-w{self.world}" if self.world else self.source

    @property
    def prepared_dir(self) -> str:
        """The name of the prepared folder: ``<raw_dir>`` or ``<raw_dir>-o<options>``."""
        return f"{self.raw_dir}-o{self.options}" if self.options else self.raw_dir

    @property
    def raw_root(self) -> P:
        """The source's raw folders, ``<root>/raw/<raw_dir>``."""
        return join(self.root, RAW, self.raw_dir)

    def raw(self, dataset: str) -> P:
        """The raw folder of a dataset (unpacked, generated or fetched)."""
        return join(self.raw_root, dataset)

    @property
    def prepared_root(self) -> P:
        """The source's prepared stores, ``<root>/prepared/<prepared_dir>``."""
        return join(self.root, PREPARED, self.prepared_dir)

    def prepared(self, dataset: str) -> P:
        """The prepared stores of a dataset, one per band selection."""
        return join(self.prepared_root, dataset)

    def store(self, dataset: str, bands: str) -> P:
        """The zarr store of a dataset for a band selection (``bands_id``)."""
        return join(self.prepared(dataset), f"{bands}{STORE_SUFFIX}")

    def subsets(self, dataset: str, bands: str) -> P:
        """The label-fraction subsets of a store."""
        return join(self.prepared(dataset), f"{bands}{SUBSETS_SUFFIX}")

    def subset(self, dataset: str, bands: str, name: str) -> P:
        """A subset file of a store (:func:`subset_name`, or :data:`SUBSET_NAME` as wildcards)."""
        return join(self.subsets(dataset, bands), name)

    def features(self, dataset: str, bands: str, key: str) -> P:
        """The features of a frozen encoder (its ``features_key``) on a store."""
        return join(self.prepared(dataset), f"{bands}{FEATURES_INFIX}{key}{STORE_SUFFIX}")

    @staticmethod
    def raw_root_of_store(store: Path) -> Path:
        """The raw folders of the world a store (``.store(...)``, as a Path) was prepared from."""
        prepared_dir = store.parents[1].name
        raw_dir = re.sub(r"-o[0-9a-f]+$", "", prepared_dir)
        return store.parents[3] / RAW / raw_dir

    def downloads(self, dataset: str) -> P:
        """The downloaded files of a dataset."""
        return join(self.root, DOWNLOADS, dataset)

    def download(self, dataset: str, file: str) -> P:
        """One downloaded file of a dataset."""
        return join(self.downloads(dataset), file)

    @property
    def logs(self) -> P:
        """The data jobs' logs folder."""
        return join(self.root, LOGS)

    def log(self, rule: str, name: str | None = None) -> P:
        """A log shared by every world (downloads): ``logs/<rule>[/<name>].log``."""
        return _log(self.logs, rule, name)

    def raw_log(self, rule: str, name: str | None = None) -> P:
        """A log of a job that writes raw data: ``logs/<raw_dir>/<rule>[/<name>].log``."""
        return _log(join(self.logs, self.raw_dir), rule, name)

    def prepared_log(self, rule: str, name: str | None = None) -> P:
        """A log of a job that writes prepared data: ``logs/<prepared_dir>/<rule>[/<name>].log``."""
        return _log(join(self.logs, self.prepared_dir), rule, name)


@dataclass(frozen=True)
class FixtureLayout(Generic[P]):
    """A rehearsal fixture folder (default :data:`FIXTURES`)."""

    root: P

    @property
    def manifest(self) -> P:
        """The fixtures' manifest (datasets, weights, checksums)."""
        return join(self.root, "manifest.json")

    @property
    def server(self) -> P:
        """The running fixture server's address and process id."""
        return join(self.root, "server.json")

    @property
    def files(self) -> P:
        """The files the fixture server serves."""
        return join(self.root, "files")

    @property
    def torch_home(self) -> P:
        """The rehearsal's own torch hub cache (``TORCH_HOME``), where url weights download."""
        return join(self.root, "torch")


def _log(logs: P, rule: str, name: str | None) -> P:
    return join(logs, f"{rule}{LOG_SUFFIX}") if name is None else join(
        logs, rule, f"{name}{LOG_SUFFIX}")


def figure_file(name: str, ext: str) -> str:
    """A figure's file name in the figures folder."""
    return f"{name}.{ext}"


def subset_name(method: str, fraction: float, seed: int) -> str:
    """A label-fraction subset's file name, keyed by (method, fraction, seed)."""
    return SUBSET_NAME.format(method=method, fraction=f"{fraction:g}", seed=seed)


def rehearsal_data(root: P) -> P:
    """A rehearsal's data root under the study's data root."""
    return join(root, REHEARSAL_DATA)


__all__ = [
    "ADAPTER", "CONFUSION", "DATA", "DOWNLOADS", "EXPERIMENT", "FIGURES", "FIGURE_FORMATS", "FIXTURES",
    "LOGS", "LOG_SUFFIX", "METRICS", "MLARTIFACTS", "MLFLOW_DB", "MODEL", "MODEL_ARTIFACT",
    "PAPER_BUILD", "PAPER_PDF", "PER_CLASS_CSV", "PER_CLASS_TEX", "PREPARED", "PRETRAIN",
    "PRETRAIN_ARTIFACT", "PRETRAIN_RECORD", "PRETRAIN_WEIGHTS", "RAW", "REHEARSAL_DATA", "RESULTS", "RUNS",
    "RUNS_CSV", "RUNS_HTML", "RUN_RECORD", "RUN_RECORDS", "STATE", "STORE_SUFFIX",
    "FEATURES_INFIX",
    "SUBSETS_SUFFIX", "SUBSET_KEY", "SUBSET_NAME", "TABLE", "TRAINABLE", "DataLayout", "FixtureLayout",
    "ModelLayout", "PretrainLayout", "RunLayout", "StudyLayout", "TrackingLayout", "figure_file",
    "join", "rehearsal_data", "subset_name",
]
