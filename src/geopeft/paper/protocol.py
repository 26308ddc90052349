"""The protocol card in the paper: what the study's runs do, every difference from the reference
protocol and why, and the reference's published figures beside ours (marked published, in their
own column: never mixed with our numbers). From ``results/<study>/protocol.json``
(:mod:`geopeft.config.protocol`) and the runs the study reports."""

from __future__ import annotations

from typing import Any

from geopeft.paper.tables import tex_escape
from geopeft.settings.protocol import ASPECTS


def ours_for(anchor: dict[str, Any], df: Any) -> tuple[float, float, int] | None:
    """Our figure beside a published one: the test primary metric (%) of the anchor's strategy,
    dataset (default: the study's first), label fraction and sequence length (default: the
    longest), mean and sd over the seeds and their number; None without such runs."""
    if not anchor.get("strategy"):
        return None
    runs = df[(df["strategy"] == anchor["strategy"])
              & (df["label_fraction"] == anchor.get("label_fraction", 1.0))]
    runs = runs[runs["dataset"] == (anchor.get("dataset") or df["dataset"].iloc[0])]
    if "sequence_length" in runs and runs["sequence_length"].notna().any():
        length = anchor.get("sequence_length") or runs["sequence_length"].max()
        runs = runs[runs["sequence_length"] == length]
    if runs.empty:
        return None
    score = 100 * runs["test_primary"].astype(float)
    return float(score.mean()), float(score.std(ddof=1)) if len(runs) > 1 else float("nan"), len(runs)


def _text(words: object) -> str:
    """Card text as LaTeX: escaped, arrows and +- as symbols, < and > in math (OT1 text has
    neither), and long paths and URLs free to break after each slash."""
    out = tex_escape(words).replace("->", r"$\rightarrow$").replace("+-", r"$\pm$")
    out = out.replace("<", "$<$").replace(">", "$>$")
    return out.replace("/", r"/\allowbreak{}")


def _cols(*widths: float) -> str:
    """Ragged-right paragraph columns of these shares of the line (LaTeX's array package)."""
    return "".join(rf">{{\raggedright\arraybackslash}}p{{{w}\linewidth}}" for w in widths)


def _rows(cells: list[list[str]]) -> list[str]:
    return [" & ".join(c) + r" \\" for c in cells]


def protocol_tex(record: dict[str, Any], df: Any, study: str) -> str:
    """The protocol card, its differences and the published figures as LaTeX tables.

    Args:
        record: protocol.json's content.
        df: the runs the study reports (runs.csv, a sweep's chosen rates).
        study: the study's name (labels).
    """
    name = tex_escape(study)
    out = [r"\begin{table}[ht]", r"\centering", r"\small",
           rf"\caption{{{name}: protocol card, derived from the study as it ran.}}",
           rf"\label{{tab:{study}-protocol}}",
           rf"\begin{{tabular}}{{{_cols(0.24, 0.7)}}}", r"\toprule",
           r"Aspect & This study \\", r"\midrule",
           *_rows([[_text(ASPECTS[a]), _text(text)] for a, text in record["card"]]),
           r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    if record.get("reference"):
        diffs = record["differences"]
        out += [r"\begin{table}[ht]", r"\centering", r"\small",
                rf"\caption{{{name}: every difference from the reference protocol, "
                rf"{_text(record['reference'])}, and why"
                + ("" if diffs else " (none declared)") + ".}",
                rf"\label{{tab:{study}-differences}}",
                rf"\begin{{tabular}}{{{_cols(0.14, 0.24, 0.24, 0.28)}}}", r"\toprule",
                r"Aspect & Ours & Reference & Why \\",
                r"\midrule",
                *_rows([[_text(ASPECTS[d["aspect"]]), _text(d["ours"]), _text(d["reference"]),
                         _text(d["why"])] for d in diffs]),
                r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    if record["anchors"]:
        cells = []
        for a in record["anchors"]:
            ours = ours_for(a, df)
            mine = "--" if ours is None else (
                f"{ours[0]:.2f}" + (f" $\\pm$ {ours[1]:.2f}" if ours[2] > 1 else "")
                + f" (n = {ours[2]}, {tex_escape(a['strategy'])})")
            cells.append([_text(a["what"]), _text(a["metric"]), f"{a['value']:g}", mine,
                          _text(a["source"])])
        out += [r"\begin{table}[ht]", r"\centering", r"\small",
                rf"\caption{{{name}: published figures of the reference protocol (column "
                r"\emph{Published}) beside ours under this study's protocol (column \emph{Ours}: "
                r"mean $\pm$ sd over the seeds, n said; -- where the study has no such runs). "
                r"The protocols differ as the table of differences says.}",
                rf"\label{{tab:{study}-anchors}}",
                rf"\begin{{tabular}}{{{_cols(0.3, 0.12)}r{_cols(0.2, 0.16)}}}", r"\toprule",
                r"Reference setting & Metric & Published & Ours & Source \\", r"\midrule",
                *_rows(cells), r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


__all__ = ["ours_for", "protocol_tex"]
