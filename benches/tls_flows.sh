#!/usr/bin/env bash
# Message traffic over TLS, as fleets in the field send it: the realistic rows of compare.sh
# (QoS 1, window 1 with 8 and 200 pairs; open loop at 20,000 msgs/s over 1,000 pairs; the
# fleet: 1,000 devices, 10,000 requests/s) and the pipelined pairs, every client over TLS 1.3
# (ECDSA P-256), against Switchboard's TLS listener and Mosquitto's, alternating the order per
# run. Prints the medians and each run's CPU ratio.
#
#   RUNS=3 DURATION=5 benches/tls_flows.sh
#
# Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
ROWS=${ROWS:-"w1_8 w1_200 open fleet pipe1"}
OUT=${OUT:-target/tls-flows.jsonl}
BIN=target/release/switchboard
SB_PORT=${SB_PORT:-18860}
SB_TLS=${SB_TLS:-18861}
MQ_PORT=${MQ_PORT:-18862}
MQ_TLS=${MQ_TLS:-18863}

# shellcheck source=benches/lib.sh
. benches/lib.sh
command -v openssl >/dev/null || { echo "tls_flows.sh needs openssl" >&2; exit 1; }
cargo build --release --bin switchboard 2>/dev/null
build_harness
make_work_dir

# A CA and a server certificate for localhost and 127.0.0.1, both ECDSA P-256.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=bench CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj "/CN=localhost" -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$work/san.ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 2 -extfile "$work/san.ext" -out "$work/server.pem" 2>/dev/null
# Mosquitto started as root reads its files as the user `mosquitto`.
chmod a+rx "$work"
chmod a+r "$work"/*.pem "$work"/*.key

cat > "$work/switchboard.toml" <<TOML
[listener]
port = $SB_PORT
[http]
enabled = false
[tls]
port = $SB_TLS
cert_file = "$work/server.pem"
key_file = "$work/server.key"
TOML
mosquitto_conf "$work/mosquitto.conf" "$MQ_PORT" \
  "listener $MQ_TLS 127.0.0.1" "certfile $work/server.pem" "keyfile $work/server.key"

rm -f "$OUT"
BROKERS="switchboard mosquitto"
for run_no in $(seq "$RUNS"); do
  for broker in $(run_order "$run_no"); do
    if [ "$broker" = mosquitto ]; then
      "$MOSQUITTO" -c "$work/mosquitto.conf" 2>/dev/null &
      pid=$!
      port=$MQ_TLS
    else
      RUST_LOG=warn "$BIN" -c "$work/switchboard.toml" 2>/dev/null &
      pid=$!
      port=$SB_TLS
    fi
    wait_for_port "$port" || { echo "$broker did not open port $port" >&2; exit 1; }
    echo "run $run_no: $broker" >&2
    for row in $ROWS; do
      case $row in
        w1_8) args="--scenario pairs --qos 1 --window 1 --clients 8" ;;
        w1_200) args="--scenario pairs --qos 1 --window 1 --clients 200" ;;
        open) args="--scenario pairs --qos 1 --rate 20000 --clients 1000" ;;
        pipe1) args="--scenario pairs --qos 1 --clients 8" ;;
        fleet) args="--scenario fleet --qos 1 --clients 1000 --rate 10000" ;;
        *) echo "unknown row $row" >&2; exit 2 ;;
      esac
      # shellcheck disable=SC2086
      "$LOAD" --addr "127.0.0.1:$port" --broker-pid "$pid" --label "$broker" --quiet \
        --tls-ca "$work/ca.pem" --out "$OUT" $args --duration "$DURATION" >/dev/null
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
"$LOAD" --table "$OUT"
