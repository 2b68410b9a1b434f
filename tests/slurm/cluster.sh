#!/usr/bin/env bash
# A SLURM cluster on this machine, for the workflow's real SLURM tests.
#   cluster.sh install          apt-get install slurm-wlm and munge if missing (needs root)
#   cluster.sh start DIR CPUS MEM_MB [NODES]   write DIR/slurm.conf, start munged, slurmctld and one slurmd
#                              per node; wait until every node is idle. CPUS and MEM_MB are each node's
#                              *configured* size (config_overrides), so a profile written for real GPU nodes
#                              schedules unchanged on a laptop. NODES (default 1) > 1: nodes n1..nN, each a
#                              slurmd of its own (`slurmd -N nI`) on its own port (Port=), spool, pid and log
#                              files (%n), all at NodeAddr 127.0.0.1; the controller and daemons use other
#                              ports than the one-node cluster's.
#   cluster.sh stop DIR         stop the daemons started by `start DIR`
# The config is also linked to /etc/slurm/slurm.conf (unless something else owns that path): the slurm
# jobstep executor strips every SLURM_* variable, SLURM_CONF included, before its nested srun, so
# inside a job only the default path works, as on a real cluster. No accounting daemon: Snakemake's
# slurm executor then needs `--slurm-status-command squeue`.
set -euo pipefail

cmd=${1:?usage: cluster.sh install|start DIR CPUS MEM_MB [NODES]|stop DIR}

case "$cmd" in
install)
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then exit 0; fi
  if [ "$(id -u)" != 0 ]; then echo "cluster.sh: installing slurm-wlm needs root" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  ;;
start)
  dir=$(realpath -m "${2:?DIR}"); cpus=${3:-2}; mem=${4:-}; nodes=${5:-1}
  mkdir -p "$dir"/{spool,state,log}
  host=$(hostname -s)
  [ -n "$mem" ] || mem=$(awk '/MemTotal/ {print int($2/1024*0.8)}' /proc/meminfo)
  if [ "$nodes" = 1 ]; then
    names=$host; ctld_port=16817
    node_lines="SlurmdPort=16818
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    spool=$dir/spool; pidfile=$dir/slurmd.pid; logfile=$dir/log/slurmd.log
  else
    names=$(seq -f "n%g" -s, 1 "$nodes"); ctld_port=17817; node_lines=""
    for i in $(seq 1 "$nodes"); do
      node_lines+="NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((17817 + i)) CPUs=$cpus RealMemory=$mem State=UNKNOWN
"
      mkdir -p "$dir/spool-n$i"
    done
    spool=$dir/spool-%n; pidfile=$dir/slurmd-%n.pid; logfile=$dir/log/slurmd-%n.log
  fi
  cat >"$dir/slurm.conf" <<CONF
ClusterName=rsgrpo-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$pidfile
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$logfile
SlurmctldPort=$ctld_port
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
$node_lines
PartitionName=debug Nodes=$names Default=YES MaxTime=INFINITE State=UP
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
  if [ "$nodes" = 1 ]; then
    slurmd -f "$SLURM_CONF"
  else
    for i in $(seq 1 "$nodes"); do slurmd -f "$SLURM_CONF" -N "n$i"; done
  fi
  for _ in $(seq 1 60); do
    states=$(sinfo -h -N -o %t 2>/dev/null || true)
    idle=$(echo "$states" | grep -cE '^(idle|mix|alloc)$' || true)
    if [ "$idle" = "$nodes" ]; then echo "slurm up: $(sinfo -h -o '%P %D %t %c')"; exit 0; fi
    if echo "$states" | grep -qE '^(down|drain|inval)'; then
      scontrol update nodename="$names" state=resume >/dev/null 2>&1 || true
    fi
    sleep 1
  done
  echo "cluster.sh: node did not become idle; logs in $dir/log" >&2
  tail -20 "$dir"/log/*.log >&2 || true
  exit 1
  ;;
stop)
  dir=$(realpath -m "${2:?DIR}")
  for pidfile in "$dir"/slurmd*.pid "$dir/slurmctld.pid"; do
    if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
  for _ in $(seq 1 20); do
    alive=0
    for pidfile in "$dir"/slurmd*.pid "$dir/slurmctld.pid"; do
      [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && alive=1
    done
    [ $alive = 0 ] && break
    sleep 0.5
  done
  if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$dir/slurm.conf" ]; then rm -f /etc/slurm/slurm.conf; fi
  ;;
*)
  echo "usage: cluster.sh install|start DIR CPUS MEM_MB [NODES]|stop DIR" >&2; exit 2 ;;
esac
