#!/usr/bin/env bash
# CI check of the SLURM path: start a local single-node SLURM (fake GPUs), run a study through
# `--workflow-profile profiles/slurm` and locally, and require identical results (training is
# deterministic on CPU). Stops SLURM on exit. Every step is bounded by a timeout.
#   scripts/slurm/ci.sh [STUDY_CONFIG]      (default: config/config.yaml, the default study)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
STUDY=$(realpath "${1:-$REPO/config/config.yaml}")
WORK=${GEOPEFT_SLURM_WORK:-$(mktemp -d /tmp/geopeft-slurm-ci.XXXX)}
trap '"$HERE/stop.sh"' EXIT
timeout 900 "$HERE/start.sh"
mkdir -p "$WORK/slurm" "$WORK/local"
echo "== study $STUDY through SLURM (work dir $WORK/slurm)"
( cd "$WORK/slurm" && timeout 3600 python -m snakemake -s "$REPO/Snakefile" \
    --configfile "$STUDY" "$HERE/ci-site/resources.yaml" \
    --workflow-profile "$REPO/profiles/slurm" --profile "$HERE/ci-site" \
    --slurm-init-seconds-before-status-checks 5 --latency-wait 5 --set-threads prepare="$(nproc)" \
    > snakemake.log 2>&1 ) \
  || { tail -40 "$WORK/slurm/snakemake.log"; exit 1; }
echo "== the same study locally (work dir $WORK/local)"
( cd "$WORK/local" && timeout 3600 python -m snakemake -s "$REPO/Snakefile" \
    --configfile "$STUDY" --cores all > snakemake.log 2>&1 ) \
  || { tail -40 "$WORK/local/snakemake.log"; exit 1; }
python "$HERE/compare_runs.py" "$WORK/local" "$WORK/slurm"
trap - EXIT
"$HERE/stop.sh"
if grep -qs '^ClusterName=geopeft-ci' /etc/slurm/slurm.conf || pgrep -x slurmctld >/dev/null \
   || pgrep -x slurmd >/dev/null; then
  echo "stop.sh left the local SLURM configured or running"; exit 1
fi
