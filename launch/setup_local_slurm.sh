#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try launch/slurm.py locally (and for its test): Debian/Ubuntu's
# slurmctld + slurmd + munge, the node "localhost" with 2 CPUs in the default partition "local".
#
#   sudo launch/setup_local_slurm.sh      # then: sinfo; python -m launch.slurm --help
#
# Needs root and apt (installs slurm-wlm and munge when missing). Idempotent: a second run only checks that the
# daemons answer (and starts what is not running). Logs: /var/log/slurm/. Stop: kill the slurmd, slurmctld and munged
# processes (their pids are in /run/slurmd.pid, /run/slurmctld.pid, /run/munge/munged.pid).
set -euo pipefail

CONF_DIR=/etc/slurm
say() { echo "setup_local_slurm: $*"; }

if [ "$(id -u)" != 0 ]; then
  say "needs root (it installs packages and starts daemons)." >&2
  exit 1
fi
mkdir -p /var/lock
exec 9>/var/lock/vit_jax_local_slurm.lock
flock -w 600 9 || { say "another set-up still holds /var/lock/vit_jax_local_slurm.lock" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sbatch >/dev/null; then
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # Bounded timeouts: an offline machine fails soon.
  apt=(apt-get -q -o Acquire::Retries=1 -o Acquire::http::Timeout=30 -o Acquire::https::Timeout=30)
  "${apt[@]}" update
  "${apt[@]}" install -y --no-install-recommends slurm-wlm munge
fi

# munge: a key, then the daemon (as the munge user).
if [ ! -s /etc/munge/munge.key ]; then
  say "creating /etc/munge/munge.key"
  if command -v mungekey >/dev/null; then mungekey --create --force; else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- munged 9>&-  # Daemons must not inherit the lock.
fi

CONF=$(cat <<'EOF'
# Written by launch/setup_local_slurm.sh: one node (localhost, 2 CPUs), no accounting, no cgroups.
ClusterName=vit_jax_local
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
)
mkdir -p "$CONF_DIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
changed=0
if [ "$(cat "$CONF_DIR/slurm.conf" 2>/dev/null)" != "$CONF" ]; then
  say "writing $CONF_DIR/slurm.conf"
  printf '%s\n' "$CONF" > "$CONF_DIR/slurm.conf"
  changed=1
fi

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! running /run/slurmctld.pid; then
  say "starting slurmctld"
  slurmctld 9>&-
elif [ "$changed" = 1 ]; then
  scontrol reconfigure
fi
if ! running /run/slurmd.pid; then
  say "starting slurmd"
  slurmd -N localhost 9>&-
fi

for _ in $(seq 60); do
  state=$(sinfo -h -n localhost -o %t 2>/dev/null || true)
  case "$state" in
    idle*|mix*|alloc*) say "ready: node localhost is $state (sinfo)"; exit 0 ;;
    down*|drain*|unk*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
say "the node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 1
