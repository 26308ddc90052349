#!/usr/bin/env bash
# The GPU check, as one command on the borrowed GPU machine (no registry there; its own Python
# 3.12 and torch). From the repository root, with the wheels that scripts/gpu/wheels.sh put in
# .whl/ carried beside the working tree:
#
#     bash scripts/gpu/check.sh OUT            # on the GPU machine: the GPU suite, at most 8 min
#     bash scripts/gpu/check.sh --smoke OUT    # on a CPU: every part at toy sizes (--jobs: the
#                                              # rehearsal's jobs too; CI runs it in a venv like
#                                              # the GPU machine's, scripts/gpu/lookalike.sh)
#
# It installs the carried wheels into a folder of their own (the machine's packages untouched,
# its torch used), checks that every module the suite needs imports, then runs
# bench/gpu_suite.py, which writes OUT/suite.json and OUT/suite.md. OUT/env.txt says what ran.
# PYTHON picks the interpreter (default: python3).
set -euo pipefail
SMOKE=()
while [ "${1:-}" = "--smoke" ] || [ "${1:-}" = "--jobs" ]; do SMOKE+=("$1"); shift; done
[ $# -eq 1 ] || { echo "usage: bash scripts/gpu/check.sh [--smoke [--jobs]] OUT" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
PY=${PYTHON:-python3}
SITE=${GEOPEFT_GPU_SITE:-$(mktemp -d /tmp/geopeft-site.XXXX)}
cd "$REPO"

shopt -s nullglob
wheels=(.whl/*.whl)
[ ${#wheels[@]} -gt 0 ] || { echo "check.sh: no wheels in $REPO/.whl: run scripts/gpu/wheels.sh here and carry .whl" >&2; exit 2; }
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${wheels[@]}"
# this checkout's code first, the carried packages after the machine's own
export PYTHONPATH="$REPO/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$SITE/bin"
printf '#!%s\nimport sys\nfrom geopeft.cli import main\nsys.exit(main())\n' "$(command -v "$PY")" \
    > "$SITE/bin/geopeft"
chmod +x "$SITE/bin/geopeft"
export PATH="$SITE/bin:$PATH"

"$PY" - "$OUT/env.txt" <<'EOF'
import importlib, platform, sys
mods = ["torch", "torchvision", "timm", "peft", "numpy", "pandas", "xarray", "zarr", "numcodecs",
        "mlflow", "sqlalchemy", "alembic", "snakemake", "jsonschema", "yaml", "safetensors",
        "zstandard", "PIL", "sklearn", "matplotlib", "psutil", "geopeft.cli",
        "geopeft.evaluate.pyfunc", "geopeft.train.distributed"]
lines = [f"python {platform.python_version()} ({sys.executable})"]
bad = []
for m in mods:
    try:
        mod = importlib.import_module(m)
        lines.append(f"{m} {getattr(mod, '__version__', '')} {getattr(mod, '__file__', '')}")
    except Exception as err:  # noqa: BLE001 - every failure is reported, then the check stops
        bad.append(f"{m}: {type(err).__name__}: {err}")
import torch
lines.append(f"cuda {torch.cuda.is_available()} "
             f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''}")
open(sys.argv[1], "w").write("\n".join(lines + bad) + "\n")
print("\n".join(lines + bad))
if bad:
    sys.exit("check.sh: modules the GPU suite needs do not import:\n" + "\n".join(bad))
EOF
"$PY" bench/gpu_suite.py "${SMOKE[@]}" "$OUT"
