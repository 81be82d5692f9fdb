#!/usr/bin/env bash
# Start a one-node SLURM cluster on 127.0.0.1 (Debian's slurm-wlm + munge), no systemd.
#
# Idempotent: installs the packages only when missing, rewrites /etc/slurm/slurm.conf only
# when its content changes (restarting the daemons then), starts only daemons that are not
# running, and returns as soon as `sinfo` shows the node up and `srun -N1 hostname` works.
# Needs root. Environment: SLURM_UP_TIMEOUT (seconds to wait for the node, default 90),
# SLURM_PARTITION (default debug), SLURM_MEM_FRACTION (share of the node's memory SLURM may
# hand out, default 0.9). Stop everything with .ci/slurm-down.sh.
set -euo pipefail

TIMEOUT=${SLURM_UP_TIMEOUT:-90}
PARTITION=${SLURM_PARTITION:-debug}
MEM_FRACTION=${SLURM_MEM_FRACTION:-0.9}
CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm
STATEDIR=/var/lib/slurm

say() { echo "slurm-up: $*" >&2; }
die() { echo "slurm-up: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons); try: sudo $0"

# ------------------------------------------------------------------ packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sinfo >/dev/null; then
    command -v apt-get >/dev/null || die "slurm-wlm/munge are missing and there is no apt-get to install them"
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm munge failed"
fi
id slurm >/dev/null 2>&1 || die "the package did not create the 'slurm' user"
id munge >/dev/null 2>&1 || die "the package did not create the 'munge' user"

# ------------------------------------------------------------------ helpers
alive() {  # alive PIDFILE: the process named in the pid file is running
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}
stop_pidfile() {  # stop_pidfile FILE: TERM, wait up to 10 s, then KILL
    local f=$1 pid
    alive "$f" || { rm -f "$f"; return 0; }
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.5 s
    local secs=$1 what=$2; shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.5
    done
}

# ------------------------------------------------------------------ munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
if ! alive /run/munge/munged.pid; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --force || die "munged did not start (see /var/log/munge/munged.log)"
fi
check_munge() { munge -n | unmunge; }
wait_for 20 munge check_munge || die "munge does not answer: 'munge -n | unmunge' fails (see /var/log/munge/munged.log)"

# ------------------------------------------------------------------ slurm.conf
HOST=$(hostname -s)
CPUS=$(nproc)
NODE_MEM=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
[ -n "$NODE_MEM" ] || NODE_MEM=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
REAL_MEM=$(awk -v m="$NODE_MEM" -v f="$MEM_FRACTION" 'BEGIN {print int(m * f)}')

mkdir -p /etc/slurm "$LOGDIR" "$STATEDIR/slurmctld" "$STATEDIR/slurmd"
chown -R slurm:slurm "$LOGDIR" "$STATEDIR"

NEW_CONF=$(cat <<CONF
# Written by .ci/slurm-up.sh: one node on 127.0.0.1 for tests and CI.
ClusterName=pdlocal
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=${STATEDIR}/slurmctld
SlurmdSpoolDir=${STATEDIR}/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOGDIR}/slurmctld.log
SlurmdLogFile=${LOGDIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
SlurmdTimeout=60
MpiDefault=none
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${REAL_MEM} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
)
CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
    printf '%s\n' "$NEW_CONF" > "$CONF.tmp" && mv "$CONF.tmp" "$CONF"
    CHANGED=1
    say "wrote $CONF (node $HOST: CPUs=$CPUS RealMemory=$REAL_MEM MB, partition $PARTITION)"
fi
if [ $CHANGED = 1 ]; then  # daemons running with an older config: restart them
    stop_pidfile /run/slurmd.pid
    stop_pidfile /run/slurmctld.pid
fi

# ------------------------------------------------------------------ daemons
if ! alive /run/slurmctld.pid; then
    say "starting slurmctld"
    /usr/sbin/slurmctld || die "slurmctld did not start (see $LOGDIR/slurmctld.log)"
fi
if ! alive /run/slurmd.pid; then
    say "starting slurmd"
    /usr/sbin/slurmd || die "slurmd did not start (see $LOGDIR/slurmd.log)"
fi

node_up() {  # the node answers and can take jobs
    case "$(sinfo -h -n "$HOST" -o %t 2>/dev/null | head -1)" in
        idle|mix|alloc|comp) return 0 ;;
        *) return 1 ;;
    esac
}
if ! wait_for "$TIMEOUT" "node" node_up; then
    state=$(sinfo -h -o '%t %E' 2>&1 | head -1)
    # A node left down or drained by an earlier run: resume it once and wait again.
    scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    wait_for 15 "node" node_up || die "node $HOST is not up after ${TIMEOUT}s (sinfo: '${state:-no answer}'); see $LOGDIR/slurmctld.log and $LOGDIR/slurmd.log"
fi
out=$(timeout 60 srun -N1 -p "$PARTITION" --mem=100 -t 1 hostname 2>&1) \
    || die "'srun -N1 hostname' failed: $out (see $LOGDIR/slurmctld.log)"
say "ready: $(sinfo -h -o '%P %t %c CPUs %m MB' | head -1); srun ran on $out"
