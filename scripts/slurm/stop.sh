#!/usr/bin/env bash
# Stop the local SLURM started by scripts/slurm/start.sh: daemons by their PID files, SIGTERM
# then SIGKILL after 10 s.
set -uo pipefail
ROOT=${1:-${GEOPEFT_SLURM_ROOT:-/tmp/geopeft-slurm}}
scancel --user="$(id -un)" 2>/dev/null || true
for d in slurmd slurmctld; do
  pidfile="$ROOT/run/$d.pid"
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || continue
  timeout 10 tail --pid="$pid" -f /dev/null || kill -KILL "$pid" 2>/dev/null
  rm -f "$pidfile"
done
echo "local SLURM stopped"
