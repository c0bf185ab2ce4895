#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests and CI (docs/slurm.md):
#   scripts/slurm_cluster.sh start   # installs slurm-wlm and munge when missing (as root), starts the daemons
#   scripts/slurm_cluster.sh stop    # stops them
# Everything lives in $FAULTLLM_SLURM_DIR (default /var/tmp/faultllm-slurm); `start` prints the line
#   SLURM_CONF=<dir>/slurm.conf
# that sbatch, squeue, srun and scancel need in their environment.
# No accounting daemon (sacct fails): faultllm watches its jobs with squeue.
set -euo pipefail
DIR=${FAULTLLM_SLURM_DIR:-/var/tmp/faultllm-slurm}
NODE=${FAULTLLM_SLURM_NODE:-$(hostname -s)}
CPUS=${FAULTLLM_SLURM_CPUS:-8}  # more than the machine may have (config_overrides): several 1-CPU jobs at once
export SLURM_CONF=$DIR/slurm.conf

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  [ "$(id -u)" = 0 ] || { echo "slurm_cluster: slurm-wlm and munge are missing; run as root to install them" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
  mkdir -p "$DIR/state" "$DIR/spool"
  cat >"$SLURM_CONF" <<EOF
ClusterName=faultllm
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=${FAULTLLM_SLURMCTLD_PORT:-6817}
SlurmdPort=${FAULTLLM_SLURMD_PORT:-6818}
AuthType=auth/munge
SlurmUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

start_munge() {
  munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return  # already running
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chmod 400 /etc/munge/munge.key
  if id munge >/dev/null 2>&1; then
    chown -R munge: /etc/munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- munged
  else
    munged --force
  fi
}

start() {
  install
  stop
  write_config
  start_munge
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF" -N "$NODE"
  for _ in $(seq 60); do  # the node answers in a second or two
    if sinfo -h -N -o %t 2>/dev/null | grep -Eq '^(idle|mix|alloc)'; then
      echo "SLURM_CONF=$SLURM_CONF"
      return
    fi
    sleep 0.5
  done
  echo "slurm_cluster: the node did not come up; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
  sinfo -N >&2 || true
  exit 1
}

stop() {
  for daemon in slurmd slurmctld; do
    if [ -s "$DIR/$daemon.pid" ]; then
      kill "$(cat "$DIR/$daemon.pid")" 2>/dev/null || true
      rm -f "$DIR/$daemon.pid"
    fi
  done
  sleep 0.5
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
