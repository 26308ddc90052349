"""The layering of ``src/geopeft``: imports go downward only, and no module imports itself back.

Every import counts: module level, inside functions and under ``TYPE_CHECKING``, because a
function-level import hides a cycle without removing it. (A source names the writer of its
embedded world as a ``module:function`` string, ``Source.world``, loaded only by
:func:`geopeft.data.synthetic.write_world`, and the writer of its rehearsal fixture likewise,
``Source.fixtures``, loaded by ``Source.write_fixtures``: the writer depends on the source's
facts, never the other way round.)
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "geopeft"

#: The layers, bottom first. A module may import its own unit (package or top-level module) and
#: any unit of a lower layer; never a unit of its own layer or above (siblings such as train and
#: evaluate do not import each other).
LAYERS: list[set[str]] = [
    # the base of geopeft's one-line errors; the names of results/ and data/ (geopeft.layout)
    {"errors", "layout"},
    # files, band names, GPU claims, /proc, messages; the fine-tuning strategies and peft methods;
    # the limits on reading and unpacking
    {"io", "bands", "gpus", "process", "wire", "strategies", "limits"},
    {"spec", "metrics", "tracking"},  # the typed job spec; numpy metrics; MLflow
    {"tasks"},                      # the learning tasks: scores, metrics, tables, predictions
    {"data"},                       # sources, synthetic world, zarr store, splits
    {"models", "settings"},         # zoo, ..., inference; the study settings (typed, the schema)
    {"config", "train", "evaluate"},  # the study's resolution; training; evaluation
    # figures, tables; rehearsal fixtures; the plan; the app; the job server (only cli imports it)
    {"paper", "rehearsal", "plan", "app", "jobserver"},
    {"cli"},                        # the command line
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def module_name(path: Path, root: Path = SRC) -> str:
    parts = ["geopeft", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """``geopeft.train.loop`` -> ``train``; ``geopeft.io`` -> ``io``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(name: str, source: str, known: set[str]) -> set[str]:
    """The geopeft modules ``source`` (the module ``name``) imports, anywhere in the file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("geopeft"))
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            assert not node.level, f"{name}: relative import of {mod!r}: geopeft imports absolutely"
            if not mod.startswith("geopeft"):
                continue
            for a in node.names:
                out.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod)
    return {m for m in out if m != "geopeft"}


def graph(sources: dict[str, str]) -> dict[str, set[str]]:
    known = set(sources)
    return {name: imports(name, src, known) for name, src in sources.items()}


def upward(g: dict[str, set[str]]) -> list[str]:
    """Imports that go up a layer or sideways to a sibling unit, or touch an unlisted unit."""
    bad = []
    for mod, targets in sorted(g.items()):
        for t in sorted(targets):
            a, b = unit(mod), unit(t)
            if a not in RANK or b not in RANK:
                bad.append(f"{mod} -> {t}: unit {a if a not in RANK else b!r} is in no layer")
            elif a != b and RANK[b] >= RANK[a]:
                bad.append(f"{mod} (layer {RANK[a]}) -> {t} (layer {RANK[b]})")
    return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``g`` (one path per strongly connected component)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in g.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def package_sources() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in sorted(SRC.rglob("*.py"))}


def test_every_unit_has_a_layer():
    units = {unit(m) for m in package_sources()} - {""}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS"


def test_imports_go_downward_only():
    bad = upward(graph(package_sources()))
    assert not bad, "upward or sideways imports:\n  " + "\n  ".join(bad)


def test_no_import_cycles():
    found = cycles(graph(package_sources()))
    assert not found, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in found)


def test_only_the_command_line_imports_the_job_server():
    """The job server is a leaf: the command line starts and serves it (the workflow, outside the
    package, starts it too); a job that needs a process's facts imports geopeft.process."""
    g = graph(package_sources())
    users = sorted(m for m, targets in g.items() if "geopeft.jobserver" in targets)
    assert users == ["geopeft.cli"], users


def test_the_checks_catch_an_upward_import_and_a_cycle():
    """The checker itself: a function-level import of train from models, and a cycle hidden in
    functions, are both found."""
    sources = {
        "geopeft.models.a": "def f():\n    from geopeft.train.loop import fit\n",
        "geopeft.train.loop": "from geopeft.models import a\n",
        "geopeft.data.x": "def g():\n    import geopeft.data.y\n",
        "geopeft.data.y": "from geopeft.data.x import g\n",
        "geopeft.train.ok": "from geopeft.data import x\nfrom geopeft.io import atomic_dir\n",
    }
    g = graph(sources)
    models, train = RANK["models"], RANK["train"]
    assert upward(g) == [f"geopeft.models.a (layer {models}) -> geopeft.train.loop (layer {train})"]
    assert sorted(cycles(g)) == [["geopeft.data.x", "geopeft.data.y"],
                                 ["geopeft.models.a", "geopeft.train.loop"]]
    assert upward({"geopeft.train.x": {"geopeft.evaluate.run"}}) == [
        f"geopeft.train.x (layer {train}) -> geopeft.evaluate.run (layer {train})"]


def test_commands_that_do_not_train_do_not_import_torch(tmp_path):
    """A command imports what it uses: the data and results commands skip torch's few seconds
    (the command line catches geopeft's errors through their common base, geopeft.errors)."""
    import subprocess
    import sys

    code = f"""
import sys
from geopeft.cli import main
for argv in (["table", "--runs-csv", "{tmp_path}/none.csv", "--study", "s", "--out", "{tmp_path}/t.tex"],
             ["aggregate", "--runs", "{tmp_path}/none", "--out", "{tmp_path}/r.csv"],
             ["subset", "--store", "{tmp_path}/none.zarr", "--method", "stratified", "--fraction", "0.1",
              "--seed", "0", "--out", "{tmp_path}/s.json"]):
    assert main(argv) == 2, argv  # each a one-line error, not a traceback
print(sorted(m for m in ("torch", "timm", "peft", "mlflow") if m in sys.modules))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout
    assert r.stderr.count("error:") == 3 and "Traceback" not in r.stderr


def readme_layers() -> list[set[str]]:
    """The layers the README's architecture diagram draws, bottom first: the code block after
    "The package is layered", one layer per entry (units at the start of a line, continued on
    lines indented by two spaces), descriptions in the column after them."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("The package is layered", 1)[1].split("```", 2)[1]
    layers: list[set[str]] = []
    for line in block.splitlines()[1:]:
        head = line.split("  ", 1)[0] if not line.startswith("  ") else (
            line[2:].split("  ", 1)[0] if not line.startswith("   ") else "")
        units = {u.strip().rstrip("/") for u in head.replace(",", " ").split() if u.strip()}
        if not units:
            continue
        if line.startswith("  "):
            layers[-1] |= units
        else:
            layers.append(units)
    return layers


def test_the_readme_draws_the_layers_of_the_code():
    """The README's diagram of the package lists each layer's units, bottom first, as
    :data:`LAYERS` (so a new unit, or a moved one, is drawn where it lives)."""
    assert readme_layers() == LAYERS
