#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by .ci/slurm-up.sh, by the PIDs in its pid files.
# Safe to run twice and when nothing runs. Leaves packages, config and state in place.
set -euo pipefail

stop_pidfile() {  # stop_pidfile FILE NAME: TERM, wait up to 10 s, then KILL
    local f=$1 name=$2 pid
    if [ ! -s "$f" ]; then echo "slurm-down: $name not running (no $f)" >&2; return 0; fi
    pid=$(cat "$f")
    if ! kill -0 "$pid" 2>/dev/null; then echo "slurm-down: $name not running (stale $f)" >&2; rm -f "$f"; return 0; fi
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; echo "slurm-down: $name killed (pid $pid)" >&2
    else echo "slurm-down: $name stopped (pid $pid)" >&2; fi
    rm -f "$f"
}

[ "$(id -u)" = 0 ] || { echo "slurm-down: ERROR: must run as root" >&2; exit 1; }
stop_pidfile /run/slurmd.pid slurmd
stop_pidfile /run/slurmctld.pid slurmctld
stop_pidfile /run/munge/munged.pid munged
