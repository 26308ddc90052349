#!/usr/bin/env bash
# Start a single-node SLURM on 127.0.0.1 for tests and CI (Debian 12 packages, Slurm 22.05),
# with two fake GPUs (gres on character devices) so GPU requests are exercised. No slurmdbd: the
# profile must use `slurm-status-command: squeue` (MinJobAge below keeps finished jobs visible).
# Every wait is bounded; scripts/slurm/stop.sh ends the daemons by their PID files.
#   sudo scripts/slurm/start.sh [ROOT]      (default ROOT /tmp/geopeft-slurm)
set -euo pipefail
ROOT=${1:-${GEOPEFT_SLURM_ROOT:-/tmp/geopeft-slurm}}
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get install -y --no-install-recommends munge slurmctld slurmd slurm-client
fi
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
mkdir -p "$ROOT"/spool/ctld "$ROOT"/spool/d "$ROOT"/run "$ROOT"/log /etc/slurm
# Keep a configuration this machine already had; scripts/slurm/stop.sh puts it back (a slurm.conf
# left pointing at a stopped controller makes every `scontrol`, and so every snakemake start with
# the SLURM executor plugin installed, wait about 9 s).
mkdir -p "$ROOT/etc-backup"
for f in slurm.conf gres.conf; do
  if [ -f "/etc/slurm/$f" ] && ! grep -q '^ClusterName=geopeft-ci' /etc/slurm/slurm.conf 2>/dev/null \
     && [ ! -e "$ROOT/etc-backup/$f" ]; then cp -p "/etc/slurm/$f" "$ROOT/etc-backup/$f"; fi
done
for i in 0 1; do [ -c "$ROOT/gpu$i" ] || mknod "$ROOT/gpu$i" c 1 3; done

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=geopeft-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$ROOT/spool/ctld
SlurmdSpoolDir=$ROOT/spool/d
SlurmctldPidFile=$ROOT/run/slurmctld.pid
SlurmdPidFile=$ROOT/run/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MinJobAge=600
ReturnToService=2
# a job asking more than the node has is refused at submission (an error Snakemake reports),
# instead of pending forever (PartitionConfig)
EnforcePartLimits=ALL
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/gres.conf <<CONF
AutoDetect=off
Name=gpu File=$ROOT/gpu0
Name=gpu File=$ROOT/gpu1
CONF

mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null;
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
pgrep -x munged >/dev/null || { runuser -u munge -- /usr/sbin/munged && touch "$ROOT/run/munged.ours"; }
timeout 20 bash -c 'until munge -n </dev/null | unmunge >/dev/null 2>&1; do sleep 0.2; done'

/usr/sbin/slurmctld
timeout 30 bash -c "until [ -s $ROOT/run/slurmctld.pid ] && scontrol ping 2>/dev/null | grep -q UP; do sleep 0.3; done" \
  || { echo "slurmctld did not start:"; tail -20 "$ROOT/log/slurmctld.log"; exit 1; }
/usr/sbin/slurmd
timeout 60 bash -c "until sinfo -h -o %T 2>/dev/null | grep -qE '^idle'; do sleep 0.5; done" \
  || { echo "slurmd did not come up:"; tail -20 "$ROOT/log/slurmd.log"; sinfo; exit 1; }
sinfo
