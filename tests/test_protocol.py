"""Protocol cards (issue 34): derived from the study as it runs, printed by `validate
--resolved`, written to protocol.json, shown in MLflow and the paper, with every declared
difference from the reference protocol and the reference's published figures beside ours."""

from __future__ import annotations

import copy
import os
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
import yaml

from geopeft import config as gcfg
from geopeft.config.protocol import card_lines, card_markdown, protocol_card, protocol_record
from geopeft.paper.protocol import ours_for, protocol_tex
from geopeft.settings.protocol import ASPECTS
from geopeft.spec import ConfigError

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "config" / "studies"


def _card(path: Path, overrides: dict | None = None) -> dict[str, str]:
    return dict(protocol_card(gcfg.resolve([path], overrides or {})))


def test_the_card_says_every_aspect_from_the_study_itself():
    card = _card(ROOT / "config" / "config.yaml")
    assert list(card) == list(ASPECTS)
    assert card["data"].startswith("eurosat_rgb: the embedded synthetic world's split")
    assert "label fractions 10 %, 100 %" in card["data"]
    assert card["lr"] == "full: 0.0005 (fixed); lora: 0.003 (fixed); linear: 0.01 (fixed)"
    assert card["seeds"].startswith("2 seeds (0, 1) per cell")
    # the linear rows get theirs from the features of the 8 views (issue 36)
    assert card["augmentation"] == (
        "random flips and 90-degree rotations of training batches / random flips and 90-degree "
        "rotations of training batches (linear probes: the frozen encoder's features of the 8 "
        "views, computed once, the drawn view each step)")
    # what a study changes, the card says: it is derived, never written by hand
    card = _card(ROOT / "config" / "config.yaml", {"train": {"augment": False, "epochs": 3}})
    assert card["augmentation"] == "none" and "3 epochs" in card["schedule"]


def test_the_card_says_how_each_encoder_takes_the_bands_and_normalisation():
    card = _card(STUDIES / "shaping_ft.yaml")
    assert ("croma_optical_base (croma_decoder_only, croma_e2e): data mean +- 2 std -> [0, 1]"
            in card["normalisation"])
    assert card["normalisation"].startswith("ssl4eo_s12_vits16_dino (the study's encoder): DN / "
                                            "10000")
    assert "B01 B09 B10 absent from the data: zero in the normalised input" in card["missing_bands"]
    assert card["frames"].startswith("sequence lengths 35, 25, 15, 6, 1")
    card = _card(STUDIES / "peft_methods.yaml")
    # the RGB ViT fed 12 bands: the weights' mean/sd cover 3 of them, so the train split's
    assert card["normalisation"].startswith(
        "vit_base_patch16_224 (the study's encoder): z-score with the train split's per-band "
        "mean and sd (the weights' own are known for B04 B03 B02 only)")
    assert "B01 B05 B06 B07 B08 B8A B09 B11 B12 unknown to the weights" in card["missing_bands"]
    assert "each patch (eurosat_ms 64 px, bigearthnet_s2 120 px) resized (bilinear) to 224 px" \
        in card["input"]
    assert "full, full_ssl4eo: chosen on validation among 1e-05, 3e-05, 0.0001" in card["lr"]


def test_validate_resolved_prints_the_card_the_differences_and_the_published_figures(capsys):
    from geopeft.cli import main

    path = STUDIES / "shaping_ft.yaml"
    header = [ln.lstrip("#").strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
    (cmd,) = {m.group(1) for ln in header
              if (m := re.search(r"`uv run (geopeft validate \S+ --resolved)`", ln))}
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(shlex.split(cmd)[1:]) == 0
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out.splitlines()
    start = out.index("Protocol of shaping_ft:")
    assert len([ln for ln in out[start:] if ln.startswith("  ")]) == len(ASPECTS) + 7 + 4
    assert out[start + len(ASPECTS) + 1].startswith("Compared with: PANGAEA-bench's PASTIS")
    assert "Differences from it (7):" in out
    assert any(ln.startswith("  - augmentation: ours random flips") for ln in out)
    assert any(ln.startswith("  - encoders and weights: ours CROMA base") for ln in out)
    assert any(ln.startswith("  - normalisation: ours CROMA's own rule") for ln in out)
    assert ("  - SSL4EO-S12 DINO ViT-S/16, frozen, UPerNet + L-TAE, 6 frames: test mIoU (%) 36.18 "
            "(PANGAEA (arXiv:2412.04204), PASTIS)") in out


@pytest.fixture
def shaping():
    with open(STUDIES / "shaping_ft.yaml") as fh:
        return yaml.safe_load(fh)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda p: p.pop("reference"), r"protocol\.differences: differences from what\?"),
    (lambda p: p["anchors"][0].update(strategy="croma_large"),
     r"protocol\.anchors\[0\]\.strategy: 'croma_large' is not a key of strategies"),
    (lambda p: p["anchors"][0].update(dataset="eurosat_ms"),
     r"protocol\.anchors\[0\]\.dataset: 'eurosat_ms' is not a dataset of the study"),
    (lambda p: p["differences"][0].update(aspect="weights"),
     r"protocol\.differences\[0\]\.aspect: 'weights' is not one of"),
    (lambda p: p["differences"][0].pop("why"), r"protocol\.differences\[0\]: 'why' is a required"),
    (lambda p: p["anchors"][1].update(value="36.18 %"), r"protocol\.anchors\[1\]\.value"),
])
def test_a_card_that_cannot_be_read_is_refused_by_name(shaping, edit, message):
    edit(shaping["protocol"])
    with pytest.raises(ConfigError, match=message):
        gcfg.validate(shaping, "shaping_ft.yaml")


