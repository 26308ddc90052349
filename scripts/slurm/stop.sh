#!/usr/bin/env bash
# Stop the local SLURM started by scripts/slurm/start.sh: daemons by their PID files, SIGTERM
# then SIGKILL after 10 s. Removes the configuration start.sh wrote to /etc/slurm (restoring one the
# machine had before) and stops munged if start.sh started it.
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
if grep -q '^ClusterName=geopeft-ci' /etc/slurm/slurm.conf 2>/dev/null; then
  for f in slurm.conf gres.conf; do
    if [ -f "$ROOT/etc-backup/$f" ]; then mv -f "$ROOT/etc-backup/$f" "/etc/slurm/$f"; else rm -f "/etc/slurm/$f"; fi
  done
fi
if [ -e "$ROOT/run/munged.ours" ]; then
  pid=$(cat /run/munge/munged.pid 2>/dev/null || pgrep -x munged)
  [ -n "$pid" ] && { kill -TERM $pid 2>/dev/null; timeout 10 tail --pid="${pid%% *}" -f /dev/null || kill -KILL $pid 2>/dev/null; }
  rm -f "$ROOT/run/munged.ours"
fi
echo "local SLURM stopped"
