#!/usr/bin/env bash
# Memory after a spike: for each broker (Switchboard builds in BIN_DIR, and Mosquitto), alternating
# per run, CLIENTS idle connections (one subscription each) open and close; prints the broker's
# RSS at start, at the peak (as the harness saw it), right after the clients have gone, and
# AFTER seconds later, then the medians per broker.
#
#   BROKERS="old new mosquitto" RUNS=3 benches/spike.sh
#
# Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/ab}
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-10000}
AFTER=${AFTER:-6}
BROKERS=${BROKERS:-"new mosquitto"}
PORT=${PORT:-18860}

# shellcheck source=benches/lib.sh
. benches/lib.sh
build_harness
make_work_dir
mosquitto_conf "$work/mosquitto.conf" "$PORT" "max_connections -1"
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
for run_no in $(seq "$RUNS"); do
  for broker in $(run_order "$run_no"); do
    start_broker "$broker" "$PORT"
    start=$(rss_kb "$pid")
    "$LOAD" --addr "127.0.0.1:$PORT" --broker-pid "$pid" --label "$broker" --quiet \
      --out "$work/run.jsonl" --scenario idle --clients "$CLIENTS" --concurrency 200 --duration 1 >/dev/null
    gone=$(rss_kb "$pid")
    sleep "$AFTER" # the interval measured, not a wait for an event
    later=$(rss_kb "$pid")
    peak=$(tail -1 "$work/run.jsonl" | sed 's/.*"broker_rss_bytes":\([0-9]*\).*/\1/')
    echo "$broker $start $((peak / 1024)) $gone $later" | tee -a "$work/rows"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
echo "| RSS, MB (median of $RUNS) | start | peak | after close | ${AFTER} s later |"
echo "|---|---|---|---|---|"
median_rows "$work/rows" 1024
