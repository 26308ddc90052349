"""The paper: one LaTeX document over the results of several studies, compiled with latexmk.

Each study is a section generated from its results folder (``results/<study>``) and the
templates in ``geopeft/paper/templates`` (never hand-edited per study): its setup read from the
runs' job specs (data, bands, encoder and weights, strategies, epochs, label fractions, sequence
lengths, seeds), a sentence saying "synthetic" or "rehearsal" where that applies, its tables
(``table.tex``, the per-class report ``per_class.tex``) and every figure it has, each with a
caption. ``snakemake paper`` runs
:func:`build_paper` for the studies of ``paper.studies``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import string
import subprocess
from pathlib import Path
from typing import Any

from geopeft.errors import GeopeftError
from geopeft.io import read_json
from geopeft.layout import PAPER_BUILD, StudyLayout
from geopeft.models.zoo import resolve as resolve_backbone
from geopeft.paper.runs import (
    REHEARSAL_NOTE,
    SYNTHETIC_NOTE,
    provenance_note,
    read_runs,
    seeds_phrase,
    study_figures,
)
from geopeft.paper.tables import tex_escape
from geopeft.strategies import LoraSpec
from geopeft.strategies import get as get_strategy
from geopeft.tasks import TASKS

#: The adapter settings a saved run's spec may hold.
LORA_KEYS = frozenset(LoraSpec.__dataclass_fields__)

TEMPLATES = Path(__file__).parent / "templates"
#: What to install when no TeX engine is found.
TEX_INSTALL = ("install TeX: on Debian/Ubuntu `sudo apt-get install latexmk "
               "texlive-latex-recommended texlive-latex-extra`; or run Snakemake with "
               "--sdm conda (envs/paper.yaml)")
#: The caption of each figure in the paper ({metric}: the study's primary metric in words).
FIGURE_CAPTIONS = {
    "accuracy_vs_params": "Test {metric} against trainable parameters (log scale), per strategy "
                          "and label fraction; {spread}.",
    "accuracy_vs_fraction": "Test {metric} against the share of labelled training data, a line "
                            "per strategy; {spread}.",
    "miou_vs_fraction": "Test mIoU (void excluded) against the label fraction, a panel per "
                        "strategy and a line per sequence length; {spread}.",
    "fraction_length_heatmap": "Mean test mIoU (void excluded) of each label fraction x sequence "
                               "length cell, per strategy.",
    "cost": "Training cost per strategy and label fraction: wall time per run, images/s and "
            "training memory (the axis says what it measures); {spread}.",
    "confusion": "Test confusion matrices (per-class AP for multi-label data) summed over every "
                 "seed at the largest label fraction, rows normalised (recall); no run is picked "
                 "by its test score.",
    "curves": "Training curves at the largest label fraction: train (solid) and validation "
              "(dashed) loss and the validation {metric} per epoch; line: mean, band: range "
              "over seeds.",
    "trainable_params": "Trainable parameters per strategy (log scale): count and share of the "
                        "model's parameters.",
}
_WIDE = {"confusion", "cost", "curves"}


class PaperError(GeopeftError, RuntimeError):
    """The paper cannot be built: a study's results are missing, or TeX is missing or failed;
    the message names the file or what to install."""


class _Template(string.Template):
    delimiter = "@"  # LaTeX uses $ and { }; @name never appears in the templates otherwise


def _template(template: str, **values: str) -> str:
    return _Template((TEMPLATES / template).read_text()).substitute(**values)


def _spread(df: Any) -> str:
    return seeds_phrase(df).replace("±", r"$\pm$").replace("<", "$<$")


def _numbers(values: list[Any], fmt: str = "{:g}") -> str:
    return ", ".join(fmt.format(v) for v in values)


def _adapter_targets(backbone: dict[str, Any] | None) -> list[str] | None:
    """The adapter targets a row's backbone declares (None: no backbone, or one the zoo no
    longer knows)."""
    try:
        return resolve_backbone(backbone)["lora_targets"] if backbone else None
    except ValueError:
        return None


def _setup(df: Any, results: Path) -> str:
    """The study's setup in words, from its runs' job specs and runs.csv."""
    specs = {r: read_json(StudyLayout(results).run(r).record)["spec"] for r in df["run"]}
    first = next(iter(specs.values()))
    data, backbone = first["data"], first.get("backbone")
    datasets = list(dict.fromkeys(df["dataset"]))
    parts = [f"Data: {tex_escape(', '.join(datasets))} ({tex_escape(data['source'])}), bands "
             f"{tex_escape(' '.join(data['bands']))}."]
    if backbone:
        parts.append(f"Encoder: {tex_escape(backbone['name'])}, weights "
                     f"{tex_escape(backbone.get('weights') or 'none')}.")
    strategies = []
    for s in dict.fromkeys(df["strategy"]):
        spec = next(sp for r, sp in specs.items() if df.set_index("run").loc[r, "strategy"] == s)
        row = spec["row"]
        # runs saved before a setting existed have its default
        lora = LoraSpec(**{k: v for k, v in row["lora"].items() if k in LORA_KEYS}) \
            if row.get("lora") else None
        own = get_strategy(row["method"])
        options = (own.settings_class(**row[own.settings_key])
                   if own.settings_key and row.get(own.settings_key) else None)
        words = own.words(lora, _adapter_targets(spec.get("backbone")), options)
        t = row["train"]
        lr = (f"lr chosen on validation among {', '.join(f'{x:g}' for x in row['lr_sweep'])}"
              if row.get("lr_sweep") else f"lr {t['lr']:g}")
        strategies.append(f"{tex_escape(s)} ({tex_escape(words)}; {t['epochs']} epochs, batch "
                          f"{t['batch_size']}, {lr})")
    parts.append(f"Strategies: {'; '.join(strategies)}.")
    fractions = _numbers([100 * f for f in sorted(df.label_fraction.unique())])
    lengths = ""
    if "sequence_length" in df and df.sequence_length.notna().any():
        lengths = "; sequence lengths: " + _numbers(
            sorted(df.sequence_length.dropna().unique().astype(int)), "{:d}")
    devices = tex_escape(", ".join(dict.fromkeys(df["device"].astype(str))))
    parts.append(f"Label fractions: {fractions}\\,\\%{lengths}; seeds: "
                 f"{_numbers(sorted(df.seed.unique()), '{:d}')} ({len(df)} runs on {devices}).")
    parts.append("Model selection uses the validation split only (every run keeps its last "
                 "epoch); no test score chooses anything.")
    return " ".join(parts)


def _provenance(note: str | None) -> str:
    if note == REHEARSAL_NOTE:
        return (r"\noindent\textbf{Rehearsal:} fixture data and random weights in the "
                r"publishers' formats; these numbers are not results.")
    if note == SYNTHETIC_NOTE:
        return (r"\noindent\textbf{Synthetic data:} these results come from geopeft's embedded "
                r"synthetic Sentinel-2 world, not from the real dataset.")
    return ""


def study_section(results: Path, build: Path) -> str:
    """The LaTeX section of one study from its results folder (paths relative to ``build``,
    where main.tex is compiled).

    Raises:
        PaperError: runs.csv or table.tex is missing.
    """

    from geopeft.config import report_task

    results = Path(results)
    study = StudyLayout(results)
    for f in (study.runs_csv, study.table):
        if not f.is_file():
            raise PaperError(f"{f}: missing; run the study first (snakemake "
                             f"--configfile <its study file>), then build the paper")
    df = read_runs(study.runs_csv)
    name = str(results.name)
    task, metric = report_task([{"dataset": d} for d in dict.fromkeys(df["dataset"])])
    if "+" in task:  # several datasets, several metrics: name each in words
        metric = " / ".join(TASKS[t].metric_words for t in task.split("+"))
    figures = []
    for fig in study_figures(df["dataset"]):  # as make_figures and the rules decide them
        pdf = study.figure(fig, "pdf")
        if not pdf.is_file():
            continue
        caption = FIGURE_CAPTIONS[fig].format(metric=metric, spread=_spread(df))
        figures.append(_template(
            "figure.tex", width="1.0" if fig in _WIDE else "0.75",
            path=os.path.relpath(pdf.resolve(), build.resolve()).replace(os.sep, "/"),
            caption=f"{tex_escape(name)}: {caption}", label=f"{name}-{fig}"))
    tables = [f"\\input{{{os.path.relpath(t.resolve(), build.resolve())}}}"
              .replace(os.sep, "/") for t in (study.table, study.per_class_tex) if t.is_file()]
    if study.protocol.is_file():  # results made before protocol cards have none
        from geopeft.paper.protocol import protocol_tex

        tables.append(protocol_tex(read_json(study.protocol), df, name))  # after the results
    return _template("study.tex", name=name, results=str(results), title=tex_escape(name),
                     label=name, provenance=_provenance(provenance_note(df)),
                     setup=_setup(df, results), table="\n".join(tables),
                     figures="\n".join(figures))


def write_tex(results_dirs: list[Path], build: Path) -> Path:
    """Write ``build/main.tex``: a section per study."""

    build.mkdir(parents=True, exist_ok=True)
    sections, summary, notes = [], [], set()
    for results in results_dirs:
        sections.append(study_section(Path(results), build))
        df = read_runs(StudyLayout(Path(results)).runs_csv, every=True)
        summary.append(f"{tex_escape(Path(results).name)} ({len(df)} runs)")
        if note := provenance_note(df):
            notes.add(note)
    abstract = (f"Parameter-efficient fine-tuning of vision and geospatial foundation models on "
                f"Sentinel-2 imagery, regenerated by geopeft from the results of "
                f"{len(results_dirs)} {'study' if len(results_dirs) == 1 else 'studies'}: "
                f"{', '.join(summary)}. Every $\\pm$ and error bar states what it is and over how "
                f"many seeds.")
    if REHEARSAL_NOTE in notes:
        abstract += r" \textbf{Some sections are rehearsals: their numbers are not results.}"
    elif SYNTHETIC_NOTE in notes:
        abstract += r" \textbf{Some sections report synthetic data, not the real datasets.}"
    tex = _template("main.tex", title="Parameter-efficient fine-tuning on Sentinel-2",
                    date=dt.date.today().isoformat(), abstract=abstract,
                    sections="\n".join(sections))
    out = build / "main.tex"
    out.write_text(tex)
    return out


def build_paper(results_dirs: list[Path], out_pdf: Path, build: Path | None = None) -> Path:
    """Generate the paper of the studies in ``results_dirs`` and compile it with latexmk into
    ``out_pdf`` (written whole or not at all).

    Args:
        results_dirs: each study's results folder (``results/<study>``), in paper order.
        out_pdf: the PDF to write.
        build: where main.tex and LaTeX's build files go (default: ``generated/`` beside the
            PDF).

    Raises:
        PaperError: a study's results are missing, latexmk is not installed (the message says
            what to install) or LaTeX failed (the message quotes its error and names its log).
    """
    out_pdf = Path(out_pdf)
    build = Path(build) if build else out_pdf.parent / PAPER_BUILD
    if shutil.which("latexmk") is None or shutil.which("pdflatex") is None:
        raise PaperError(f"latexmk/pdflatex not found on PATH: {TEX_INSTALL}")
    tex = write_tex([Path(r) for r in results_dirs], build)
    r = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error",
                        "-file-line-error", tex.name], cwd=build, capture_output=True, text=True)
    log = build / "main.log"
    if r.returncode != 0 or not (build / "main.pdf").is_file():
        text = log.read_text(errors="replace") if log.is_file() else r.stdout + r.stderr
        errors = [ln for ln in text.splitlines() if ln.startswith("!") or ":" in ln and
                  "error" in ln.lower()][:5]
        raise PaperError(f"{tex}: LaTeX failed ({'; '.join(errors) or 'see the log'}); log: {log}")
    out_pdf.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_pdf.with_name(f".{out_pdf.name}.tmp")
    shutil.copyfile(build / "main.pdf", tmp)
    tmp.replace(out_pdf)
    return out_pdf


__all__ = ["FIGURE_CAPTIONS", "PaperError", "TEX_INSTALL", "build_paper", "study_section",
           "tex_escape", "write_tex"]
