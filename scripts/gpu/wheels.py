"""The wheels the borrowed GPU machine lacks, for its Python 3.12, in an ignored folder that
travels with the working tree (``.whl/``).

What geopeft needs is uv.lock's runtime closure (``uv export``), without the app (gradio) and the
SLURM executor plugin, which the GPU check does not use; the machine's own packages
(``scripts/gpu/machine.txt``, torch among them) are left out, so the check uses that machine's
torch. Each wheel is the lock's version for CPython 3.12 on manylinux x86-64 (geopeft itself
runs from the carried checkout: scripts/gpu/check.sh puts src/ first on the path). The total,
with the working tree, is checked against the device tool's 64 MiB.

    python scripts/gpu/wheels.py [--dest .whl] [--list]    (scripts/gpu/wheels.sh runs it)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MACHINE = Path(__file__).with_name("machine.txt")
PRUNE = ("gradio", "snakemake-executor-plugin-slurm",  # not used by the GPU check
         "torch", "torchvision")  # the machine's own, with its CUDA libraries
LEFT_OUT = {  # large wheels the GPU check does without (its CPU rehearsal in CI proves it)
    "mlflow": "its web UI (11.5 MiB); mlflow-skinny, carried, is the same Python package",
    "pulp": "bundled CBC solvers (15.6 MiB); without it Snakemake schedules greedily",
    "rasterio": "bundled GDAL (37 MiB); the check's data are EuroSAT-RGB JPEGs, read by Pillow",
}
LIMIT_MB = 64.0  # what travels to the device machine: working tree + carried paths
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_27_x86_64", "manylinux_2_28_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "manylinux_2_39_x86_64",
             "manylinux1_x86_64", "linux_x86_64")
MARKER_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def machine_packages(path: Path = MACHINE) -> dict[str, str | None]:
    """{normalized name: pinned version or None} of the GPU machine's packages."""
    out: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("python "):
            continue
        name, _, version = line.partition("==")
        out[norm(name)] = version or None
    return out


def uv() -> list[str]:
    """The uv command: the one ``uv run`` names in ``$UV``, else uv on PATH, else the one the
    README's ``python3 -m pip install uv`` gave."""
    import os

    if os.environ.get("UV") and os.access(os.environ["UV"], os.X_OK):
        return [os.environ["UV"]]
    return [found] if (found := shutil.which("uv")) else ["python3", "-m", "uv"]


def locked_closure(prune: tuple[str, ...] = PRUNE) -> dict[str, str]:
    """{normalized name: version} of geopeft's locked runtime closure on the GPU machine's
    Python (markers evaluated for CPython 3.12 on Linux x86-64)."""
    from packaging.markers import Marker

    cmd = [*uv(), "export", "--locked", "--no-dev", "--no-hashes",
           "--no-annotate", "--no-emit-project", "--no-header", "--format", "requirements-txt"]
    for p in prune:
        cmd += ["--prune", p]
    text = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        req, _, marker = line.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate(MARKER_ENV):
            continue
        name, _, version = req.strip().partition("==")
        out[norm(name)] = version.strip()
    return out


def missing(closure: dict[str, str], machine: dict[str, str | None]) -> dict[str, str]:
    """The closure's packages the machine does not have (by name: a package it has at another
    version is used as it is there), less :data:`LEFT_OUT`."""
    return {n: v for n, v in sorted(closure.items()) if n not in machine and n not in LEFT_OUT}


def machine_requirements(closure: dict[str, str], machine: dict[str, str | None]) -> list[str]:
    """What the GPU machine gives geopeft, as requirements for a look-alike environment: the
    closure's packages it has (torch and torchvision, which the closure prunes, included), at its
    version where known, else at uv.lock's."""
    pinned = {n: v for n, v in closure.items() if n != "setuptools"}  # torch 2.11: <82
    pinned.update({n: v for n, v in machine.items() if v})
    names = sorted(n for n in (set(closure) & set(machine)) | {"torch", "torchvision"}
                   if not n.startswith(("nvidia-", "cuda-")))  # torch brings those it needs
    return [f"{n}=={pinned[n]}" if n in pinned else n for n in names]


def download(packages: dict[str, str], dest: Path) -> list[str]:
    """Each package's wheel for CPython 3.12 manylinux x86-64; a package published only as a
    source archive (pure Python, e.g. connection-pool) is built into a wheel here. The names
    built so."""
    base = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
            "--abi", "none", "-d", str(dest)]
    for p in PLATFORMS:
        base += ["--platform", p]
    todo, built = dict(packages), []
    while todo:
        r = subprocess.run(base + [f"{n}=={v}" for n, v in todo.items()], capture_output=True,
                           text=True)
        if r.returncode == 0:
            break
        m = re.search(r"No matching distribution found for ([A-Za-z0-9_.-]+)==", r.stderr)
        if not m or norm(m.group(1)) not in todo:
            raise SystemExit(f"wheels: pip download failed:\n{r.stderr[-2000:]}")
        name = norm(m.group(1))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest),
                        f"{name}=={todo.pop(name)}"], check=True)
        built.append(name)
    for wheel in dest.glob("*.whl"):  # a source-only package must build a pure-Python wheel
        if norm(wheel.name.split("-")[0]) in built and not wheel.name.endswith("-none-any.whl"):
            raise SystemExit(f"wheels: {wheel.name} is built for this machine, not the GPU's")
    return built


def tree_mb() -> float:
    """What travels besides the carried folder: tracked and untracked-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
    total = 0
    for f in filter(None, files):
        try:
            total += (ROOT / f.decode()).stat().st_size
        except FileNotFoundError:  # written and removed meanwhile (a test's scratch file)
            continue
    return total / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=ROOT / ".whl")
    ap.add_argument("--list", action="store_true", help="print what would be carried, download nothing")
    ap.add_argument("--machine-requirements", action="store_true",
                    help="print the GPU machine's packages that geopeft uses, as requirements "
                         "(for the look-alike environment of the CPU rehearsal)")
    a = ap.parse_args(argv)
    machine = machine_packages()
    if a.machine_requirements:
        print("\n".join(machine_requirements(locked_closure(prune=()), machine)))
        return 0
    need = missing(locked_closure(), machine)
    if a.list:
        print("\n".join(f"{n}=={v}" for n, v in need.items()))
        return 0
    dest = a.dest.resolve()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    built = download(need, dest)
    wheels = sorted(dest.glob("*.whl"))
    got = {norm(w.name.split("-")[0]) for w in wheels}
    lost = sorted(set(need) - got)
    if lost:
        raise SystemExit(f"wheels: no wheel was saved for {', '.join(lost)}")
    size = sum(w.stat().st_size for w in wheels) / 2**20
    tree = tree_mb()
    print(f"wheels: {len(wheels)} in {dest} ({size:.1f} MiB; with the working tree "
          f"{tree + size:.1f} of {LIMIT_MB:.0f} MiB)")
    if built:
        print(f"  built from source archives (pure Python): {', '.join(built)}")
    for w in sorted(wheels, key=lambda w: -w.stat().st_size)[:5]:
        print(f"  {w.stat().st_size / 2**20:6.1f} MiB  {w.name}")
    if tree + size > LIMIT_MB:
        raise SystemExit(f"wheels: {tree + size:.1f} MiB would travel, over the device tool's "
                         f"{LIMIT_MB:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
