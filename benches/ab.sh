#!/usr/bin/env bash
# Builds of Switchboard side by side (and Mosquitto): the realistic rows of compare.sh against
# each, alternating the order per run, then one table of medians. For measuring a change.
#
#   mkdir -p target/ab && cp target/release/switchboard target/ab/new   # one binary per variant
#   git stash && cargo build --release && cp target/release/switchboard target/ab/old && git stash pop
#   BROKERS="old new mosquitto" RUNS=3 benches/ab.sh
#
# It prints the medians, then each build's CPU per message over Mosquitto's run by run (the
# median of those ratios and their range: single runs spread by 15-20% on a 2-core machine).
# A variant can be a script that execs a binary with arguments (e.g. `-c one-worker.toml`).
# MOSQUITTO_LINE is one more line for Mosquitto's configuration (e.g. `acl_file /path`).
# LOAD_ARGS is added to every row (e.g. `--persistent-subscribers`, `--window-acked` for
# publishers that also wait for their PUBACK, as devices do, or `--churn-beside 2000` for one
# more client making 2,000 subscription changes a second beside the traffic).
# ROWS picks rows: w1_8 w1_200 q0_200 open fleet fleet20 pipe0 pipe1 fanout fanout1 fanin0 fanin
# w1a_8 (window 1, 8 pairs, each publisher also waiting for its PUBACK: `--window-acked`)
# idle (10,000 idle connections: RSS per connection) idle_max (IDLE_MAX of them, default 19,000:
# near a 20,000 descriptor limit) storm (connect storm, 20 at a time)
# r10k (100 pairs at 10k msgs/s in all) r10k_idle (the same with 10,000 idle connections beside)
# retained (20 subscribers, each getting 1,000 retained messages, as in compare.sh)
# wild (8 pipelined pairs, QoS 0, each subscriber through a wildcard over 100 topics, as in
# compare.sh).
# Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/ab}
OUT=${OUT:-target/ab.jsonl}
RUNS=${RUNS:-3}
DURATION=${DURATION:-4}
ROWS=${ROWS:-"w1_8 w1_200 open fleet"}
LOAD_ARGS=${LOAD_ARGS:-}
BROKERS=${BROKERS:-"new mosquitto"}
SB_PORT=${SB_PORT:-18840}
MQ_PORT=${MQ_PORT:-18841}

# shellcheck source=benches/lib.sh
. benches/lib.sh
build_harness
make_work_dir
if [ -n "${MOSQUITTO_LINE:-}" ]; then
  mosquitto_conf "$work/mosquitto.conf" "$MQ_PORT" "$MOSQUITTO_LINE"
else
  mosquitto_conf "$work/mosquitto.conf" "$MQ_PORT"
fi
rm -f "$OUT"
for run_no in $(seq "$RUNS"); do
  for broker in $(run_order "$run_no"); do
    if [ "$broker" = mosquitto ]; then port=$MQ_PORT; else port=$SB_PORT; fi
    start_broker "$broker" "$port"
    echo "run $run_no: $broker" >&2
    for row in $ROWS; do
      case $row in
        w1_8) args="--scenario pairs --qos 1 --window 1 --clients 8" ;;
        w1a_8) args="--scenario pairs --qos 1 --window 1 --clients 8 --window-acked" ;;
        w1_200) args="--scenario pairs --qos 1 --window 1 --clients 200" ;;
        q0_200) args="--scenario pairs --qos 0 --window 1 --clients 200" ;;
        open) args="--scenario pairs --qos 1 --rate 20000 --clients 1000" ;;
        fleet) args="--scenario fleet --qos 1 --clients 1000 --rate 10000" ;;
        fleet20) args="--scenario fleet --qos 1 --clients 1000 --rate 20000" ;;
        pipe0) args="--scenario pairs --qos 0 --clients 8" ;;
        pipe1) args="--scenario pairs --qos 1 --clients 8" ;;
        fanout) args="--scenario fan-out --qos 0 --clients 8" ;;
        fanout1) args="--scenario fan-out --qos 1 --clients 8" ;;
        fanin0) args="--scenario fan-in --qos 0 --clients 8" ;;
        fanin) args="--scenario fan-in --qos 1 --clients 8" ;;
        idle) args="--scenario idle --clients 10000 --concurrency 200" ;;
        idle_max) args="--scenario idle --clients ${IDLE_MAX:-19000} --concurrency 200" ;;
        storm) args="--scenario connect-storm --concurrency 20" ;;
        retained) args="--scenario retained --clients 20 --topics 1000" ;;
        wild) args="--scenario wildcard --clients 8 --topics 100" ;;
        r10k) args="--scenario pairs --qos 1 --rate 10000 --clients 100" ;;
        r10k_idle) args="--scenario pairs --qos 1 --rate 10000 --clients 100 --idle-beside 10000 --concurrency 200" ;;
        *) echo "unknown row $row" >&2; exit 2 ;;
      esac
      # shellcheck disable=SC2086
      "$LOAD" --addr "127.0.0.1:$port" --broker-pid "$pid" --label "$broker" --quiet \
        --out "$OUT" $args $LOAD_ARGS --duration "$DURATION" >/dev/null
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
"$LOAD" --table "$OUT"
