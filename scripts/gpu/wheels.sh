#!/usr/bin/env bash
# Download, here, the wheels the borrowed GPU machine lacks (CPython 3.12, manylinux x86-64) into
# .whl/ (ignored; the device tool carries it: `carry: [".whl"]`), and check that they and the
# working tree fit the 64 MiB that travels. What is carried and why: scripts/gpu/wheels.py.
#     bash scripts/gpu/wheels.sh            (needs the registry: run it here, not there)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
source "$HERE/uv.sh"
exec "${UV[@]}" run --locked --with pip python scripts/gpu/wheels.py "$@"
