#!/usr/bin/env bash
# What each thread of a running process did over a few seconds, from the kernel's scheduler
# statistics (/proc/PID/task/TID/schedstat): time on a CPU, time runnable but waiting for one
# (in the run queue), and how many times a second it was switched in. What is neither is time
# asleep. Run it beside a load, e.g. in the middle of a `benches/load` run:
#
#   benches/thread_sched.sh "$(pgrep -x switchboard)" 3
#
# Prints one line per thread that ran for at least 2% of the time, in cores (1.000 is one core
# for the whole interval). Linux only; reads nothing but /proc.
set -euo pipefail
pid=${1:?usage: $0 PID [SECONDS]}
seconds=${2:-3}
[ -r "/proc/$pid/task" ] || { echo "no process $pid" >&2; exit 1; }

snapshot() {
  for task in /proc/"$pid"/task/*; do
    # A thread that ends between the listing and the read is left out.
    stats=$(cat "$task/schedstat" 2>/dev/null) || continue
    name=$(tr ' ' '_' < "$task/comm" 2>/dev/null) || continue
    echo "${task##*/} $name $stats"
  done | sort
}

before=$(mktemp)
after=$(mktemp)
trap 'rm -f "$before" "$after"' EXIT
snapshot > "$before"
sleep "$seconds"
snapshot > "$after"
# Fields after the join: tid, name, run ns, wait ns, slices (before), name, run, wait, slices.
join "$before" "$after" | awk -v s="$seconds" '
  { run = ($7 - $3) / (s * 1e9); wait = ($8 - $4) / (s * 1e9); slices = ($9 - $5) / s }
  run >= 0.02 { printf "%-8s %-20s run %.3f  run-queue wait %.3f  switched in %d/s\n", $1, $2, run, wait, slices }'
