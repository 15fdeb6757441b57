#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (Debian slurm-wlm + munge), for the tests and CI.
#   bash tools/slurm/local_cluster.sh start     install if needed, configure, start, wait until idle
#   bash tools/slurm/local_cluster.sh stop
# Needs root (apt-get, munged as user munge). State, spool and logs live in $SLURM_LOCAL_DIR.
set -euo pipefail
STATE=${SLURM_LOCAL_DIR:-/tmp/videomae-slurm}
HOST=$(hostname -s)
CONF_DIR=/etc/slurm

install_packages() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  chmod 0400 /etc/munge/munge.key
  runuser -u munge -- munged
}

write_config() {
  mkdir -p "$CONF_DIR" "$STATE/state" "$STATE/spool"
  # no cgroup.conf: with CgroupPlugin=disabled slurmd 22.05 refuses to start
  rm -f "$CONF_DIR/cgroup.conf"
  cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=videomae-local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldTimeout=60
SlurmdTimeout=60
KillWait=30
NodeName=$HOST CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
}

wait_idle() {
  for _ in $(seq 1 60); do
    state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null || true)
    case "$state" in
      idle*|mix*|alloc*) return 0 ;;
      down*|drain*|unk*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  echo "SLURM node $HOST did not become idle; see $STATE/slurmctld.log and $STATE/slurmd.log" >&2
  return 1
}

case "${1:-start}" in
  start)
    install_packages
    start_munge
    write_config
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    wait_idle
    echo "SLURM cluster up: $(sinfo -h -o '%P %D %t %N')"
    ;;
  stop)
    pkill -x slurmd || true
    pkill -x slurmctld || true
    ;;
  *)
    echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
