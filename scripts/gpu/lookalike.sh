#!/usr/bin/env bash
# A Python 3.12 venv like the borrowed GPU machine's, for rehearsing scripts/gpu/check.sh on a
# CPU: the machine's packages that geopeft uses (scripts/gpu/machine.txt; torch 2.11.0 and the
# other versions known from the machine, uv.lock's for the rest) and nothing else, so that what
# the carried wheels miss fails here as it would there.
#     bash scripts/gpu/lookalike.sh VENV     (then: PYTHON=VENV/bin/python bash scripts/gpu/check.sh --smoke OUT)
# Made again only when machine.txt or uv.lock changed. Python 3.12 comes from $PYTHON312, pyenv,
# or uv's search of PATH (this workplace's machines have pyenv's 3.12.1; the GPU machine 3.12.3).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: bash scripts/gpu/lookalike.sh VENV" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/../.." && pwd)
VENV=$1
source "$REPO/scripts/gpu/uv.sh"
stamp=$(cat "$REPO/scripts/gpu/machine.txt" "$REPO/uv.lock" "$0" | sha256sum | cut -c1-16)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.lookalike" 2>/dev/null)" = "$stamp" ]; then
  echo "lookalike: $VENV is up to date"; exit 0
fi
py=${PYTHON312:-}
if [ -z "$py" ] && command -v pyenv > /dev/null; then
  py=$(ls -d "$(pyenv root)"/versions/3.12.*/bin/python3 2>/dev/null | sort -V | tail -1 || true)
fi
[ -n "$py" ] || py=$(UV_PYTHON_DOWNLOADS=never "${UV[@]}" python find 3.12 2>/dev/null || true)
[ -n "$py" ] || { echo "lookalike: no Python 3.12 found (set PYTHON312 to one)" >&2; exit 2; }
rm -rf "$VENV"
"${UV[@]}" venv -q --seed --python "$py" "$VENV"
req=$(mktemp)
trap 'rm -f "$req"' EXIT
(cd "$REPO" && "${UV[@]}" run --locked python scripts/gpu/wheels.py --machine-requirements) > "$req"
# no byte-compiling of all 20,000 files: Python compiles the few the check imports
UV_COMPILE_BYTECODE=0 "${UV[@]}" pip install -q --python "$VENV/bin/python" -r "$req"
echo "$stamp" > "$VENV/.lookalike"
echo "lookalike: $VENV ($("$VENV/bin/python" --version), $(wc -l < "$req") packages of the GPU machine)"
