#!/usr/bin/env bash
# Memory after a spike of messages held for offline devices: for each broker (Switchboard builds
# in BIN_DIR with `[persistence]`, `fsync = "interval"`, in a fresh directory each run; and
# Mosquitto in memory), alternating per run: SESSIONS persistent sessions (`device-{i}`, QoS 1
# on `detrd/status/request/{i}` and `cfg/#`, then disconnected), QUEUED QoS 1 messages to
# `cfg/all` (each held for every session), then every device back with a clean session (what
# was held for it dropped), then 120 retained messages of 64 KB on one topic (a log of 7.5 MB
# to compact); prints the broker's RSS at start, with the sessions, with the messages held,
# right after the devices came back, and AFTER seconds after the retained messages, then the
# medians per broker.
#
#   BROKERS="old new mosquitto" RUNS=3 benches/held_spike.sh
#
# Needs mosquitto_pub and Python 3. Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/ab}
RUNS=${RUNS:-3}
SESSIONS=${SESSIONS:-20000}
QUEUED=${QUEUED:-20}
AFTER=${AFTER:-12}
BROKERS=${BROKERS:-"new mosquitto"}
PORT=${PORT:-18862}

# shellcheck source=benches/lib.sh
. benches/lib.sh
make_work_dir
mosquitto_conf "$work/mosquitto.conf" "$PORT" "max_queued_messages 1000"
head -c 65536 /dev/zero | tr '\0' x > "$work/big"
for run_no in $(seq "$RUNS"); do
  for broker in $(run_order "$run_no"); do
    start_spike_broker "$broker" "$PORT" "compact_min_bytes = 4194304"
    start=$(rss_mb "$pid")
    SESSIONS=$SESSIONS python3 -c "import asyncio, sys; sys.path.insert(0, 'benches'); \
import mosquitto_recovery as m; asyncio.run(m.load_sessions($PORT))"
    sessions=$(rss_mb "$pid")
    for _ in $(seq "$QUEUED"); do
      mosquitto_pub -p "$PORT" -q 1 -t cfg/all -m "$(printf '%064d' 0)"
    done
    held=$(rss_mb "$pid")
    SESSIONS=$SESSIONS python3 -c "import asyncio, sys; sys.path.insert(0, 'benches'); \
import mosquitto_recovery as m; asyncio.run(m.clear_sessions($PORT))"
    cleared=$(rss_mb "$pid")
    for _ in $(seq 120); do
      mosquitto_pub -p "$PORT" -q 1 -r -t spike/big -f "$work/big"
    done
    sleep "$AFTER" # the interval measured, not a wait for an event
    later=$(rss_mb "$pid")
    echo "$broker $start $sessions $held $cleared $later" | tee -a "$work/rows"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
echo "| RSS, MB (median of $RUNS) | start | $SESSIONS sessions | $((SESSIONS * QUEUED)) held | devices back, clean | ${AFTER} s later |"
echo "|---|---|---|---|---|---|"
median_rows "$work/rows"
