#!/usr/bin/env bash
# Message traffic over TLS, as fleets in the field send it: the realistic rows of compare.sh
# (QoS 1, window 1 with 8 and 200 pairs; open loop at 20,000 msgs/s over 1,000 pairs; the
# fleet: 1,000 devices, 10,000 requests/s) and the pipelined pairs, every client over TLS 1.3
# (ECDSA P-256), against Switchboard's TLS listener and Mosquitto's, alternating the order per
# run. Prints the medians and each run's CPU ratio.
#
#   RUNS=3 DURATION=5 benches/tls_flows.sh
#   BROKERS="old new mosquitto" benches/tls_flows.sh   # builds in target/ab, as for ab.sh
# ROWS takes the rows of ab.sh that speak TLS (the message scenarios and the fleet).
#
# Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
ROWS=${ROWS:-"w1_8 w1_200 open fleet pipe1"}
OUT=${OUT:-target/tls-flows.jsonl}
SB_PORT=${SB_PORT:-18860}
SB_TLS=${SB_TLS:-18861}
MQ_PORT=${MQ_PORT:-18862}
MQ_TLS=${MQ_TLS:-18863}

# shellcheck source=benches/lib.sh
. benches/lib.sh
cargo build --release --bin switchboard 2>/dev/null
build_harness
make_work_dir

make_tls_files
tls_broker_confs "$SB_PORT" "$SB_TLS" "$MQ_PORT" "$MQ_TLS"

rm -f "$OUT"
BROKERS=${BROKERS:-"switchboard mosquitto"}
for run_no in $(seq "$RUNS"); do
  for broker in $(run_order "$run_no"); do
    start_tls_broker "$broker"
    echo "run $run_no: $broker" >&2
    for row in $ROWS; do
      set_row_args "$row"
      # shellcheck disable=SC2086
      "$LOAD" --addr "127.0.0.1:$tls" --broker-pid "$pid" --label "$broker" --quiet \
        --tls-ca "$work/ca.pem" --out "$OUT" $args --duration "$DURATION" >/dev/null
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
"$LOAD" --table "$OUT"
