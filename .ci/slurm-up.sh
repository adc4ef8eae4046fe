#!/usr/bin/env bash
# A one-node SLURM on this machine, for CI (run as root): Debian's slurmctld, slurmd, slurm-client
# and munge, no accounting database.  Two GPUs are simulated as GRES (File= entries pointing at
# character devices made with mknod; a GRES without File= drains the node) unless the machine has
# NVIDIA GPUs of its own.  Every run starts from a fresh StateSaveLocation.  Afterwards
# `sinfo` shows one idle node in partition `gpu` (also `cpu`, the same node without GRES).
#
#   bash .ci/slurm-up.sh                      # ~30 s with the packages
#   KDPIPE_CI_GPUS=0 bash .ci/slurm-up.sh     # a node without GPUs (no GRES at all)
#   bash .ci/slurm-up.sh down                 # stop the daemons it started
set -euo pipefail

RUN=/run/kdpipe-slurm           # pid files, fake devices, state: all of this script's own
CONF=/etc/slurm

stop() {
    local pidfile pid
    for pidfile in "$RUN/slurmd.pid" "$RUN/slurmctld.pid"; do
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pidfile"
    done
}

if [[ ${1:-up} == down ]]; then
    stop
    exit 0
fi
[[ $(id -u) == 0 ]] || { echo "slurm-up: must run as root" >&2; exit 1; }
t0=$(date +%s)

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

stop
mkdir -p "$RUN" "$CONF" /var/log/slurm
STATE=$(mktemp -d "$RUN/state.XXXXXX")     # fresh StateSaveLocation each run
SPOOL=$(mktemp -d "$RUN/spool.XXXXXX")

# munge: a key, and munged running as the munge user
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null

# GPUs: the real ones, or KDPIPE_CI_GPUS (default 2) simulated
gres=()
if compgen -G "/dev/nvidia[0-9]*" >/dev/null; then
    for dev in /dev/nvidia[0-9]*; do gres+=("$dev"); done
else
    for ((i = 0; i < ${KDPIPE_CI_GPUS:-2}; i++)); do
        [[ -c $RUN/fake-gpu$i ]] || mknod "$RUN/fake-gpu$i" c 1 3   # the major/minor of /dev/null
        gres+=("$RUN/fake-gpu$i")
    done
fi
: >"$CONF/gres.conf"
for dev in "${gres[@]}"; do echo "Name=gpu File=$dev" >>"$CONF/gres.conf"; done

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
cat >"$CONF/slurm.conf" <<EOF
ClusterName=kdpipe-ci
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MinJobAge=300
SchedulerParameters=sched_interval=2
GresTypes=gpu
# The node as a cluster's node would be declared: the profile asks 32-64 GB per training job;
# memory is not a consumable resource here (CR_Core), and config_overrides lets this smaller
# machine stand in for it.
SlurmdParameters=config_overrides
NodeName=$host CPUs=$cpus RealMemory=$(( mem_mb > 65536 ? mem_mb : 65536 ))${gres:+ Gres=gpu:${#gres[@]}} State=UNKNOWN
PartitionName=gpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=cpu Nodes=$host MaxTime=INFINITE State=UP
EOF

slurmctld
slurmd
for _ in $(seq 100); do
    state=$(sinfo -h -p gpu -o %T 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 0.2
done
if [[ $state != idle ]]; then
    echo "slurm-up: node is '${state:-unreachable}', not idle" >&2
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    exit 1
fi
echo "slurm-up: one node ($host, $cpus CPUs, ${#gres[@]} GPU GRES), partitions gpu and cpu, in $(( $(date +%s) - t0 )) s"
