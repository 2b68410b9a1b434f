#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the workflow's real SLURM test.
#   cluster.sh install          apt-get install slurm-wlm and munge if missing (needs root)
#   cluster.sh start DIR CPUS MEM_MB   write DIR/slurm.conf, start munged, slurmctld and slurmd; wait until
#                              idle. CPUS and MEM_MB are the node's *configured* size (config_overrides),
#                              so a profile written for real GPU nodes schedules unchanged on a laptop.
#   cluster.sh stop DIR         stop the daemons started by `start DIR`
# The config is also linked to /etc/slurm/slurm.conf (unless something else owns that path): the slurm
# jobstep executor strips every SLURM_* variable, SLURM_CONF included, before its nested srun, so
# inside a job only the default path works, as on a real cluster. No accounting daemon: Snakemake's
# slurm executor then needs `--slurm-status-command squeue`.
set -euo pipefail

cmd=${1:?usage: cluster.sh install|start DIR CPUS MEM_MB|stop DIR}

case "$cmd" in
install)
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then exit 0; fi
  if [ "$(id -u)" != 0 ]; then echo "cluster.sh: installing slurm-wlm needs root" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  ;;
start)
  dir=$(realpath -m "${2:?DIR}"); cpus=${3:-2}; mem=${4:-}
  mkdir -p "$dir"/{spool,state,log}
  host=$(hostname -s)
  [ -n "$mem" ] || mem=$(awk '/MemTotal/ {print int($2/1024*0.8)}' /proc/meminfo)
  cat >"$dir/slurm.conf" <<CONF
ClusterName=rsgrpo-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
SchedulerType=sched/backfill
InactiveLimit=0
KillWait=5
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  # munge: a key once per machine, then the daemon (its socket dir must exist)
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if ! pgrep -x munged >/dev/null; then
    if id munge >/dev/null 2>&1; then su -s /bin/sh munge -c munged || munged --force; else munged --force; fi
  fi
  mkdir -p /etc/slurm
  if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
    ln -sfn "$dir/slurm.conf" /etc/slurm/slurm.conf
  fi
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  for _ in $(seq 1 60); do
    state=$(sinfo -h -o %t 2>/dev/null | head -1 || true)
    case "$state" in idle|mix|alloc) echo "slurm up: $(sinfo -h -o '%P %D %t %c')"; exit 0 ;; esac
    if [ "$state" = "down" ] || [ "$state" = "drain" ] || [ "$state" = "inval" ]; then
      scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    fi
    sleep 1
  done
  echo "cluster.sh: node did not become idle; logs in $dir/log" >&2
  tail -20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
  exit 1
  ;;
stop)
  dir=$(realpath -m "${2:?DIR}")
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
  for _ in $(seq 1 20); do
    alive=0
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
      [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && alive=1
    done
    [ $alive = 0 ] && break
    sleep 0.5
  done
  if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$dir/slurm.conf" ]; then rm -f /etc/slurm/slurm.conf; fi
  ;;
*)
  echo "usage: cluster.sh install|start DIR CPUS MEM_MB|stop DIR" >&2; exit 2 ;;
esac
