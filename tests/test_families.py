"""Encoder families: the zoo's families resolve, the registry's errors, and a new family added at
run time (its own class plus one registry entry) builds a classifier and a UPerNet-L-TAE
segmenter without any other module knowing its name."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_VIT

from geopeft.data.dataset import StoreInfo
from geopeft.models import backbones, families, zoo
from geopeft.models.classifier import build_classifier, resolve_norm
from geopeft.models.families import EncoderFamily, NormRule, Taps, get_family
from geopeft.models.segmentation import build_segmenter
from geopeft.models.weights import Normalization
from geopeft.spec import LoraSpec
from geopeft.strategies import apply_strategy

MODELS = Path(__file__).resolve().parents[1] / "src" / "geopeft" / "models"
BANDS = ["B02", "B03", "B04", "B08"]


def store(size: int = 32) -> StoreInfo:
    n = len(BANDS)
    return StoreInfo(Path("x.zarr"), "pastis", [str(i) for i in range(20)], list(BANDS), 1e-4,
                     [1000.0 + 100 * i for i in range(n)], [400.0 + 10 * i for i in range(n)],
                     "f" * 64, (size, size), 19)


class FakeFamily(EncoderFamily):
    """A new family: timm's tiny ViT under another name, with its own taps and a norm rule;
    it counts what it was asked."""

    name = "fakevit"
    norm_rules = (NormRule("fake_unit", "data mean, 2 std",
                           lambda m, s, k: ([x * k for x in m], [2 * x * k for x in s], None)),)

    def __init__(self) -> None:
        self.asked: list[str] = []

    def create(self, bb, in_chans, num_classes):
        import timm

        self.asked.append("create")
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=in_chans,
                                 num_classes=num_classes, **bb["kwargs"])

    def prepare_for_adapters(self, model):
        self.asked.append("prepare_for_adapters")
        return super().prepare_for_adapters(model)

    def taps(self, model, out_indices, declared):
        self.asked.append("taps")
        return Taps([0, 0, 1, 1], [self.width(model)] * 4, [4.0, 2.0, 1.0, 0.5])

    def features(self, model, x, indices):
        self.asked.append("features")
        return super().features(model, x, indices)


@pytest.fixture
def fake(monkeypatch):
    """The fake family registered, and a zoo entry of it; both removed afterwards."""
    family = families.register(FakeFamily())
    entry = zoo.BackboneEntry("fake_tiny", "fakevit", "fake_tiny", "none", "a fake family's ViT",
                              kwargs=dict(TINY_VIT), norm_rule="fake_unit")
    monkeypatch.setitem(zoo.REGISTRY, entry.key, entry)
    yield family
    families.unregister(family.name)


def test_every_zoo_entry_names_a_family_of_that_name():
    for e in zoo.REGISTRY.values():
        assert get_family(e.family).name == e.family
    assert families.names()[:3] == ["vit", "swin", "croma"]
    assert [r.name for r in get_family("croma").norm_rules] == ["croma_2sigma"]


def test_unknown_and_duplicate_families_are_named():
    with pytest.raises(ValueError, match=r"'satlas' is not an encoder family \(vit, swin, croma, "
                                         r"prithvi, dofa, swin1, eva, convnext, resnet\)"):
        get_family("satlas")
    with pytest.raises(ValueError, match="'vit' is already registered"):
        families.register(get_family("vit"))
    with pytest.raises(KeyError, match="'vit' was not added by register"):
        families.unregister("vit")
    with pytest.raises(ValueError, match="rule 'nope' is not one of .*'croma_2sigma'"):
        families.norm_rule("nope")
    with pytest.raises(ValueError, match="Linear: no encoder_family recorded"):
        backbones.width(torch.nn.Linear(2, 2))


def family_decisions() -> re.Pattern[str]:
    """Lines that decide or test a family by its name: a comparison with a family, an attribute
    probe standing for one, or a family name (or a name's prefix) picked or tested in a string:
    ``name.startswith("swin")``, ``"swin" in name``, ``"swin" if ... else "vit"``."""
    fam = "|".join(map(re.escape, families.names()))
    return re.compile(
        r"""family\S*\s*[!=]=\s*["']|hasattr\([^)]*["']layers["']"""
        rf"""|\.(?:startswith|endswith)\(\s*\(?\s*[rbf]?["'](?:{fam})"""
        rf"""|["'](?:{fam})\w*["']\s+(?:not\s+in|in|if|else)\b"""
        rf"""|\b(?:else|==|!=)\s+["'](?:{fam})["']""")


def test_no_models_module_branches_on_a_family_name():
    """The task models ask the family object; only the family modules know their own name (the
    zoo's architecture names come from the timm file each family declares)."""
    pattern = family_decisions()
    found = [f"{p.name}:{i}" for p in sorted(MODELS.glob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found


@pytest.mark.parametrize("line", [
    '    family = "swin" if name.startswith("swin") else "vit"',  # the zoo's old guess
    '    if name.startswith(("vit", "deit")):',
    '    if "swin" in bb["arch"]:',
    '    if bb["family"] == "croma":',
    '    kind = "cls" if fam != "vit" else "tokens"',
])
def test_the_family_guard_catches_a_decision_by_name(line):
    assert family_decisions().search(line), line


def test_the_families_declare_their_timm_files_and_adapter_targets():
    """The torch-free declarations (what the zoo reads) agree with the family objects."""
    assert families.timm_files() == {"vit": "vision_transformer.py",
                                     "swin": "swin_transformer_v2.py",
                                     "swin1": "swin_transformer.py", "eva": "eva.py",
                                     "convnext": "convnext.py", "resnet": "resnet.py"}
    for name, declared in families.FAMILIES.items():
        want = {"convnext": ("fc1", "fc2"), "resnet": ("conv2",)}.get(name, ("q", "k", "v"))
        assert get_family(name).adapter_targets == declared.adapter_targets == want
        assert families.adapter_targets(name) == declared.adapter_targets
    assert set(zoo.timm_architectures().values()) == set(families.timm_files())
    assert zoo.entry_for("swinv2_tiny_window16_256").family == "swin"
    assert zoo.entry_for("vit_small_patch16_224").family == "vit"


def test_an_entry_takes_its_familys_adapter_targets(fake, monkeypatch):
    """A zoo entry without its own ``lora_targets`` takes the family's; one with them keeps
    its own."""
    monkeypatch.setattr(fake, "adapter_targets", ("qkv",))
    assert zoo.resolve({"name": "fake_tiny"})["lora_targets"] == ["qkv"]
    entry = dataclasses.replace(zoo.REGISTRY["fake_tiny"], lora_targets=("q", "v"))
    monkeypatch.setitem(zoo.REGISTRY, "fake_tiny", entry)
    assert zoo.resolve({"name": "fake_tiny"})["lora_targets"] == ["q", "v"]


def test_a_family_added_at_run_time_builds_a_classifier_and_a_segmenter(fake):
    torch.manual_seed(0)
    clf, info = build_classifier({"name": "fake_tiny", "weights": "none"}, store(), 5)
    assert clf.backbone.encoder_family == "fakevit" and fake.asked == ["create",
                                                                       "prepare_for_adapters"]
    x = torch.randint(0, 4000, (2, len(BANDS), 32, 32)).float()
    assert clf.eval()(x).shape == (2, 5)
    assert backbones.token_grid(clf.backbone) == (4, 4) and backbones.width(clf.backbone) == 48
    lora = apply_strategy(clf, "lora", LoraSpec(r=2, alpha=4), ["q", "k", "v"])
    assert any("lora_A" in n for n, p in lora.named_parameters() if p.requires_grad)

    fake.asked.clear()
    seg, _ = build_segmenter({"name": "fake_tiny", "weights": "none"}, store(), 19,
                             {"channels": 16, "ltae": {"d_model": 16, "heads": 4}})
    assert seg.indices == [0, 0, 1, 1]
    xs = torch.randint(0, 4000, (1, 2, len(BANDS), 32, 32)).to(torch.int16)
    with torch.no_grad():
        out = seg.eval()(xs, torch.tensor([[10.0, 200.0]]))
    assert out.shape == (1, 19, 32, 32) and torch.isfinite(out).all()
    assert fake.asked == ["create", "prepare_for_adapters", "taps", "features"]

    # its normalisation rule and the zoo listing
    rule = Normalization(list(BANDS), [], [], rule="fake_unit")
    norm = resolve_norm("auto", rule, store())
    assert norm.std == pytest.approx([2 * (400.0 + 10 * i) * 1e-4 for i in range(4)])
    row = {r["name"]: r for r in backbones.describe()}["fake_tiny"]
    assert (row["family"], row["normalisation"], row["grid"]) == ("fakevit", "data mean, 2 std",
                                                                 "4x4")


def test_the_fake_family_is_gone_afterwards():
    assert "fakevit" not in families.names() and "fake_tiny" not in zoo.REGISTRY


def test_croma_family_reads_and_writes_the_published_layout():
    croma = get_family("croma")
    bb = backbones.resolve({"name": "croma_optical_base",
                            "kwargs": {"img_size": 16, "embed_dim": 32, "depth": 1}})
    m = backbones.create_model(bb, 12, 0)
    state = m.state_dict()
    back = croma.from_checkpoint(croma.to_checkpoint(state), bb)
    assert state.keys() == back.keys() and all(torch.equal(state[k], back[k]) for k in state)
    assert croma.size_multiple(m) == 8 and get_family("vit").size_multiple(m) is None
    assert dataclasses.asdict(croma.taps(m, None, None))["indices"] == [0, 0, 0, 0]
