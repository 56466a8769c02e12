#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py (run as root, once):
#   apt-get install -y slurm-wlm munge && tests/slurm/single_node.sh start
#   tests/slurm/single_node.sh stop
# No accounting (so the Snakemake plugin needs --slurm-status-command squeue), partitions
# "cpu" and "gpu" (the profile's names) on the same node, and the node's real CPU count:
# the profile's set-threads of 8 would leave jobs pending on a smaller node, so the test
# lowers them.
set -euo pipefail
STATE=${SLURM_TEST_STATE:-/var/tmp/ccis-slurm}
case "${1:-start}" in
start)
    mkdir -p "$STATE"/{spool,state,log} /run/munge /etc/slurm
    chown munge:munge /run/munge 2>/dev/null || true
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
    cat > /etc/slurm/slurm.conf <<CONF
ClusterName=ccis-test
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=30
SchedulerType=sched/backfill
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
CONF
    pgrep -x munged >/dev/null || (su -s /bin/sh munge -c /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force)
    /usr/sbin/slurmctld
    /usr/sbin/slurmd
    for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed" && break; sleep 1; done
    sinfo
    ;;
stop)
    for pid in "$STATE"/slurmd.pid "$STATE"/slurmctld.pid; do
        [ -f "$pid" ] && kill "$(cat "$pid")" || true
    done
    ;;
esac
