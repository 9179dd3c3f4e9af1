#!/usr/bin/env bash
# Memory after one large message to a fleet of offline devices: for each broker (Switchboard
# builds in BIN_DIR with `[persistence]`, `fsync = "interval"`, in a fresh directory each run;
# and Mosquitto in memory), alternating per run: SESSIONS persistent sessions (`device-{i}`,
# QoS 1 on `detrd/status/request/{i}` and `cfg/#`, then disconnected), one QoS 1 message of
# PAYLOAD bytes to `cfg/all` (held for every session), then 4 small retained QoS 1 messages
# (with Switchboard, ordinary drains for the persistence writer); prints the broker's RSS at
# start, with the sessions, 2 s after the message, and 1 s after the small ones, then the
# medians per broker.
#
#   BROKERS="old new mosquitto" RUNS=3 benches/fanout_spike.sh
#
# Needs mosquitto_pub and Python 3. Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/ab}
RUNS=${RUNS:-3}
SESSIONS=${SESSIONS:-2000}
PAYLOAD=${PAYLOAD:-65536}
BROKERS=${BROKERS:-"new mosquitto"}
PORT=${PORT:-18863}

# shellcheck source=benches/lib.sh
. benches/lib.sh
make_work_dir
mosquitto_conf "$work/mosquitto.conf" "$PORT" "max_queued_messages 1000"
head -c "$PAYLOAD" /dev/urandom > "$work/payload"
for run_no in $(seq "$RUNS"); do
  for broker in $(run_order "$run_no"); do
    start_spike_broker "$broker" "$PORT"
    start=$(rss_mb "$pid")
    SESSIONS=$SESSIONS python3 -c "import asyncio, sys; sys.path.insert(0, 'benches'); \
import mosquitto_recovery as m; asyncio.run(m.load_sessions($PORT))"
    sessions=$(rss_mb "$pid")
    mosquitto_pub -p "$PORT" -q 1 -t cfg/all -f "$work/payload"
    sleep 2 # the interval measured, not a wait for an event
    held=$(rss_mb "$pid")
    for i in 1 2 3 4; do
      mosquitto_pub -p "$PORT" -q 1 -r -t "after/$i" -m x
    done
    sleep 1 # the interval measured, not a wait for an event
    later=$(rss_mb "$pid")
    echo "$broker $start $sessions $held $later" | tee -a "$work/rows"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
echo "| RSS, MB (median of $RUNS) | start | $SESSIONS sessions | a $PAYLOAD-byte message held for each | after 4 small messages |"
echo "|---|---|---|---|---|"
median_rows "$work/rows"