def test_normalize_backbone_on_bands_the_weights_do_not_know_is_refused():
    with open(STUDIES / "peft_methods.yaml") as fh:
        cfg = yaml.safe_load(fh)
    cfg["backbone"]["normalize"] = "backbone"
    with pytest.raises(ConfigError, match=r"backbone\.normalize: 'backbone' uses the weights' own "
                       r"mean and sd, known for B04 B03 B02 only, not B01 B05 .* set normalize: auto"):
        gcfg.validate(cfg, "peft_methods.yaml")
    cfg["data"]["bands"] = ["B04", "B03", "B02"]  # RGB: the weights' own statistics apply
    gcfg.validate(copy.deepcopy(cfg), "peft_methods.yaml")


def _runs(rows):
    return pd.DataFrame([dict(zip(("strategy", "dataset", "label_fraction", "sequence_length",
                                   "seed", "test_primary"), r, strict=True)) for r in rows])


def test_ours_beside_a_published_figure_is_the_anchor_s_own_cell():
    df = _runs([("dino_decoder_only", "pastis", 1.0, 6, 0, 0.30),
                ("dino_decoder_only", "pastis", 1.0, 6, 1, 0.34),
                ("dino_decoder_only", "pastis", 1.0, 35, 0, 0.50),  # another length
                ("dino_decoder_only", "pastis", 0.1, 6, 0, 0.10)])  # another fraction
    mean, sd, n = ours_for({"strategy": "dino_decoder_only", "label_fraction": 1.0,
                            "sequence_length": 6}, df)
    assert (round(mean, 6), round(sd, 4), n) == (32.0, 2.8284, 2)
    # no length named: the longest
    assert ours_for({"strategy": "dino_decoder_only", "label_fraction": 1.0}, df)[2] == 1
    assert ours_for({"strategy": None}, df) is None
    assert ours_for({"strategy": "utae", "label_fraction": 1.0}, df) is None


def test_the_paper_and_mlflow_show_the_card_and_keep_published_figures_apart():
    record = protocol_record(gcfg.resolve([STUDIES / "shaping_ft.yaml"]))
    df = _runs([("dino_decoder_only", "pastis", 1.0, 6, s, v) for s, v in ((0, .30), (1, .34))])
    tex = protocol_tex(record, df, "shaping_ft")
    row = next(ln for ln in tex.splitlines() if ln.startswith("SSL4EO-S12 DINO"))
    # published in its own column, ours in the next, with its spread and n
    assert row.split(" & ")[2:4] == ["36.18", "32.00 $\\pm$ 2.83 (n = 2, dino\\_decoder\\_only)"]
    moco = next(ln for ln in tex.splitlines() if ln.startswith("SSL4EO-S12 MoCo"))
    assert moco.split(" & ")[3] == "--"  # no such runs here: nothing is put beside it
    assert tex.count(r"\begin{table}") == 3 and "every difference from the reference" in tex
    md = card_markdown(record)
    assert md.startswith("### Protocol") and md.count("\n| ") == len(ASPECTS) + 1 + 7 + 1
    assert card_lines(record)[0] == "Protocol of shaping_ft:"


def test_a_fusion_study_s_card_says_the_encoder_takes_pseudo_rgb():
    card = _card(STUDIES / "fusion_lora.yaml")
    assert card["normalisation"] == (
        "swinv2_tiny (the study's encoder): the bands z-scored with the train split's statistics, "
        "mapped to a 3-channel pseudo-RGB image (the fixed B04 B03 B02 composite, or the learned "
        "spectral tokenizer), then the encoder's own normalisation (Fusion-LoRA)")
    assert "B08 B11 B12 reach the model only through the spectral tokenizer" in card["missing_bands"]
    assert "mean filter" not in card["missing_bands"]  # its RGB weights are used as they are
    assert card["input"].endswith("(bigearthnet_s2 120 px, eurosat_ms 64 px) resized (bilinear) "
                                  "to 256 px")


def test_the_card_says_resized_only_when_the_patches_are():
    card = _card(STUDIES / "eurosat_lora.yaml")
    assert card["input"].endswith("each patch (eurosat_rgb 64 px) resized (bilinear) to 224 px")
    card = _card(STUDIES / "eurosat_lora.yaml", {"backbone": {"input_size": 64}})
    assert card["input"].endswith("the patches as stored (eurosat_rgb 64 px), not resized")
