#!/usr/bin/env bash
# Download, here, the wheels the borrowed GPU machine lacks (CPython 3.12, manylinux x86-64) into
# .whl/ (ignored; the device tool carries it: `carry: [".whl"]`), and check that they and the
# working tree fit the 64 MiB that travels. What is carried and why: scripts/gpu/wheels.py.
#     bash scripts/gpu/wheels.sh            (needs the registry: run it here, not there)
set -euo pipefail
cd "$(dirname "$0")/../.."
# uv: the one `uv run` names in $UV, else uv on PATH, else the README's `python3 -m uv`
if [ -n "${UV:-}" ] && [ -x "$UV" ]; then UV=("$UV")
elif command -v uv > /dev/null; then UV=(uv)
else UV=(python3 -m uv); fi
exec "${UV[@]}" run --locked --with pip python scripts/gpu/wheels.py "$@"
